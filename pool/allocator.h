// pool/allocator.h: glake's caching allocator over a Driver, one per device.
//
// Physical memory is held as "pages": physical allocations of the driver's granularity, or of several
// granules when the pool grew by that much at once (Config::max_create), each mapped whole in large
// virtual reservations. A block is a run of mapped pages (large requests) or a piece of a shared
// one-granule page (small requests, <= Config::small_limit). A page lies under one or more blocks (or
// is spare); a one-granule page may also stay mapped at older "stale" addresses that no block uses,
// until they are unmapped lazily.
//
// allocate(): a cached free block that fits, on this stream or made safe for it (hot path: no driver
// call, no lock held across one); else stitch: pick a virtual window, map free pages from elsewhere
// into its holes and create only what is missing; before reporting out-of-memory, reclaim what other
// streams freed.
//
// Stream order: a freed block is reusable at once on the stream it was freed on; on another stream only
// after an event recorded after the free has completed.
//
// Thread-safe. validate() checks every invariant; it is meant for tests and debugging.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "pool/config.h"
#include "pool/driver.h"
#include "pool/observer.h"
#include "pool/stats.h"

namespace glake::pool {

// One physical allocation, mapped whole.
struct PhysPage {
  PhysHandle handle = 0;
  std::size_t size = 0;
  bool operator==(const PhysPage&) const = default;
};

struct BlockInfo {
  DevPtr base = 0;           // the block's address (what allocate() returned)
  std::size_t size = 0;      // the requested size
  std::size_t block_size = 0;  // bytes the block occupies
  StreamHandle stream = 0;
  // The pages under the block in address order (for IPC export: mapped whole and in this order, they
  // hold the block at offset_in_first_page). They may reach beyond the block at either end.
  std::vector<PhysPage> pages;
  std::size_t offset_in_first_page = 0;
};

// The pool's layout at one moment, for out-of-memory snapshots and the tracer's block map.
struct Region {
  // busy: in transit during a stitch; stale: still mapped to pages a stitch moved elsewhere
  enum class State { allocated, free, hole, busy, stale };
  DevPtr base = 0;
  std::size_t size = 0;
  State state = State::hole;
  StreamHandle stream = 0;
  std::size_t requested = 0;  // allocated regions: the requested size (small blocks: per piece)
};
struct Snapshot {
  std::size_t page_size = 0;
  std::vector<Region> regions;       // large-block layout of every reservation, in address order
  std::vector<Region> small_blocks;  // pieces of shared pages (allocated and free)
  std::size_t spare_pages = 0;       // granules of pages held but mapped nowhere
  Stats stats;
};

class Allocator {
 public:
  Allocator(Driver& driver, Config config);
  ~Allocator();  // unmaps and releases everything the pool holds
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // size 0 gives *out = 0 and ok. An absurd size gives out_of_memory (as cudaMalloc does).
  Status allocate(std::size_t size, StreamHandle stream, DevPtr* out);
  // Frees on the stream the block was last used on (its allocation stream). If that stream was
  // forgotten (destroyed) since, the block stays cached for good: nothing can be ordered after it.
  Status free(DevPtr ptr);
  // Frees in the order of `stream`: the block becomes reusable at once on that stream.
  Status free(DevPtr ptr, StreamHandle stream);
  // True if ptr is the address of a live block of this pool.
  bool owns(DevPtr ptr) const;
  // The live block containing ptr (anywhere inside it); invalid_value if none.
  Status describe(DevPtr ptr, BlockInfo* info) const;
  // IPC export: descriptors (Driver::export_fd) for pages[first, first + count) into fds, if the live
  // block at `base` still lies on exactly `pages` (describe()); else not_found. Checked and
  // exported under grow_mu, so that no trim releases those pages and no stitch moves them in between
  // (a free of the block may come, but its pages stay the pool's). On an error no descriptor is left.
  Status export_pages(DevPtr base, const std::vector<PhysPage>& pages, std::size_t first, std::size_t count,
                      int* fds) const;

  // Before a stream is destroyed: records an event on it so that what was freed on it settles once its
  // last work completes; the pool never records on that stream again (its handle may be reused).
  void forget_stream(StreamHandle stream);
  // Grants access again over every mapping (after a peer was added: see Driver::set_access).
  Status refresh_access();

  // Returns free physical memory to the driver, whole pages, as long as at least `keep` bytes of free
  // pages stay (as cudaMemPoolTrimTo keeps at least its minBytesToKeep).
  // may_wait false (a graph capture is under way, which a query of or wait for a stream or event would
  // invalidate): no event is recorded, queried or waited for; only blocks already known free go.
  void trim(std::size_t keep = 0, bool may_wait = true);
  // Bytes of physical memory the pool holds but no live block uses (cached).
  std::size_t cached_bytes() const;

  Stats stats() const;
  // Resets peaks to the current values: every one, or only those of live bytes (requested, blocks:
  // cudaMemPoolAttrUsedMemHigh) or of physical memory (physical, mapped: cudaMemPoolAttrReservedMemHigh).
  enum class Peaks { all, used, reserved };
  void reset_peaks(Peaks which = Peaks::all);
  const Config& config() const { return config_; }
  Driver& driver() const { return driver_; }

  Snapshot snapshot() const;

  // Empty string if every invariant holds, else a description of the first violation.
  std::string validate() const;

  void set_observer(Observer* observer);

 private:
  struct Impl;
  Driver& driver_;
  Config config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glake::pool
