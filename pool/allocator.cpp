// pool/allocator.cpp: the caching, stitching allocator: the hot path, settling, stitching, trim.
// Its state and locks are described in allocator_impl.h.
//
// Invariants (validate() checks them): blocks of a segment are contiguous and cover it; holes, stale
// and quarantined blocks and chunks are whole pages, and no page lies under both one of those and
// another block; stale and quarantined blocks are whole mappings; a slot is mapped iff it is not under
// a hole; every live page is owned by the `span` consecutive slots from its first (under allocated,
// free or quarantined blocks), or is spare, and is also mapped at as many stale mappings as it counts
// aliases; no two neighbouring blocks that could merge; every free block is in
// exactly its index, every parked one in its stream's quick cache; every allocated user block is in the
// address map; the pieces of a chunk cover it; the statistics match the blocks.
#include "pool/allocator.h"

#include <unistd.h>

#include <chrono>
#include <iterator>

#include "pool/allocator_impl.h"

namespace glake::pool {

namespace {

constexpr std::size_t kSmallUnit = 512;
// A large request that rounding up to whole pages would grow by at most 1/kAlignedWaste gets whole pages.
constexpr std::size_t kAlignedWaste = 16;
constexpr std::size_t kMaxRequest = std::size_t{1} << 48;  // beyond any device: out_of_memory at once

std::size_t round_up(std::size_t n, std::size_t unit) { return (n + unit - 1) / unit * unit; }

}  // namespace

// ------------------------------------------------------------------------------------------------
// Settling

void Allocator::Impl::settle(bool wait, bool all) {
  struct Todo {
    StreamHandle stream;
    EventHandle event;
    std::uint64_t seq;
    bool record;
    bool recorded;
    bool done;
    bool synced;  // no event could be recorded on it: the stream itself was waited for
    bool retired;
    bool pending;  // frees whose work is not known to have completed
  };
  std::vector<Todo> todo;
  std::vector<EventHandle> dropped;
  {
    std::lock_guard lock(mu);
    for (auto& [s, ss] : streams) {
      if (!all && ss.large.empty() && ss.small.empty()) continue;
      todo.push_back({s, ss.event, ss.free_seq, ss.event == 0 || ss.event_seq < ss.free_seq, false, false, false,
                      ss.retired, ss.completed_seq < ss.free_seq});
    }
  }
  // Host memory before any event is made: an event dropped below is never lost to a failed push_back.
  dropped.reserve(todo.size());
  for (Todo& t : todo) {
    if (t.event == 0 && drv.event_create(&t.event) != Status::ok) t.event = 0;
    // A destroyed stream gets no new record; a capturing one neither (it would join the user's graph).
    bool capturing = false;
    if (t.record && (t.retired || drv.stream_is_capturing(t.stream, &capturing) != Status::ok || capturing))
      t.record = false;
    if (t.record) {
      if (t.event == 0 || drv.event_record(t.event, t.stream) != Status::ok) {
        // No event of the pool's context can be recorded on it (a stream of another context): when
        // waiting anyway, wait for the stream itself.
        if (wait && t.pending) t.synced = drv.stream_synchronize(t.stream) == Status::ok;
        continue;
      }
      t.recorded = true;
    }
    if (t.event == 0) continue;
    t.done = (wait ? drv.event_synchronize(t.event) : drv.event_query(t.event)) == Status::ok;
  }
  {
    std::lock_guard lock(mu);
    // The events first, then the settling (settle_stream() may run out of host memory: every event
    // is kept by then), then the states of destroyed streams dropped (nothing allocates after).
    for (const Todo& t : todo) {
      StreamState& ss = stream_state(t.stream);
      ss.event = t.event;
      if (t.recorded) ss.event_seq = t.seq;
    }
    for (const Todo& t : todo) {
      StreamState& ss = stream_state(t.stream);
      if (t.synced)
        settle_stream(ss, t.seq);
      else if (t.done)
        settle_stream(ss, ss.event_seq);
    }
    for (const Todo& t : todo)
      if (t.retired)
        if (EventHandle e = drop_retired(t.stream)) dropped.push_back(e);
  }
  for (EventHandle e : dropped) drv.event_destroy(e);
}

void Allocator::Impl::settle_stream(StreamState& ss, std::uint64_t upto) {
  std::vector<Block*> ready;
  ready.reserve(ss.large.size() + ss.small.size());  // host memory first: out of it, nothing changed
  ss.completed_seq = std::max(ss.completed_seq, upto);
  for (Block* b : ss.large)
    if (b->free_seq <= upto) ready.push_back(b);
  for (Block* b : ss.small)
    if (b->free_seq <= upto) ready.push_back(b);
  for (Block* b : ready) {
    // b may have been merged into an earlier block of this list: merging only joins indexed
    // neighbours, and each is erased from its set first, so check it is still indexed.
    FreeSet& set = b->small ? ss.small : ss.large;
    if (set.erase(b) == 0) continue;
    b->settled = true;
    if (b->small)
      settle_piece(b);
    else
      settle_large_block(b);
  }
}

// ------------------------------------------------------------------------------------------------
// The slow path: stitch a window of the virtual space together from free pages.

Status Allocator::Impl::add_segment(std::size_t n) {
  std::size_t size = cfg.va_reserve != 0 ? cfg.va_reserve : 2 * total_device;
  size = round_up(std::max({size, n, page}), page);
  auto seg = std::make_unique<Segment>();  // host memory first: out of it, nothing is reserved
  seg->slot_page.assign(size / page, -1);
  DevPtr va = 0;
  Status s = drv.reserve(size, &va);
  if (s != Status::ok) return s;
  seg->base = va;
  seg->size = size;
  std::lock_guard lock(mu);
  try {
    headroom();
    segments.reserve(segments.size() + 1);
  } catch (...) {
    drv.free_reserve(va, size);
    throw;
  }
  Block* b = arena.make();
  b->base = va;
  b->size = size;
  b->state = State::hole;
  b->segment = seg.get();
  seg->head = b;
  segments.push_back(std::move(seg));
  return Status::ok;
}

// The window of n bytes, inside one run of holes and free blocks usable by stream s, that needs the
// fewest pages filled; ties go to the lowest address. Holes are whole pages, free blocks need not be:
// a window starts at a block's start, or ends at a free block's end or the run's end (moved down to a
// page boundary when that would start it inside a hole). An aligned window starts on a page boundary.
// mu held.
bool Allocator::Impl::find_window(std::size_t n, bool aligned, StreamHandle s, Plan* plan) {
  auto usable = [&](const Block* b) {
    return b->state == State::hole || (b->state == State::free && (b->settled || b->stream == s));
  };
  bool found = false;
  std::vector<const Block*> run;
  std::vector<std::size_t> holes_before;  // hole bytes in the run before each block
  for (const auto& seg : segments) {
    for (const Block* b = seg->head; b != nullptr;) {
      if (!usable(b)) {
        b = b->next;
        continue;
      }
      run.clear();
      holes_before.clear();
      std::size_t hole_total = 0;
      for (; b != nullptr && usable(b); b = b->next) {
        run.push_back(b);
        holes_before.push_back(hole_total);
        if (b->state == State::hole) hole_total += b->size;
      }
      DevPtr lo = run.front()->base, hi = run.back()->base + run.back()->size;
      if (hi - lo < n) continue;
      auto at = [&](DevPtr x) {  // the run block holding x (lo <= x < hi)
        auto it = std::upper_bound(run.begin(), run.end(), x, [](DevPtr v, const Block* r) { return v < r->base; });
        return static_cast<std::size_t>(it - run.begin()) - 1;
      };
      auto holes_below = [&](DevPtr x) {  // hole bytes in [lo, x)
        if (x >= hi) return hole_total;
        std::size_t i = at(x);
        return holes_before[i] + (run[i]->state == State::hole ? x - run[i]->base : 0);
      };
      auto consider = [&](DevPtr x) {
        if (x < lo || x >= hi) return;
        if (aligned || run[at(x)]->state == State::hole) {
          DevPtr down = page_down(seg.get(), x);
          x = down >= lo ? down : page_up(seg.get(), x);
        }
        if (x + n > hi) return;
        // Holes are whole pages: only the last one can be partly inside the window, and its page is filled whole.
        std::size_t holes = (holes_below(x + n) - holes_below(x) + page - 1) / page;
        if (!found || holes < plan->holes || (holes == plan->holes && x < plan->start)) {
          found = true;
          plan->segment = seg.get();
          plan->start = x;
          plan->holes = holes;
        }
      };
      for (const Block* r : run) {
        consider(r->base);
        if (r->state == State::free && r->base + r->size >= lo + n) consider(r->base + r->size - n);
      }
      consider(hi - n);
    }
  }
  return found;
}

// The free tail to lend to a window of n bytes that find_window() placed at the start of a hole: the
// smallest free block usable by stream s that ends a one-granule page it shares with a block before
// it and is at least as long as what the window would leave unused of its last page; null if none
// (or the window is not inside one hole, or fills its last page). mu held.
Block* Allocator::Impl::lendable(std::size_t n, StreamHandle s, const Plan& plan) {
  const std::size_t used_last = n % page;
  if (!cfg.stitch || !cfg.lend || used_last == 0) return nullptr;
  const Block* h = plan.segment->head;
  while (h->base + h->size <= plan.start) h = h->next;
  if (h->state != State::hole || h->base + h->size < plan.start + n + page) return nullptr;
  Block* best = nullptr;
  for (FreeSet* set : {&stream_state(s).large, &settled_large}) {
    Block probe;
    probe.size = used_last;
    int scanned = 0;
    for (auto it = set->lower_bound(&probe); it != set->end() && (*it)->size < page && ++scanned <= 64; ++it) {
      Block* b = *it;
      if (best != nullptr && b->size >= best->size) break;
      const DevPtr end = b->base + b->size, home = page_down(b->segment, b->base);
      if (end != home + page || b->base == home) continue;
      const Page& pg = page_at(b->segment, home);
      if (pg.span != 1 || pg.va != home) continue;
      best = b;
      break;
    }
  }
  return best;
}

Allocator::Impl::Prepared Allocator::Impl::prepare(std::size_t n, bool aligned, StreamHandle s, bool may_wait,
                                                   std::size_t device_free, Plan* plan) {
  // Never servable: fail before reserving address space for it, which is kept until the pool goes.
  if (n > largest_possible) return Prepared::no_memory;
  std::lock_guard lock(mu);
  if (!find_window(n, aligned, s, plan)) return Prepared::need_window;
  StreamState& own = stream_state(s);
  // A window inside a hole whose last page it would leave partly empty begins with a lent tail instead
  // (block.h): the window then needs one page fewer.
  Block* tail = lendable(n, s, *plan);
  const std::size_t shadow = tail != nullptr ? page - tail->size : 0;
  if (tail != nullptr) plan->holes = (shadow + n + page - 1) / page;
  DevPtr lo = plan->start, hi = plan->start + shadow + n;
  std::size_t sources = 0;
  for (std::int32_t id : spare) sources += pages[static_cast<std::size_t>(id)].span;
  if (cfg.stitch) {
    auto movable = [&](const Block* b, DevPtr from, DevPtr to) {  // granules of whole pages of b in [from, to)
      auto [wl, wh] = whole_pages(b->segment, from, to - from);
      auto [l, h] = whole_pages_mapped(b->segment, wl, wh);
      return (h - l) / page;
    };
    for (Block* b : settled_large) sources += movable(b, b->base, b->base + b->size);
    for (Block* b : own.large) sources += movable(b, b->base, b->base + b->size);
    // Free blocks the window cuts keep only the pages outside it.
    for (Block* b = plan->segment->head; b != nullptr; b = b->next) {
      if (b->state != State::free || !(b->settled || b->stream == s)) continue;
      if (b->base >= hi || b->base + b->size <= lo) continue;
      sources -= movable(b, b->base, b->base + b->size);
      if (b->base < lo) sources += movable(b, b->base, lo);
      if (b->base + b->size > hi) sources += movable(b, hi, b->base + b->size);
    }
  }
  // Whether the pool may create `creates` granules now, else what to do first.
  auto may_create = [&](std::size_t creates) {
    if (creates > 0 && may_wait && cfg.stitch) {
      // Other streams freed memory that is not settled yet: wait for their work rather than grow.
      for (auto& [other, ss] : streams)
        if (other != s && !ss.large.empty()) return Prepared::need_wait;
    }
    if (cfg.limit != 0 && st.physical.current + creates * page > cfg.limit) return Prepared::no_memory;
    if (creates > 0 && device_free == kUnknown) return Prepared::need_device_free;  // asked only to grow
    if (creates * page > device_free) return Prepared::no_memory;
    return Prepared::ready;
  };
  // Fail before touching anything when the device cannot hold what would be created (a huge request
  // would otherwise create pages until the driver refuses, and leave them all cached). Exact for
  // one-granule pages; a page of several granules may fit no hole left (checked again below).
  const std::size_t fills = plan->holes - (tail != nullptr ? 1 : 0);
  const std::size_t estimate = fills > sources ? fills - sources : 0;
  if (Prepared p = may_create(estimate); p != Prepared::ready) return p;

  // Host memory for all that follows, and for finish(), taken before anything changes: the window's
  // blocks W, the pages to fill H (a fill each at most), the free blocks that may give pages S.
  Block* b = plan->segment->head;
  while (b->base + b->size <= lo) b = b->next;
  std::size_t window_blocks = 0;
  for (const Block* w = b; w != nullptr && w->base < hi; w = w->next) ++window_blocks;
  const std::size_t candidates = std::min(plan->holes, settled_large.size() + own.large.size());
  const std::size_t blocks = 16 + window_blocks + 4 * candidates + 2 * plan->holes;
  headroom(blocks);
  plan->window.reserve(window_blocks);
  plan->window_state.reserve(window_blocks);
  plan->window_saved.reserve(window_blocks);
  std::vector<DevPtr> dsts;
  dsts.reserve(plan->holes);
  plan->fills.reserve(plan->holes);
  std::vector<Block*> from;
  if (cfg.stitch) from.reserve(settled_large.size() + own.large.size());
  plan->sources.reserve(candidates);
  spare.reserve(spare.size() + plan->holes);  // finish() gives back what it did not use
  pages.reserve(pages.size() + plan->holes);  // and records what it created
  plan->promised = blocks;
  promised += blocks;

  // Mark the window busy, splitting the blocks at its edges (a hole at the page boundary after the end).
  if (b->base < lo) {
    if (b->state == State::free) index_erase(b);
    Block* r = split(b, lo - b->base);
    if (b->state == State::free) index_insert(b);
    b = r;
  }
  for (; b != nullptr && b->base < hi; b = b->next) {
    if (b->state == State::free) index_erase(b);
    if (b->base + b->size > hi) {
      DevPtr cut = b->state == State::hole ? page_up(plan->segment, hi) : hi;
      if (b->base + b->size > cut) {
        Block* r = split(b, cut - b->base);
        if (r->state == State::free) index_insert(r);
      }
    }
    plan->window.push_back(b);
    plan->window_state.push_back(b->state);
    plan->window_saved.push_back(*b);
    b->state = State::busy;
  }

  // Where each hole's page comes from: spare pages, then pages of the smallest free blocks this stream
  // may use (taken from their tail end; their old slots stay mapped, stale), then new ones.
  for (std::size_t i = 0; i < plan->window.size(); ++i) {
    const Block* w = plan->window[i];
    if (plan->window_state[i] == State::hole)
      for (DevPtr a = w->base; a < w->base + w->size; a += page) dsts.push_back(a);
  }
  // A page of `span` granules fills the holes from dsts[k] on only if that many are consecutive there.
  auto fits = [&](std::size_t k, std::uint32_t span) {
    return k + span <= dsts.size() && dsts[k + span - 1] == dsts[k] + (span - 1) * page;
  };
  std::size_t k = 0;
  if (tail != nullptr) {
    index_erase(tail);
    plan->lent = tail;
    plan->lent_saved = *tail;
    plan->shadow = shadow;
    tail->state = State::busy;
    const DevPtr home = page_down(tail->segment, tail->base);
    const std::int32_t id = slot(tail->segment, home);
    plan->fills.push_back({Fill::Kind::lend, dsts[0], 1, id, pages[static_cast<std::size_t>(id)].handle, home, tail, 0});
    k = 1;
  }
  for (std::size_t i = spare.size(); i-- > 0 && k < dsts.size();) {
    const std::int32_t id = spare[i];
    const std::uint32_t span = pages[static_cast<std::size_t>(id)].span;
    if (!fits(k, span)) continue;
    spare.erase(spare.begin() + static_cast<std::ptrdiff_t>(i));
    plan->fills.push_back({Fill::Kind::spare, dsts[k], span, id, pages[static_cast<std::size_t>(id)].handle, 0, nullptr, 0});
    k += span;
  }
  if (cfg.stitch && k < dsts.size()) {
    // The smallest first (both sets are in size order), skipping those that hold no whole page.
    std::merge(settled_large.begin(), settled_large.end(), own.large.begin(), own.large.end(),
               std::back_inserter(from), BySizeThenAddress{});
    for (Block* src : from) {
      if (k == dsts.size()) break;
      auto [olo, ohi] = own_pages(src);
      auto [plo, phi] = whole_pages_mapped(src->segment, olo, ohi);
      // From the tail end, the whole pages that the holes left can take, then those of them that fit
      // where they would go (a page of several granules needs as many consecutive holes).
      DevPtr take_from = phi;
      for (std::size_t need = dsts.size() - k; take_from > plo;) {
        const Page& pg = page_at(src->segment, take_from - page);
        if (pg.span > need) break;
        need -= pg.span;
        take_from = pg.va;
      }
      DevPtr take_to = take_from;
      for (std::size_t kk = k; take_to < phi;) {
        const std::uint32_t span = page_at(src->segment, take_to).span;
        if (!fits(kk, span)) break;
        kk += span;
        take_to += span * page;
      }
      if (take_to == take_from) continue;
      index_erase(src);
      if (src->base < take_from) {  // the head stays free
        Block* t = split(src, take_from - src->base);
        index_insert(src);
        src = t;
      }
      if (src->base + src->size > take_to) index_insert(split(src, take_to - src->base));  // so does the rest
      src->state = State::busy;
      plan->sources.push_back(src);
      for (DevPtr a = src->base; a < src->base + src->size;) {
        const std::int32_t id = slot(src->segment, a);
        const Page& pg = pages[static_cast<std::size_t>(id)];
        plan->fills.push_back({Fill::Kind::move, dsts[k], pg.span, id, pg.handle, a, src, 0});
        k += pg.span;
        a += bytes_of(pg);
      }
    }
  }
  // New pages: each run of consecutive holes left becomes allocations of near-equal size, at most
  // max_create each.
  const std::size_t max_span = std::max<std::size_t>(1, cfg.max_create / page);
  while (k < dsts.size()) {
    std::size_t run = 1;
    while (k + run < dsts.size() && dsts[k + run] == dsts[k] + run * page) ++run;
    const std::size_t parts = (run + max_span - 1) / max_span;
    for (std::size_t i = 0; i < parts; ++i) {
      const auto span = static_cast<std::uint32_t>(run * (i + 1) / parts - run * i / parts);
      plan->fills.push_back({Fill::Kind::create, dsts[k], span, -1, 0, 0, nullptr, 0});
      k += span;
    }
  }
  std::size_t creates = 0;
  for (const Fill& f : plan->fills)
    if (f.kind == Fill::Kind::create) creates += f.span;
  if (creates > estimate) {
    plan->then = may_create(creates);
    if (plan->then != Prepared::ready) return Prepared::undo;
  }
  return Prepared::ready;
}

// Driver calls, no lock: move, create and map pages into the window's holes, then grant access per run
// of consecutive new mappings. Stops at the first failure; finish() makes the pool whole again and
// emits the create and map events (each fill's stage says what was done).
Status Allocator::Impl::execute(Plan& plan) {
  try {
    return execute_fills(plan);
  } catch (const std::bad_alloc&) {  // a driver out of host memory: each fill's stage says what was done
    return Status::out_of_memory;
  }
}

Status Allocator::Impl::execute_fills(Plan& plan) {
  std::size_t mapped = 0;
  Status r = Status::ok;
  for (Fill& f : plan.fills) {
    if (f.kind == Fill::Kind::create) {
      if ((r = drv.create(f.span * page, &f.handle)) != Status::ok) break;
      f.stage = 1;
    }
    if ((r = drv.map(f.dst, f.span * page, f.handle, 0)) != Status::ok) break;
    f.stage = 2;
    ++mapped;
  }
  for (std::size_t i = 0; i < mapped;) {
    std::size_t j = i + 1;
    while (j < mapped && plan.fills[j].dst == plan.fills[j - 1].dst + plan.fills[j - 1].span * page) ++j;
    DevPtr base = plan.fills[i].dst;
    Status a = drv.set_access(base, plan.fills[j - 1].dst + plan.fills[j - 1].span * page - base);
    if (a != Status::ok) {
      // Undo every mapping not yet accessible; a page that cannot be unmapped stays quarantined.
      for (std::size_t u = i; u < mapped; ++u)
        if (drv.unmap(plan.fills[u].dst, plan.fills[u].span * page) == Status::ok)
          plan.fills[u].stage = plan.fills[u].kind == Fill::Kind::create ? 1 : 0;
      return a;
    }
    for (std::size_t u = i; u < j; ++u) plan.fills[u].stage = 3;
    i = j;
  }
  return r;
}

Status Allocator::Impl::finish(Plan& plan, Status result, StreamHandle s, const Request& q, DevPtr* out) {
  std::lock_guard lock(mu);
  const Promise release{this, plan.promised};  // what prepare() set aside is used by now
  Segment* seg = plan.segment;
  const DevPtr end = plan.window.back()->base + plan.window.back()->size;
  std::size_t moved = 0;
  DevPtr done_upto = plan.start;  // every hole slot below is filled and accessible
  bool complete = true;
  // The fills in execute()'s order, each page's create before its map, all before the stitch and
  // alloc events below. A mapping undone after set_access failed is not reported (nor counted).
  for (Fill& f : plan.fills) {
    const std::size_t bytes = f.span * page;
    if (f.kind == Fill::Kind::create && f.stage >= 1) {
      f.page = new_page_id(f.handle, f.span);
      st.physical.add(bytes);
      ++st.creates;
      emit(EventKind::create, 0, 0, bytes);
    }
    if (f.stage >= 2) {
      Page& pg = pages[static_cast<std::size_t>(f.page)];
      for (DevPtr a = f.dst; a < f.dst + bytes; a += page) slot(seg, a) = f.page;
      st.mapped.add(bytes);
      ++st.maps;
      emit(EventKind::map, 0, f.dst, bytes);
      // A moved page stays mapped at its old slot too; a quarantined one stays owned there. A lent
      // tail's page stays owned at home; the window maps it a second time.
      const bool second = f.kind == Fill::Kind::move || f.kind == Fill::Kind::lend;
      if (second) ++pg.aliases;
      if (!second || (f.kind == Fill::Kind::move && f.stage == 3)) pg.va = f.dst;
      if (second && f.stage == 3) ++moved;
    }
    if (f.stage == 1 || (f.kind == Fill::Kind::spare && f.stage == 0)) spare.push_back(f.page);
    if (f.stage == 3 && complete) done_upto = f.dst + bytes;
    if (f.stage < 3) complete = false;
  }
  // Sources: the slots whose pages moved (a prefix of each) are stale now; the rest stays free.
  for (Block* src : plan.sources) {
    std::size_t gone = 0;  // bytes
    for (const Fill& f : plan.fills)
      if (f.source == src && f.stage == 3) gone += f.span * page;
    Block* rest = src;
    if (gone > 0) {
      rest = gone < src->size ? split(src, gone) : nullptr;
      src->state = State::stale;
      has_stale = true;
      settle_large_block(src);
    }
    if (rest != nullptr) {
      rest->state = State::free;
      settle_large_block(rest);
    }
  }
  if (complete) {
    Block* b = plan.window.front();
    while (b->next != nullptr && b->next->base < end) absorb_next(b);
    if (plan.lent != nullptr) {
      make_shadow(plan, b);
      b = b->next;
    }
    b->state = State::allocated;
    b->stream = s;
    b->settled = false;
    if (b->size > q.bytes) {
      // The rest of the window's last page: free, on this stream (the page may have come from its
      // unsettled blocks, whose work may still use it at the old address).
      Block* tail = split(b, q.bytes);
      tail->state = State::free;
      tail->free_seq = stream_state(s).free_seq;
      settle_large_block(tail);
    }
    large_in_use += b->size;
    if (moved > 0) {
      ++st.stitches;
      emit(EventKind::stitch, s, b->base, b->size, moved);
    }
    *out = hand_out(b, q);
    return Status::ok;
  }
  // Failed: free blocks of the window as they were, filled holes as free blocks of this stream (their
  // pages may come from its unsettled blocks), the rest holes; a page left mapped without access is
  // quarantined.
  for (std::size_t i = 0; i < plan.window.size(); ++i) {
    Block* w = plan.window[i];
    if (plan.window_state[i] == State::free) {
      const Block& saved = plan.window_saved[i];
      w->state = State::free;
      w->settled = saved.settled;
      w->stream = saved.stream;
      w->free_seq = saved.free_seq;
      continue;
    }
    w->state = State::hole;
    if (w->base < done_upto && done_upto < w->base + w->size) split(w, done_upto - w->base);
    if (w->base + w->size <= done_upto) {
      w->state = State::free;
      w->settled = false;
      w->stream = s;
      w->free_seq = stream_state(s).free_seq;
    }
  }
  for (const Fill& f : plan.fills) {
    if (f.stage != 2) continue;
    Block* b = plan.window.front();
    while (!(b->base <= f.dst && f.dst < b->base + b->size)) b = b->next;
    if (b->base < f.dst) b = split(b, f.dst - b->base);
    if (b->size > f.span * page) split(b, f.span * page);
    b->state = State::quarantined;
    quarantined_bytes += b->size;
  }
  // A lent tail whose alias slot is mapped and accessible stays lent (the window's first block is
  // free now, past its shadow); otherwise it is free again at home.
  if (plan.lent != nullptr) {
    if (plan.fills.front().stage == 3) {
      make_shadow(plan, plan.window.front());
    } else {
      Block* t = plan.lent;
      t->state = State::free;
      t->settled = plan.lent_saved.settled;
      t->stream = plan.lent_saved.stream;
      t->free_seq = plan.lent_saved.free_seq;
      settle_large_block(t);
    }
  }
  // Merge and index what the window left behind (its blocks are not indexed; neighbours are).
  for (Block* b = plan.window.front(); b != nullptr && b->base < end; b = b->next) {
    if (b->state != State::free && b->state != State::hole) continue;
    b = coalesce(b);
    if (b->state == State::free) index_insert(b);
  }
  return result == Status::ok ? Status::unknown : result;
}

void Allocator::Impl::collect_stale(bool may_wait) {
  if (may_wait) settle(true, true);
  std::vector<Block*> blocks;
  std::vector<std::size_t> gone;  // bytes unmapped of each
  std::size_t blocks_promised = 0;
  {
    std::lock_guard lock(mu);
    for (const auto& seg : segments)
      for (Block* b = seg->head; b != nullptr; b = b->next)
        if (b->state == State::stale && stale_done(b)) blocks.push_back(b);
    gone.assign(blocks.size(), 0);
    blocks_promised = 2 * blocks.size();  // a split and two blocks indexed, each, at the end
    headroom(kHeadroom + blocks_promised);
    promised += blocks_promised;
    for (Block* b : blocks) b->state = State::busy;
  }
  // A stale block is whole mappings (a stitch moves pages whole): unmap each, in address order.
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    for (DevPtr a = blocks[i]->base; a < blocks[i]->base + blocks[i]->size;) {
      std::size_t n;
      {
        std::lock_guard lock(mu);
        n = bytes_of(page_at(blocks[i]->segment, a));
      }
      if (drv.unmap(a, n) != Status::ok) break;
      gone[i] += n;
      a += n;
    }
  }
  std::lock_guard lock(mu);
  const Promise release{this, blocks_promised};
  has_stale = false;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    Block* b = blocks[i];
    for (DevPtr a = b->base; a < b->base + gone[i];) {
      Page& pg = pages[static_cast<std::size_t>(slot(b->segment, a))];
      const std::size_t n = bytes_of(pg);
      --pg.aliases;
      for (DevPtr x = a; x < a + n; x += page) slot(b->segment, x) = -1;
      st.mapped.sub(n);
      ++st.unmaps;
      emit(EventKind::unmap, 0, a, n);
      a += n;
    }
    Block* rest = gone[i] < b->size ? (gone[i] > 0 ? split(b, gone[i]) : b) : nullptr;
    if (rest != nullptr) {
      rest->state = State::stale;
      has_stale = true;
    }
    if (gone[i] > 0) {
      b->state = State::hole;
      settle_large_block(b);
    }
    if (rest != nullptr) settle_large_block(rest);
  }
  for (const auto& seg : segments)
    for (const Block* b = seg->head; b != nullptr && !has_stale; b = b->next) has_stale = b->state == State::stale;
}

void Allocator::Impl::return_lent() {
  std::vector<Block*> shadows;
  std::size_t blocks_promised = 0;
  {
    std::lock_guard lock(mu);
    for (const auto& seg : segments)
      for (Block* b = seg->head; b != nullptr; b = b->next) {
        const Block* w = b->next;  // the window's part of the alias slot
        if (b->state == State::shadow && w->state == State::free && w->settled && w->base + w->size >= b->base + page)
          shadows.push_back(b);
      }
    // Host memory first: a split and a block indexed each now, three blocks indexed each below.
    blocks_promised = 3 * shadows.size();
    headroom(kHeadroom + 2 * shadows.size() + blocks_promised);
    promised += blocks_promised;
    for (Block* b : shadows) {
      Block* w = b->next;
      const DevPtr slot_end = b->base + page;
      index_erase(w);
      if (w->base + w->size > slot_end) index_insert(split(w, slot_end - w->base));
      w->state = State::busy;
    }
  }
  for (Block* b : shadows) {
    const bool unmapped = drv.unmap(b->base, page) == Status::ok;
    std::lock_guard lock(mu);
    Block* w = b->next;
    if (!unmapped) {
      w->state = State::free;
      settle_large_block(w);
      continue;
    }
    --pages[static_cast<std::size_t>(slot(b->segment, b->base))].aliases;
    slot(b->segment, b->base) = -1;
    st.mapped.sub(page);
    ++st.unmaps;
    emit(EventKind::unmap, 0, b->base, page);
    Block* t = b->partner;
    --lent_count;
    absorb_next(b);
    b->state = State::hole;
    b->partner = nullptr;
    settle_large_block(b);
    t->state = State::free;
    t->settled = true;
    t->partner = nullptr;
    settle_large_block(t);
  }
  if (blocks_promised > 0) {
    std::lock_guard lock(mu);
    promised -= blocks_promised;
  }
}

Status Allocator::Impl::stitch(const Request& q, StreamHandle s, DevPtr* out) {
  const std::size_t n = q.bytes;
  bool may_wait = true, collected = false;
  std::size_t device_free = kUnknown;
  for (int attempt = 0; attempt < 6; ++attempt) {
    Plan plan;
    Prepared p = prepare(n, q.aligned, s, may_wait, device_free, &plan);
    if (p == Prepared::undo) {
      finish(plan, Status::out_of_memory, s, q, out);  // nothing was done: gives the window and sources back
      p = plan.then;
    }
    switch (p) {
      case Prepared::need_window: {
        if (has_stale && !collected) {
          collect_stale();  // give stale slots back to the address space before reserving more
          collected = true;
          continue;
        }
        Status r = add_segment(n);
        if (r != Status::ok) return r == Status::invalid_value ? Status::out_of_memory : r;
        continue;
      }
      case Prepared::need_wait:
        settle(true);
        may_wait = false;
        continue;
      case Prepared::need_device_free: {
        std::size_t total = 0;
        if (drv.mem_info(&device_free, &total) != Status::ok) device_free = kUnknown - 1;  // unknown: no cap
        continue;
      }
      case Prepared::no_memory:
        return Status::out_of_memory;
      case Prepared::ready:
      case Prepared::undo:
        break;
    }
    Status r = execute(plan);
    return finish(plan, r, s, q, out);
  }
  return Status::out_of_memory;
}

Status Allocator::Impl::allocate_large(const Request& q, StreamHandle s, DevPtr* out) {
  std::lock_guard grow(grow_mu);
  {
    std::lock_guard lock(mu);
    std::size_t freed = unpark_all();  // takes the headroom for what follows too
    if (release_empty_chunks() + freed > 0)
      if (Block* b = fit_large(s, q)) {
        *out = take_large(b, q, s);
        return Status::ok;
      }
  }
  for (int round = 0; round < 2; ++round) {
    settle(round > 0);
    {
      std::lock_guard lock(mu);
      headroom();
      if (Block* b = fit_large(s, q)) {
        *out = take_large(b, q, s);
        return Status::ok;
      }
    }
    // Tails lent to windows whose part of the alias slot is free and settled go home first: there they
    // merge with their neighbours once those are freed, so that their pages can move or go.
    if (lent_count > 0) return_lent();
    Status r = stitch(q, s, out);
    if (r != Status::out_of_memory) return r;
    if (round > 0) {
      // Free pages that no window can use: of several granules, they may fit no hole of any window
      // (and cannot be split); without stitching, no free page moves at all. Give what is cached back
      // to the driver and try once more (as a plain caching allocator empties its cache before
      // failing).
      if (cfg.stitch && cfg.max_create < 2 * page) return r;
      trim(0);
      return stitch(q, s, out);
    }
    // Out of memory: reclaim what every stream freed (waiting for its work), then try once more.
    std::lock_guard lock(mu);
    ++st.reclaims;
    emit(EventKind::reclaim, s, 0, st.physical.current - large_in_use - quarantined_bytes);
  }
  return Status::out_of_memory;
}

// ------------------------------------------------------------------------------------------------
// Public interface

Allocator::Allocator(Driver& driver, Config config)
    : driver_(driver), config_(config), impl_(std::make_unique<Impl>(driver, config)) {
  std::size_t free = 0, total = 0;
  const bool known = driver.mem_info(&free, &total) == Status::ok && total != 0;
  if (known) impl_->largest_possible = total;
  if (impl_->cfg.limit != 0) impl_->largest_possible = std::min(impl_->largest_possible, impl_->cfg.limit);
  if (!known) total = std::size_t{64} << 30;
  impl_->total_device = round_up(total, impl_->page);
  // Small requests must fit a page with room to share it.
  if (impl_->cfg.small_limit > impl_->page / 2) impl_->cfg.small_limit = impl_->page / 2;
  config_ = impl_->cfg;
}

Allocator::~Allocator() {
  Impl& m = *impl_;
  for (auto& seg : m.segments) {
    for (std::size_t i = 0; i < seg->slot_page.size();) {
      const std::int32_t id = seg->slot_page[i];
      const DevPtr a = seg->base + i * m.page;
      // Each mapping whole (the walk lands on every mapping's first slot: mappings lie side by side).
      const std::size_t n = id < 0 ? m.page : m.bytes_of(m.pages[static_cast<std::size_t>(id)]);
      if (id >= 0) m.drv.unmap(a, n);
      i += n / m.page;
    }
    m.drv.free_reserve(seg->base, seg->size);
  }
  for (const Page& p : m.pages)
    if (p.live) m.drv.release(p.handle);
  for (auto& [s, ss] : m.streams)
    if (ss.event != 0) m.drv.event_destroy(ss.event);
}

Status Allocator::allocate(std::size_t size, StreamHandle stream, DevPtr* out) {
  if (out == nullptr) return Status::invalid_value;
  *out = 0;
  if (size == 0) return Status::ok;
  Impl& m = *impl_;
  if (size > kMaxRequest) {
    std::lock_guard lock(m.mu);
    ++m.st.ooms;
    m.emit(EventKind::oom, stream, 0, size);
    return Status::out_of_memory;
  }
  // Placement: small requests are pieces of page-long chunks. A large one whose last page it would
  // mostly fill gets whole pages of its own (kAlignedWaste), which a stitch can later move whole;
  // others start wherever free space does, sharing their end pages with their neighbours, so that
  // tensors of 2.25 or 6.75 MiB do not each waste most of a page (replays: tracer/README.md).
  Request q{round_up(size, kSmallUnit), size, 0, false};
  if (size <= m.cfg.small_limit) {
    q = Request{m.page, size, round_up(size, kSmallUnit), true};
  } else if ((round_up(size, m.page) - q.bytes) * kAlignedWaste <= q.bytes) {
    q = Request{round_up(size, m.page), size, 0, true};
  }
  {
    std::lock_guard lock(m.mu);
    m.headroom();
    if (Block* b = m.unpark(m.stream_state(stream), q.piece != 0 ? q.piece : q.bytes, q.piece != 0)) {
      b->stream = stream;
      m.account_alloc(b, size);
      *out = b->base;
      return Status::ok;
    }
    if (q.piece != 0) {
      if (Block* p = m.best_fit(stream, q.piece, true)) {
        *out = m.hand_out(m.take(p, q.piece, stream), Request{q.piece, size, 0});
        return Status::ok;
      }
    }
    if (Block* b = m.fit_large(stream, q)) {
      *out = m.take_large(b, q, stream);
      return Status::ok;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  Status r = m.allocate_large(q, stream, out);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
  std::lock_guard lock(m.mu);
  ++m.st.slow_allocs;
  m.st.slow_ns += static_cast<std::uint64_t>(ns.count());
  if (r == Status::out_of_memory) {  // other failures are the driver's errors, not out of memory
    ++m.st.ooms;
    m.emit(EventKind::oom, stream, 0, size);
  }
  return r;
}

Status Allocator::free(DevPtr ptr) { return impl_->free(ptr, nullptr); }

Status Allocator::free(DevPtr ptr, StreamHandle stream) { return impl_->free(ptr, &stream); }

Status Allocator::Impl::free(DevPtr ptr, const StreamHandle* on) {
  std::lock_guard lock(mu);
  Block** found = live.find(ptr);
  if (found == nullptr) return Status::invalid_value;
  Block* b = *found;
  const StreamHandle stream = on != nullptr ? *on : b->stream;
  // A destroyed stream's block (forget_stream) whose state has gone: it comes back retired, so that
  // nothing is recorded on the dead handle; the block stays cached, never handed out early.
  if (on == nullptr && (stream & kGhost) != 0 && streams.find(stream) == streams.end())
    stream_state(stream).retired = true;
  headroom();  // and the stream's state, before anything changes
  StreamState& ss = stream_state(stream);
  live.erase(ptr);
  st.requested.sub(b->requested);
  st.blocks.sub(b->size);
  ++st.frees;
  emit(EventKind::free, stream, ptr, b->requested);
  b->stream = stream;
  b->settled = false;
  b->free_seq = ++ss.free_seq;
  b->requested = 0;
  if (!b->small) large_in_use -= b->size;
  // Only pieces are parked: a parked large block would hide pages from best fit and from merging, and
  // replays showed more stitching for it.
  if (b->small && ss.parked_count < StreamState::kParked) {
    b->parked = true;
    ss.parked[ss.parked_count++] = b;
    return Status::ok;
  }
  b->state = State::free;
  if (b->small) {
    settle_piece(b);
  } else {
    settle_large_block(b);
  }
  return Status::ok;
}

bool Allocator::owns(DevPtr ptr) const {
  std::lock_guard lock(impl_->mu);
  return impl_->live.find(ptr) != nullptr;
}

Status Allocator::describe(DevPtr ptr, BlockInfo* info) const {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  const Block* b = nullptr;
  if (Block* const* hit = m.live.find(ptr)) {
    b = *hit;
  } else if (const Segment* seg = m.segment_of(ptr)) {
    const Block* l = seg->head;
    while (l != nullptr && !(ptr >= l->base && ptr < l->base + l->size)) l = l->next;
    if (l != nullptr && l->is_chunk)
      for (l = l->pieces; l != nullptr && !(ptr >= l->base && ptr < l->base + l->size);) l = l->next;
    if (l != nullptr && l->state == State::allocated && !l->is_chunk && !l->parked) b = l;
  }
  if (b == nullptr) return Status::invalid_value;
  info->base = b->base;
  info->size = b->requested;
  info->block_size = b->size;
  info->stream = b->stream;
  info->pages.clear();
  const Segment* seg = (b->small ? b->chunk : b)->segment;
  // The first mapping's first slot: a page of several granules may begin before the block's page; an
  // alias slot (a lent tail's page mapped a second time) is a one-granule mapping of its own.
  const DevPtr down = m.page_down(seg, b->base), end = m.page_up(seg, b->base + b->size);
  const DevPtr first = m.page_at(seg, down).span == 1 ? down : m.page_at(seg, down).va;
  info->offset_in_first_page = b->base - first;
  for (DevPtr a = first; a < end;) {
    const Page& pg = m.page_at(seg, a);
    info->pages.push_back({pg.handle, m.bytes_of(pg)});
    a += m.bytes_of(pg);
  }
  return Status::ok;
}

Status Allocator::export_pages(DevPtr base, const std::vector<PhysPage>& pages, std::size_t first, std::size_t count,
                               int* fds) const {
  Impl& m = *impl_;
  if (first > pages.size() || count > pages.size() - first) return Status::invalid_value;
  std::lock_guard grow(m.grow_mu);  // pages go back to the driver (trim) and move (stitch) only under it
  BlockInfo now;
  if (describe(base, &now) != Status::ok || now.base != base || now.pages != pages) return Status::not_found;
  for (std::size_t i = 0; i < count; ++i) {
    if (const Status s = m.drv.export_fd(pages[first + i].handle, &fds[i]); s != Status::ok) {
      while (i > 0) ::close(fds[--i]);
      return s;
    }
  }
  return Status::ok;
}

void Allocator::forget_stream(StreamHandle stream) {
  Impl& m = *impl_;
  std::lock_guard grow(m.grow_mu);
  // Frees on the stream may still arrive while mu is released around the driver calls below (the
  // stream is destroyed only after this returns): then record again, so that they settle too. A
  // program that keeps freeing on it meanwhile gets a few rounds; what it frees after the last stays
  // cached (never handed out early).
  constexpr int kRounds = 4;
  for (int round = 1;; ++round) {
    EventHandle ev = 0;
    std::uint64_t seq = 0;  // its frees so far
    bool pending = false;
    {
      std::lock_guard lock(m.mu);
      m.unpark_all();
      auto it = m.streams.find(stream);
      if (it == m.streams.end() || it->second.retired) return;
      ev = it->second.event;
      seq = it->second.free_seq;
      pending = it->second.completed_seq < seq;
    }
    // A capturing stream gets neither a record (it would join the user's graph, and its completion
    // would say nothing of the work before the capture) nor a synchronize (it would break the capture):
    // its frees since the last record stay cached, never handed out early.
    bool capturing = false;
    if (pending && m.drv.stream_is_capturing(stream, &capturing) != Status::ok) capturing = true;  // unknown: as if
    const bool record = pending && !capturing;
    if (record && ev == 0 && m.drv.event_create(&ev) != Status::ok) ev = 0;
    const bool recorded = record && ev != 0 && m.drv.event_record(ev, stream) == Status::ok;
    // Without a record its frees could never settle: wait for the stream while it still exists.
    const bool synced = record && !recorded && m.drv.stream_synchronize(stream) == Status::ok;
    EventHandle dropped = 0;
    {
      std::lock_guard lock(m.mu);
      StreamState& cur = m.streams.find(stream)->second;
      cur.event = ev;
      if (recorded) cur.event_seq = seq;
      if (cur.free_seq != seq && round < kRounds) {  // freed on meanwhile: once more
        if (synced) m.settle_stream(cur, seq);
        continue;
      }
      m.unpark_all();  // frees parked meanwhile join the sets, which move with the state
      // Settled before the re-key: out of host memory there, nothing has changed yet (the stream's
      // destroy fails, and the state stays its own), rather than its frees left unsettled for good.
      if (synced || !pending) m.settle_stream(cur, seq);
      m.streams.reserve(m.streams.size() + 1);  // the re-keyed state goes back in without allocating
      // Re-key its state so that a new stream with the same handle starts afresh.
      auto node = m.streams.extract(stream);
      StreamHandle ghost = m.next_ghost++;
      node.key() = ghost;
      StreamState& ss = m.streams.insert(std::move(node)).position->second;
      ss.retired = true;
      m.last_state = nullptr;
      for (FreeSet* set : {&ss.large, &ss.small})
        for (Block* b : *set) b->stream = ghost;  // the sets order by size and address: still ordered
      for (const auto& seg : m.segments)
        for (Block* b = seg->head; b != nullptr; b = b->next)
          if (b->state == State::stale && !b->settled && b->stream == stream) b->stream = ghost;
      // Blocks still allocated on it too: a later free that names no stream (free(ptr)) is then on
      // the dead stream, not on a new stream that got its handle (which would take the block at once).
      m.live.for_each([&](DevPtr, Block* b) {
        if (b->stream == stream) b->stream = ghost;
      });
      dropped = m.drop_retired(ghost);
    }
    if (dropped != 0) m.drv.event_destroy(dropped);
    return;
  }
}

EventHandle Allocator::Impl::drop_retired(StreamHandle ghost) {
  auto it = streams.find(ghost);
  if (it == streams.end() || !it->second.retired || !it->second.large.empty() || !it->second.small.empty())
    return 0;
  for (const auto& seg : segments)
    for (const Block* b = seg->head; b != nullptr; b = b->next)
      if (b->state == State::stale && !b->settled && b->stream == ghost) return 0;
  const EventHandle ev = it->second.event;
  streams.erase(it);
  last_state = nullptr;
  return ev;
}

Status Allocator::refresh_access() {
  Impl& m = *impl_;
  std::lock_guard grow(m.grow_mu);  // no stitch in flight: mappings change only under grow_mu
  std::vector<std::pair<DevPtr, std::size_t>> runs;
  {
    std::lock_guard lock(m.mu);
    for (const auto& seg : m.segments)
      for (std::size_t i = 0; i < seg->slot_page.size();) {
        if (seg->slot_page[i] < 0) {
          ++i;
          continue;
        }
        std::size_t j = i;
        while (j < seg->slot_page.size() && seg->slot_page[j] >= 0) ++j;
        runs.emplace_back(seg->base + i * m.page, (j - i) * m.page);
        i = j;
      }
  }
  Status result = Status::ok;
  for (auto [va, size] : runs)
    if (Status r = m.drv.set_access(va, size); r != Status::ok) result = r;
  return result;
}

void Allocator::trim(std::size_t keep, bool may_wait) {
  std::lock_guard grow(impl_->grow_mu);
  impl_->trim(keep, may_wait);
}

void Allocator::Impl::trim(std::size_t keep, bool may_wait) {
  Impl& m = *this;
  {
    std::lock_guard lock(m.mu);
    m.unpark_all();
  }
  // Waits for every stream's work, so every free block is settled after it; without waiting, the
  // blocks not yet known free stay unsettled and are not released below.
  m.collect_stale(may_wait);
  m.return_lent();
  std::vector<Block*> victims;
  std::vector<std::int32_t> spare;
  std::vector<std::int32_t> kept;
  std::size_t blocks_promised = 0;
  {
    std::lock_guard lock(m.mu);
    m.release_empty_chunks();
    // Host memory for every step below, taken before anything changes: each page id goes to one of
    // these lists at most, each victim is split twice and indexed twice at most, here and at the end.
    std::vector<Block*> order(m.settled_large.rbegin(), m.settled_large.rend());
    spare.reserve(m.spare.size());
    kept.reserve(m.spare.size());
    m.spare.reserve(m.pages.size());
    m.dead_page_ids.reserve(m.pages.size());
    victims.reserve(order.size());
    blocks_promised = 2 * order.size();
    m.headroom(kHeadroom + 2 * blocks_promised);
    m.promised += blocks_promised;
    // A page goes only if at least `keep` bytes stay cached after it (cudaMemPoolTrimTo guarantees
    // its minBytesToKeep): what goes is rounded down to whole pages.
    std::size_t cached = m.st.physical.current - m.large_in_use - m.quarantined_bytes;
    while (!m.spare.empty() && cached > keep &&
           cached - keep >= m.bytes_of(m.pages[static_cast<std::size_t>(m.spare.back())])) {
      spare.push_back(m.spare.back());
      m.spare.pop_back();
      cached -= m.bytes_of(m.pages[static_cast<std::size_t>(spare.back())]);
    }
    // Largest free blocks first: fewer calls for the same bytes. Only the pages a block holds alone and
    // whole go (own_pages, whole_pages_mapped); its partial pages at either end stay.
    for (Block* v : order) {
      if (cached <= keep || cached - keep < m.page) break;
      auto [olo, ohi] = m.own_pages(v);
      auto [plo, phi] = m.whole_pages_mapped(v->segment, olo, ohi);
      if (plo == phi) continue;
      DevPtr from = phi - std::min<std::size_t>(phi - plo, (cached - keep) / m.page * m.page);
      // A page goes whole: one that `from` cuts stays.
      if (const Page& pg = m.page_at(v->segment, from); pg.va != from) from = pg.va + m.bytes_of(pg);
      if (from >= phi) continue;
      m.settled_large.erase(v);
      if (v->base < from) {
        Block* t = m.split(v, from - v->base);
        m.settled_large.insert(v);
        v = t;
      }
      if (v->base + v->size > phi) m.settled_large.insert(m.split(v, phi - v->base));
      v->state = State::busy;
      victims.push_back(v);
      cached -= std::min(cached, v->size);
    }
  }
  // Driver calls without the lock: unmap and release each page, whole.
  for (Block* v : victims) {
    for (DevPtr a = v->base; a < v->base + v->size;) {
      PhysHandle h;
      std::uint32_t aliases;
      std::size_t n;
      {
        std::lock_guard lock(m.mu);
        const Page& pg = m.page_at(v->segment, a);
        h = pg.handle;
        aliases = pg.aliases;
        n = m.bytes_of(pg);
      }
      if (m.drv.unmap(a, n) != Status::ok) break;
      const bool released = aliases == 0 && m.drv.release(h) == Status::ok;
      std::lock_guard lock(m.mu);
      const std::int32_t id = m.slot(v->segment, a);
      for (DevPtr x = a; x < a + n; x += m.page) m.slot(v->segment, x) = -1;
      m.st.mapped.sub(n);
      ++m.st.unmaps;
      m.emit(EventKind::unmap, 0, a, n);
      a += n;
      if (!released) {
        // Unmapped but still held (a stale slot still maps it, or release failed): keep it spare.
        m.pages[static_cast<std::size_t>(id)].va = 0;
        m.spare.push_back(id);
        continue;
      }
      m.pages[static_cast<std::size_t>(id)] = Page{};
      m.dead_page_ids.push_back(id);
      m.st.physical.sub(n);
      ++m.st.releases;
      m.emit(EventKind::release, 0, 0, n);
    }
  }
  for (std::int32_t id : spare) {
    const Page pg = m.pages[static_cast<std::size_t>(id)];
    if (pg.aliases == 0 && m.drv.release(pg.handle) == Status::ok) {
      std::lock_guard lock(m.mu);
      m.pages[static_cast<std::size_t>(id)] = Page{};
      m.dead_page_ids.push_back(id);
      m.st.physical.sub(m.bytes_of(pg));
      ++m.st.releases;
      m.emit(EventKind::release, 0, 0, m.bytes_of(pg));
    } else {
      kept.push_back(id);
    }
  }
  std::lock_guard lock(m.mu);
  const Promise release{this, blocks_promised};
  m.spare.insert(m.spare.end(), kept.begin(), kept.end());
  for (Block* v : victims) {
    // Pages that went are holes now; a page whose unmap failed and the rest stay free.
    Block* b = v;
    std::size_t i = 0;
    while (i * m.page < v->size && m.slot(v->segment, v->base + i * m.page) < 0) ++i;
    Block* rest = i * m.page < v->size ? (i > 0 ? m.split(b, i * m.page) : b) : nullptr;
    if (i > 0) {
      b->state = State::hole;
      m.settle_large_block(b);
    }
    if (rest != nullptr) {
      rest->state = State::free;
      rest->settled = true;
      m.settle_large_block(rest);
    }
  }
}

std::size_t Allocator::cached_bytes() const {
  const Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  // Free pieces inside chunks, and parked pieces, are cached too (parked large blocks already are).
  std::size_t n = m.st.physical.current - m.large_in_use - m.quarantined_bytes;
  for (const Block* p : m.settled_small) n += p->size;
  for (const auto& [s, ss] : m.streams) {
    for (const Block* p : ss.small) n += p->size;
    for (std::size_t i = 0; i < ss.parked_count; ++i)
      if (ss.parked[i]->small) n += ss.parked[i]->size;
  }
  return n;
}

Stats Allocator::stats() const {
  std::lock_guard lock(impl_->mu);
  Stats s = impl_->st;
  s.driver_ns = impl_->drv.stats().total_ns();
  return s;
}

void Allocator::reset_peaks(Peaks which) {
  std::lock_guard lock(impl_->mu);
  Stats& s = impl_->st;
  if (which != Peaks::reserved) {
    s.requested.reset_peak();
    s.blocks.reset_peak();
  }
  if (which != Peaks::used) {
    s.physical.reset_peak();
    s.mapped.reset_peak();
  }
}

void Allocator::set_observer(Observer* observer) { impl_->observer.store(observer, std::memory_order_release); }

Snapshot Allocator::snapshot() const {
  Impl& m = *impl_;
  std::lock_guard grow(m.grow_mu);
  std::lock_guard lock(m.mu);
  Snapshot snap;
  snap.page_size = m.page;
  for (std::int32_t id : m.spare) snap.spare_pages += m.pages[static_cast<std::size_t>(id)].span;
  snap.stats = m.st;
  auto region = [](const Block* b) {
    Region r;
    r.base = b->base;
    r.size = b->size;
    r.stream = b->stream;
    r.requested = b->requested;
    switch (b->state) {
      case State::allocated: r.state = b->parked ? Region::State::free : Region::State::allocated; break;
      case State::free: r.state = Region::State::free; break;
      case State::hole: r.state = Region::State::hole; break;
      case State::stale: r.state = Region::State::stale; break;
      default: r.state = Region::State::busy; break;
    }
    return r;
  };
  for (const auto& seg : m.segments)
    for (const Block* b = seg->head; b != nullptr; b = b->next) {
      snap.regions.push_back(region(b));
      if (b->is_chunk)
        for (const Block* p = b->pieces; p != nullptr; p = p->next) snap.small_blocks.push_back(region(p));
    }
  return snap;
}


}  // namespace glake::pool
