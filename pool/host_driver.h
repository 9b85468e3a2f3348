// pool/host_driver.h: HostDriver, the in-process emulation of the device behind Driver.
//
// Physical chunks are memfd files (memfd_create + ftruncate; or bookkeeping only, see Options::backed),
// reservations are PROT_NONE anonymous NORESERVE mappings, and map() puts a chunk's pages at a reserved
// address with mmap(MAP_FIXED | MAP_SHARED, fd, offset). Stitching and aliasing are therefore real: the
// bytes of a chunk are the same through every virtual range it is mapped at. A fresh mapping is
// PROT_NONE, as a fresh cuMemMap is not accessible; set_access() mprotects it read-write. unmap() puts a
// PROT_NONE anonymous mapping back, so the reservation stays held until free_reserve() munmaps it.
//
// On top of the contract in driver.h it has what tests and CPU replays need: a capacity (create fails
// with out_of_memory past it), fault injection (fail the n-th call of a kind), a cost model built from
// the H100 latencies in DESIGN.md (charged to stats() only, never slept), and an emulation of stream
// work and events (enqueue_work / complete_work) so that stream-ordered reuse can be tested on the CPU.
//
// Invariants (under mutex_): every mapping lies inside one reservation and overlaps no other mapping;
// every mapping refers to a chunk in chunks_; a released chunk stays in chunks_ (and its fd open) until
// its last mapping goes; in_use_ is the sum of the sizes of chunks_ and never exceeds capacity.
// Thread-safe: one mutex guards all state; the counters in stats_ are atomic.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pool/driver.h"

namespace glake::pool {

class HostDriver final : public Driver {
 public:
  struct Options {
    std::size_t capacity = std::size_t{80} << 30;   // bytes of physical memory create() may hand out
    std::size_t granularity = std::size_t{2} << 20;  // a power of two, at least the OS page size
    int device = 0;
    bool cost_model = true;  // charge modeled driver time to stats(); false charges 0
    // false: no host memory behind the device. Chunks, reservations and mappings are bookkeeping only
    // (addresses from a counter, never to be touched; export_fd gives not_supported), so that a replay
    // can hold more than the host has, or than its file and mapping limits allow (a memfd per chunk).
    bool backed = true;
  };

  HostDriver();
  explicit HostDriver(Options options);
  ~HostDriver() override;  // unmaps everything, closes every chunk, frees host allocations
  HostDriver(const HostDriver&) = delete;
  HostDriver& operator=(const HostDriver&) = delete;

  int device() const override;
  std::size_t granularity() const override;
  Status mem_info(std::size_t* free, std::size_t* total) override;

  Status reserve(std::size_t size, DevPtr* va) override;
  Status free_reserve(DevPtr va, std::size_t size) override;
  Status create(std::size_t size, PhysHandle* handle) override;
  Status release(PhysHandle handle) override;
  Status map(DevPtr va, std::size_t size, PhysHandle handle, std::size_t offset) override;
  Status unmap(DevPtr va, std::size_t size) override;
  Status set_access(DevPtr va, std::size_t size) override;
  Status export_fd(PhysHandle handle, int* fd) override;

  Status event_create(EventHandle* event) override;
  Status event_destroy(EventHandle event) override;
  Status event_record(EventHandle event, StreamHandle stream) override;
  Status event_query(EventHandle event) override;
  Status event_synchronize(EventHandle event) override;
  Status stream_wait_event(StreamHandle stream, EventHandle event) override;
  Status stream_is_capturing(StreamHandle stream, bool* capturing) override;
  Status stream_synchronize(StreamHandle stream) override;

  Status memcpy_async(void* dst, const void* src, std::size_t size, StreamHandle stream) override;
  Status host_alloc(std::size_t size, void** ptr) override;
  Status host_free(void* ptr) override;

  // Fault injection: the n-th call of kind c from now (1-based) fails with s and changes nothing.
  // Several faults may be armed at once; n == 0 arms nothing. Injected failures are counted in stats().
  void fail_nth(Call c, std::uint64_t n, Status s = Status::out_of_memory);
  void clear_faults();

  // Stream emulation, for tests: enqueue_work() submits one unit of pending work on s; complete_work()
  // completes everything submitted on s so far. Every stream starts idle.
  void enqueue_work(StreamHandle s);
  void complete_work(StreamHandle s);
  void set_capturing(StreamHandle s, bool capturing);

  // State, for tests.
  std::size_t physical_in_use() const;  // bytes of live chunks (released ones count until unmapped)
  std::size_t mappings() const;         // live map() ranges
  std::size_t reserved_bytes() const;   // bytes of live reservations
  std::size_t live_events() const;      // created and not destroyed
  const Options& options() const { return options_; }

  // The modeled driver time of one successful call, in ns (cost_model on). `size` is the chunk size for
  // create/release; `mappings` the number of mappings set_access covers.
  static std::uint64_t modeled_ns(Call c, std::size_t size = 0, std::size_t mappings = 1);

 private:
  struct Chunk {
    int fd = -1;
    std::size_t size = 0;
    std::size_t maps = 0;   // live mappings of this chunk
    bool released = false;  // handle dropped; freed when maps reaches 0
  };
  struct Mapping {
    std::size_t size = 0;
    PhysHandle handle = 0;
  };
  struct StreamState {
    std::uint64_t submitted = 0;
    std::uint64_t completed = 0;
    bool capturing = false;
  };
  struct EventState {
    bool recorded = false;
    StreamHandle stream = 0;
    std::uint64_t target = 0;  // the stream's submitted count when recorded
  };
  struct Fault {
    std::uint64_t at = 0;  // fires on the call whose per-kind sequence number equals this
    Status status = Status::out_of_memory;
  };

  // Counts a call of kind c; returns the status of a fault armed for it, if any (and disarms it).
  std::optional<Status> take_fault(Call c);
  // Records the call in stats_ (failures are charged kFailedCallNs) and returns s.
  Status finish(Call c, Status s, std::uint64_t ns);

  bool aligned(std::size_t v) const { return (v & (options_.granularity - 1)) == 0; }
  // The reservation holding all of [va, va+size), or reservations_.end().
  std::map<DevPtr, std::size_t>::const_iterator reservation_of(DevPtr va, std::size_t size) const;
  bool overlaps_mapping(DevPtr va, std::size_t size) const;
  // Closes the chunk and returns its memory if it is released and mapped nowhere.
  void drop_if_dead(std::unordered_map<PhysHandle, Chunk>::iterator it);

  const Options options_;
  mutable std::mutex mutex_;
  std::map<DevPtr, std::size_t> reservations_;  // base -> size
  std::map<DevPtr, Mapping> mappings_;          // base -> mapping
  std::unordered_map<PhysHandle, Chunk> chunks_;
  std::unordered_map<EventHandle, EventState> events_;
  std::unordered_map<StreamHandle, StreamState> streams_;
  std::unordered_set<void*> host_allocs_;
  std::array<std::vector<Fault>, kCallKinds> faults_{};
  std::array<std::uint64_t, kCallKinds> seen_{};  // calls of each kind so far
  std::size_t in_use_ = 0;
  std::size_t reserved_ = 0;
  PhysHandle next_chunk_;
  DevPtr next_va_;  // unbacked reservations
  EventHandle next_event_;
};

}  // namespace glake::pool
