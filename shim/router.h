// shim/router.h: the one object behind every hook. It decides, per call, whether glake serves it or
// the real CUDA API does, and owns one pool per device.
//
// Routing rules (each hook is a one-line forward to a method here):
// - glake is off (bad GLAKE_* value, GLAKE_DISABLE=1, a forked child of a CUDA parent), or glake is
//   inside its own call into the real runtime (RealCall): the real API.
// - An allocation on a stream that is capturing a CUDA graph, a synchronous allocation while any
//   capture is under way, an allocation from a memory pool other than the device's default one (or
//   after cudaDeviceSetMemPool chose another current pool), and host, managed, pitched and array
//   allocations: the real API.
// - A pointer no glake pool owns (allocated before glake loaded, by the real API, or by someone else):
//   freed by the real API.
// - Everything else: a device's pool. For cudaMalloc/cuMemAlloc the current device's (cudaSetDevice;
//   cuCtxGetDevice for driver calls); for stream-ordered allocations the stream's device's, as CUDA's
//   (the legacy stream's is the current device). A stream-ordered free of another device's block
//   waits for its stream (free_after_stream).
//
// Stream order: cudaMallocAsync blocks belong to their stream (the pool reuses a block on another
// stream only after the work before its free has completed). cudaMalloc/cuMemAlloc blocks belong to
// a private stream of the router, so they are handed out only when no stream can still touch them;
// cudaFree/cuMemFree synchronize the block's device first, as the real ones do, and every device
// granted access to its pool (peers) that has a context, so no work issued before the free on any
// stream (non-blocking ones included, a peer's included) can still touch the block when it is reused.
// (So, as a real cudaFree can hang inside a group of collectives still waiting for other ranks, so can
// this one while a peer device runs such a group.) Frees of glake blocks issued while a capture is
// under way are held (see capture_frees_held). A capture is counted from just before it begins, once
// the frees already waiting for a device have finished (begin_free_wait): a capture's begin may so
// wait for another thread's cudaFree. A failed end of capture on a stream whose capture another
// thread is still beginning (a wrong program) takes that capture off the count, as does destroying
// the capturing stream.
//
// Process life: nothing happens before the first CUDA call reaches a hook (then the GLAKE_* settings
// are read, and with GLAKE_TRACE the tracer's session starts: tracer/session.h; pools are made per
// device on their first allocation, each watched by the session's recorder). At exit (an atexit handler
// registered after the driver's first cuInit) frees of glake blocks become no-ops and no driver call
// is made: memory is leaked rather than returned to a driver that may be gone. Pools are never
// destroyed. Fork: the router's locks are taken around fork(); a child whose parent had made a pool
// gets glake off (its CUDA is unusable anyway); other children are unaffected.
//
// Thread-safety: everything may be called from any thread. The object is constant-initialized and
// trivially destructible (no static destructor runs at exit).
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "pool/allocator.h"
#include "pool/cuda_driver.h"
#include "shim/glake.h"

namespace glake::tracer {
class TraceSession;
}

namespace glake::shim {

inline constexpr int kMaxDevices = 64;

class Ipc;

// One device's pool; created on the device's first allocation, never destroyed.
struct DevicePool {
  int device = -1;
  bool usable = false;  // false: the driver could not be opened for this device; its calls pass through
  pool::CudaDriver* driver = nullptr;
  pool::Allocator* alloc = nullptr;
  pool::StreamHandle sync_stream = 0;  // the router's private stream: cudaMalloc/cuMemAlloc blocks
};

enum class Mode : int { not_started = GLAKE_STATUS_NOT_STARTED, on = GLAKE_STATUS_ON, off = GLAKE_STATUS_OFF };

class Router {
 public:
  constexpr Router() = default;

  // ---- runtime API (cuda*) ----
  cudaError_t malloc(void** ptr, std::size_t size);
  cudaError_t free(void* ptr);
  cudaError_t malloc_async(void** ptr, std::size_t size, cudaStream_t stream, bool ptds);
  // stream_dev: the stream's device when the caller knows it (PyTorch's pluggable allocator), else -1.
  cudaError_t free_async(void* ptr, cudaStream_t stream, bool ptds, int stream_dev = -1);
  cudaError_t malloc_from_pool_async(void** ptr, std::size_t size, cudaMemPool_t pool, cudaStream_t stream,
                                     bool ptds);
  cudaError_t mem_get_info(std::size_t* free, std::size_t* total);
  cudaError_t device_get_default_mem_pool(cudaMemPool_t* pool, int device);
  cudaError_t device_set_mem_pool(int device, cudaMemPool_t pool);
  // CUDA 13's way to choose a location's pool: for a device and pinned memory, device_set_mem_pool's.
  cudaError_t mem_set_mem_pool(cudaMemLocation* location, cudaMemAllocationType type, cudaMemPool_t pool);
  // Destroying a device's current pool makes its default pool current again (CUDA): glake serves again.
  cudaError_t mem_pool_destroy(cudaMemPool_t pool);
  cudaError_t mem_pool_get_attribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
  cudaError_t mem_pool_set_attribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
  cudaError_t mem_pool_trim_to(cudaMemPool_t pool, std::size_t keep);
  cudaError_t mem_pool_set_access(cudaMemPool_t pool, const cudaMemAccessDesc* desc, std::size_t count);
  cudaError_t ipc_get_mem_handle(cudaIpcMemHandle_t* handle, void* ptr);
  cudaError_t ipc_open_mem_handle(void** ptr, cudaIpcMemHandle_t handle, unsigned int flags);
  cudaError_t ipc_close_mem_handle(void* ptr);
  cudaError_t device_enable_peer_access(int peer, unsigned int flags);
  cudaError_t stream_begin_capture(cudaStream_t stream, cudaStreamCaptureMode mode, bool ptds);
  cudaError_t stream_begin_capture_to_graph(cudaStream_t stream, cudaGraph_t graph,
                                            const cudaGraphNode_t* dependencies,
                                            const cudaGraphEdgeData* edge_data, std::size_t count,
                                            cudaStreamCaptureMode mode, bool ptds);
  cudaError_t stream_end_capture(cudaStream_t stream, cudaGraph_t* graph, bool ptds);
  // The pools settle what was freed on the stream while its handle is still valid: the allocator
  // records events on the streams blocks were freed on, and a destroyed stream's handle is dead.
  cudaError_t stream_destroy(cudaStream_t stream);
  cudaError_t get_last_error();
  cudaError_t peek_at_last_error();
  cudaError_t get_driver_entry_point(const char* symbol, void** fn, unsigned long long flags,
                                     cudaDriverEntryPointQueryResult* status, bool ptds);
  cudaError_t get_driver_entry_point_by_version(const char* symbol, void** fn, unsigned int version,
                                                unsigned long long flags, cudaDriverEntryPointQueryResult* status,
                                                bool ptds);

  // ---- driver API (cu*) ----
  CUresult cu_mem_alloc(CUdeviceptr* ptr, std::size_t size);
  CUresult cu_mem_free(CUdeviceptr ptr);
  CUresult cu_mem_alloc_async(CUdeviceptr* ptr, std::size_t size, CUstream stream, bool ptds);
  CUresult cu_mem_free_async(CUdeviceptr ptr, CUstream stream, bool ptds);
  CUresult cu_mem_get_info(std::size_t* free, std::size_t* total);
  // Another pool made current through the driver (a driver-API program, the static runtime) takes the
  // device's stream-ordered allocations, as cudaDeviceSetMemPool's does; the runtime's own call (inside
  // its hook) is left to that hook.
  CUresult cu_device_set_mem_pool(CUdevice device, CUmemoryPool pool);
  CUresult cu_mem_pool_destroy(CUmemoryPool pool);
  CUresult cu_mem_set_mem_pool(CUmemLocation* location, CUmemAllocationType type, CUmemoryPool pool);
  // The default pool through the driver (a statically linked runtime's cudaMemPool* and
  // cudaMallocFromPoolAsync, driver-API programs): as the runtime's calls above; the runtime's own
  // calls (inside its hooks) are left to those hooks.
  CUresult cu_mem_pool_get_attribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value);
  CUresult cu_mem_pool_set_attribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value);
  CUresult cu_mem_pool_trim_to(CUmemoryPool pool, std::size_t keep);
  CUresult cu_mem_pool_set_access(CUmemoryPool pool, const CUmemAccessDesc* desc, std::size_t count);
  CUresult cu_mem_alloc_from_pool_async(CUdeviceptr* ptr, std::size_t size, CUmemoryPool pool, CUstream stream,
                                        bool ptds);
  CUresult cu_ipc_get_mem_handle(CUipcMemHandle* handle, CUdeviceptr ptr);
  CUresult cu_ipc_open_mem_handle(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags);
  CUresult cu_ipc_close_mem_handle(CUdeviceptr ptr);
  CUresult cu_stream_destroy(CUstream stream);
  // Peer access enabled through the driver (a statically linked runtime's cudaDeviceEnablePeerAccess,
  // XLA) reaches glake's mappings as the runtime's does; the runtime's own call (inside its hook) is
  // left to that hook.
  CUresult cu_ctx_enable_peer_access(CUcontext peer, unsigned int flags);
  // Captures begun or ended through the driver (legacy and per-thread default stream variants: ptds)
  // are counted as the runtime's are; the runtime's own calls to these (inside its hooks above) are
  // not counted twice.
  CUresult cu_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode, bool ptds);
  CUresult cu_stream_begin_capture_to_graph(CUstream stream, CUgraph graph, const CUgraphNode* dependencies,
                                            const CUgraphEdgeData* edge_data, std::size_t count,
                                            CUstreamCaptureMode mode, bool ptds);
  CUresult cu_stream_end_capture(CUstream stream, CUgraph* graph, bool ptds);
  CUresult cu_get_proc_address(const char* symbol, void** fn, int version, cuuint64_t flags);
  CUresult cu_get_proc_address_v2(const char* symbol, void** fn, int version, cuuint64_t flags,
                                  CUdriverProcAddressQueryResult* status);

  // ---- PyTorch's CUDAPluggableAllocator ----
  void* pluggable_malloc(std::size_t size, int device, cudaStream_t stream);
  void pluggable_free(void* ptr, int device, cudaStream_t stream);

  // ---- glake.h ----
  int status();
  int stats(int device, glake_stats_t* out, std::size_t out_size);
  int trim(int device, std::size_t keep);
  int reset_peaks(int device);
  int validate(int device, char* msg, std::size_t msg_size);
  int device_of(const void* ptr);
  int trace_dump(const char* path);
  // Host memory ran out inside a runtime hook (its guard caught the exception): CUDA's answer, also
  // as the runtime's last error.
  cudaError_t host_memory_exhausted() { return fail(cudaErrorMemoryAllocation); }

  // ---- process life (router.cpp registers these) ----
  void prepare_fork();
  void parent_after_fork();
  void child_after_fork();
  void on_exit();

 private:
  Mode mode();
  Mode init();
  // On, not re-entered from glake's own real call, not exiting: glake may serve this call.
  bool serving();

  bool runtime_device(int* device);
  bool driver_device(int* device);
  // The usable pool of a device, made on first use; null: pass through. from_runtime: the call came
  // through a runtime hook (not from inside the runtime).
  DevicePool* pool_for(int device, bool from_runtime = true);
  DevicePool* create_pool(int device, bool from_runtime);
  DevicePool* existing_pool(int device) const;
  DevicePool* owner(pool::DevPtr ptr, int hint_device);

  // The pool's allocate; an out-of-memory answer leaves the pool's snapshot in the trace (GLAKE_TRACE).
  pool::Status allocate(DevicePool* p, std::size_t size, pool::StreamHandle stream, pool::DevPtr* out);
  // Synchronous free of a glake block: sync its device, then free. Returns the sync's error, if any.
  // stream_dev: the device of the stream it was freed on (cudaStreamPerThread), synchronized too.
  pool::Status free_sync(DevicePool* p, pool::DevPtr ptr, int stream_dev = -1);
  // After begin_free_wait: waits for stream_dev (if another device's), p's device and its peers,
  // then end_free_wait(). The error of p's device, if any.
  pool::Status wait_for_device(DevicePool* p, int stream_dev = -1);
  // Frees a block whose wait is over: on the router's own stream if the wait succeeded (the block's
  // stream may have been destroyed since), else ordered on the block's stream as before.
  pool::Status free_waited(DevicePool* p, pool::DevPtr ptr, bool waited);
  // The device of a stream (not the per-thread stream; the legacy stream's is the current device);
  // false: an invalid stream.
  bool stream_device(pool::StreamHandle stream, bool driver_api, int* device);
  // Stream-ordered free into the pool of the stream's device (dev, or -1: ask stream_device); a block
  // of another device is freed by free_after_stream. runtime_sync: null for a driver-API call, else
  // where the runtime's error of such a wait goes. False: no pool owns ptr, or the stream is invalid
  // (the real API answers).
  bool free_on_stream(pool::DevPtr ptr, pool::StreamHandle stream, int dev, cudaError_t* runtime_sync,
                      pool::Status* st);
  // A block of pool p freed on a stream of another device. An event records only streams of its own
  // context, so the pool cannot order the block after that stream: the free waits for the stream
  // (blocking the calling thread), then frees the block on its own stream.
  pool::Status free_after_stream(DevicePool* p, pool::DevPtr ptr, pool::StreamHandle stream, int stream_dev,
                                 cudaError_t* runtime_sync);
  void forget_stream(const void* stream);
  // forget_stream, then destroy() (the real destroy), dropping the threads' cached stream devices.
  template <class Destroy>
  auto destroy_stream(const void* stream, Destroy destroy);
  bool runtime_stream_capturing(cudaStream_t stream);
  bool driver_stream_capturing(CUstream stream);
  // Empty: the free may wait for the device now (end_free_wait() after the wait, then the pool's free
  // through Freeing); else the free's answer: held until the captures end (ok), or already held, kept or
  // being freed (invalid_value: a second free of the block).
  // stream_dev: the device of the stream it was freed on (-1: none), waited for too at the flush.
  std::optional<pool::Status> begin_free_wait(DevicePool* p, pool::DevPtr ptr, int stream_dev = -1);
  void end_free_wait();
  // The free of ptr that begin_free_wait let wait: Freeing does the pool's free and takes ptr off
  // freeing_ in one step (under mutex_).
  struct Freeing;
  void unlist_freeing(pool::DevPtr ptr);  // under mutex_
  // ptr is in held_frees_ (held, or being freed by flush_held), kept_ or freeing_: a free of it is a
  // second one.
  bool is_held(pool::DevPtr ptr);
  // A free of a glake block on a capturing stream: the block is kept for good (kept_), as the graph may
  // touch it at each replay; a later free of it is a second one. invalid_value: freed already.
  pool::Status keep_for_graph(DevicePool* p, pool::DevPtr ptr);
  bool is_kept(pool::DevPtr ptr) const;  // in kept_ (under mutex_)
  bool is_freeing(pool::DevPtr ptr) const;  // in freeing_ (under mutex_)
  std::size_t held_index(pool::DevPtr ptr) const;  // in held_frees_, or held_count_ (under mutex_)
  // Does the held frees, one at a time, each listed until it is done; stops when a capture begins
  // (its end does the rest). Called by the one thread that set flushing_.
  void flush_held();
  // Captures are counted by key: the stream's handle, or for a thread's own stream the thread's key
  // for the current device.
  cudaStream_t capture_key(pool::StreamHandle stream, bool driver_api);
  void capture_started(cudaStream_t key);
  void capture_ended(cudaStream_t key);
  // A thread that exits in the middle of a capture of its own stream ends it (its stream goes with it):
  // the calling thread's keys are taken off the count when it exits.
  static void end_own_captures_at_exit();
  static void own_captures_over(void*);
  // Runs begin(), the real begin of a capture of `stream`, with the capture counted from just before
  // it (so that no other thread's free synchronizes the device once it is under way) and no longer
  // if it fails.
  template <class Begin>
  auto counted_begin(pool::StreamHandle stream, bool driver_api, Begin begin);
  // The pool's trim. It may wait for the pool's streams only while no capture is under way (a wait
  // would invalidate one begun in global mode), and then counts as a waiting free (begin_free_wait)
  // so that no capture begins before it is done; during a capture it releases only what is known free.
  void trim_pool(DevicePool* p, std::size_t keep);
  pool::Status synchronize_device(int device);
  static bool device_context_active(int device);  // its primary context exists (is retained)

  int default_pool_device(cudaMemPool_t pool);
  int driver_default_pool_device(CUmemoryPool pool);  // learns the default pools from the driver
  int known_default_pool_device(std::uintptr_t pool) const;
  DevicePool* default_pool_server(int dev, pool::StreamHandle s, bool driver_api);
  // The default pool's attributes, high-water marks, trim and peers, for the runtime's and the
  // driver's calls alike (dev: the pool's device, or -1 for another pool: nothing to do).
  void add_pool_figures(int dev, CUmemPool_attribute attr, void* value);
  void reset_pool_peak(int dev, CUmemPool_attribute attr);
  void trim_default_pool(int dev, std::size_t keep);
  void grant_pool_peers(int dev, const CUmemAccessDesc* desc, std::size_t count);
  void grant_peer(int owner_device, int accessor_device);
  void refresh_access(DevicePool* p);
  void count_passthrough(int device, bool driver_api = false);
  cudaError_t fail(cudaError_t e);
  Ipc* ipc();
  // If a pool serves the block at ptr: exports it into *handle, sets *result and returns true.
  bool ipc_export(pool::DevPtr ptr, int device_hint, cudaIpcMemHandle_t* handle, cudaError_t* result);
  // After a pool's destruction: clears custom_pool_ of each device whose default pool is current again.
  void recheck_custom_pools();
  void recheck_custom_pool(int device);  // the same for one device
  bool custom_pool(int device) const { return (custom_pool_[device].load(std::memory_order_relaxed) & 1) != 0; }
  void set_custom_pool(int device, bool custom);

  std::atomic<int> mode_{static_cast<int>(Mode::not_started)};
  std::atomic<bool> exiting_{false};
  std::atomic<bool> forked_{false};
  std::atomic<int> captures_{0};
  std::atomic<bool> exit_hook_{false};
  pthread_mutex_t mutex_ = PTHREAD_MUTEX_INITIALIZER;  // init, captures, held frees
  // Pool creation and peers_. Held across driver calls (cuInit, context, stream), so fork's prepare
  // handler never takes it: a driver whose own prepare handler locks what those calls need would
  // deadlock against it. The child makes it anew.
  pthread_mutex_t create_mutex_ = PTHREAD_MUTEX_INITIALIZER;
  std::atomic<bool> creating_{false};  // a pool is being made (under create_mutex_)
  pthread_cond_t frees_waited_ = PTHREAD_COND_INITIALIZER;  // waiting_frees_ fell to 0
  std::size_t waiting_frees_ = 0;  // frees waiting for the device or a stream now (mutex_)

  pool::Config config_{};
  bool verbose_ = false;

  std::atomic<DevicePool*> pools_[kMaxDevices] = {};
  std::atomic<std::uintptr_t> default_pools_[kMaxDevices] = {};  // cudaMemPool_t of each device, once known
  std::atomic<bool> driver_pools_known_{false};  // every device's default pool is in default_pools_ (driver)
  // cudaDeviceSetMemPool/cuDeviceSetMemPool chose another pool: bit 0; above it, how many times a pool
  // was chosen (recheck_custom_pools clears the bit only if no choice came since it looked).
  std::atomic<std::uint32_t> custom_pool_[kMaxDevices] = {};
  std::atomic<std::uint64_t> peers_[kMaxDevices] = {};          // devices granted access to this one's pool
  std::atomic<std::uint64_t> passthrough_[kMaxDevices + 1] = {};  // [kMaxDevices]: device unknown
  std::atomic<std::uint64_t> held_[kMaxDevices] = {};
  std::atomic<int> pool_count_{0};  // highest device with a pool, + 1
  std::atomic<std::uint64_t> stream_epoch_{1};  // streams destroyed, + 1 (see stream_device)

  cudaStream_t* capturing_ = nullptr;  // keys of the captures begun through glake's hooks (grown by realloc)
  std::size_t capturing_count_ = 0;
  std::size_t capturing_capacity_ = 0;
  struct HeldFree {
    DevicePool* pool;
    pool::DevPtr ptr;
    int stream_dev;  // the device of the stream it was freed on, or -1
  };
  HeldFree* held_frees_ = nullptr;  // frees of glake blocks during capture, done when captures end
  std::size_t held_count_ = 0;
  std::size_t held_capacity_ = 0;
  std::atomic<bool> any_held_{false};  // held_count_ != 0 (set under mutex_): frees must ask is_held
  bool flushing_ = false;              // a thread is in flush_held (under mutex_)
  // Blocks freed on a capturing stream, kept for good (keep_for_graph), in address order (under mutex_).
  pool::DevPtr* kept_ = nullptr;
  std::size_t kept_count_ = 0;
  std::size_t kept_capacity_ = 0;
  // The lowest and highest kept block (set under mutex_): a free of a pointer outside asks no lock.
  std::atomic<pool::DevPtr> kept_lo_{~pool::DevPtr{0}};
  std::atomic<pool::DevPtr> kept_hi_{0};
  // Blocks whose free waits for the device (from begin_free_wait until the pool frees them),
  // in no order (under mutex_): a second free meanwhile could otherwise free them twice, the second
  // time as the block of whoever got the address next.
  pool::DevPtr* freeing_ = nullptr;
  std::size_t freeing_count_ = 0;
  std::size_t freeing_capacity_ = 0;
  std::atomic<bool> any_freeing_{false};  // freeing_count_ != 0 (set under mutex_)

  std::atomic<Ipc*> ipc_{nullptr};
  std::atomic<tracer::TraceSession*> session_{nullptr};  // GLAKE_TRACE; set in init(), before mode_
  // A forked child whose parent had a session but no pool (glake stays on here): the parent's session
  // is dropped at the fork and the child's own is started with its first pool (start_child_trace).
  std::atomic<bool> trace_restart_{false};
  void start_child_trace();  // under create_mutex_
};

Router& router();

// Status <-> CUDA error codes. pool::Status uses CUresult numbering.
cudaError_t to_runtime_error(pool::Status s);
inline CUresult to_driver_error(pool::Status s) { return static_cast<CUresult>(static_cast<int>(s)); }

// Whether glake will serve and hand PyTorch's tensors to itself: no GLAKE_* value is bad (read as
// Router::init() reads them, silently), GLAKE_DISABLE is off and GLAKE_PYTORCH is on.
bool settings_serve_pytorch();

// One line on stderr, "glake: ..." (write(2), no stdio lock: safe after fork and at exit).
void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace glake::shim
