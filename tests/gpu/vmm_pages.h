// tests/gpu/vmm_pages.h: what the hand-run VMM benchmarks (bench_set_access, bench_grant_overlap)
// share: a check that exits on a driver error, and n one-granule pages of device 0 with a virtual
// range to map them side by side (its primary context current on this thread; n = 0: the context,
// the granularity and the access descriptor only).
#pragma once

#include <cuda.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

inline void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* s = nullptr;
  cuGetErrorString(r, &s);
  std::fprintf(stderr, "%s: %s\n", what, s != nullptr ? s : "?");
  std::exit(1);
}

struct VmmPages {
  CUcontext ctx = nullptr;
  CUmemAllocationProp prop{};
  std::size_t g = 0;                          // the granularity: each page's size
  std::vector<CUmemGenericAllocationHandle> h;  // the pages
  CUdeviceptr va = 0;                         // n * g bytes reserved, nothing mapped
  std::size_t bytes = 0;
  CUmemAccessDesc desc{};                     // read-write access for device 0
};

inline VmmPages vmm_pages(int n) {
  VmmPages p;
  check(cuInit(0), "cuInit");
  CUdevice dev = 0;
  check(cuDeviceGet(&dev, 0), "cuDeviceGet");
  check(cuDevicePrimaryCtxRetain(&p.ctx, dev), "cuDevicePrimaryCtxRetain");
  check(cuCtxSetCurrent(p.ctx), "cuCtxSetCurrent");
  p.prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.prop.location.id = dev;
  check(cuMemGetAllocationGranularity(&p.g, &p.prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "granularity");
  p.h.resize(static_cast<std::size_t>(n));
  for (auto& x : p.h) check(cuMemCreate(&x, p.g, &p.prop, 0), "cuMemCreate");
  p.bytes = p.g * static_cast<std::size_t>(n);
  if (n > 0) check(cuMemAddressReserve(&p.va, p.bytes, 0, 0, 0), "cuMemAddressReserve");
  p.desc.location = p.prop.location;
  p.desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return p;
}
