// tests/gpu/bench_grant_props.cpp: does what a page is made with, or where it is mapped, change what
// granting access costs? A benchmark, not a test (run it by hand on a GPU).
// Usage: bench_grant_props [N [R [BACKGROUND_GIB]]].
//
// glake's slow path is mostly cuMemSetAccess, ~25-35 us per mapping. glake's pages are made with a
// shareable handle type (POSIX file descriptor, for IPC) and the GPUDirect RDMA flag; the benchmarks
// before this one made theirs with neither. For each of the four combinations this makes N
// one-granule pages and prints the median over R repetitions of:
//   fresh   map them side by side at a new range and grant access (a pool that grows),
//   second  map them again at a second range while the first mapping stays (glake's stitch: the
//           moved pages keep their old mapping until it is unmapped lazily) and grant access there,
//   unmap   unmap both.
// With BACKGROUND_GIB > 0, that much memory (plain pages) is mapped and granted first, as in a pool
// that already holds a job's memory, to see whether the grant's cost grows with what is mapped.
#include <cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "vmm_pages.h"

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 256;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  const int background_gib = argc > 3 ? std::atoi(argv[3]) : 0;
  VmmPages base = vmm_pages(0);  // the context, the granularity and the access descriptor
  const std::size_t g = base.g, bytes = g * static_cast<std::size_t>(n);
  CUdevice dev = 0;
  check(cuDeviceGet(&dev, 0), "cuDeviceGet");
  int rdma = 0, fd = 0;
  check(cuDeviceGetAttribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, dev), "attribute");
  check(cuDeviceGetAttribute(&fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev), "attribute");
  std::printf("granularity %zu, %d pages, %d repetitions; device supports RDMA with VMM: %d, fd handles: %d\n", g, n,
              reps, rdma, fd);

  // Background: memory already mapped and granted, kept for the whole run.
  std::vector<CUmemGenericAllocationHandle> bg;
  CUdeviceptr bg_va = 0;
  const std::size_t bg_bytes = static_cast<std::size_t>(background_gib) << 30;
  if (bg_bytes > 0) {
    check(cuMemAddressReserve(&bg_va, bg_bytes, 0, 0, 0), "cuMemAddressReserve (background)");
    bg.resize(bg_bytes / g);
    for (std::size_t i = 0; i < bg.size(); ++i) {
      check(cuMemCreate(&bg[i], g, &base.prop, 0), "cuMemCreate (background)");
      check(cuMemMap(bg_va + g * i, g, 0, bg[i], 0), "cuMemMap (background)");
    }
    check(cuMemSetAccess(bg_va, bg_bytes, &base.desc, 1), "cuMemSetAccess (background)");
    std::printf("background: %d GiB mapped and granted (%zu pages)\n", background_gib, bg.size());
  }

  CUdeviceptr va1 = 0, va2 = 0;
  check(cuMemAddressReserve(&va1, bytes, 0, 0, 0), "cuMemAddressReserve");
  check(cuMemAddressReserve(&va2, bytes, 0, 0, 0), "cuMemAddressReserve");
  for (int variant = 0; variant < 4; ++variant) {
    const bool with_fd = (variant & 1) != 0, with_rdma = (variant & 2) != 0;
    if ((with_fd && fd == 0) || (with_rdma && rdma == 0)) continue;
    CUmemAllocationProp prop = base.prop;
    prop.requestedHandleTypes = with_fd ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
    prop.allocFlags.gpuDirectRDMACapable = with_rdma ? 1 : 0;
    std::vector<CUmemGenericAllocationHandle> h(static_cast<std::size_t>(n));
    const double c0 = now_us();
    for (auto& x : h) check(cuMemCreate(&x, g, &prop, 0), "cuMemCreate");
    const double create_us = (now_us() - c0) / n;
    std::vector<double> fresh, second, unmap;
    for (int r = 0; r < reps; ++r) {
      double t0 = now_us();
      for (int i = 0; i < n; ++i) check(cuMemMap(va1 + g * i, g, 0, h[static_cast<std::size_t>(i)], 0), "cuMemMap");
      check(cuMemSetAccess(va1, bytes, &base.desc, 1), "cuMemSetAccess");
      double t1 = now_us();
      for (int i = 0; i < n; ++i) check(cuMemMap(va2 + g * i, g, 0, h[static_cast<std::size_t>(i)], 0), "cuMemMap");
      check(cuMemSetAccess(va2, bytes, &base.desc, 1), "cuMemSetAccess");
      double t2 = now_us();
      check(cuMemsetD8(va2, static_cast<unsigned char>(r), bytes), "cuMemsetD8");
      check(cuCtxSynchronize(), "cuCtxSynchronize");
      double t3 = now_us();
      check(cuMemUnmap(va1, bytes), "cuMemUnmap");
      check(cuMemUnmap(va2, bytes), "cuMemUnmap");
      double t4 = now_us();
      fresh.push_back((t1 - t0) / n);
      second.push_back((t2 - t1) / n);
      unmap.push_back((t4 - t3) / (2.0 * n));
    }
    std::printf("fd %d rdma %d: create %6.2f us, map+grant fresh %6.2f us, second mapping %6.2f us, unmap %6.2f us "
                "(per page)\n",
                with_fd ? 1 : 0, with_rdma ? 1 : 0, create_us, median(fresh), median(second), median(unmap));
    for (auto& x : h) check(cuMemRelease(x), "cuMemRelease");
  }
  check(cuMemAddressFree(va1, bytes), "cuMemAddressFree");
  check(cuMemAddressFree(va2, bytes), "cuMemAddressFree");
  if (bg_bytes > 0) {
    check(cuMemUnmap(bg_va, bg_bytes), "cuMemUnmap (background)");
    for (auto& x : bg) check(cuMemRelease(x), "cuMemRelease (background)");
    check(cuMemAddressFree(bg_va, bg_bytes), "cuMemAddressFree (background)");
  }
  return 0;
}
