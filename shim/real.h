// shim/real.h: the real CUDA entry points glake forwards to, resolved once, and the re-entry guard.
//
// Runtime entry points come from the libcudart the process has loaded (found by soname with
// RTLD_NOLOAD, so a runtime loaded RTLD_LOCAL by a Python extension is found too; RTLD_NEXT if no
// known soname is loaded). Driver entry points come from libcuda.so.1 by their exported ABI names.
// Every lookup goes through glibc's own dlsym, never through glake's interposed one, and nothing
// that resolves into libglake.so itself is ever accepted as "real".
//
// Resolution is lazy (first use) and thread-safe; a runtime table that finds no libcudart is retried
// on the next use, so a runtime loaded later is still found. The tables hold only function pointers:
// nothing to destroy at exit.
//
// Re-entry: the real runtime reaches the driver through the table it got from cuGetProcAddress, which
// glake answered with its own cuMemAlloc_v2 & co. While glake itself is inside a real runtime call
// (RealCall on the stack), those driver hooks forward straight to the real driver.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

namespace glake::shim {

// cudaGetDriverEntryPoint is deprecated in CUDA 13: spell its type instead of decltype(&...).
using GetDriverEntryPointFn = cudaError_t (*)(const char*, void**, unsigned long long,
                                              cudaDriverEntryPointQueryResult*);
using GetDriverEntryPointByVersionFn = cudaError_t (*)(const char*, void**, unsigned int, unsigned long long,
                                                       cudaDriverEntryPointQueryResult*);
using CuGetProcAddressV1Fn = CUresult (*)(const char*, void**, int, cuuint64_t);
using CuGetProcAddressV2Fn = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using DlsymFn = void* (*)(void*, const char*);

// X(field, exported name, type)
#define GLAKE_REAL_RUNTIME(X)                                                                       \
  X(malloc, "cudaMalloc", decltype(&::cudaMalloc))                                                  \
  X(free, "cudaFree", decltype(&::cudaFree))                                                        \
  X(malloc_async, "cudaMallocAsync", decltype(&::cudaMallocAsync))                                  \
  X(malloc_async_ptsz, "cudaMallocAsync_ptsz", decltype(&::cudaMallocAsync))                        \
  X(free_async, "cudaFreeAsync", decltype(&::cudaFreeAsync))                                        \
  X(free_async_ptsz, "cudaFreeAsync_ptsz", decltype(&::cudaFreeAsync))                              \
  X(malloc_from_pool_async, "cudaMallocFromPoolAsync", decltype(&::cudaMallocFromPoolAsync))        \
  X(malloc_from_pool_async_ptsz, "cudaMallocFromPoolAsync_ptsz", decltype(&::cudaMallocFromPoolAsync)) \
  X(mem_get_info, "cudaMemGetInfo", decltype(&::cudaMemGetInfo))                                    \
  X(device_get_default_mem_pool, "cudaDeviceGetDefaultMemPool", decltype(&::cudaDeviceGetDefaultMemPool)) \
  X(device_set_mem_pool, "cudaDeviceSetMemPool", decltype(&::cudaDeviceSetMemPool))                 \
  X(mem_set_mem_pool, "cudaMemSetMemPool", decltype(&::cudaMemSetMemPool))                         \
  X(mem_pool_destroy, "cudaMemPoolDestroy", decltype(&::cudaMemPoolDestroy))                        \
  X(mem_pool_get_attribute, "cudaMemPoolGetAttribute", decltype(&::cudaMemPoolGetAttribute))        \
  X(mem_pool_set_attribute, "cudaMemPoolSetAttribute", decltype(&::cudaMemPoolSetAttribute))        \
  X(mem_pool_trim_to, "cudaMemPoolTrimTo", decltype(&::cudaMemPoolTrimTo))                          \
  X(mem_pool_set_access, "cudaMemPoolSetAccess", decltype(&::cudaMemPoolSetAccess))                 \
  X(ipc_get_mem_handle, "cudaIpcGetMemHandle", decltype(&::cudaIpcGetMemHandle))                    \
  X(ipc_open_mem_handle, "cudaIpcOpenMemHandle", decltype(&::cudaIpcOpenMemHandle))                 \
  X(ipc_close_mem_handle, "cudaIpcCloseMemHandle", decltype(&::cudaIpcCloseMemHandle))              \
  X(device_enable_peer_access, "cudaDeviceEnablePeerAccess", decltype(&::cudaDeviceEnablePeerAccess)) \
  X(stream_begin_capture, "cudaStreamBeginCapture", decltype(&::cudaStreamBeginCapture))            \
  X(stream_begin_capture_ptsz, "cudaStreamBeginCapture_ptsz", decltype(&::cudaStreamBeginCapture))  \
  X(stream_begin_capture_to_graph, "cudaStreamBeginCaptureToGraph", decltype(&::cudaStreamBeginCaptureToGraph)) \
  X(stream_begin_capture_to_graph_ptsz, "cudaStreamBeginCaptureToGraph_ptsz",                       \
    decltype(&::cudaStreamBeginCaptureToGraph))                                                     \
  X(stream_end_capture, "cudaStreamEndCapture", decltype(&::cudaStreamEndCapture))                  \
  X(stream_end_capture_ptsz, "cudaStreamEndCapture_ptsz", decltype(&::cudaStreamEndCapture))        \
  X(stream_is_capturing, "cudaStreamIsCapturing", decltype(&::cudaStreamIsCapturing))               \
  X(stream_destroy, "cudaStreamDestroy", decltype(&::cudaStreamDestroy))                            \
  X(stream_synchronize, "cudaStreamSynchronize", decltype(&::cudaStreamSynchronize))                \
  X(get_last_error, "cudaGetLastError", decltype(&::cudaGetLastError))                              \
  X(peek_at_last_error, "cudaPeekAtLastError", decltype(&::cudaPeekAtLastError))                    \
  X(get_device, "cudaGetDevice", decltype(&::cudaGetDevice))                                        \
  X(get_device_count, "cudaGetDeviceCount", decltype(&::cudaGetDeviceCount))                        \
  X(get_driver_entry_point, "cudaGetDriverEntryPoint", GetDriverEntryPointFn)                       \
  X(get_driver_entry_point_ptsz, "cudaGetDriverEntryPoint_ptsz", GetDriverEntryPointFn)             \
  X(get_driver_entry_point_by_version, "cudaGetDriverEntryPointByVersion", GetDriverEntryPointByVersionFn) \
  X(get_driver_entry_point_by_version_ptsz, "cudaGetDriverEntryPointByVersion_ptsz",                \
    GetDriverEntryPointByVersionFn)

#define GLAKE_REAL_DRIVER(X)                                                                        \
  X(get_proc_address, "cuGetProcAddress", CuGetProcAddressV1Fn)                                     \
  X(get_proc_address_v2, "cuGetProcAddress_v2", CuGetProcAddressV2Fn)                               \
  X(mem_alloc, "cuMemAlloc_v2", decltype(&::cuMemAlloc_v2))                                         \
  X(mem_free, "cuMemFree_v2", decltype(&::cuMemFree_v2))                                            \
  X(mem_alloc_async, "cuMemAllocAsync", decltype(&::cuMemAllocAsync))                               \
  X(mem_alloc_async_ptsz, "cuMemAllocAsync_ptsz", decltype(&::cuMemAllocAsync))                     \
  X(mem_free_async, "cuMemFreeAsync", decltype(&::cuMemFreeAsync))                                  \
  X(mem_free_async_ptsz, "cuMemFreeAsync_ptsz", decltype(&::cuMemFreeAsync))                        \
  X(mem_get_info, "cuMemGetInfo_v2", decltype(&::cuMemGetInfo_v2))                                  \
  X(mem_alloc_v1, "cuMemAlloc", void*)                                                              \
  X(mem_free_v1, "cuMemFree", void*)                                                                \
  X(mem_get_info_v1, "cuMemGetInfo", void*)                                                         \
  X(device_get_default_mem_pool, "cuDeviceGetDefaultMemPool", decltype(&::cuDeviceGetDefaultMemPool)) \
  X(device_set_mem_pool, "cuDeviceSetMemPool", decltype(&::cuDeviceSetMemPool))                     \
  X(mem_set_mem_pool, "cuMemSetMemPool", decltype(&::cuMemSetMemPool))                             \
  X(device_get_mem_pool, "cuDeviceGetMemPool", decltype(&::cuDeviceGetMemPool))                     \
  X(mem_pool_destroy, "cuMemPoolDestroy", decltype(&::cuMemPoolDestroy))                            \
  X(mem_pool_get_attribute, "cuMemPoolGetAttribute", decltype(&::cuMemPoolGetAttribute))            \
  X(mem_pool_set_attribute, "cuMemPoolSetAttribute", decltype(&::cuMemPoolSetAttribute))            \
  X(mem_pool_trim_to, "cuMemPoolTrimTo", decltype(&::cuMemPoolTrimTo))                              \
  X(mem_pool_set_access, "cuMemPoolSetAccess", decltype(&::cuMemPoolSetAccess))                     \
  X(mem_alloc_from_pool_async, "cuMemAllocFromPoolAsync", decltype(&::cuMemAllocFromPoolAsync))     \
  X(mem_alloc_from_pool_async_ptsz, "cuMemAllocFromPoolAsync_ptsz", decltype(&::cuMemAllocFromPoolAsync)) \
  X(device_get_count, "cuDeviceGetCount", decltype(&::cuDeviceGetCount))                            \
  X(ipc_get_mem_handle, "cuIpcGetMemHandle", decltype(&::cuIpcGetMemHandle))                        \
  X(ipc_open_mem_handle, "cuIpcOpenMemHandle_v2", decltype(&::cuIpcOpenMemHandle_v2))               \
  X(ipc_close_mem_handle, "cuIpcCloseMemHandle", decltype(&::cuIpcCloseMemHandle))                  \
  X(init, "cuInit", decltype(&::cuInit))                                                            \
  X(device_get, "cuDeviceGet", decltype(&::cuDeviceGet))                                            \
  X(ctx_get_current, "cuCtxGetCurrent", decltype(&::cuCtxGetCurrent))                               \
  X(ctx_get_device, "cuCtxGetDevice", decltype(&::cuCtxGetDevice))                                  \
  X(ctx_synchronize, "cuCtxSynchronize", decltype(&::cuCtxSynchronize))                             \
  X(ctx_push_current, "cuCtxPushCurrent_v2", decltype(&::cuCtxPushCurrent_v2))                      \
  X(ctx_pop_current, "cuCtxPopCurrent_v2", decltype(&::cuCtxPopCurrent_v2))                         \
  X(ctx_enable_peer_access, "cuCtxEnablePeerAccess", decltype(&::cuCtxEnablePeerAccess))            \
  X(primary_ctx_retain, "cuDevicePrimaryCtxRetain", decltype(&::cuDevicePrimaryCtxRetain))          \
  X(primary_ctx_release, "cuDevicePrimaryCtxRelease_v2", decltype(&::cuDevicePrimaryCtxRelease_v2)) \
  X(primary_ctx_get_state, "cuDevicePrimaryCtxGetState", decltype(&::cuDevicePrimaryCtxGetState))    \
  X(stream_create, "cuStreamCreate", decltype(&::cuStreamCreate))                                   \
  X(stream_destroy, "cuStreamDestroy_v2", decltype(&::cuStreamDestroy_v2))                          \
  X(stream_is_capturing, "cuStreamIsCapturing", decltype(&::cuStreamIsCapturing))                   \
  X(stream_begin_capture, "cuStreamBeginCapture_v2", decltype(&::cuStreamBeginCapture_v2))          \
  X(stream_begin_capture_ptsz, "cuStreamBeginCapture_v2_ptsz", decltype(&::cuStreamBeginCapture_v2)) \
  X(stream_begin_capture_to_graph, "cuStreamBeginCaptureToGraph", decltype(&::cuStreamBeginCaptureToGraph)) \
  X(stream_begin_capture_to_graph_ptsz, "cuStreamBeginCaptureToGraph_ptsz",                         \
    decltype(&::cuStreamBeginCaptureToGraph))                                                       \
  X(stream_end_capture, "cuStreamEndCapture", decltype(&::cuStreamEndCapture))                      \
  X(stream_end_capture_ptsz, "cuStreamEndCapture_ptsz", decltype(&::cuStreamEndCapture))            \
  X(stream_get_device, "cuStreamGetDevice", decltype(&::cuStreamGetDevice))                         \
  X(stream_get_ctx, "cuStreamGetCtx", decltype(&::cuStreamGetCtx))                                  \
  X(stream_synchronize, "cuStreamSynchronize", decltype(&::cuStreamSynchronize))                    \
  X(mem_address_reserve, "cuMemAddressReserve", decltype(&::cuMemAddressReserve))                   \
  X(mem_address_free, "cuMemAddressFree", decltype(&::cuMemAddressFree))                            \
  X(mem_import_from_shareable_handle, "cuMemImportFromShareableHandle",                            \
    decltype(&::cuMemImportFromShareableHandle))                                                    \
  X(mem_get_allocation_granularity, "cuMemGetAllocationGranularity",                                \
    decltype(&::cuMemGetAllocationGranularity))                                                     \
  X(mem_map, "cuMemMap", decltype(&::cuMemMap))                                                     \
  X(mem_unmap, "cuMemUnmap", decltype(&::cuMemUnmap))                                               \
  X(mem_set_access, "cuMemSetAccess", decltype(&::cuMemSetAccess))                                  \
  X(mem_release, "cuMemRelease", decltype(&::cuMemRelease))

#define GLAKE_REAL_FIELD(field, name, type) type field = nullptr;
struct RuntimeApi {
  GLAKE_REAL_RUNTIME(GLAKE_REAL_FIELD)
};
struct DriverApi {
  GLAKE_REAL_DRIVER(GLAKE_REAL_FIELD)
};
#undef GLAKE_REAL_FIELD

// The runtime table. Entries the loaded runtime lacks are null; callers answer those as
// cudaErrorNotSupported (the program could not have linked against them either).
const RuntimeApi& real_runtime();
// The driver table; entries are null if libcuda.so.1 cannot be loaded.
const DriverApi& real_driver();
// glibc's dlsym (never glake's).
DlsymFn real_dlsym();
// True if `address` lies in libglake.so's own code.
bool in_glake(const void* address);

// Fork: the resolution lock is taken around fork() so that a child never inherits it held.
void real_lock_for_fork();
void real_unlock_after_fork();

// Re-entry depth of this thread into the real CUDA API from inside glake (see top of file).
// __thread, not thread_local: no TLS wrapper call on the hot path; initial-exec: one load.
extern __thread int tl_real_depth __attribute__((tls_model("initial-exec")));
struct RealCall {
  RealCall() noexcept { ++tl_real_depth; }
  ~RealCall() { --tl_real_depth; }
  RealCall(const RealCall&) = delete;
  RealCall& operator=(const RealCall&) = delete;
};
inline bool inside_real_call() noexcept { return tl_real_depth != 0; }

}  // namespace glake::shim
