// pool/validate.cpp: Allocator::validate(), every invariant of the pool checked from scratch.
// Slow (linear in blocks, slots and pages); for tests and debugging.
#include <fmt/format.h>

#include "pool/allocator_impl.h"

namespace glake::pool {

namespace {

const char* state_name(State s) {
  switch (s) {
    case State::allocated: return "allocated";
    case State::free: return "free";
    case State::hole: return "hole";
    case State::busy: return "busy";
    case State::stale: return "stale";
    case State::quarantined: return "quarantined";
    case State::lent: return "lent";
    case State::shadow: return "shadow";
  }
  return "?";
}

}  // namespace

std::string Allocator::validate() const {
  std::lock_guard grow(impl_->grow_mu);
  std::lock_guard lock(impl_->mu);
  return impl_->validate();
}

std::string Allocator::Impl::validate() const {
  auto in_index = [&](const Block* b) {
    const FreeSet* set = nullptr;
    if (b->settled) {
      set = b->small ? &settled_small : &settled_large;
    } else {
      auto it = streams.find(b->stream);
      if (it == streams.end()) return false;
      set = b->small ? &it->second.small : &it->second.large;
    }
    auto hit = set->find(const_cast<Block*>(b));
    return hit != set->end() && *hit == b;
  };
  std::vector<int> seen(pages.size(), 0);     // slots that own a page (or spare)
  std::vector<std::uint32_t> aliased(pages.size(), 0);  // stale slots still mapping it
  std::size_t mapped_pages = 0, free_blocks = 0, user_blocks = 0, large_used = 0, quarantined_seen = 0;
  std::uint64_t requested = 0, block_bytes = 0;

  std::size_t parked_seen = 0;
  auto check_user = [&](const Block* b) -> std::string {
    if (b->parked) {
      auto it = streams.find(b->stream);
      const StreamState* ss = it == streams.end() ? nullptr : &it->second;
      if (ss == nullptr || std::find(ss->parked.begin(), ss->parked.begin() + static_cast<long>(ss->parked_count), b) ==
                               ss->parked.begin() + static_cast<long>(ss->parked_count))
        return fmt::format("parked block {:#x} is not in its stream's quick cache", b->base);
      if (live.find(b->base) != nullptr) return fmt::format("parked block {:#x} is still live", b->base);
      ++parked_seen;
      return {};
    }
    Block* const* hit = live.find(b->base);
    if (hit == nullptr || *hit != b) return fmt::format("allocated block {:#x} is not in the address map", b->base);
    ++user_blocks;
    requested += b->requested;
    block_bytes += b->size;
    return {};
  };

  // What each slot lies under: holes, stale and quarantined blocks are whole pages; allocated and free
  // blocks need not be, and share their partial pages with their neighbours (never with a hole or
  // stale block).
  // An alias slot (a lent tail's page mapped again at a window's start) lies under a shadow and the
  // blocks after it.
  enum Under : std::uint8_t { none, owner, stale, hole, quarantined, alias };
  for (const auto& seg : segments) {
    std::vector<Under> under(seg->slot_page.size(), none);
    DevPtr at = seg->base;
    const Block* prev = nullptr;
    for (const Block* b = seg->head; b != nullptr; prev = b, at += b->size, b = b->next) {
      std::string where = fmt::format("block {:#x}+{:#x} ({})", b->base, b->size, state_name(b->state));
      if (b->base != at) return where + fmt::format(": expected to start at {:#x}", at);
      if (b->prev != prev || b->segment != seg.get() || b->small) return where + ": broken links";
      if (b->size == 0) return where + ": empty";
      if (b->state == State::busy) return where + ": busy outside a stitch";
      if (b->state == State::quarantined) quarantined_seen += b->size;
      if (mergeable(prev, b)) return where + ": not merged with its mergeable predecessor";
      const bool paged = b->state == State::hole || b->state == State::stale || b->state == State::quarantined;
      if (paged && ((b->base - seg->base) % page != 0 || b->size % page != 0))
        return where + ": not whole pages";
      if (b->is_chunk && ((b->base - seg->base) % page != 0 || b->size != page)) return where + ": a chunk is not one page";
      if (b->state == State::shadow) {
        const Block* t = b->partner;
        if ((b->base - seg->base) % page != 0 || b->size >= page) return where + ": not the head of one slot";
        if (t == nullptr || t->state != State::lent || t->partner != b) return where + ": no lent tail";
        const DevPtr home = page_down(t->segment, t->base);
        if (t->size != page - b->size || t->base + t->size != home + page)
          return where + fmt::format(": its tail {:#x}+{:#x} does not end its page", t->base, t->size);
        const std::int32_t id = seg->slot_page[(b->base - seg->base) / page];
        if (id < 0 || id != t->segment->slot_page[(home - t->segment->base) / page] ||
            pages[static_cast<std::size_t>(id)].span != 1)
          return where + ": its slot does not map its tail's one-granule page";
      }
      if (b->state == State::lent && (b->partner == nullptr || b->partner->partner != b))
        return where + ": no shadow";
      // Stale and quarantined blocks are whole mappings: each unmapped in one call, from its first slot.
      auto id_at = [&](DevPtr a) { return seg->slot_page[(a - seg->base) / page]; };
      if (paged && b->state != State::hole)
        for (DevPtr a = b->base; a < b->base + b->size;) {
          const std::int32_t id = id_at(a);
          if (id < 0 || static_cast<std::size_t>(id) >= pages.size()) return where + fmt::format(": slot {:#x} unmapped", a);
          const DevPtr end = a + pages[static_cast<std::size_t>(id)].span * page;
          if (end > b->base + b->size) return where + fmt::format(": the mapping at {:#x} runs past it", a);
          for (; a < end; a += page)
            if (id_at(a) != id) return where + fmt::format(": slot {:#x} is not part of the mapping of page {}", a, id);
        }
      const Under u = b->state == State::hole          ? hole
                      : b->state == State::stale       ? stale
                      : b->state == State::quarantined ? quarantined
                      : b->state == State::shadow      ? alias
                                                       : owner;
      for (DevPtr a = page_down(seg.get(), b->base); a < b->base + b->size; a += page) {
        Under& x = under[(a - seg->base) / page];
        if (x == alias && u == owner) continue;
        if (x != none && x != u) return where + fmt::format(": shares slot {:#x} with a block of another kind", a);
        x = u;
      }
      if (b->state == State::free) {
        ++free_blocks;
        if (!in_index(b)) return where + ": free but not in its index";
      } else if (b->state == State::allocated) {
        if (!b->parked) large_used += b->size;
        if (!b->is_chunk) {
          if (std::string e = check_user(b); !e.empty()) return e;
          continue;
        }
        DevPtr pat = b->base;
        const Block* pprev = nullptr;
        for (const Block* p = b->pieces; p != nullptr; pprev = p, p = p->next) {
          std::string pw = fmt::format("piece {:#x}+{:#x} ({})", p->base, p->size, state_name(p->state));
          if (p->base != pat || p->prev != pprev || p->chunk != b || !p->small) return pw + ": broken links";
          if (p->state == State::free) {
            ++free_blocks;
            if (!in_index(p)) return pw + ": free but not in its index";
            if (mergeable(pprev, p)) return pw + ": not merged with its mergeable predecessor";
          } else if (p->state == State::allocated) {
            if (std::string e = check_user(p); !e.empty()) return e;
          } else {
            return pw + ": a piece can only be free or allocated";
          }
          pat += p->size;
        }
        if (pat != b->base + b->size) return where + ": its pieces do not cover it";
      }
    }
    if (at != seg->base + seg->size) return fmt::format("segment {:#x}: blocks end at {:#x}", seg->base, at);
    // A slot is mapped iff it is not under a hole; it owns its page unless it is a stale alias.
    for (std::size_t i = 0; i < under.size(); ++i) {
      const DevPtr a = seg->base + i * page;
      const std::int32_t id = seg->slot_page[i];
      if ((id >= 0) == (under[i] == hole)) return fmt::format("slot {:#x} is {}mapped", a, id >= 0 ? "" : "not ");
      if (id < 0) continue;
      auto u = static_cast<std::size_t>(id);
      if (u >= pages.size() || !pages[u].live) return fmt::format("slot {:#x} maps dead page {}", a, id);
      const Page& pg = pages[u];
      const bool owns = pg.va != 0 && a >= pg.va && a < pg.va + pg.span * page;
      if (under[i] != quarantined && owns == (under[i] == stale || under[i] == alias))
        return fmt::format("slot {:#x} {} page {}", a, owns ? "owns" : "does not own", id);
      if (owns)
        ++seen[u];
      else
        ++aliased[u];
      ++mapped_pages;
    }
  }
  for (std::int32_t id : spare) {
    auto u = static_cast<std::size_t>(id);
    if (u >= pages.size() || !pages[u].live || pages[u].va != 0) return fmt::format("spare page {} is mapped or dead", id);
    seen[u] += static_cast<int>(pages[u].span);
  }
  std::size_t live_pages = 0;  // in granules
  for (std::size_t i = 0; i < pages.size(); ++i) {
    if (!pages[i].live) continue;
    live_pages += pages[i].span;
    if (seen[i] != static_cast<int>(pages[i].span))
      return fmt::format("page {} of {} granules is held by {} slots (or spare), expected all of them once", i,
                         pages[i].span, seen[i]);
    if (aliased[i] != pages[i].aliases * pages[i].span)
      return fmt::format("page {} of {} granules has {} stale slots but counts {} stale mappings", i, pages[i].span,
                         aliased[i], pages[i].aliases);
  }
  std::size_t indexed = settled_large.size() + settled_small.size();
  for (const auto& [s, ss] : streams) {
    indexed += ss.large.size() + ss.small.size();
    for (const FreeSet* set : {&ss.large, &ss.small})
      for (const Block* b : *set)
        if (b->settled || b->stream != s || b->state != State::free)
          return fmt::format("block {:#x} is in stream {:#x}'s index but does not belong there", b->base, s);
  }
  for (const FreeSet* set : {&settled_large, &settled_small})
    for (const Block* b : *set)
      if (!b->settled || b->state != State::free)
        return fmt::format("block {:#x} is in a settled index but is not settled and free", b->base);
  if (indexed != free_blocks) return fmt::format("{} blocks indexed, {} free", indexed, free_blocks);
  std::size_t parked = 0;
  for (const auto& [s, ss] : streams) parked += ss.parked_count;
  if (parked != parked_seen) return fmt::format("{} blocks parked, {} found parked", parked, parked_seen);
  if (promised != 0) return fmt::format("{} blocks of host memory promised outside a stitch", promised);
  if (live.size() != user_blocks) return fmt::format("{} addresses mapped, {} live blocks", live.size(), user_blocks);
  if (live_pages * page != st.physical.current)
    return fmt::format("physical bytes {} but {} live pages", st.physical.current, live_pages);
  if (mapped_pages * page != st.mapped.current)
    return fmt::format("mapped bytes {} but {} mapped slots", st.mapped.current, mapped_pages);
  if (requested != st.requested.current || block_bytes != st.blocks.current)
    return fmt::format("requested/block bytes {}/{} but statistics say {}/{}", requested, block_bytes,
                       st.requested.current, st.blocks.current);
  if (large_used != large_in_use) return fmt::format("large blocks in use {} but counted {}", large_used, large_in_use);
  if (quarantined_seen != quarantined_bytes)
    return fmt::format("quarantined blocks hold {} bytes but counted {}", quarantined_seen, quarantined_bytes);
  return {};
}

}  // namespace glake::pool
