// pool/allocator_impl.h: the allocator's state and the small operations on it, shared by
// allocator.cpp (the paths through the pool) and validate.cpp (its invariants). Internal.
//
// State (under mu): reservations ("segments") split into large blocks that cover them exactly; pages
// (physical allocations of one or more granules, each mapped whole: owned by as many consecutive slots
// as it spans, or kept spare), possibly still mapped at stale slots too (aliases a stitch left behind);
// chunks of small pieces; free blocks indexed by size per stream (unsettled) or in the settled sets;
// each stream's parked pieces.
//
// A page spans several granules when the pool grew by that much at once (Config::max_create): the GPU
// streams faster through large physical allocations. The driver maps a physical allocation only whole,
// so such a page moves in a stitch only whole, into as many consecutive holes, and goes back to the
// driver only whole, once no block but free ones lies on it.
//
// Locks: mu guards all state and is never held across a driver call. grow_mu serialises the slow
// paths (settle, stitch, trim), which release mu around their driver calls after marking the blocks
// they work on `busy`; the hot path never takes grow_mu. Every event goes to the observer with mu held
// (emit()): the slow paths report their driver calls in the critical section after them.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "pool/address_map.h"
#include "pool/allocator.h"
#include "pool/block.h"

namespace glake::pool {

using State = Block::State;

struct StreamState {
  explicit StreamState(std::pmr::memory_resource* r) : large(r), small(r) {}
  FreeSet large;  // unsettled free blocks freed on this stream
  FreeSet small;
  std::uint64_t free_seq = 0;
  EventHandle event = 0;
  std::uint64_t event_seq = 0;      // frees up to this sequence number precede the last record
  std::uint64_t completed_seq = 0;  // the work before frees up to this number has completed
  bool retired = false;             // its stream was destroyed: query the last event, never record
  // The last few blocks freed on this stream, kept whole (not merged, not indexed) so that the common
  // free-then-allocate-the-same-size pattern costs no set operation. Only this stream reuses them; a
  // slow path unparks them all first.
  static constexpr std::size_t kParked = 8;
  std::array<Block*, kParked> parked{};
  std::size_t parked_count = 0;
};

struct Page {
  PhysHandle handle = 0;
  DevPtr va = 0;  // its first slot (it owns `span` slots from there); 0: spare
  std::uint32_t span = 1;     // granules
  std::uint32_t aliases = 0;  // stale mappings of it (each over `span` slots)
  bool live = false;
};

// One hole slot of a stitch window and where its page comes from.
struct Fill {
  enum class Kind { spare, move, create, lend } kind;  // lend: a second mapping of a lent tail's page
  DevPtr dst = 0;           // the first slot it fills
  std::uint32_t span = 1;   // slots it fills: its page's granules
  std::int32_t page = -1;  // spare and move: the page; create: filled in once created
  PhysHandle handle = 0;
  DevPtr src = 0;           // move: the slot it leaves
  Block* source = nullptr;  // move: the busy block it leaves; lend: the tail lent
  int stage = 0;            // 0 untouched, 1 created but not mapped, 2 mapped, 3 accessible
};

// What a caller asked for: `bytes` of large block; for a small request, the large block becomes a
// chunk and a piece of `piece` bytes is carved from it. Handed out and accounted in one critical
// section, so the pool is never seen with a block allocated but not yet accounted.
struct Request {
  std::size_t bytes = 0;
  std::size_t requested = 0;
  std::size_t piece = 0;
  bool aligned = false;  // whole pages of its own, from a page boundary (chunks, and see allocate())
};

// What prepare() found. undo: planned, but more must be created than may be now: finish() gives the
// plan back, then Plan::then says why.
enum class Prepared { ready, need_window, need_wait, need_device_free, no_memory, undo };

struct Plan {
  Segment* segment = nullptr;
  DevPtr start = 0;
  std::size_t holes = 0;           // pages to fill
  std::vector<Block*> window;      // busy blocks covering [start, start + n), address order; a window
                                   // that ends inside a hole runs on to the end of that page
  std::vector<State> window_state; // their states before the stitch
  std::vector<Block> window_saved; // and their fields
  std::vector<Block*> sources;     // busy blocks whose pages move into the window
  std::vector<Fill> fills;
  Block* lent = nullptr;           // the busy tail whose page begins the window (`lend` fill), if any
  std::size_t shadow = 0;          // then: bytes of the window's first slot before the tail's bytes
  Block lent_saved;                // and the tail's fields before
  Prepared then = Prepared::ready;  // after undo: what stopped the plan
  std::size_t promised = 0;         // blocks and nodes prepare() set aside for finish() (Impl::promised)
};

struct Allocator::Impl {
  Impl(Driver& d, const Config& c) : drv(d), cfg(c), page(d.granularity()), device(d.device()) {}

  Driver& drv;
  Config cfg;
  std::size_t page;
  int device;  // the driver's, for events
  std::size_t total_device = 0;
  std::size_t largest_possible = SIZE_MAX;  // the device's memory (if known), or the limit if smaller

  mutable std::mutex mu;
  mutable std::mutex grow_mu;
  NodePool resource;  // the FreeSets' nodes
  BlockArena arena;
  std::vector<std::unique_ptr<Segment>> segments;
  std::vector<Page> pages;
  std::vector<std::int32_t> dead_page_ids;
  std::vector<std::int32_t> spare;
  std::unordered_map<StreamHandle, StreamState> streams;
  FreeSet settled_large{&resource};
  FreeSet settled_small{&resource};
  AddressMap<Block*> live;
  Stats st;
  std::size_t large_in_use = 0;  // bytes of allocated large blocks, chunks included
  std::size_t quarantined_bytes = 0;  // bytes of quarantined blocks: held for good, never used, not cached
  std::atomic<Observer*> observer{nullptr};
  static constexpr StreamHandle kGhost = StreamHandle{1} << 63;  // the bit of those keys, no stream's
  StreamHandle next_ghost = kGhost | 1;  // keys for the states of destroyed streams

  // ---- small helpers (mu held) ----

  // Host memory for an operation that splits or indexes up to n blocks and hands out one, taken first:
  // out of host memory, std::bad_alloc is thrown before the pool changes, and the caller (the shim)
  // answers an allocation error. `promised`: what a stitch between prepare() and finish() (mu released
  // for the driver's calls) will take, which no other operation may use up meanwhile.
  static constexpr std::size_t kHeadroom = 64;
  std::size_t promised = 0;
  void headroom(std::size_t n = kHeadroom) {
    arena.reserve(n + promised);
    resource.reserve(n + promised);
    live.reserve(live.size() + 2);
  }
  // Gives back what an operation set aside in `promised`, on every way out (declared under mu).
  struct Promise {
    Impl* m;
    std::size_t n;
    ~Promise() { m->promised -= n; }
  };

  void emit(EventKind k, StreamHandle s, DevPtr a, std::size_t n, std::uint64_t aux = 0) {  // mu held
    if (Observer* o = observer.load(std::memory_order_acquire))
      o->on_event(PoolEvent{k, device, s, a, n, aux});
  }

  // The hot path asks for the same stream again and again: remember the last one (map values are stable).
  StreamState& stream_state(StreamHandle s) {
    if (last_state != nullptr && last_stream == s) return *last_state;
    last_state = &streams.try_emplace(s, &resource).first->second;
    last_stream = s;
    return *last_state;
  }
  StreamState* last_state = nullptr;
  StreamHandle last_stream = 0;

  FreeSet& index_of(Block* b) {
    if (b->settled) return b->small ? settled_small : settled_large;
    StreamState& ss = stream_state(b->stream);
    return b->small ? ss.small : ss.large;
  }
  void index_insert(Block* b) { index_of(b).insert(b); }
  void index_erase(Block* b) { index_of(b).erase(b); }

  static Block* fit(FreeSet& set, std::size_t n) {
    Block probe;
    probe.size = n;
    auto it = set.lower_bound(&probe);
    return it == set.end() ? nullptr : *it;
  }

  // Best fit among the blocks this stream may use at once: its own and the settled ones.
  Block* best_fit(StreamHandle s, std::size_t n, bool small) {
    StreamState& ss = stream_state(s);
    Block* own = fit(small ? ss.small : ss.large, n);
    Block* any = fit(small ? settled_small : settled_large, n);
    if (own == nullptr) return any;
    if (any == nullptr) return own;
    return any->size < own->size ? any : own;
  }

  // Splits b after n bytes; the new tail shares b's state and is linked after it.
  Block* split(Block* b, std::size_t n) {
    Block* r = arena.make();
    *r = *b;
    r->base = b->base + n;
    r->size = b->size - n;
    r->prev = b;
    r->next = b->next;
    r->pieces = nullptr;
    r->is_chunk = false;
    if (b->next != nullptr) b->next->prev = r;
    b->next = r;
    b->size = n;
    return r;
  }

  // Absorbs b->next into b.
  void absorb_next(Block* b) {
    Block* n = b->next;
    b->size += n->size;
    b->next = n->next;
    if (n->next != nullptr) n->next->prev = b;
    b->free_seq = std::max(b->free_seq, n->free_seq);
    arena.drop(n);
  }

  static bool mergeable(const Block* a, const Block* b) {
    if (a == nullptr || b == nullptr) return false;
    if (a->state != b->state) return false;
    if (a->state == State::hole) return true;
    if (a->state != State::free && a->state != State::stale) return false;
    return a->settled == b->settled && (a->settled || a->stream == b->stream);
  }

  // Merges free block or hole b (not indexed) with mergeable neighbours; returns the result, not indexed.
  Block* coalesce(Block* b) {
    if (mergeable(b->prev, b)) {
      Block* p = b->prev;
      if (p->state == State::free) index_erase(p);
      absorb_next(p);
      b = p;
    }
    if (mergeable(b, b->next)) {
      if (b->next->state == State::free) index_erase(b->next);
      absorb_next(b);
    }
    return b;
  }

  // A free large block or hole, not indexed: merge and index it.
  void settle_large_block(Block* b) {
    b = coalesce(b);
    if (b->state == State::free) index_insert(b);
  }

  // A free piece, not indexed: merge and index it. A chunk left wholly free stays a chunk (the next
  // small request needs no large block) until release_empty_chunks() runs on a slow path.
  void settle_piece(Block* p) { index_insert(coalesce(p)); }

  // A parked block of exactly `size` (a piece if `small`) from stream s's quick cache, or null.
  Block* unpark(StreamState& ss, std::size_t size, bool small) {
    for (std::size_t i = ss.parked_count; i-- > 0;) {
      Block* b = ss.parked[i];
      if (b->size != size || b->small != small) continue;
      ss.parked[i] = ss.parked[--ss.parked_count];
      b->parked = false;
      if (!b->small) large_in_use += b->size;
      return b;
    }
    return nullptr;
  }

  // Frees every parked block for real (merged and indexed); returns how many. mu held, no driver call.
  std::size_t unpark_all() {
    std::size_t parked = 0;
    for (auto& [s, ss] : streams) parked += ss.parked_count;
    headroom(kHeadroom + parked);  // each is indexed
    std::size_t n = 0;
    for (auto& [s, ss] : streams) {
      n += ss.parked_count;
      for (std::size_t i = 0; i < ss.parked_count; ++i) {
        Block* b = ss.parked[i];
        b->parked = false;
        b->state = State::free;
        if (b->small)
          settle_piece(b);
        else
          settle_large_block(b);
      }
      ss.parked_count = 0;
    }
    return n;
  }

  // Gives every wholly free chunk back to the large blocks; returns how many. mu held, no driver call.
  std::size_t release_empty_chunks() {
    std::size_t n = 0;
    std::vector<Block*> empty;
    auto drain = [&](FreeSet& set) {
      empty.clear();
      for (Block* p : set)
        if (p->size == p->chunk->size) empty.push_back(p);
      for (Block* p : empty) {
        set.erase(p);
        Block* c = p->chunk;
        c->state = State::free;
        c->is_chunk = false;
        c->pieces = nullptr;
        c->settled = p->settled;
        c->stream = p->stream;
        c->free_seq = p->free_seq;
        large_in_use -= c->size;
        arena.drop(p);
        settle_large_block(c);
        ++n;
      }
    };
    drain(settled_small);
    for (auto& [s, ss] : streams) drain(ss.small);
    return n;
  }

  // Hands out free block b (indexed) for n bytes on stream s.
  Block* take(Block* b, std::size_t n, StreamHandle s) {
    index_erase(b);
    if (b->size > n) index_insert(split(b, n));
    b->state = State::allocated;
    b->stream = s;
    b->settled = false;
    if (!b->small) large_in_use += b->size;
    return b;
  }

  void account_alloc(Block* b, std::size_t requested) {
    b->requested = requested;
    live.insert(b->base, b);
    st.requested.add(requested);
    st.blocks.add(b->size);
    ++st.allocs;
    emit(EventKind::alloc, b->stream, b->base, requested);
  }

  // Turns large allocated block c into a chunk holding one free piece; returns the piece (not indexed).
  Block* make_chunk(Block* c) {
    c->is_chunk = true;
    Block* p = arena.make();
    p->base = c->base;
    p->size = c->size;
    p->state = State::free;
    p->small = true;
    p->stream = c->stream;
    // The chunk may be a block its stream freed while its work still runs: the free piece waits for
    // that stream's latest free, as the block did, not for an older event.
    p->free_seq = stream_state(c->stream).free_seq;
    p->chunk = c;
    c->pieces = p;
    return p;
  }

  std::int32_t new_page_id(PhysHandle h, std::uint32_t span) {
    std::int32_t id;
    if (!dead_page_ids.empty()) {
      id = dead_page_ids.back();
      dead_page_ids.pop_back();
    } else {
      id = static_cast<std::int32_t>(pages.size());
      pages.emplace_back();
    }
    pages[static_cast<std::size_t>(id)] = Page{.handle = h, .va = 0, .span = span, .aliases = 0, .live = true};
    return id;
  }

  std::int32_t& slot(Segment* s, DevPtr va) { return s->slot_page[(va - s->base) / page]; }
  const Page& page_at(const Segment* s, DevPtr va) const {
    return pages[static_cast<std::size_t>(s->slot_page[(va - s->base) / page])];
  }
  std::size_t bytes_of(const Page& p) const { return p.span * page; }

  // The mapped slots [lo, hi) narrowed to the pages lying wholly inside them (those trim may release).
  std::pair<DevPtr, DevPtr> whole_pages_mapped(const Segment* s, DevPtr lo, DevPtr hi) const {
    if (lo < hi && page_at(s, lo).va != lo) lo = std::min(hi, page_at(s, lo).va + bytes_of(page_at(s, lo)));
    if (lo < hi) {
      const Page& last = page_at(s, hi - page);
      if (last.va + bytes_of(last) != hi) hi = std::max(lo, last.va);
    }
    return {lo, hi};
  }

  // Page boundaries (a segment's base is one).
  DevPtr page_down(const Segment* s, DevPtr a) const { return s->base + (a - s->base) / page * page; }
  DevPtr page_up(const Segment* s, DevPtr a) const { return s->base + (a - s->base + page - 1) / page * page; }
  // The whole pages inside [a, a + n) of segment s: [lo, hi), empty when lo == hi.
  std::pair<DevPtr, DevPtr> whole_pages(const Segment* s, DevPtr a, std::size_t n) const {
    DevPtr lo = page_up(s, a), hi = page_down(s, a + n);
    return {lo, std::max(lo, hi)};
  }
  // Pages that large free block b holds alone: its partial pages at either end are shared with its
  // neighbours, so only these may move (stitch) or go back to the driver (trim).
  std::pair<DevPtr, DevPtr> own_pages(const Block* b) const { return whole_pages(b->segment, b->base, b->size); }
  std::size_t own_page_count(const Block* b) const {
    auto [lo, hi] = own_pages(b);
    return (hi - lo) / page;
  }

  Segment* segment_of(DevPtr va) const {
    for (const auto& s : segments)
      if (va >= s->base && va < s->base + s->size) return s.get();
    return nullptr;
  }

  // ---- settling: make what streams freed usable by any stream once their work completed ----

  // Settles what streams freed: records an event on each stream with unsettled blocks (every known
  // stream when `all`), then queries it or, when `wait`, waits for it.
  void settle(bool wait, bool all = false);
  // Settles stream state ss's frees up to sequence number `upto`, whose work has completed. mu held.
  void settle_stream(StreamState& ss, std::uint64_t upto);
  // Forgets the state of destroyed stream `ghost` once nothing waits on its work (no unsettled free, no
  // stale slot); returns its event for the caller to destroy once mu is released (0: kept, or none).
  // mu held.
  EventHandle drop_retired(StreamHandle ghost);
  // Whether the work before stale block b's free has completed, so that its slots may be unmapped.
  bool stale_done(const Block* b) {
    return b->settled || b->free_seq <= stream_state(b->stream).completed_seq;
  }
  // Unmaps the stale slots whose work has completed; they become holes. may_wait: settle every stream
  // first (waiting for its work); else only slots already known done go.
  void collect_stale(bool may_wait = true);
  bool has_stale = false;  // a stitch left stale slots since the last collect_stale()

  // ---- large requests ----

  // The free large block to hand out for q on stream s, or null: the best fit, and for a new page-long
  // chunk the smallest block holding a whole page (page-aligned, so that a long-lived chunk never pins
  // a neighbour's partial page).
  Block* fit_large(StreamHandle s, const Request& q) {
    if (!q.aligned) return best_fit(s, q.bytes, false);
    const std::size_t want = q.bytes / page;
    Block* best = nullptr;
    StreamState& ss = stream_state(s);
    for (FreeSet* set : {&ss.large, &settled_large}) {
      Block probe;
      probe.size = q.bytes;
      int scanned = 0;
      for (auto it = set->lower_bound(&probe); it != set->end(); ++it) {
        if (best != nullptr && (*it)->size >= best->size) break;
        if (own_page_count(*it) >= want) {
          best = *it;
          break;
        }
        if (++scanned == 32) {  // a block one page longer always holds enough
          probe.size = q.bytes + page;
          it = set->lower_bound(&probe);
          if (it != set->end() && (best == nullptr || (*it)->size < best->size)) best = *it;
          break;
        }
      }
    }
    return best;
  }
  // Hands out free large block b (indexed) for q on stream s; an aligned request starts at b's first
  // whole page.
  DevPtr take_large(Block* b, const Request& q, StreamHandle s) {
    if (q.aligned) {
      DevPtr at = own_pages(b).first;
      if (b->base < at) {
        index_erase(b);
        Block* r = split(b, at - b->base);
        index_insert(b);
        index_insert(r);
        b = r;
      }
    }
    return hand_out(take(b, q.bytes, s), q);
  }

  // ---- the slow path ----

  // mu held: accounts large allocated block b for q (carving a piece when q asks for one).
  DevPtr hand_out(Block* b, const Request& q) {
    if (q.piece != 0) {
      b = make_chunk(b);
      if (b->size > q.piece) index_insert(split(b, q.piece));
      b->state = State::allocated;
    }
    account_alloc(b, q.requested);
    return b->base;
  }
  Status free(DevPtr ptr, const StreamHandle* stream);  // stream null: the block's own
  Status allocate_large(const Request& q, StreamHandle s, DevPtr* out);
  Status stitch(const Request& q, StreamHandle s, DevPtr* out);
  using Prepared = pool::Prepared;
  static constexpr std::size_t kUnknown = ~std::size_t{0};  // device_free not queried yet
  Prepared prepare(std::size_t n, bool aligned, StreamHandle s, bool may_wait, std::size_t device_free, Plan* plan);
  bool find_window(std::size_t n, bool aligned, StreamHandle s, Plan* plan);
  Block* lendable(std::size_t n, StreamHandle s, const Plan& plan);
  // Makes the window's first `plan.shadow` bytes (from block b, at the window's start) the shadow of
  // the lent tail. mu held.
  void make_shadow(Plan& plan, Block* b) {
    split(b, plan.shadow);
    b->state = State::shadow;
    b->partner = plan.lent;
    plan.lent->state = State::lent;
    plan.lent->partner = b;
    ++lent_count;
  }
  std::size_t lent_count = 0;  // shadow blocks
  // Unmaps the alias slots whose window part is free and settled and gives their tails back (trim, and
  // the slow path). grow_mu held.
  void return_lent();
  Status execute(Plan& plan);
  Status execute_fills(Plan& plan);  // execute() but for a driver's std::bad_alloc
  Status finish(Plan& plan, Status result, StreamHandle s, const Request& q, DevPtr* out);
  Status add_segment(std::size_t n);
  void trim(std::size_t keep, bool may_wait = true);  // grow_mu held (Allocator::trim)

  std::string validate() const;
};

}  // namespace glake::pool
