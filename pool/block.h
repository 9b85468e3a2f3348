// pool/block.h: the pool's unit of bookkeeping, and the size-ordered sets of free blocks.
//
// A large block is a range of one virtual reservation; the blocks of a reservation are linked in
// address order and cover it exactly. Holes (nothing mapped), stale and quarantined blocks are whole
// pages; allocated and free blocks are multiples of 512 bytes and share their partial end pages with
// their neighbours (a page is mapped while any block on it is not a hole). A small block ("piece") is
// a slice of a chunk: a one-page, page-aligned large block shared by small requests; the pieces of a
// chunk cover it exactly.
//
// A free tail of a page that is shorter than the page and sandwiched between live blocks can still
// serve: a stitch window may begin with a second mapping of that page (an alias slot), offset so that
// the window starts at the tail's bytes. The tail is then "lent" at home and the alias slot's head is
// a "shadow"; trim gives the tail back (unmapping the alias) once the window's part of that page is
// free again.
//
// A free block is "settled" once the work issued on its stream before its free has completed: only
// then may any stream use it, and only then may its slots be unmapped. A stitch maps a free block's
// pages into a new range without unmapping them (the old slots become "stale" aliases), so it needs
// no wait for the stream that freed them when that stream is the one allocating.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <set>
#include <vector>

#include "pool/driver.h"

namespace glake::pool {

struct Segment;

struct Block {
  enum class State : std::uint8_t {
    allocated,
    free,
    hole,         // large only: virtual range with no page mapped
    busy,         // large only: taken by a stitch in progress (no lock held across its driver calls)
    stale,        // large only: slots still mapped to pages that a stitch moved elsewhere (aliases);
                  // unmapped lazily once the work before their free has completed
    quarantined,  // large only: a page mapped without access after a failed set_access + unmap; never used
    lent,         // large only: a free tail of a page, shorter than it, whose bytes a stitch window uses
                  // through a second mapping of the page (see `shadow`); never used here until returned
    shadow,       // large only: the head of such a second mapping, up to the lent bytes: they belong to
                  // the blocks on the page at its own slot; never used
  };

  DevPtr base = 0;
  std::size_t size = 0;
  State state = State::hole;
  bool small = false;     // a piece of a chunk
  bool is_chunk = false;  // a large allocated block that holds pieces
  bool settled = false;   // free blocks: the work before the free has completed
  bool parked = false;    // freed, but kept whole in its stream's quick cache (state stays allocated)
  StreamHandle stream = 0;
  std::uint64_t free_seq = 0;  // the stream's free sequence number at the free
  std::size_t requested = 0;   // allocated user blocks: the size asked for
  Block* prev = nullptr;
  Block* next = nullptr;
  Segment* segment = nullptr;  // large blocks
  Block* chunk = nullptr;      // pieces: their chunk
  Block* pieces = nullptr;     // chunks: the first piece
  Block* partner = nullptr;    // lent <-> shadow
};

struct Segment {
  DevPtr base = 0;
  std::size_t size = 0;
  std::vector<std::int32_t> slot_page;  // page id mapped at each page-sized slot, -1 for none
  Block* head = nullptr;
};

// Free blocks ordered by (size, address): best fit is lower_bound. Nodes come from a NodePool, so
// insertions on the hot path recycle memory instead of calling malloc.
struct BySizeThenAddress {
  bool operator()(const Block* a, const Block* b) const {
    return a->size != b->size ? a->size < b->size : a->base < b->base;
  }
};
using FreeSet = std::pmr::set<Block*, BySizeThenAddress>;

// Objects of one size, recycled through a free list; slabs are kept until the owner is destroyed.
// reserve(n): the next n take() ask the heap for nothing, and give() never does, so that a pool
// operation takes the host memory it needs before it changes anything (out of host memory, it throws
// std::bad_alloc there and leaves the pool as it was).
template <class T>
class Slabs {
 public:
  T* take() {
    if (free_.empty()) add_slab();
    T* t = free_.back();
    free_.pop_back();
    return t;
  }
  void give(T* t) { free_.push_back(t); }  // within the capacity reserved by add_slab: no allocation
  void reserve(std::size_t n) {
    while (free_.size() < n) add_slab();
  }

 private:
  static constexpr std::size_t kSlab = 256;
  void add_slab() {
    auto slab = std::make_unique<T[]>(kSlab);
    // Room for every object, so that give() never grows it; doubled, so that reserving n costs O(n).
    const std::size_t all = (slabs_.size() + 1) * kSlab;
    if (free_.capacity() < all) free_.reserve(std::max(all, 2 * free_.capacity()));
    slabs_.push_back(std::move(slab));
    for (std::size_t i = 0; i < kSlab; ++i) free_.push_back(&slabs_.back()[i]);
  }
  std::vector<std::unique_ptr<T[]>> slabs_;
  std::vector<T*> free_;
};

// Block objects.
class BlockArena {
 public:
  Block* make() {
    Block* b = slabs_.take();
    *b = Block{};
    return b;
  }
  void drop(Block* b) { slabs_.give(b); }
  void reserve(std::size_t n) { slabs_.reserve(n); }

 private:
  Slabs<Block> slabs_;
};

// Memory for FreeSet nodes (a tree node holding one pointer; anything larger, never asked in practice,
// comes from the heap).
class NodePool final : public std::pmr::memory_resource {
 public:
  void reserve(std::size_t n) { slabs_.reserve(n); }

 private:
  struct alignas(std::max_align_t) Node {
    unsigned char bytes[64];
  };
  static bool fits(std::size_t bytes, std::size_t align) { return bytes <= sizeof(Node) && align <= alignof(Node); }
  void* do_allocate(std::size_t bytes, std::size_t align) override {
    return fits(bytes, align) ? slabs_.take() : std::pmr::new_delete_resource()->allocate(bytes, align);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
    if (fits(bytes, align))
      slabs_.give(static_cast<Node*>(p));
    else
      std::pmr::new_delete_resource()->deallocate(p, bytes, align);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override { return this == &o; }
  Slabs<Node> slabs_;
};

}  // namespace glake::pool
