// tests/pool/bench_pair.cpp: a benchmark, not a test (run it by hand): the cost of a cached
// alloc+free pair in the pool on the host driver (bookkeeping only), over the sizes of the GPU
// suite's CachedAllocFreePairCost, once with the default configuration and once with GLAKE_LEND=1's
// (page tails lent to windows). Prints each size's median and the median over all sizes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "pool/allocator.h"
#include "pool/host_driver.h"

using namespace glake::pool;

namespace {

double median_ns(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run(bool lend) {
  HostDriver::Options o;
  o.capacity = std::size_t{8} << 30;
  o.granularity = std::size_t{2} << 20;
  o.backed = false;
  HostDriver driver(o);
  Config config;
  config.lend = lend;
  Allocator pool(driver, config);
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  const std::vector<std::size_t> sizes = {512,      1000,     4096,      20000,     65536,     300000,
                                          kMiB,     3 * kMiB, 6 * kMiB,  10 * kMiB, 32 * kMiB, 64 * kMiB,
                                          777,      123456,   5 * kMiB,  48 * kMiB, 2 * kMiB,  9000};
  const StreamHandle stream = 7;
  auto pair = [&](std::size_t size) {
    DevPtr p = 0;
    if (pool.allocate(size, stream, &p) != Status::ok || pool.free(p) != Status::ok) std::abort();
  };
  // Warm up as the GPU test does: every size live at once, then pairs.
  std::vector<DevPtr> live(sizes.size(), 0);
  for (std::size_t i = 0; i < sizes.size(); ++i)
    if (pool.allocate(sizes[i], stream, &live[i]) != Status::ok) std::abort();
  for (DevPtr p : live) pool.free(p);
  for (int round = 0; round < 20; ++round)
    for (std::size_t s : sizes) pair(s);
  std::printf("%s (stitches while warming up: %llu)\n", lend ? "GLAKE_LEND=1" : "defaults",
              static_cast<unsigned long long>(pool.stats().stitches));
  for (std::size_t s : sizes) {
    std::vector<double> ns;
    for (int round = 0; round < 2000; ++round) {
      const auto t0 = std::chrono::steady_clock::now();
      pair(s);
      ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("  %9zu bytes: %4.0f ns\n", s, median_ns(ns));
  }
  std::vector<double> per_pair;
  for (int round = 0; round < 2000; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t s : sizes) pair(s);
    per_pair.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
                       static_cast<double>(sizes.size()));
  }
  std::printf("  all sizes: %.0f ns per pair (median of 2000 rounds)\n", median_ns(per_pair));
}

}  // namespace

int main() {
  run(false);
  run(true);
  return 0;
}
