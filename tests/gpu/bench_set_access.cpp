// tests/gpu/bench_set_access.cpp: what granting access to fresh mappings costs, from one thread and
// spread over several. A benchmark, not a test (run it by hand on a GPU).
//
// cuMemSetAccess costs about 35-62 us per mapping it covers (DESIGN.md), most of the pool's slow path.
// This maps N one-granule pages side by side, then grants access over them from one thread (one call)
// or from T threads (one call each over N/T consecutive mappings), and prints the median time of
// each over R repetitions, with cuMemMap and cuMemUnmap beside it. Each repetition checks the memory
// is usable (cuMemsetD8 over all of it, then a synchronize). Usage: bench_set_access [N [R]].
// On an H200 (driver 580.159) the calls serialize: more threads take as long or longer (README,
// "2026-12-07, morning"), so the pool grants from the allocating thread alone.
#include <cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "vmm_pages.h"

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 512;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  const VmmPages pages = vmm_pages(n);
  const std::size_t g = pages.g, bytes = pages.bytes;
  const CUdeviceptr va = pages.va;
  const auto& h = pages.h;
  const CUmemAccessDesc& desc = pages.desc;

  auto map_all = [&] {
    for (int i = 0; i < n; ++i) check(cuMemMap(va + g * i, g, 0, h[static_cast<std::size_t>(i)], 0), "cuMemMap");
  };
  auto unmap_all = [&] {
    for (int i = 0; i < n; ++i) check(cuMemUnmap(va + g * i, g), "cuMemUnmap");
  };
  auto grant = [&](int threads) {
    if (threads == 1) {
      check(cuMemSetAccess(va, bytes, &desc, 1), "cuMemSetAccess");
      return;
    }
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      const int lo = n * t / threads, hi = n * (t + 1) / threads;
      ts.emplace_back([&, lo, hi] {  // no context current: VMM calls need none
        check(cuMemSetAccess(va + g * lo, g * static_cast<std::size_t>(hi - lo), &desc, 1), "cuMemSetAccess (worker)");
      });
    }
    for (auto& t : ts) t.join();
  };

  std::printf("granularity %zu, %d mappings, %d repetitions, median ms (us per mapping)\n", g, n, reps);
  for (int threads : {1, 2, 4, 8, 16, 1}) {
    std::vector<double> tm, ta, tu;
    for (int r = 0; r < reps; ++r) {
      double t0 = now_ms();
      map_all();
      double t1 = now_ms();
      grant(threads);
      double t2 = now_ms();
      check(cuMemsetD8(va, static_cast<unsigned char>(r), bytes), "cuMemsetD8");
      check(cuCtxSynchronize(), "cuCtxSynchronize");
      double t3 = now_ms();
      unmap_all();
      double t4 = now_ms();
      tm.push_back(t1 - t0);
      ta.push_back(t2 - t1);
      tu.push_back(t4 - t3);
    }
    const double a = median(ta);
    std::printf("threads %2d: set_access %8.3f ms (%6.2f us)   map %7.3f ms (%5.2f us)   unmap %7.3f ms (%5.2f us)\n",
                threads, a, a * 1000 / n, median(tm), median(tm) * 1000 / n, median(tu), median(tu) * 1000 / n);
  }
  // One call per mapping, one thread: what a caller that grants page by page pays.
  {
    std::vector<double> ta;
    for (int r = 0; r < reps; ++r) {
      map_all();
      double t1 = now_ms();
      for (int i = 0; i < n; ++i) check(cuMemSetAccess(va + g * i, g, &desc, 1), "cuMemSetAccess (each)");
      ta.push_back(now_ms() - t1);
      unmap_all();
    }
    std::printf("one call per mapping: set_access %8.3f ms (%6.2f us)\n", median(ta), median(ta) * 1000 / n);
  }
  check(cuMemAddressFree(va, bytes), "cuMemAddressFree");
  for (auto& x : h) check(cuMemRelease(x), "cuMemRelease");
  return 0;
}
