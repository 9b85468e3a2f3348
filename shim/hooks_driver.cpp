// shim/hooks_driver.cpp: the CUDA driver entry points libglake.so interposes, and the three doors
// through which programs reach driver functions without the dynamic linker: cuGetProcAddress[_v2]
// and dlsym (cudaGetDriverEntryPoint* are in hooks_runtime.cpp). One-line forwards, as there.
//
// dlsym itself is an assembly stub (dlsym_stub.cpp) that jumps to glibc's dlsym for RTLD_DEFAULT and
// RTLD_NEXT and to glake_dlsym_explicit, below, for real handles.
#include <cuda.h>
#include <dlfcn.h>

#include "shim/hooks.h"
#include "shim/lookup.h"
#include "shim/real.h"
#include "shim/router.h"

#define GLAKE_HOOK extern "C" __attribute__((visibility("default")))

using glake::shim::router;

namespace {
template <class F>
CUresult guard(F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
}
}  // namespace

GLAKE_HOOK CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return guard([&] { return router().cu_mem_alloc(p, n); }); }
GLAKE_HOOK CUresult cuMemFree_v2(CUdeviceptr p) { return guard([&] { return router().cu_mem_free(p); }); }
GLAKE_HOOK CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream s) {
  return guard([&] { return router().cu_mem_alloc_async(p, n, s, false); });
}
GLAKE_HOOK CUresult cuMemAllocAsync_ptsz(CUdeviceptr* p, size_t n, CUstream s) {
  return guard([&] { return router().cu_mem_alloc_async(p, n, s, true); });
}
GLAKE_HOOK CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  return guard([&] { return router().cu_mem_free_async(p, s, false); });
}
GLAKE_HOOK CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
  return guard([&] { return router().cu_mem_free_async(p, s, true); });
}
GLAKE_HOOK CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  return guard([&] { return router().cu_mem_get_info(free, total); });
}
GLAKE_HOOK CUresult cuDeviceSetMemPool(CUdevice d, CUmemoryPool pool) {
  return guard([&] { return router().cu_device_set_mem_pool(d, pool); });
}
GLAKE_HOOK CUresult cuMemSetMemPool(CUmemLocation* location, CUmemAllocationType type, CUmemoryPool pool) {
  return guard([&] { return router().cu_mem_set_mem_pool(location, type, pool); });
}
GLAKE_HOOK CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  return guard([&] { return router().cu_mem_pool_destroy(pool); });
}
GLAKE_HOOK CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  return guard([&] { return router().cu_mem_pool_get_attribute(pool, attr, value); });
}
GLAKE_HOOK CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  return guard([&] { return router().cu_mem_pool_set_attribute(pool, attr, value); });
}
GLAKE_HOOK CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  return guard([&] { return router().cu_mem_pool_trim_to(pool, keep); });
}
GLAKE_HOOK CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* desc, size_t count) {
  return guard([&] { return router().cu_mem_pool_set_access(pool, desc, count); });
}
GLAKE_HOOK CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t n, CUmemoryPool pool, CUstream s) {
  return guard([&] { return router().cu_mem_alloc_from_pool_async(p, n, pool, s, false); });
}
GLAKE_HOOK CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* p, size_t n, CUmemoryPool pool, CUstream s) {
  return guard([&] { return router().cu_mem_alloc_from_pool_async(p, n, pool, s, true); });
}
GLAKE_HOOK CUresult cuIpcGetMemHandle(CUipcMemHandle* h, CUdeviceptr p) {
  return guard([&] { return router().cu_ipc_get_mem_handle(h, p); });
}
GLAKE_HOOK CUresult cuIpcOpenMemHandle_v2(CUdeviceptr* p, CUipcMemHandle h, unsigned int flags) {
  return guard([&] { return router().cu_ipc_open_mem_handle(p, h, flags); });
}
GLAKE_HOOK CUresult cuIpcCloseMemHandle(CUdeviceptr p) { return guard([&] { return router().cu_ipc_close_mem_handle(p); }); }
GLAKE_HOOK CUresult cuStreamDestroy_v2(CUstream s) { return guard([&] { return router().cu_stream_destroy(s); }); }
GLAKE_HOOK CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags) {
  return guard([&] { return router().cu_ctx_enable_peer_access(peer, flags); });
}
GLAKE_HOOK CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  return guard([&] { return router().cu_stream_begin_capture(s, mode, false); });
}
GLAKE_HOOK CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode mode) {
  return guard([&] { return router().cu_stream_begin_capture(s, mode, true); });
}
GLAKE_HOOK CUresult cuStreamBeginCaptureToGraph(CUstream s, CUgraph g, const CUgraphNode* deps, const CUgraphEdgeData* edges,
                                                size_t n, CUstreamCaptureMode mode) {
  return guard([&] { return router().cu_stream_begin_capture_to_graph(s, g, deps, edges, n, mode, false); });
}
GLAKE_HOOK CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode* deps,
                                                     const CUgraphEdgeData* edges, size_t n, CUstreamCaptureMode mode) {
  return guard([&] { return router().cu_stream_begin_capture_to_graph(s, g, deps, edges, n, mode, true); });
}
GLAKE_HOOK CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
  return guard([&] { return router().cu_stream_end_capture(s, g, false); });
}
GLAKE_HOOK CUresult cuStreamEndCapture_ptsz(CUstream s, CUgraph* g) {
  return guard([&] { return router().cu_stream_end_capture(s, g, true); });
}
GLAKE_HOOK CUresult cuGetProcAddress_v2(const char* symbol, void** fn, int version, cuuint64_t flags,
                                        CUdriverProcAddressQueryResult* status) {
  return guard([&] { return router().cu_get_proc_address_v2(symbol, fn, version, flags, status); });
}
GLAKE_HOOK CUresult glake_cuGetProcAddress_v1(const char* symbol, void** fn, int version, cuuint64_t flags) {
  return guard([&] { return router().cu_get_proc_address(symbol, fn, version, flags); });
}

// dlsym on a real handle: the real answer, with glake's function in place of an interposed one.
// glake's own look-ups (the pool's CudaDriver, real.cpp) get the real answer.
extern "C" __attribute__((visibility("hidden"))) void* glake_dlsym_explicit(void* handle, const char* name) {
  const void* caller = __builtin_return_address(0);
  void* r = glake::shim::real_dlsym()(handle, name);
  if (r == nullptr || glake::shim::in_glake(caller) || glake::shim::in_glake(r)) return r;
  void* mine = glake::shim::glake_symbol(name);
  return mine != nullptr ? mine : r;
}
