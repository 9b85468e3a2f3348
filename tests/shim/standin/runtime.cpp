// tests/shim/standin/runtime.cpp: the stand-in libcudart.so.13.
//
// It reaches the driver the way the real runtime does: dlopen("libcuda.so.1"), dlsym of
// cuGetProcAddress_v2 on that handle, then every driver function through cuGetProcAddress_v2 — so
// under libglake.so its table holds whatever glake answered (standin.h lets tests read it). The real
// libcudart.so.13 cannot run on the stand-in driver (it needs the driver's private export tables).
// Exported names carry the version libcudart.so.13 (cudart.map), as the real library's do.
// Each thread has a current device (0 at first) whose primary context it makes current, unless a
// context is already current on the thread (made so through the driver): as the real runtime, it then
// uses that one, and cudaGetDevice names that context's device.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "standin.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

#define DRIVER_FUNCTIONS(X)                                                         \
  X(init, "cuInit", decltype(&::cuInit))                                            \
  X(device_get_count, "cuDeviceGetCount", decltype(&::cuDeviceGetCount))            \
  X(device_can_access_peer, "cuDeviceCanAccessPeer", decltype(&::cuDeviceCanAccessPeer)) \
  X(primary_ctx_retain, "cuDevicePrimaryCtxRetain", decltype(&::cuDevicePrimaryCtxRetain)) \
  X(ctx_set_current, "cuCtxSetCurrent", decltype(&::cuCtxSetCurrent))               \
  X(ctx_get_current, "cuCtxGetCurrent", decltype(&::cuCtxGetCurrent))               \
  X(ctx_get_device, "cuCtxGetDevice", decltype(&::cuCtxGetDevice))                  \
  X(ctx_synchronize, "cuCtxSynchronize", decltype(&::cuCtxSynchronize))             \
  X(ctx_enable_peer_access, "cuCtxEnablePeerAccess", decltype(&::cuCtxEnablePeerAccess)) \
  X(mem_get_info, "cuMemGetInfo", decltype(&::cuMemGetInfo))                        \
  X(mem_alloc, "cuMemAlloc", decltype(&::cuMemAlloc))                               \
  X(mem_free, "cuMemFree", decltype(&::cuMemFree))                                  \
  X(mem_alloc_pitch, "cuMemAllocPitch", decltype(&::cuMemAllocPitch))               \
  X(mem_alloc_managed, "cuMemAllocManaged", decltype(&::cuMemAllocManaged))         \
  X(mem_alloc_async, "cuMemAllocAsync", decltype(&::cuMemAllocAsync))               \
  X(mem_alloc_from_pool_async, "cuMemAllocFromPoolAsync", decltype(&::cuMemAllocFromPoolAsync)) \
  X(mem_free_async, "cuMemFreeAsync", decltype(&::cuMemFreeAsync))                  \
  X(mem_host_alloc, "cuMemHostAlloc", decltype(&::cuMemHostAlloc))                  \
  X(mem_free_host, "cuMemFreeHost", decltype(&::cuMemFreeHost))                     \
  X(device_get_default_mem_pool, "cuDeviceGetDefaultMemPool", decltype(&::cuDeviceGetDefaultMemPool)) \
  X(device_get_mem_pool, "cuDeviceGetMemPool", decltype(&::cuDeviceGetMemPool))     \
  X(device_set_mem_pool, "cuDeviceSetMemPool", decltype(&::cuDeviceSetMemPool))     \
  X(mem_set_mem_pool, "cuMemSetMemPool", decltype(&::cuMemSetMemPool))              \
  X(mem_pool_create, "cuMemPoolCreate", decltype(&::cuMemPoolCreate))               \
  X(mem_pool_destroy, "cuMemPoolDestroy", decltype(&::cuMemPoolDestroy))            \
  X(mem_pool_get_attribute, "cuMemPoolGetAttribute", decltype(&::cuMemPoolGetAttribute)) \
  X(mem_pool_set_attribute, "cuMemPoolSetAttribute", decltype(&::cuMemPoolSetAttribute)) \
  X(mem_pool_trim_to, "cuMemPoolTrimTo", decltype(&::cuMemPoolTrimTo))              \
  X(mem_pool_set_access, "cuMemPoolSetAccess", decltype(&::cuMemPoolSetAccess))     \
  X(ipc_get_mem_handle, "cuIpcGetMemHandle", decltype(&::cuIpcGetMemHandle))        \
  X(ipc_open_mem_handle, "cuIpcOpenMemHandle", decltype(&::cuIpcOpenMemHandle))     \
  X(ipc_close_mem_handle, "cuIpcCloseMemHandle", decltype(&::cuIpcCloseMemHandle))  \
  X(stream_create, "cuStreamCreate", decltype(&::cuStreamCreate))                   \
  X(stream_destroy, "cuStreamDestroy", decltype(&::cuStreamDestroy))                \
  X(stream_synchronize, "cuStreamSynchronize", decltype(&::cuStreamSynchronize))    \
  X(stream_query, "cuStreamQuery", decltype(&::cuStreamQuery))                      \
  X(stream_wait_event, "cuStreamWaitEvent", decltype(&::cuStreamWaitEvent))         \
  X(stream_begin_capture, "cuStreamBeginCapture", decltype(&::cuStreamBeginCapture_v2)) \
  X(stream_end_capture, "cuStreamEndCapture", decltype(&::cuStreamEndCapture))      \
  X(stream_is_capturing, "cuStreamIsCapturing", decltype(&::cuStreamIsCapturing))   \
  X(thread_exchange_capture_mode, "cuThreadExchangeStreamCaptureMode", decltype(&::cuThreadExchangeStreamCaptureMode)) \
  X(launch_host_func, "cuLaunchHostFunc", decltype(&::cuLaunchHostFunc))            \
  X(memcpy, "cuMemcpy", decltype(&::cuMemcpy))                                      \
  X(memcpy_async, "cuMemcpyAsync", decltype(&::cuMemcpyAsync))                      \
  X(memset_d8, "cuMemsetD8", decltype(&::cuMemsetD8_v2))                            \
  X(memset_d8_async, "cuMemsetD8Async", decltype(&::cuMemsetD8Async))               \
  X(event_create, "cuEventCreate", decltype(&::cuEventCreate))                      \
  X(event_destroy, "cuEventDestroy", decltype(&::cuEventDestroy))                   \
  X(event_record, "cuEventRecord", decltype(&::cuEventRecord))                      \
  X(event_query, "cuEventQuery", decltype(&::cuEventQuery))                         \
  X(event_synchronize, "cuEventSynchronize", decltype(&::cuEventSynchronize))       \
  X(graph_instantiate, "cuGraphInstantiateWithFlags", decltype(&::cuGraphInstantiateWithFlags)) \
  X(graph_launch, "cuGraphLaunch", decltype(&::cuGraphLaunch))                      \
  X(graph_exec_destroy, "cuGraphExecDestroy", decltype(&::cuGraphExecDestroy))      \
  X(graph_destroy, "cuGraphDestroy", decltype(&::cuGraphDestroy))

using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

struct Driver {
  GetProc get_proc = nullptr;
  CUresult (*unsafe_call)() = nullptr;  // the stand-in driver's capture rules, for calls only the runtime has
  void* mem_alloc_async_ptsz = nullptr;
  void* mem_free_async_ptsz = nullptr;
#define FIELD(field, name, type) type field = nullptr;
  DRIVER_FUNCTIONS(FIELD)
#undef FIELD
};

Driver drv;
std::once_flag once;
std::atomic<bool> loaded{false};  // load() has run
cudaError_t init_error = cudaSuccess;
thread_local int tl_device = 0;
thread_local cudaError_t tl_last = cudaSuccess;

template <class F>
F as(void* p) {
  F f;
  std::memcpy(&f, &p, sizeof f);
  return f;
}

void load() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    init_error = cudaErrorInsufficientDriver;
    return;
  }
  // Plain dlsym, as the real runtime does: under libglake.so this is glake's dlsym.
  drv.get_proc = as<GetProc>(dlsym(lib, "cuGetProcAddress_v2"));
  if (drv.get_proc == nullptr) {
    init_error = cudaErrorInsufficientDriver;
    return;
  }
  drv.unsafe_call = as<CUresult (*)()>(dlsym(lib, "standin_unsafe_call"));
  // The real runtime asks for each symbol at the version that introduced the ABI it uses (as seen
  // from libcudart.so.13: cuMemAlloc at 3020, cuMemAllocAsync at 11020, its ptsz variant with flag 2);
  // so does this one for the entry points glake interposes.
  auto version_of = [](const char* name) {
    for (const char* n : {"cuMemAlloc", "cuMemFree", "cuMemGetInfo", "cuMemAllocPitch"})
      if (std::strcmp(n, name) == 0) return 3020;
    for (const char* n : {"cuMemAllocAsync", "cuMemFreeAsync", "cuMemAllocFromPoolAsync"})
      if (std::strcmp(n, name) == 0) return 11020;
    return 13000;
  };
  auto get = [&](const char* name, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* p = nullptr;
    CUdriverProcAddressQueryResult st;
    return drv.get_proc(name, &p, version_of(name), flags, &st) == CUDA_SUCCESS ? p : nullptr;
  };
#define GET(field, name, type) drv.field = as<type>(get(name));
  DRIVER_FUNCTIONS(GET)
#undef GET
  drv.mem_alloc_async_ptsz = get("cuMemAllocAsync", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  drv.mem_free_async_ptsz = get("cuMemFreeAsync", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  if (drv.init == nullptr || drv.init(0) != CUDA_SUCCESS) init_error = cudaErrorInitializationError;
  loaded.store(true);
}

// As the real runtime ("Interactions with the CUDA Driver API"): a context current on the thread,
// made so through the driver, is the one runtime calls use, and its device is the current device.
bool adopt_current_context() {
  if (!loaded.load() || init_error != cudaSuccess || drv.ctx_get_current == nullptr || drv.ctx_get_device == nullptr)
    return false;
  CUcontext ctx = nullptr;
  CUdevice dev = 0;
  if (drv.ctx_get_current(&ctx) != CUDA_SUCCESS || ctx == nullptr || drv.ctx_get_device(&dev) != CUDA_SUCCESS)
    return false;
  tl_device = static_cast<int>(dev);
  return true;
}

cudaError_t to_rt(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS: return cudaSuccess;
    case CUDA_ERROR_NOT_INITIALIZED: return cudaErrorInitializationError;
    case CUDA_ERROR_DEINITIALIZED: return cudaErrorCudartUnloading;
    case CUDA_ERROR_INVALID_CONTEXT: return cudaErrorDeviceUninitialized;
    case CUDA_ERROR_INVALID_HANDLE: return cudaErrorInvalidResourceHandle;
    case CUDA_ERROR_NOT_FOUND: return cudaErrorSymbolNotFound;
    default: return static_cast<cudaError_t>(static_cast<int>(r));
  }
}

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) tl_last = e;
  return e;
}

// Makes the current device's primary context current on this thread (the driver is loaded).
cudaError_t make_primary_current() {
  CUcontext ctx = nullptr;
  CUresult r = drv.primary_ctx_retain(&ctx, tl_device);
  if (r == CUDA_SUCCESS) r = drv.ctx_set_current(ctx);
  return record(to_rt(r));
}

// Loads the driver once and makes the current device's primary context current on this thread.
cudaError_t ready() {
  std::call_once(once, load);
  if (init_error != cudaSuccess) return record(init_error);
  if (adopt_current_context()) return cudaSuccess;
  return make_primary_current();
}

#define READY()                           \
  do {                                    \
    if (cudaError_t e_ = ready()) return e_; \
  } while (0)

cudaError_t call(CUresult r) { return record(to_rt(r)); }

CUstream st(cudaStream_t s) { return reinterpret_cast<CUstream>(s); }

}  // namespace

// ---- devices ---------------------------------------------------------------------------------

EXPORT cudaError_t cudaGetDeviceCount(int* n) {
  std::call_once(once, load);
  if (init_error != cudaSuccess) return record(init_error);
  return call(drv.device_get_count(n));
}
EXPORT cudaError_t cudaGetDevice(int* d) {
  if (d == nullptr) return record(cudaErrorInvalidValue);
  (void)adopt_current_context();
  *d = tl_device;
  return cudaSuccess;
}
EXPORT cudaError_t cudaSetDevice(int d) {
  int n = 0;
  if (cudaError_t e = cudaGetDeviceCount(&n)) return e;
  if (d < 0 || d >= n) return record(cudaErrorInvalidDevice);
  tl_device = d;
  return make_primary_current();
}
EXPORT cudaError_t cudaDeviceSynchronize() {
  READY();
  return call(drv.ctx_synchronize());
}
EXPORT cudaError_t cudaDriverGetVersion(int* v) {
  if (v == nullptr) return record(cudaErrorInvalidValue);
  *v = 13000;
  return cudaSuccess;
}
EXPORT cudaError_t cudaRuntimeGetVersion(int* v) {
  if (v == nullptr) return record(cudaErrorInvalidValue);
  *v = 13000;
  return cudaSuccess;
}
EXPORT cudaError_t cudaGetLastError() {
  const cudaError_t e = tl_last;
  tl_last = cudaSuccess;
  return e;
}
EXPORT cudaError_t cudaPeekAtLastError() { return tl_last; }
EXPORT const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "stand-in runtime error"; }
EXPORT const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaError"; }
EXPORT cudaError_t cudaDeviceCanAccessPeer(int* can, int d, int peer) {
  READY();
  return call(drv.device_can_access_peer(can, d, peer));
}
EXPORT cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned int flags) {
  READY();
  CUcontext ctx = nullptr;
  if (cudaError_t e = call(drv.primary_ctx_retain(&ctx, peer))) return e;
  return call(drv.ctx_enable_peer_access(ctx, flags));
}

// ---- memory ------------------------------------------------------------------------------------

EXPORT cudaError_t cudaMalloc(void** p, size_t n) {
  READY();
  if (p == nullptr) return record(cudaErrorInvalidValue);
  if (n == 0) {  // no driver call, as the real runtime (tests/gpu/shim)
    *p = nullptr;
    return cudaSuccess;
  }
  CUdeviceptr v = 0;
  const CUresult r = drv.mem_alloc(&v, n);
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
EXPORT cudaError_t cudaFree(void* p) {
  READY();
  if (p == nullptr) {
    // Initialises the context, as the real one does; and is potentially unsafe during a capture, as the
    // real one is (tests/gpu/probe_capture_neighbours: another thread's global capture is invalidated).
    return drv.unsafe_call != nullptr ? call(drv.unsafe_call()) : cudaSuccess;
  }
  return call(drv.mem_free(reinterpret_cast<CUdeviceptr>(p)));
}
EXPORT cudaError_t cudaMallocPitch(void** p, size_t* pitch, size_t w, size_t h) {
  READY();
  CUdeviceptr v = 0;
  const CUresult r = drv.mem_alloc_pitch(&v, pitch, w, h, 4);
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
EXPORT cudaError_t cudaMallocManaged(void** p, size_t n, unsigned int flags) {
  READY();
  CUdeviceptr v = 0;
  const CUresult r = drv.mem_alloc_managed(&v, n, flags);
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
EXPORT cudaError_t cudaMallocHost(void** p, size_t n) {
  READY();
  return call(drv.mem_host_alloc(p, n, 0));
}
EXPORT cudaError_t cudaHostAlloc(void** p, size_t n, unsigned int flags) {
  READY();
  return call(drv.mem_host_alloc(p, n, flags));
}
EXPORT cudaError_t cudaFreeHost(void* p) {
  READY();
  return call(drv.mem_free_host(p));
}
EXPORT cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  READY();
  return call(drv.mem_get_info(free, total));
}

static cudaError_t malloc_async(void** p, size_t n, cudaStream_t s, bool ptds) {
  READY();
  if (p == nullptr) return record(cudaErrorInvalidValue);
  CUdeviceptr v = 0;
  const auto f = ptds ? as<decltype(drv.mem_alloc_async)>(drv.mem_alloc_async_ptsz) : drv.mem_alloc_async;
  const CUresult r = f(&v, n, st(s));
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
static cudaError_t free_async(void* p, cudaStream_t s, bool ptds) {
  READY();
  const auto f = ptds ? as<decltype(drv.mem_free_async)>(drv.mem_free_async_ptsz) : drv.mem_free_async;
  return call(f(reinterpret_cast<CUdeviceptr>(p), st(s)));
}
EXPORT cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s) { return malloc_async(p, n, s, false); }
EXPORT cudaError_t cudaMallocAsync_ptsz(void** p, size_t n, cudaStream_t s) { return malloc_async(p, n, s, true); }
EXPORT cudaError_t cudaFreeAsync(void* p, cudaStream_t s) { return free_async(p, s, false); }
EXPORT cudaError_t cudaFreeAsync_ptsz(void* p, cudaStream_t s) { return free_async(p, s, true); }
static cudaError_t malloc_from_pool(void** p, size_t n, cudaMemPool_t pool, cudaStream_t s) {
  READY();
  CUdeviceptr v = 0;
  const CUresult r = drv.mem_alloc_from_pool_async(&v, n, reinterpret_cast<CUmemoryPool>(pool), st(s));
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
EXPORT cudaError_t cudaMallocFromPoolAsync(void** p, size_t n, cudaMemPool_t pool, cudaStream_t s) {
  return malloc_from_pool(p, n, pool, s);
}
EXPORT cudaError_t cudaMallocFromPoolAsync_ptsz(void** p, size_t n, cudaMemPool_t pool, cudaStream_t s) {
  return malloc_from_pool(p, n, pool, s == nullptr ? cudaStreamPerThread : s);
}

EXPORT cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  READY();
  return call(drv.memcpy(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), n));
}
EXPORT cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t s) {
  READY();
  return call(drv.memcpy_async(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), n, st(s)));
}
EXPORT cudaError_t cudaMemset(void* p, int v, size_t n) {
  READY();
  return call(drv.memset_d8(reinterpret_cast<CUdeviceptr>(p), static_cast<unsigned char>(v), n));
}
EXPORT cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s) {
  READY();
  return call(drv.memset_d8_async(reinterpret_cast<CUdeviceptr>(p), static_cast<unsigned char>(v), n, st(s)));
}

// ---- memory pools --------------------------------------------------------------------------------

EXPORT cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  READY();
  return call(drv.device_get_default_mem_pool(reinterpret_cast<CUmemoryPool*>(pool), d));
}
EXPORT cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* pool, int d) {
  READY();
  return call(drv.device_get_mem_pool(reinterpret_cast<CUmemoryPool*>(pool), d));
}
EXPORT cudaError_t cudaDeviceSetMemPool(int d, cudaMemPool_t pool) {
  READY();
  return call(drv.device_set_mem_pool(d, reinterpret_cast<CUmemoryPool>(pool)));
}
EXPORT cudaError_t cudaMemSetMemPool(cudaMemLocation* location, cudaMemAllocationType type, cudaMemPool_t pool) {
  READY();
  if (location == nullptr) return record(cudaErrorInvalidValue);
  CUmemLocation l{};
  l.type = static_cast<CUmemLocationType>(location->type);
  l.id = location->id;
  return call(drv.mem_set_mem_pool(&l, static_cast<CUmemAllocationType>(type), reinterpret_cast<CUmemoryPool>(pool)));
}
EXPORT cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps* props) {
  READY();
  if (props == nullptr) return record(cudaErrorInvalidValue);
  CUmemPoolProps p{};
  p.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = props->location.id;
  return call(drv.mem_pool_create(reinterpret_cast<CUmemoryPool*>(pool), &p));
}
EXPORT cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
  READY();
  return call(drv.mem_pool_destroy(reinterpret_cast<CUmemoryPool>(pool)));
}
EXPORT cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* v) {
  READY();
  return call(drv.mem_pool_get_attribute(reinterpret_cast<CUmemoryPool>(pool), static_cast<CUmemPool_attribute>(attr), v));
}
EXPORT cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* v) {
  READY();
  return call(drv.mem_pool_set_attribute(reinterpret_cast<CUmemoryPool>(pool), static_cast<CUmemPool_attribute>(attr), v));
}
EXPORT cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  READY();
  return call(drv.mem_pool_trim_to(reinterpret_cast<CUmemoryPool>(pool), keep));
}
EXPORT cudaError_t cudaMemPoolSetAccess(cudaMemPool_t pool, const cudaMemAccessDesc* desc, size_t count) {
  READY();
  return call(drv.mem_pool_set_access(reinterpret_cast<CUmemoryPool>(pool), reinterpret_cast<const CUmemAccessDesc*>(desc),
                                      count));
}

// ---- IPC ---------------------------------------------------------------------------------------

EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* h, void* p) {
  READY();
  return call(drv.ipc_get_mem_handle(reinterpret_cast<CUipcMemHandle*>(h), reinterpret_cast<CUdeviceptr>(p)));
}
EXPORT cudaError_t cudaIpcOpenMemHandle(void** p, cudaIpcMemHandle_t h, unsigned int flags) {
  READY();
  CUipcMemHandle ch;
  std::memcpy(&ch, &h, sizeof ch);
  CUdeviceptr v = 0;
  const CUresult r = drv.ipc_open_mem_handle(&v, ch, flags);
  if (r == CUDA_SUCCESS) *p = reinterpret_cast<void*>(v);
  return call(r);
}
EXPORT cudaError_t cudaIpcCloseMemHandle(void* p) {
  READY();
  return call(drv.ipc_close_mem_handle(reinterpret_cast<CUdeviceptr>(p)));
}

// ---- streams, events, graphs ------------------------------------------------------------------------

EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  READY();
  return call(drv.stream_create(reinterpret_cast<CUstream*>(s), flags));
}
EXPORT cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
EXPORT cudaError_t cudaStreamDestroy(cudaStream_t s) {
  READY();
  return call(drv.stream_destroy(st(s)));
}
EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  READY();
  return call(drv.stream_synchronize(st(s)));
}
EXPORT cudaError_t cudaStreamQuery(cudaStream_t s) {
  READY();
  return call(drv.stream_query(st(s)));
}
EXPORT cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
  READY();
  return call(drv.stream_wait_event(st(s), reinterpret_cast<CUevent>(e), flags));
}
EXPORT cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  READY();
  CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
  const CUresult r = drv.stream_is_capturing(st(s), &cs);
  if (r == CUDA_SUCCESS && status != nullptr) *status = static_cast<cudaStreamCaptureStatus>(cs);
  return call(r);
}
EXPORT cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  READY();
  return call(drv.thread_exchange_capture_mode(reinterpret_cast<CUstreamCaptureMode*>(mode)));
}
static cudaError_t begin_capture(cudaStream_t s, cudaStreamCaptureMode mode) {
  READY();
  return call(drv.stream_begin_capture(st(s), static_cast<CUstreamCaptureMode>(mode)));
}
EXPORT cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) { return begin_capture(s, mode); }
EXPORT cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t s, cudaStreamCaptureMode mode) {
  return begin_capture(s == nullptr ? cudaStreamPerThread : s, mode);
}
static cudaError_t end_capture(cudaStream_t s, cudaGraph_t* graph) {
  READY();
  return call(drv.stream_end_capture(st(s), reinterpret_cast<CUgraph*>(graph)));
}
EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) { return end_capture(s, graph); }
EXPORT cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t s, cudaGraph_t* graph) {
  return end_capture(s == nullptr ? cudaStreamPerThread : s, graph);
}
EXPORT cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  READY();
  return call(drv.graph_instantiate(reinterpret_cast<CUgraphExec*>(exec), reinterpret_cast<CUgraph>(graph), flags));
}
EXPORT cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  READY();
  return call(drv.graph_launch(reinterpret_cast<CUgraphExec>(exec), st(s)));
}
EXPORT cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  READY();
  return call(drv.graph_exec_destroy(reinterpret_cast<CUgraphExec>(exec)));
}
EXPORT cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  READY();
  return call(drv.graph_destroy(reinterpret_cast<CUgraph>(graph)));
}
EXPORT cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* data) {
  READY();
  return call(drv.launch_host_func(st(s), fn, data));
}
EXPORT cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
  READY();
  return call(drv.event_create(reinterpret_cast<CUevent*>(e), flags));
}
EXPORT cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
EXPORT cudaError_t cudaEventDestroy(cudaEvent_t e) {
  READY();
  return call(drv.event_destroy(reinterpret_cast<CUevent>(e)));
}
EXPORT cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  READY();
  return call(drv.event_record(reinterpret_cast<CUevent>(e), st(s)));
}
EXPORT cudaError_t cudaEventQuery(cudaEvent_t e) {
  READY();
  return call(drv.event_query(reinterpret_cast<CUevent>(e)));
}
EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  READY();
  return call(drv.event_synchronize(reinterpret_cast<CUevent>(e)));
}

// ---- driver entry points -----------------------------------------------------------------------------

static cudaError_t entry_point(const char* symbol, void** fn, unsigned int version, unsigned long long flags,
                               cudaDriverEntryPointQueryResult* status) {
  std::call_once(once, load);
  if (init_error != cudaSuccess) return record(init_error);
  CUdriverProcAddressQueryResult q = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  const CUresult r = drv.get_proc(symbol, fn, static_cast<int>(version), flags, &q);
  if (status != nullptr) *status = static_cast<cudaDriverEntryPointQueryResult>(q);
  return call(r);
}
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
EXPORT cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** fn, unsigned long long flags,
                                           cudaDriverEntryPointQueryResult* status) {
  return entry_point(symbol, fn, 13000, flags, status);
}
#pragma GCC diagnostic pop
EXPORT cudaError_t cudaGetDriverEntryPoint_ptsz(const char* symbol, void** fn, unsigned long long flags,
                                                cudaDriverEntryPointQueryResult* status) {
  return entry_point(symbol, fn, 13000, flags, status);
}
EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int version,
                                                    unsigned long long flags, cudaDriverEntryPointQueryResult* status) {
  return entry_point(symbol, fn, version, flags, status);
}
EXPORT cudaError_t cudaGetDriverEntryPointByVersion_ptsz(const char* symbol, void** fn, unsigned int version,
                                                         unsigned long long flags,
                                                         cudaDriverEntryPointQueryResult* status) {
  return entry_point(symbol, fn, version, flags, status);
}

// ---- for tests -------------------------------------------------------------------------------------

EXPORT void* standin_runtime_driver_entry(const char* name) {
  std::call_once(once, load);
  if (name == nullptr) return nullptr;
  auto ptr = [](auto f) {
    void* p;
    std::memcpy(&p, &f, sizeof p);
    return p;
  };
  if (std::strcmp(name, "cuMemAlloc_v2") == 0) return ptr(drv.mem_alloc);
  if (std::strcmp(name, "cuMemFree_v2") == 0) return ptr(drv.mem_free);
  if (std::strcmp(name, "cuMemAllocAsync") == 0) return ptr(drv.mem_alloc_async);
  if (std::strcmp(name, "cuMemAllocAsync_ptsz") == 0) return drv.mem_alloc_async_ptsz;
  if (std::strcmp(name, "cuMemFreeAsync") == 0) return ptr(drv.mem_free_async);
  if (std::strcmp(name, "cuStreamDestroy") == 0) return ptr(drv.stream_destroy);
  if (std::strcmp(name, "cuStreamBeginCapture") == 0) return ptr(drv.stream_begin_capture);
  if (std::strcmp(name, "cuStreamEndCapture") == 0) return ptr(drv.stream_end_capture);
  if (std::strcmp(name, "cuMemFreeAsync_ptsz") == 0) return drv.mem_free_async_ptsz;
  if (std::strcmp(name, "cuMemGetInfo_v2") == 0) return ptr(drv.mem_get_info);
  if (std::strcmp(name, "cuStreamCreate") == 0) return ptr(drv.stream_create);
  if (std::strcmp(name, "cuIpcGetMemHandle") == 0) return ptr(drv.ipc_get_mem_handle);
  if (std::strcmp(name, "cuIpcOpenMemHandle") == 0) return ptr(drv.ipc_open_mem_handle);
  if (std::strcmp(name, "cuIpcCloseMemHandle") == 0) return ptr(drv.ipc_close_mem_handle);
  return nullptr;
}
