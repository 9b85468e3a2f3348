// tests/pool/test_host_driver_threads.cpp: HostDriver called from many threads at once.
//
// Each thread works on its own ranges and chunks; the driver's state (capacity, counters, faults) is
// shared. Afterwards every counter adds up and nothing is left behind. Run it under the sanitizers
// (and ideally -Db_sanitize=thread) to catch races.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "pool/host_driver.h"

namespace glake::pool {
namespace {

constexpr std::size_t kG = std::size_t{2} << 20;
constexpr int kThreads = 8;
constexpr int kRounds = 50;

template <class Fn>
void run_threads(Fn fn) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(fn, t);
  for (auto& th : threads) th.join();
}

TEST(HostDriverThreads, StitchOwnRangesConcurrently) {
  HostDriver d;
  std::atomic<int> bad{0};
  run_threads([&](int t) {
    for (int r = 0; r < kRounds; ++r) {
      DevPtr va = 0;
      PhysHandle a = 0, b = 0;
      if (d.reserve(2 * kG, &va) != Status::ok || d.create(kG, &a) != Status::ok ||
          d.create(kG, &b) != Status::ok || d.map(va + kG, kG, a, 0) != Status::ok ||
          d.map(va, kG, b, 0) != Status::ok || d.set_access(va, 2 * kG) != Status::ok) {
        ++bad;
        return;
      }
      // Mark both chunks across the seam and read them back; another thread's map must not disturb it.
      auto* p = reinterpret_cast<volatile std::uint32_t*>(va + kG - 64);
      const std::uint32_t mark = static_cast<std::uint32_t>(t * 1000 + r);
      for (int i = 0; i < 32; ++i) p[i] = mark + static_cast<std::uint32_t>(i);
      std::this_thread::yield();
      for (int i = 0; i < 32; ++i) {
        if (p[i] != mark + static_cast<std::uint32_t>(i)) ++bad;
      }
      if (d.unmap(va, kG) != Status::ok || d.unmap(va + kG, kG) != Status::ok || d.release(a) != Status::ok ||
          d.release(b) != Status::ok || d.free_reserve(va, 2 * kG) != Status::ok) {
        ++bad;
        return;
      }
    }
  });
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(d.physical_in_use(), 0u);
  EXPECT_EQ(d.mappings(), 0u);
  EXPECT_EQ(d.reserved_bytes(), 0u);
  const auto n = static_cast<std::uint64_t>(kThreads) * kRounds;
  EXPECT_EQ(d.stats().calls(Call::create), 2 * n);
  EXPECT_EQ(d.stats().calls(Call::map), 2 * n);
  EXPECT_EQ(d.stats().calls(Call::set_access), n);
  EXPECT_EQ(d.stats().ns(Call::set_access), 2 * n * HostDriver::modeled_ns(Call::set_access));
  EXPECT_EQ(d.stats().failures(Call::map), 0u);
}

TEST(HostDriverThreads, CapacityHoldsUnderContention) {
  HostDriver::Options o;
  o.capacity = 5 * kG;
  HostDriver d(o);
  std::atomic<std::uint64_t> created{0}, refused{0};
  std::atomic<bool> over{false};
  run_threads([&](int) {
    for (int r = 0; r < kRounds; ++r) {
      PhysHandle h[2] = {0, 0};
      int got = 0;
      for (auto& hh : h) {
        const Status s = d.create(kG, &hh);
        if (s == Status::ok) {
          ++got;
          ++created;
        } else if (s == Status::out_of_memory) {
          ++refused;
          hh = 0;
        }
      }
      if (d.physical_in_use() > 5 * kG) over = true;
      for (PhysHandle hh : h) {
        if (hh != 0) d.release(hh);
      }
    }
  });
  EXPECT_FALSE(over.load());
  EXPECT_EQ(created + refused, 2u * kThreads * kRounds);
  EXPECT_EQ(d.stats().failures(Call::create), refused.load());
  EXPECT_EQ(d.physical_in_use(), 0u);
}

TEST(HostDriverThreads, InjectedFaultsFireOnceEachAcrossThreads) {
  HostDriver d;
  for (std::uint64_t n : {3u, 17u, 50u, 120u}) d.fail_nth(Call::map, n, Status::not_permitted);
  std::atomic<int> injected{0}, bad{0};
  run_threads([&](int) {
    DevPtr va = 0;
    PhysHandle h = 0;
    if (d.reserve(kG, &va) != Status::ok || d.create(kG, &h) != Status::ok) {
      ++bad;
      return;
    }
    for (int r = 0; r < kRounds; ++r) {
      const Status s = d.map(va, kG, h, 0);
      if (s == Status::not_permitted) {
        ++injected;
        continue;
      }
      if (s != Status::ok || d.unmap(va, kG) != Status::ok) ++bad;
    }
  });
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(injected.load(), 4);
  EXPECT_EQ(d.stats().failures(Call::map), 4u);
  EXPECT_EQ(d.mappings(), 0u);
}

TEST(HostDriverThreads, EventsOnOwnStreams) {
  HostDriver d;
  std::atomic<int> bad{0};
  run_threads([&](int t) {
    const auto stream = static_cast<StreamHandle>(100 + t);
    EventHandle e = 0;
    if (d.event_create(&e) != Status::ok) {
      ++bad;
      return;
    }
    for (int r = 0; r < kRounds; ++r) {
      d.enqueue_work(stream);
      if (d.event_record(e, stream) != Status::ok || d.event_query(e) != Status::not_ready) ++bad;
      if (r % 2 == 0) {
        d.complete_work(stream);
      } else if (d.event_synchronize(e) != Status::ok) {
        ++bad;
      }
      if (d.event_query(e) != Status::ok) ++bad;
    }
    if (d.event_destroy(e) != Status::ok) ++bad;
  });
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(d.live_events(), 0u);
}

}  // namespace
}  // namespace glake::pool
