// shim/lookup.cpp: the names glake answers for, and the pointer swap of lookup.h.
#include "shim/lookup.h"

#include <cstring>

#include "shim/hooks.h"
#include "shim/real.h"

namespace glake::shim {
namespace {

template <class F>
void* address_of(F* f) {
  void* p;
  static_assert(sizeof p == sizeof f);
  std::memcpy(&p, &f, sizeof p);
  return p;
}

struct Entry {
  const char* name;
  void* fn;
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // cudaGetDriverEntryPoint (CUDA 13)
const Entry* entries(std::size_t* count) {
  static const Entry table[] = {
      {"cudaMalloc", address_of(&::cudaMalloc)},
      {"cudaFree", address_of(&::cudaFree)},
      {"cudaMallocAsync", address_of(&::cudaMallocAsync)},
      {"cudaMallocAsync_ptsz", address_of(&::cudaMallocAsync_ptsz)},
      {"cudaFreeAsync", address_of(&::cudaFreeAsync)},
      {"cudaFreeAsync_ptsz", address_of(&::cudaFreeAsync_ptsz)},
      {"cudaMallocFromPoolAsync", address_of(&::cudaMallocFromPoolAsync)},
      {"cudaMallocFromPoolAsync_ptsz", address_of(&::cudaMallocFromPoolAsync_ptsz)},
      {"cudaMemGetInfo", address_of(&::cudaMemGetInfo)},
      {"cudaDeviceGetDefaultMemPool", address_of(&::cudaDeviceGetDefaultMemPool)},
      {"cudaDeviceSetMemPool", address_of(&::cudaDeviceSetMemPool)},
      {"cudaMemPoolDestroy", address_of(&::cudaMemPoolDestroy)},
      {"cudaMemSetMemPool", address_of(&::cudaMemSetMemPool)},
      {"cudaMemPoolGetAttribute", address_of(&::cudaMemPoolGetAttribute)},
      {"cudaMemPoolSetAttribute", address_of(&::cudaMemPoolSetAttribute)},
      {"cudaMemPoolTrimTo", address_of(&::cudaMemPoolTrimTo)},
      {"cudaMemPoolSetAccess", address_of(&::cudaMemPoolSetAccess)},
      {"cudaIpcGetMemHandle", address_of(&::cudaIpcGetMemHandle)},
      {"cudaIpcOpenMemHandle", address_of(&::cudaIpcOpenMemHandle)},
      {"cudaIpcCloseMemHandle", address_of(&::cudaIpcCloseMemHandle)},
      {"cudaDeviceEnablePeerAccess", address_of(&::cudaDeviceEnablePeerAccess)},
      {"cudaStreamBeginCapture", address_of(&::cudaStreamBeginCapture)},
      {"cudaStreamBeginCapture_ptsz", address_of(&::cudaStreamBeginCapture_ptsz)},
      {"cudaStreamBeginCaptureToGraph", address_of(&::cudaStreamBeginCaptureToGraph)},
      {"cudaStreamBeginCaptureToGraph_ptsz", address_of(&::cudaStreamBeginCaptureToGraph_ptsz)},
      {"cudaStreamEndCapture", address_of(&::cudaStreamEndCapture)},
      {"cudaStreamEndCapture_ptsz", address_of(&::cudaStreamEndCapture_ptsz)},
      {"cudaStreamDestroy", address_of(&::cudaStreamDestroy)},
      {"cudaGetLastError", address_of(&::cudaGetLastError)},
      {"cudaPeekAtLastError", address_of(&::cudaPeekAtLastError)},
      {"cudaGetDriverEntryPoint", address_of(&::cudaGetDriverEntryPoint)},
      {"cudaGetDriverEntryPoint_ptsz", address_of(&::cudaGetDriverEntryPoint_ptsz)},
      {"cudaGetDriverEntryPointByVersion", address_of(&::cudaGetDriverEntryPointByVersion)},
      {"cudaGetDriverEntryPointByVersion_ptsz", address_of(&::cudaGetDriverEntryPointByVersion_ptsz)},
      {"cuMemAlloc_v2", address_of(&::cuMemAlloc_v2)},
      {"cuMemFree_v2", address_of(&::cuMemFree_v2)},
      {"cuMemAllocAsync", address_of(&::cuMemAllocAsync)},
      {"cuMemAllocAsync_ptsz", address_of(&::cuMemAllocAsync_ptsz)},
      {"cuMemFreeAsync", address_of(&::cuMemFreeAsync)},
      {"cuMemFreeAsync_ptsz", address_of(&::cuMemFreeAsync_ptsz)},
      {"cuMemGetInfo_v2", address_of(&::cuMemGetInfo_v2)},
      {"cuDeviceSetMemPool", address_of(&::cuDeviceSetMemPool)},
      {"cuMemPoolDestroy", address_of(&::cuMemPoolDestroy)},
      {"cuMemSetMemPool", address_of(&::cuMemSetMemPool)},
      {"cuMemPoolGetAttribute", address_of(&::cuMemPoolGetAttribute)},
      {"cuMemPoolSetAttribute", address_of(&::cuMemPoolSetAttribute)},
      {"cuMemPoolTrimTo", address_of(&::cuMemPoolTrimTo)},
      {"cuMemPoolSetAccess", address_of(&::cuMemPoolSetAccess)},
      {"cuMemAllocFromPoolAsync", address_of(&::cuMemAllocFromPoolAsync)},
      {"cuMemAllocFromPoolAsync_ptsz", address_of(&::cuMemAllocFromPoolAsync_ptsz)},
      {"cuIpcGetMemHandle", address_of(&::cuIpcGetMemHandle)},
      {"cuIpcOpenMemHandle_v2", address_of(&::cuIpcOpenMemHandle_v2)},
      {"cuIpcCloseMemHandle", address_of(&::cuIpcCloseMemHandle)},
      {"cuStreamDestroy_v2", address_of(&::cuStreamDestroy_v2)},
      {"cuCtxEnablePeerAccess", address_of(&::cuCtxEnablePeerAccess)},
      {"cuStreamBeginCapture_v2", address_of(&::cuStreamBeginCapture_v2)},
      {"cuStreamBeginCaptureToGraph", address_of(&::cuStreamBeginCaptureToGraph)},
      {"cuStreamEndCapture", address_of(&::cuStreamEndCapture)},
      {"cuStreamBeginCapture_v2_ptsz", address_of(&::cuStreamBeginCapture_v2_ptsz)},
      {"cuStreamBeginCaptureToGraph_ptsz", address_of(&::cuStreamBeginCaptureToGraph_ptsz)},
      {"cuStreamEndCapture_ptsz", address_of(&::cuStreamEndCapture_ptsz)},
      {"cuGetProcAddress", address_of(&::glake_cuGetProcAddress_v1)},
      {"cuGetProcAddress_v2", address_of(&::cuGetProcAddress_v2)},
  };
  *count = sizeof table / sizeof table[0];
  return table;
}
#pragma GCC diagnostic pop

// One interposed driver entry point with two variants (v1/v2, or legacy/per-thread stream).
void* pick(void* real, void* real_a, void* real_b, void* glake_a, void* glake_b, bool choose_a) {
  if (real_a != nullptr && real == real_a) return glake_a;
  if (real_b != nullptr && real == real_b) return glake_b;
  return choose_a ? glake_a : glake_b;
}

}  // namespace

void* glake_symbol(const char* name) {
  if (name == nullptr || name[0] != 'c' || name[1] != 'u') return nullptr;
  std::size_t n = 0;
  const Entry* t = entries(&n);
  for (std::size_t i = 0; i < n; ++i)
    if (std::strcmp(t[i].name, name) == 0) return t[i].fn;
  return nullptr;
}

void* substitute_proc(const char* symbol, int version, cuuint64_t flags, void* real) {
  if (real == nullptr || symbol == nullptr || std::strncmp(symbol, "cu", 2) != 0 || in_glake(real)) return real;
  const DriverApi& d = real_driver();
  const bool ptds = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  auto v1_or_v2 = [&](void* real_v1, void* real_v2, void* glake_v2) -> void* {
    if (real_v1 != nullptr && real == real_v1) return real;  // the 32-bit legacy entry point: not ours
    if (real_v2 != nullptr && real == real_v2) return glake_v2;
    return version >= 3020 ? glake_v2 : real;
  };
  if (std::strcmp(symbol, "cuMemAlloc") == 0)
    return v1_or_v2(d.mem_alloc_v1, address_of(d.mem_alloc), address_of(&::cuMemAlloc_v2));
  if (std::strcmp(symbol, "cuMemFree") == 0)
    return v1_or_v2(d.mem_free_v1, address_of(d.mem_free), address_of(&::cuMemFree_v2));
  if (std::strcmp(symbol, "cuMemGetInfo") == 0)
    return v1_or_v2(d.mem_get_info_v1, address_of(d.mem_get_info), address_of(&::cuMemGetInfo_v2));
  if (std::strcmp(symbol, "cuMemAllocAsync") == 0)
    return pick(real, address_of(d.mem_alloc_async), address_of(d.mem_alloc_async_ptsz),
                address_of(&::cuMemAllocAsync), address_of(&::cuMemAllocAsync_ptsz), !ptds);
  if (std::strcmp(symbol, "cuMemFreeAsync") == 0)
    return pick(real, address_of(d.mem_free_async), address_of(d.mem_free_async_ptsz),
                address_of(&::cuMemFreeAsync), address_of(&::cuMemFreeAsync_ptsz), !ptds);
  // cuIpcOpenMemHandle: glake's is the _v2 one (the version since CUDA 11.0); the old one, which
  // refuses a second open of a handle instead of counting it, stays the driver's.
  if (std::strcmp(symbol, "cuIpcGetMemHandle") == 0) return address_of(&::cuIpcGetMemHandle);
  if (std::strcmp(symbol, "cuIpcOpenMemHandle") == 0)
    return real == address_of(real_driver().ipc_open_mem_handle) ? address_of(&::cuIpcOpenMemHandle_v2) : real;
  if (std::strcmp(symbol, "cuIpcCloseMemHandle") == 0) return address_of(&::cuIpcCloseMemHandle);
  // cuStreamDestroy: the pool forgets the stream first (Router::cu_stream_destroy); the version
  // before CUDA 4.0 stays the driver's.
  if (std::strcmp(symbol, "cuStreamDestroy") == 0)
    return real == address_of(d.stream_destroy) ? address_of(&::cuStreamDestroy_v2) : real;
  if (std::strcmp(symbol, "cuCtxEnablePeerAccess") == 0) return address_of(&::cuCtxEnablePeerAccess);
  // Another pool made current: cuMemAllocAsync (and the runtime's cudaMallocAsync) allocate from it.
  if (std::strcmp(symbol, "cuDeviceSetMemPool") == 0) return address_of(&::cuDeviceSetMemPool);
  if (std::strcmp(symbol, "cuMemSetMemPool") == 0) return address_of(&::cuMemSetMemPool);
  if (std::strcmp(symbol, "cuMemPoolDestroy") == 0) return address_of(&::cuMemPoolDestroy);
  // The default pool through the driver (a statically linked runtime's cudaMemPool* calls).
  if (std::strcmp(symbol, "cuMemPoolGetAttribute") == 0) return address_of(&::cuMemPoolGetAttribute);
  if (std::strcmp(symbol, "cuMemPoolSetAttribute") == 0) return address_of(&::cuMemPoolSetAttribute);
  if (std::strcmp(symbol, "cuMemPoolTrimTo") == 0) return address_of(&::cuMemPoolTrimTo);
  if (std::strcmp(symbol, "cuMemPoolSetAccess") == 0) return address_of(&::cuMemPoolSetAccess);
  if (std::strcmp(symbol, "cuMemAllocFromPoolAsync") == 0)
    return pick(real, address_of(d.mem_alloc_from_pool_async), address_of(d.mem_alloc_from_pool_async_ptsz),
                address_of(&::cuMemAllocFromPoolAsync), address_of(&::cuMemAllocFromPoolAsync_ptsz), !ptds);
  // Graph capture through the driver (driver-API programs, a statically linked runtime): glake counts
  // the captures under way (Router::cu_stream_begin_capture), on the legacy and the per-thread default
  // stream alike. The cuStreamBeginCapture of CUDA 10.0, which takes no mode, stays the driver's.
  auto capture = [&](void* real_legacy, void* real_ptsz, void* mine, void* mine_ptsz, int since) -> void* {
    if (real_legacy != nullptr && real == real_legacy) return mine;
    if (real_ptsz != nullptr && real == real_ptsz) return mine_ptsz;
    if (version < since) return real;
    return ptds ? mine_ptsz : mine;
  };
  if (std::strcmp(symbol, "cuStreamBeginCapture") == 0)
    return capture(address_of(d.stream_begin_capture), address_of(d.stream_begin_capture_ptsz),
                   address_of(&::cuStreamBeginCapture_v2), address_of(&::cuStreamBeginCapture_v2_ptsz), 10010);
  if (std::strcmp(symbol, "cuStreamBeginCaptureToGraph") == 0)
    return capture(address_of(d.stream_begin_capture_to_graph), address_of(d.stream_begin_capture_to_graph_ptsz),
                   address_of(&::cuStreamBeginCaptureToGraph), address_of(&::cuStreamBeginCaptureToGraph_ptsz),
                   12030);
  if (std::strcmp(symbol, "cuStreamEndCapture") == 0)
    return capture(address_of(d.stream_end_capture), address_of(d.stream_end_capture_ptsz),
                   address_of(&::cuStreamEndCapture), address_of(&::cuStreamEndCapture_ptsz), 0);
  if (std::strcmp(symbol, "cuGetProcAddress") == 0)
    return pick(real, address_of(d.get_proc_address_v2), address_of(d.get_proc_address),
                address_of(&::cuGetProcAddress_v2), address_of(&::glake_cuGetProcAddress_v1), version >= 12000);
  return real;
}

}  // namespace glake::shim
