// pool/cuda_driver.h: CudaDriver, the real CUDA driver API behind Driver.
//
// Entry points come from the real libcuda.so.1 only: dlopen (RTLD_NOLOAD first) and the driver's own
// cuGetProcAddress, found with glibc's dlsym on that handle. Nothing is looked up in the global
// namespace, so glake's own hooks (libglake.so defines cuGetProcAddress, cuMemAlloc, dlsym, ...) are
// never reached from here. The table is resolved once per process and libcuda.so.1 is never unloaded.
//
// Physical chunks are pinned device memory with a POSIX fd handle type (when the device supports it)
// and the GPUDirect RDMA flag (when the device supports it with VMM). Access is granted to this device
// and to every peer registered with add_peer().
//
// Contexts: VMM calls need none. Calls that do (events, streams, copies, host memory, mem_info) run in a
// context of this device: the caller's current one if it is on this device; else (none current, or
// one of another device) the primary context is pushed for the call and popped after. None is left
// current: the runtime takes a context it finds current as the thread's device.
// The primary context is retained from open() until destruction; a driver destroyed after exit() has
// begun (process_exiting()) makes no driver call at all.
//
// Every call is timed (steady_clock) and recorded in stats(); not_ready from event_query is an answer,
// not a failure. Statuses are CUresult values: a code Status does not name is passed through as its
// number (static_cast), so status_name() may see values outside the enum.
// Thread-safe: the handles are immutable after open(); the peer list has its own mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "pool/driver.h"

struct CUctx_st;  // CUcontext, without pulling cuda.h into every includer

namespace glake::pool {

// This thread's driver calls are made in the relaxed capture mode while one of these lives
// (cuThreadExchangeStreamCaptureMode; the thread's own mode comes back at its end). Made in a thread's
// default global mode while any thread captures in global mode (or while the calling thread itself
// captures another stream), CUDA refuses "potentially unsafe" calls and invalidates the capture. On an
// H100 (driver 580, tests/gpu/probe_capture_neighbours) event and stream queries and waits and the
// runtime's cudaFree(nullptr) are refused; VMM calls, memory info and cuStreamCreate are not, but CUDA
// documents no list, so the pool makes those in this mode too. The pool makes such calls only for
// streams it has seen are not capturing (and events recorded on such streams), which no capture depends
// on; a capture may begin at any moment, also in the middle of one of the pool's slow paths. The hot
// path makes no driver call, so it pays nothing for this.
class RelaxedCapture {
 public:
  RelaxedCapture();
  ~RelaxedCapture();
  RelaxedCapture(const RelaxedCapture&) = delete;
  RelaxedCapture& operator=(const RelaxedCapture&) = delete;

 private:
  int mode_ = 0;  // the thread's own CUstreamCaptureMode, while exchanged
  bool exchanged_ = false;
};

class CudaDriver final : public Driver {
 public:
  // Loads the real driver (once per process), cuInit(0), checks that `device` exists and supports VMM,
  // queries the granularity and the RDMA and fd capabilities, and retains the primary context.
  // not_initialized (3) if libcuda.so.1 or an entry point is missing; not_supported (801) without VMM;
  // else the driver's error.
  static Status open(int device, std::unique_ptr<CudaDriver>* out);
  // Loads the real driver and looks up its entry points (once per process; open() does it too) and
  // says whether all were found. dlopen and dlsym take the dynamic loader's lock and this takes no other
  // lock, so a caller that must not wait for the loader while holding a lock of its own calls this first.
  static bool look_up();

  ~CudaDriver() override;  // releases the primary context; a torn-down driver at exit is not an error
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;

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

  // Device `peer_device` may from now on access this device's memory: later set_access() calls grant it
  // read-write too. Ignored unless cuDeviceCanAccessPeer(peer_device -> this device) is true; this
  // device itself and repeats are ignored. Existing mappings are not touched (call set_access again).
  void add_peer(int peer_device);
  // The registered peers, in the order they were added.
  std::vector<int> peers() const;

  // True once exit() has begun: set by an atexit handler registered at the first successful open(), so
  // it runs before the CUDA driver's own exit-time teardown. Owners of pools held in static objects may
  // skip returning memory then; a method called anyway reaches libcuda, which answers deinitialized
  // once it is torn down.
  static bool process_exiting();

  // What open() found.
  bool rdma_capable() const { return rdma_; }  // chunks are created with gpuDirectRDMACapable
  bool fd_exportable() const { return fd_handles_; }  // chunks are created with the POSIX fd handle type

 private:
  class ContextScope;

  CudaDriver(int device, int cu_device, std::size_t granularity, bool rdma, bool fd_handles, CUctx_st* primary);

  bool aligned(std::size_t v) const { return v % granularity_ == 0; }
  Status finish(Call c, Status s, std::uint64_t start_ns);

  const int device_;
  const int cu_device_;  // CUdevice
  const std::size_t granularity_;
  const bool rdma_;
  const bool fd_handles_;
  CUctx_st* const primary_;  // retained primary context of the device

  mutable std::mutex peers_mutex_;
  std::vector<int> peers_;      // ordinals
  std::vector<int> cu_peers_;   // the same as CUdevice handles, for set_access
};

}  // namespace glake::pool
