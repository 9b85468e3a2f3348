// tests/pool/test_allocator_threads.cpp: many threads on many streams against one pool (the
// concurrency suite, run under ThreadSanitizer in CI). Each thread keeps its own live blocks filled
// with its own pattern; threads free some of their blocks on other streams, trim and validate while
// others allocate, and every byte is checked at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "allocator_fixture.h"

namespace glake::pool::testing {
namespace {

constexpr std::size_t kPage = 64 << 10;

class AllocatorThreads : public ::testing::TestWithParam<Variant> {};

TEST_P(AllocatorThreads, ManyThreadsManyStreams) {
  HostDriver driver(small_pages(512 * kPage));
  Allocator pool(driver, GetParam().config);
  constexpr int kThreads = 8;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 1);
      std::vector<std::pair<DevPtr, std::size_t>> live;
      std::uint64_t id_base = static_cast<std::uint64_t>(t) << 32;
      for (int op = 0; op < 1500; ++op) {
        StreamHandle s = 100 + static_cast<StreamHandle>(t) * 2 + rng() % 2;
        if (live.size() < 8 || rng() % 2 == 0) {
          std::size_t size = rng() % 3 == 0 ? 1 + rng() % 8000 : 1 + rng() % (6 * kPage);
          DevPtr p = 0;
          Status r = pool.allocate(size, s, &p);
          if (r == Status::out_of_memory) continue;
          if (r != Status::ok || p == 0) {
            ADD_FAILURE() << "allocate " << size << ": " << status_name(r);
            ++failures;
            continue;
          }
          PoolModel::fill(p, id_base + static_cast<std::uint64_t>(p), size);
          live.emplace_back(p, size);
        } else {
          std::size_t i = rng() % live.size();
          auto [p, size] = live[i];
          const auto* w = reinterpret_cast<const std::uint64_t*>(p);
          for (std::size_t k = 0; k < size / 8; ++k)
            if (w[k] != pattern_word(id_base + static_cast<std::uint64_t>(p), k)) {
              ADD_FAILURE() << "block corrupted";
              ++failures;
              break;
            }
          if (pool.free(p, s) != Status::ok) ++failures;
          live[i] = live.back();
          live.pop_back();
        }
        if (op % 300 == 0 && t == 0) pool.trim(16 * kPage);
        if (op % 500 == 0 && t == 1) {
          std::string v = pool.validate();
          if (!v.empty()) {
            ADD_FAILURE() << v;
            ++failures;
          }
        }
      }
      for (auto [p, size] : live)
        if (pool.free(p) != Status::ok) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(pool.validate(), "");
  EXPECT_EQ(pool.stats().requested.current, 0u);
  pool.trim();
  EXPECT_EQ(driver.physical_in_use(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Variants, AllocatorThreads, ::testing::ValuesIn(variants(kPage)), [](const auto& info) {
  std::string name = info.param.name;
  std::replace(name.begin(), name.end(), ' ', '_');
  return name;
});

}  // namespace
}  // namespace glake::pool::testing
