// tests/gpu/bench_grant_overlap.cpp: can the pool grant access off the allocating thread? A benchmark
// and feasibility probe, not a test (run it by hand on a GPU). Usage: bench_grant_overlap [N [R]].
//
// glake's slow path is mostly cuMemSetAccess, ~25-30 us per new mapping (bench_set_access), paid on
// the host thread that allocates; the training jobs are bound by that thread. This asks the driver:
//  1. does another thread's cuMemSetAccess hold up this thread's launches? (launch latency alone, and
//     while a second thread maps, grants and unmaps N pages, R times)
//  2. may work touching a mapped range be enqueued before access is granted, if the stream first
//     waits on a flag that the granting thread sets afterwards (cuStreamWaitValue32)? And does the
//     enqueue of a memset or a copy into a range without access fail on the host?
//  3. what one grant costs by the size of the physical allocation it covers (2 MiB to 512 MiB).
#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "vmm_pages.h"

namespace {

const char* err(CUresult r) {
  const char* s = nullptr;
  cuGetErrorName(r, &s);
  return s != nullptr ? s : "?";
}

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 512;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const VmmPages pages = vmm_pages(n);
  const std::size_t g = pages.g, bytes = pages.bytes;
  const CUdeviceptr va = pages.va;
  const auto& h = pages.h;
  const CUmemAccessDesc& desc = pages.desc;
  CUcontext ctx = pages.ctx;
  const CUmemAllocationProp& prop = pages.prop;
  int memops = -1;
  cuDeviceGetAttribute(&memops, CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR, prop.location.id);
  std::printf("stream wait-value NOR supported: %d\n", memops);
  auto map_all = [&] {
    for (int i = 0; i < n; ++i) check(cuMemMap(va + g * i, g, 0, h[static_cast<std::size_t>(i)], 0), "cuMemMap");
  };
  auto unmap_all = [&] { check(cuMemUnmap(va, bytes), "cuMemUnmap"); };

  CUstream stream = nullptr;
  check(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  CUdeviceptr small = 0;
  check(cuMemAlloc(&small, 4096), "cuMemAlloc");

  // 1. Launch latency on this thread, alone and while another thread maps, grants and unmaps.
  auto launches = [&](std::atomic<bool>* stop, int count, std::vector<double>* lat) {
    for (int i = 0; (stop != nullptr && !stop->load()) || (stop == nullptr && i < count); ++i) {
      double t0 = now_us();
      check(cuMemsetD32Async(small, static_cast<unsigned>(i), 1024, stream), "cuMemsetD32Async");
      lat->push_back(now_us() - t0);
      if (i % 256 == 255) check(cuStreamSynchronize(stream), "cuStreamSynchronize");
    }
    check(cuStreamSynchronize(stream), "cuStreamSynchronize");
  };
  std::vector<double> alone;
  launches(nullptr, 20000, &alone);
  alone.clear();
  double t0 = now_us();
  launches(nullptr, 20000, &alone);
  const double alone_us = now_us() - t0;
  std::vector<double> during, grant_ms;
  std::atomic<bool> stop{false};
  double busy_us = 0;
  {
    std::thread granter([&] {
      check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent (granter)");
      double b0 = now_us();
      for (int r = 0; r < reps; ++r) {
        map_all();
        double a0 = now_us();
        check(cuMemSetAccess(va, bytes, &desc, 1), "cuMemSetAccess");
        grant_ms.push_back((now_us() - a0) / 1000);
        unmap_all();
      }
      busy_us = now_us() - b0;
      stop = true;
    });
    launches(&stop, 0, &during);
    granter.join();
  }
  std::printf("1. launches (cuMemsetD32Async, 4 KiB) on one thread, us per launch:\n");
  std::printf("   alone:                  %zu launches, %.3f us mean, p50 %.2f p99 %.2f max %.1f\n", alone.size(),
              alone_us / static_cast<double>(alone.size()), pct(alone, 0.5), pct(alone, 0.99), pct(alone, 1.0));
  std::printf("   while another thread maps+grants+unmaps %d pages x%d (%.1f ms, grant median %.2f ms):\n", n,
              reps, busy_us / 1000, pct(grant_ms, 0.5));
  std::printf("                           %zu launches, %.3f us mean, p50 %.2f p99 %.2f max %.1f\n", during.size(),
              busy_us / static_cast<double>(std::max<std::size_t>(1, during.size())), pct(during, 0.5),
              pct(during, 0.99), pct(during, 1.0));

  // 2. Enqueue before the grant, gated by a flag the granting thread sets.
  {
    map_all();
    // Does the host refuse to enqueue into a mapped range without access? (On a stream held by a flag
    // that is never set before the grant, so nothing runs before it.)
    unsigned* flag = nullptr;
    check(cuMemHostAlloc(reinterpret_cast<void**>(&flag), 64, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE),
          "cuMemHostAlloc");
    CUdeviceptr dflag = 0;
    check(cuMemHostGetDevicePointer(&dflag, flag, 0), "cuMemHostGetDevicePointer");
    std::atomic_ref<unsigned>(*flag).store(0);
    double e0 = now_us();
    check(cuStreamWaitValue32(stream, dflag, 1, CU_STREAM_WAIT_VALUE_GEQ), "cuStreamWaitValue32");
    CUresult ms = cuMemsetD8Async(va, 0x5a, bytes, stream);
    std::vector<unsigned char> host(4096, 0x11);
    CUresult cp = cuMemcpyHtoDAsync(va + bytes - 4096, host.data(), 4096, stream);
    double e1 = now_us();
    std::printf("2. enqueue before access is granted: wait %s, memset %s, copy %s, %.1f us\n", "ok", err(ms), err(cp),
                e1 - e0);
    std::thread granter([&] {
      check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent (granter)");
      check(cuMemSetAccess(va, bytes, &desc, 1), "cuMemSetAccess (gated)");
      std::atomic_ref<unsigned>(*flag).store(1, std::memory_order_release);
    });
    granter.join();
    CUresult sy = cuStreamSynchronize(stream);
    double e2 = now_us();
    unsigned char a = 0, b = 0;
    if (sy == CUDA_SUCCESS) {
      check(cuMemcpyDtoH(&a, va + 12345, 1), "cuMemcpyDtoH");
      check(cuMemcpyDtoH(&b, va + bytes - 1, 1), "cuMemcpyDtoH");
    }
    std::printf("   after the grant and the flag: synchronize %s after %.1f ms; bytes 0x%02x (0x5a expected), 0x%02x (0x11)\n",
                err(sy), (e2 - e1) / 1000, a, b);
    unmap_all();
    cuMemFreeHost(flag);
  }

  // 3. One grant by the size of the allocation it covers.
  std::printf("3. one cuMemSetAccess over one mapping, median of %d:\n", std::max(reps, 5));
  for (std::size_t mb : {2, 8, 32, 128, 512}) {
    CUmemGenericAllocationHandle big = 0;
    const std::size_t sz = mb << 20;
    check(cuMemCreate(&big, sz, &prop, 0), "cuMemCreate (big)");
    std::vector<double> t;
    for (int r = 0; r < std::max(reps, 5); ++r) {
      check(cuMemMap(va, sz, 0, big, 0), "cuMemMap (big)");
      double a0 = now_us();
      check(cuMemSetAccess(va, sz, &desc, 1), "cuMemSetAccess (big)");
      t.push_back(now_us() - a0);
      check(cuMemUnmap(va, sz), "cuMemUnmap (big)");
    }
    check(cuMemRelease(big), "cuMemRelease");
    std::printf("   %4zu MiB: %8.1f us\n", mb, pct(t, 0.5));
  }
  check(cuMemAddressFree(va, bytes), "cuMemAddressFree");
  for (auto& x : h) check(cuMemRelease(x), "cuMemRelease");
  return 0;
}
