// shim/hooks_runtime.cpp: the CUDA runtime entry points libglake.so interposes.
//
// Each is a one-line forward to the router (router.h), which holds the real entry points and makes
// every decision. No policy, no logging, and no exception leaves these functions: the guard turns
// one (host memory exhausted inside the pool) into the error a CUDA caller expects.
#include <cuda_runtime_api.h>

#include "shim/hooks.h"
#include "shim/router.h"

#define GLAKE_HOOK extern "C" __attribute__((visibility("default")))

using glake::shim::router;

namespace {
template <class F>
cudaError_t guard(F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    return router().host_memory_exhausted();
  }
}
}  // namespace

GLAKE_HOOK cudaError_t cudaMalloc(void** p, size_t n) { return guard([&] { return router().malloc(p, n); }); }
GLAKE_HOOK cudaError_t cudaFree(void* p) { return guard([&] { return router().free(p); }); }

GLAKE_HOOK cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s) {
  return guard([&] { return router().malloc_async(p, n, s, false); });
}
GLAKE_HOOK cudaError_t cudaMallocAsync_ptsz(void** p, size_t n, cudaStream_t s) {
  return guard([&] { return router().malloc_async(p, n, s, true); });
}
GLAKE_HOOK cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  return guard([&] { return router().free_async(p, s, false); });
}
GLAKE_HOOK cudaError_t cudaFreeAsync_ptsz(void* p, cudaStream_t s) {
  return guard([&] { return router().free_async(p, s, true); });
}
GLAKE_HOOK cudaError_t cudaMallocFromPoolAsync(void** p, size_t n, cudaMemPool_t pool, cudaStream_t s) {
  return guard([&] { return router().malloc_from_pool_async(p, n, pool, s, false); });
}
GLAKE_HOOK cudaError_t cudaMallocFromPoolAsync_ptsz(void** p, size_t n, cudaMemPool_t pool, cudaStream_t s) {
  return guard([&] { return router().malloc_from_pool_async(p, n, pool, s, true); });
}

GLAKE_HOOK cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  return guard([&] { return router().mem_get_info(free, total); });
}

GLAKE_HOOK cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  return guard([&] { return router().device_get_default_mem_pool(pool, device); });
}
GLAKE_HOOK cudaError_t cudaDeviceSetMemPool(int device, cudaMemPool_t pool) {
  return guard([&] { return router().device_set_mem_pool(device, pool); });
}
GLAKE_HOOK cudaError_t cudaMemSetMemPool(cudaMemLocation* location, cudaMemAllocationType type, cudaMemPool_t pool) {
  return guard([&] { return router().mem_set_mem_pool(location, type, pool); });
}
GLAKE_HOOK cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
  return guard([&] { return router().mem_pool_destroy(pool); });
}
GLAKE_HOOK cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  return guard([&] { return router().mem_pool_get_attribute(pool, attr, value); });
}
GLAKE_HOOK cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  return guard([&] { return router().mem_pool_set_attribute(pool, attr, value); });
}
GLAKE_HOOK cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  return guard([&] { return router().mem_pool_trim_to(pool, keep); });
}
GLAKE_HOOK cudaError_t cudaMemPoolSetAccess(cudaMemPool_t pool, const cudaMemAccessDesc* desc, size_t count) {
  return guard([&] { return router().mem_pool_set_access(pool, desc, count); });
}

GLAKE_HOOK cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* p) {
  return guard([&] { return router().ipc_get_mem_handle(handle, p); });
}
GLAKE_HOOK cudaError_t cudaIpcOpenMemHandle(void** p, cudaIpcMemHandle_t handle, unsigned int flags) {
  return guard([&] { return router().ipc_open_mem_handle(p, handle, flags); });
}
GLAKE_HOOK cudaError_t cudaIpcCloseMemHandle(void* p) { return guard([&] { return router().ipc_close_mem_handle(p); }); }

GLAKE_HOOK cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned int flags) {
  return guard([&] { return router().device_enable_peer_access(peer, flags); });
}

GLAKE_HOOK cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  return guard([&] { return router().stream_begin_capture(s, mode, false); });
}
GLAKE_HOOK cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t s, cudaStreamCaptureMode mode) {
  return guard([&] { return router().stream_begin_capture(s, mode, true); });
}
GLAKE_HOOK cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t s, cudaGraph_t g, const cudaGraphNode_t* deps,
                                                     const cudaGraphEdgeData* edges, size_t n,
                                                     cudaStreamCaptureMode mode) {
  return guard([&] { return router().stream_begin_capture_to_graph(s, g, deps, edges, n, mode, false); });
}
GLAKE_HOOK cudaError_t cudaStreamBeginCaptureToGraph_ptsz(cudaStream_t s, cudaGraph_t g, const cudaGraphNode_t* deps,
                                                          const cudaGraphEdgeData* edges, size_t n,
                                                          cudaStreamCaptureMode mode) {
  return guard([&] { return router().stream_begin_capture_to_graph(s, g, deps, edges, n, mode, true); });
}
GLAKE_HOOK cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  return guard([&] { return router().stream_end_capture(s, g, false); });
}
GLAKE_HOOK cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t s, cudaGraph_t* g) {
  return guard([&] { return router().stream_end_capture(s, g, true); });
}

GLAKE_HOOK cudaError_t cudaStreamDestroy(cudaStream_t s) { return guard([&] { return router().stream_destroy(s); }); }

GLAKE_HOOK cudaError_t cudaGetLastError() { return guard([&] { return router().get_last_error(); }); }
GLAKE_HOOK cudaError_t cudaPeekAtLastError() { return guard([&] { return router().peek_at_last_error(); }); }

GLAKE_HOOK cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** fn, unsigned long long flags,
                                               cudaDriverEntryPointQueryResult* status) {
  return guard([&] { return router().get_driver_entry_point(symbol, fn, flags, status, false); });
}
GLAKE_HOOK cudaError_t cudaGetDriverEntryPoint_ptsz(const char* symbol, void** fn, unsigned long long flags,
                                                    cudaDriverEntryPointQueryResult* status) {
  return guard([&] { return router().get_driver_entry_point(symbol, fn, flags, status, true); });
}
GLAKE_HOOK cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int version,
                                                        unsigned long long flags,
                                                        cudaDriverEntryPointQueryResult* status) {
  return guard([&] { return router().get_driver_entry_point_by_version(symbol, fn, version, flags, status, false); });
}
GLAKE_HOOK cudaError_t cudaGetDriverEntryPointByVersion_ptsz(const char* symbol, void** fn, unsigned int version,
                                                             unsigned long long flags,
                                                             cudaDriverEntryPointQueryResult* status) {
  return guard([&] { return router().get_driver_entry_point_by_version(symbol, fn, version, flags, status, true); });
}
