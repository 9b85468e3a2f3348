// pool/driver.h: the one door to the device.
//
// Everything glake needs from a GPU goes through Driver, so all logic above it runs and is tested on
// machines without one. Two implementations: CudaDriver (the real driver API, resolved from the real
// libcuda.so.1) and HostDriver (memfd/mmap emulation with a capacity, fault injection and a cost model).
//
// Contract, for every implementation:
// - Units are bytes. Every size and offset passed to reserve/create/map/unmap/set_access is a multiple
//   of granularity(); every address returned by reserve() is aligned to it. Violations get
//   Status::invalid_value and change nothing.
// - One Driver is bound to one device for its lifetime; calls made on any thread act on that device.
// - Statuses use the CUDA driver's CUresult numbering, so a caller can hand them back as CUDA errors.
// - A failed call changes nothing: a failed map leaves the range unmapped, a failed create creates nothing.
// - Thread-safety: every method may be called concurrently from any thread.
// - Every call is counted in stats(), with its driver time: measured (cuda) or modeled (host).
// - Streams and events are opaque handles (CUstream / CUevent); stream 0 is the legacy default stream.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace glake::pool {

enum class Status : int {
  ok = 0,
  invalid_value = 1,
  out_of_memory = 2,
  not_initialized = 3,
  deinitialized = 4,
  invalid_context = 201,
  invalid_handle = 400,
  not_found = 500,
  not_ready = 600,
  not_permitted = 800,
  not_supported = 801,
  unknown = 999,
};
const char* status_name(Status s);

using DevPtr = std::uintptr_t;        // a device virtual address
using PhysHandle = std::uint64_t;     // a physical chunk (CUmemGenericAllocationHandle)
using StreamHandle = std::uintptr_t;  // CUstream; 0 is the legacy default stream
using EventHandle = std::uintptr_t;   // CUevent

// Every kind of driver call, for counters, the cost model and fault injection.
enum class Call : int {
  reserve,
  free_reserve,
  create,
  release,
  map,
  unmap,
  set_access,
  export_fd,
  event_create,
  event_destroy,
  event_record,
  event_query,
  event_synchronize,
  stream_wait_event,
  stream_is_capturing,
  stream_synchronize,
  memcpy_async,
  host_alloc,
  host_free,
  count_,
};
inline constexpr int kCallKinds = static_cast<int>(Call::count_);
const char* call_name(Call c);

// Counters of every call, lock-free so that drivers can update them from any thread.
class DriverStats {
 public:
  void record(Call c, std::uint64_t ns, bool ok) noexcept {
    auto i = static_cast<std::size_t>(c);
    calls_[i].fetch_add(1, std::memory_order_relaxed);
    ns_[i].fetch_add(ns, std::memory_order_relaxed);
    if (!ok) failures_[i].fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t calls(Call c) const noexcept { return calls_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed); }
  std::uint64_t failures(Call c) const noexcept { return failures_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed); }
  std::uint64_t ns(Call c) const noexcept { return ns_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed); }
  std::uint64_t total_ns() const noexcept {
    std::uint64_t t = 0;
    for (const auto& n : ns_) t += n.load(std::memory_order_relaxed);
    return t;
  }

 private:
  std::array<std::atomic<std::uint64_t>, kCallKinds> calls_{};
  std::array<std::atomic<std::uint64_t>, kCallKinds> failures_{};
  std::array<std::atomic<std::uint64_t>, kCallKinds> ns_{};
};

class Driver {
 public:
  virtual ~Driver() = default;

  virtual int device() const = 0;
  // Allocation granularity of physical memory and mappings (queried on CUDA, never assumed).
  virtual std::size_t granularity() const = 0;
  // Total and free device memory as the device sees it (cuMemGetInfo; host: capacity and what is left).
  virtual Status mem_info(std::size_t* free, std::size_t* total) = 0;

  // Virtual ranges.
  virtual Status reserve(std::size_t size, DevPtr* va) = 0;
  virtual Status free_reserve(DevPtr va, std::size_t size) = 0;
  // Physical memory. create() makes a chunk of `size` bytes; release() drops the handle (the memory is
  // freed once no mapping refers to it).
  virtual Status create(std::size_t size, PhysHandle* handle) = 0;
  virtual Status release(PhysHandle handle) = 0;
  // Maps [offset, offset+size) of a chunk at va. unmap() takes exactly a range that one map() made.
  virtual Status map(DevPtr va, std::size_t size, PhysHandle handle, std::size_t offset) = 0;
  virtual Status unmap(DevPtr va, std::size_t size) = 0;
  // Read-write access for this device and every peer that has peer access, over mapped [va, va+size).
  // The cost is per mapping covered, not per call.
  virtual Status set_access(DevPtr va, std::size_t size) = 0;
  // A POSIX file descriptor for the chunk (for IPC); the caller owns and closes it.
  virtual Status export_fd(PhysHandle handle, int* fd) = 0;

  // Events and streams, as far as the pool needs them.
  virtual Status event_create(EventHandle* event) = 0;
  virtual Status event_destroy(EventHandle event) = 0;
  virtual Status event_record(EventHandle event, StreamHandle stream) = 0;
  // ok once all work recorded before the event has completed, not_ready before.
  virtual Status event_query(EventHandle event) = 0;
  virtual Status event_synchronize(EventHandle event) = 0;
  virtual Status stream_wait_event(StreamHandle stream, EventHandle event) = 0;
  virtual Status stream_is_capturing(StreamHandle stream, bool* capturing) = 0;
  // Waits for all work submitted to the stream so far (for the pool: only where an event cannot be
  // recorded on it, e.g. a stream of another context).
  virtual Status stream_synchronize(StreamHandle stream) = 0;

  // Async copies between any two addresses (unified addressing) and pinned host memory, for LayerKV.
  virtual Status memcpy_async(void* dst, const void* src, std::size_t size, StreamHandle stream) = 0;
  virtual Status host_alloc(std::size_t size, void** ptr) = 0;
  virtual Status host_free(void* ptr) = 0;

  const DriverStats& stats() const noexcept { return stats_; }

 protected:
  DriverStats stats_;
};

}  // namespace glake::pool
