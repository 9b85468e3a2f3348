// tests/tracer/test_recorder_threads.cpp (suite 'concurrency', also run under ThreadSanitizer): many
// threads recording at once, with collects running meanwhile: no event lost while the ring has room,
// each thread's events in its program order, every collected trace consistent; with a small ring the
// dropped events are counted exactly; stacks from many threads; lanes written by threads that take
// turns under a mutex, with shared-ring events among them, merged in the mutex's order while being
// collected, across the ticker's sleeps; a shared pool traced from many threads ends with the pool's
// peaks.
#include <atomic>
#include <barrier>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tracer/recorder_test_util.h"
#include "tracer/recorder.h"

namespace glake::tracer {
namespace {

using testing_util::ev;

constexpr int kThreads = 8;

TEST(RecorderThreads, NothingLostOrderKeptWhileCollecting) {
  const std::uint64_t per_thread = 20000;
  RecorderOptions o;
  o.capacity = kThreads * per_thread * 2 + 64;
  Recorder r(o);
  std::atomic<bool> go{false}, done{false};
  std::atomic<int> collects{0};
  std::thread collector([&] {
    while (!go.load()) std::this_thread::yield();
    while (!done.load()) {
      Trace t = r.collect();  // throws if inconsistent
      ++collects;
    }
  });
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      while (!go.load()) std::this_thread::yield();
      for (std::uint64_t i = 0; i < per_thread; ++i) {
        std::uint64_t addr = (static_cast<std::uint64_t>(k + 1) << 40) | (i << 9);
        r.record(ev(Op::alloc, addr, i + 1, static_cast<std::uint64_t>(k)));
        r.record(ev(Op::free, addr, i + 1, static_cast<std::uint64_t>(k)));
      }
    });
  go = true;
  for (auto& t : threads) t.join();
  done = true;
  collector.join();
  EXPECT_GT(collects.load(), 0);

  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), kThreads * per_thread * 2);
  EXPECT_EQ(t.meta.events_dropped.value_or(1), 0u);
  std::map<std::uint32_t, std::uint64_t> next;  // thread -> the next i expected, times 2 (+1 for the free)
  std::map<std::uint32_t, int> stream_of;
  for (const TraceEvent& e : t.events) {
    std::uint64_t i = (e.addr & ((std::uint64_t{1} << 40) - 1)) >> 9;
    std::uint64_t want = next[e.thread];
    ASSERT_EQ(i * 2 + (e.op == Op::free ? 1 : 0), want) << "thread " << e.thread << " out of order";
    next[e.thread] = want + 1;
    auto [it, fresh] = stream_of.emplace(e.thread, static_cast<int>(e.stream));
    ASSERT_EQ(it->second, static_cast<int>(e.stream)) << "one thread, one stream";
  }
  EXPECT_EQ(next.size(), static_cast<std::size_t>(kThreads));
  for (std::size_t i = 1; i < t.events.size(); ++i) ASSERT_GE(t.events[i].t_us, t.events[i - 1].t_us);
}

TEST(RecorderThreads, SmallRingCountsDropsExactlyUnderConcurrency) {
  const std::uint64_t per_thread = 5000;
  RecorderOptions o;
  o.capacity = 4096;
  Recorder r(o);
  std::atomic<bool> done{false};
  std::thread collector([&] {
    while (!done.load()) (void)r.collect();  // consistent every time (check_trace inside)
  });
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      for (std::uint64_t i = 0; i < per_thread; ++i) {
        std::uint64_t addr = (static_cast<std::uint64_t>(k + 1) << 40) | (i << 9);
        r.record(ev(Op::alloc, addr, 512));
        r.record(ev(Op::free, addr, 512));
      }
    });
  for (auto& t : threads) t.join();
  done = true;
  collector.join();
  const std::uint64_t total = kThreads * per_thread * 2;
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, total);
  EXPECT_EQ(c.dropped, total - 4096);
  Trace t = r.collect();
  EXPECT_EQ(t.events.size() + *t.meta.events_dropped, total) << "written + dropped = recorded";
  // A writer descheduled for a whole lap of this tiny ring may land on a newer event's slot: that
  // event is lost, and counted (events_in_flight), never silently.
  auto m = nlohmann::json::parse(t.meta.json);
  EXPECT_EQ(t.events.size() + m.value("events_in_flight", 0), 4096u);
}

TEST(RecorderThreads, StacksFromManyThreads) {
  if (!Recorder::stacks_supported()) GTEST_SKIP() << "built without libunwind";
#if defined(__SANITIZE_THREAD__)
  // libunwind frees its per-thread cache from a thread-exit destructor that takes a mutex after
  // ThreadSanitizer has torn the thread down: the runtime crashes. Not ours to fix; runs without TSan.
  GTEST_SKIP() << "libunwind's thread-exit destructor crashes ThreadSanitizer";
#endif
  RecorderOptions o;
  o.stacks = true;
  Recorder r(o);
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      for (int i = 0; i < 2000; ++i) {
        std::uint64_t addr = (static_cast<std::uint64_t>(k + 1) << 40) | (static_cast<std::uint64_t>(i) << 9);
        if (i % 2 == 0) glake_test_alloc_site(&r, addr);
        else glake_test_other_site(&r, addr);
      }
    });
  for (auto& t : threads) t.join();
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), kThreads * 2000u);
  for (const TraceEvent& e : t.events) ASSERT_NE(e.stack, 0u);
  EXPECT_LE(t.stacks.size(), 4u) << "two sites (a thread's entry frames may differ)";
  EXPECT_EQ(r.counters().stacks_dropped, 0u);
}

// Threads take turns on each device's lane under the device's mutex, as the pool's do under its lock,
// numbering their events in `aux` in the mutex's order; some events under the mutex go to the shared
// ring instead (as a pool would emit one of its own under its lock), and other threads write the
// shared ring without the mutex (the pool's growth paths). A collector runs all along. Every trace:
// consistent (check_trace), no torn event (the fields agree with each other), each device's mutex
// order kept, lane and shared events alike; the last one has every event.
TEST(RecorderThreads, LanesUnderAMutexWithSharedEventsWhileCollecting) {
  constexpr int kDevices = 2, kPerDevice = 3, kRounds = 6000;
  RecorderOptions o;
  o.capacity = std::size_t{1} << 16;  // no ring wraps
  o.tick_us = 100;  // idle after 10 ms: the pauses below put the ticker to sleep and wake it
  Recorder r(o);
  std::mutex mu[kDevices];
  std::uint64_t next[kDevices] = {};  // under mu[d]: the next event's number
  // Twice, every writer stops, and nothing is recorded for 60 ms: the ticker falls asleep (10 idle
  // ticks), and the next events wake it. The events after a pause must be placed after it (within
  // ticks, which a loaded machine or a sanitizer may delay by some ms: half the pause is asked for).
  constexpr int kPauses = 2;
  constexpr auto kPause = std::chrono::milliseconds(60);
  std::uint64_t boundary[kPauses][kDevices] = {};  // next[d] at each pause
  int pauses = 0;
  std::barrier pause(kDevices * kPerDevice + 1, [&]() noexcept {
    for (int d = 0; d < kDevices; ++d) boundary[pauses][d] = next[d];
    ++pauses;
    std::this_thread::sleep_for(kPause);
  });
  auto maybe_pause = [&](int i) {
    if (i % (kRounds / (kPauses + 1)) == 0 && i > 0) pause.arrive_and_wait();
  };
  std::atomic<bool> go{false}, done{false};
  std::atomic<int> collects{0};
  // An event's fields follow from its number (aux): a torn event would not agree.
  auto addr_of = [](int d, std::uint64_t block) { return (static_cast<std::uint64_t>(d + 1) << 40) | (block << 8); };
  auto size_of = [](std::uint64_t block) { return block % 1000 + 1; };
  auto check = [&](const Trace& t, bool complete) {
    std::uint64_t last[kDevices];
    std::fill(std::begin(last), std::end(last), UINT64_MAX);
    std::uint64_t seen[kDevices] = {};
    for (const TraceEvent& e : t.events) {
      if (e.op == Op::map) continue;  // the unserialised writer's
      ASSERT_LT(e.device, static_cast<std::uint32_t>(kDevices));
      const int d = static_cast<int>(e.device);
      ASSERT_EQ(e.op, e.aux % 2 == 0 ? Op::alloc : Op::free) << "torn event";
      ASSERT_EQ(e.addr, addr_of(d, e.aux / 2)) << "torn event";
      ASSERT_EQ(e.size, size_of(e.aux / 2)) << "torn event";
      ASSERT_EQ(e.stream, e.aux % 5) << "torn event";
      ASSERT_TRUE(last[d] == UINT64_MAX || e.aux > last[d]) << "device " << d << ": " << e.aux << " after " << last[d];
      if (complete) {
        ASSERT_EQ(e.aux, last[d] + 1) << "device " << d << ": an event missing";  // UINT64_MAX + 1 == 0
      }
      last[d] = e.aux;
      ++seen[d];
    }
    if (complete) {
      for (int d = 0; d < kDevices; ++d) EXPECT_EQ(seen[d], next[d]);
    }
  };
  std::thread collector([&] {
    while (!go.load()) std::this_thread::yield();
    while (!done.load()) {
      Trace t = r.collect();  // throws if inconsistent
      ASSERT_NO_FATAL_FAILURE(check(t, false));
      ++collects;
    }
  });
  std::vector<std::thread> threads;
  for (int d = 0; d < kDevices; ++d)
    for (int k = 0; k < kPerDevice; ++k)
      threads.emplace_back([&, d, k] {
        Recorder::Lane* lane = r.lane(static_cast<std::uint32_t>(d));
        ASSERT_NE(lane, nullptr);
        while (!go.load()) std::this_thread::yield();
        for (int i = 0; i < kRounds; ++i) {
          maybe_pause(i);
          std::lock_guard lock(mu[d]);
          // Pairs: event 2m allocates block m, event 2m + 1 frees it (check_trace would refuse them in
          // the wrong order). Some go to the shared ring: a whole pair, or only a free.
          const std::uint64_t n = next[d]++;
          const Op op = n % 2 == 0 ? Op::alloc : Op::free;
          const std::uint64_t addr = addr_of(d, n / 2), size = size_of(n / 2);
          if (n % 32 < 2 || n % 32 == 5) r.record(ev(op, addr, size, n % 5, static_cast<std::uint32_t>(d), n));
          else lane->record(op, n % 5, addr, size, n);
        }
      });
  std::thread unserialised([&] {  // the pool's growth paths: shared ring, no mutex
    while (!go.load()) std::this_thread::yield();
    for (int i = 0; i < kRounds; ++i) {
      maybe_pause(i);
      r.record(ev(Op::map, static_cast<std::uint64_t>(i) << 21, 2 << 20, 0, i % 2));
    }
  });
  go = true;
  for (auto& t : threads) t.join();
  unserialised.join();
  done = true;
  collector.join();
  EXPECT_GT(collects.load(), 0);
  Trace t = r.collect();
  EXPECT_EQ(t.meta.events_dropped.value_or(1), 0u);
  ASSERT_EQ(t.events.size(), static_cast<std::size_t>(kDevices * kPerDevice * kRounds + kRounds));
  check(t, true);
  for (std::size_t i = 1; i < t.events.size(); ++i) ASSERT_GE(t.events[i].t_us, t.events[i - 1].t_us);
  EXPECT_EQ(r.counters().lanes, static_cast<std::uint64_t>(kDevices));
  ASSERT_EQ(pauses, kPauses);
  for (int p = 0; p < kPauses; ++p)
    for (int d = 0; d < kDevices; ++d) {
      std::uint64_t before = 0, after = UINT64_MAX;  // the last t_us before the pause, the first after
      for (const TraceEvent& e : t.events)
        if (e.op != Op::map && e.device == static_cast<std::uint32_t>(d)) {
          if (e.aux < boundary[p][d]) before = std::max(before, e.t_us);
          else after = std::min(after, e.t_us);
        }
      EXPECT_GE(after - before, 30000u) << "pause " << p << ", device " << d;
    }
}

TEST(RecorderThreads, SharedPoolFromManyThreads) {
  testing_util::TracedPool tp;
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      std::vector<pool::DevPtr> mine;
      for (int i = 0; i < 2000; ++i) {
        pool::DevPtr p = 0;
        std::size_t size = (i % 7 == 0) ? (std::size_t{3} << 20) : 4096 * static_cast<std::size_t>(1 + i % 50);
        ASSERT_EQ(tp.pool.allocate(size, static_cast<pool::StreamHandle>(k + 1), &p), pool::Status::ok);
        mine.push_back(p);
        if (mine.size() > 20) {
          ASSERT_EQ(tp.pool.free(mine.front()), pool::Status::ok);
          mine.erase(mine.begin());
        }
      }
      for (pool::DevPtr p : mine) ASSERT_EQ(tp.pool.free(p), pool::Status::ok);
    });
  for (auto& t : threads) t.join();
  pool::Stats st = tp.pool.stats();
  CollectOptions co;
  co.totals = Totals{st.requested.current, st.physical.current};
  Trace t = tp.recorder.collect(co);
  EXPECT_EQ(t.peak_live_bytes, st.requested.peak);
  ASSERT_TRUE(t.peak_physical_bytes.has_value());
  EXPECT_EQ(*t.peak_physical_bytes, st.physical.peak);
  EXPECT_EQ(t.allocs, st.allocs);
  EXPECT_EQ(t.frees, st.frees);
}

}  // namespace
}  // namespace glake::tracer
