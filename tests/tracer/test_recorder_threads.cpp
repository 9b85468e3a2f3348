// tests/tracer/test_recorder_threads.cpp (suite 'concurrency', also run under ThreadSanitizer): many
// threads recording at once, with collects running meanwhile: no event lost while the ring has room,
// each thread's events in its program order, every collected trace consistent; with a small ring the
// dropped events are counted exactly; stacks from many threads; lanes written by threads that take
// turns under a mutex, with shared-ring writers beside them, each ring's order kept while being
// collected, across the ticker's idle times; small lanes count their drops exactly; a traced pool's
// events stay consistent under concurrency (trims, stitches); a shared pool traced from many threads
// ends with the pool's peaks.
#include <atomic>
#include <barrier>
#include <chrono>
#include <functional>
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

// Collects from a recorder on a thread of its own, again and again, from start() until stop(); each
// trace goes to `check` (collect() itself throws if a trace is inconsistent). stop() returns how many
// traces it collected.
class Collector {
 public:
  explicit Collector(Recorder& r, std::function<void(const Trace&)> check = {})
      : thread_([this, &r, check = std::move(check)] {
          while (!go_.load()) std::this_thread::yield();
          while (!done_.load()) {
            Trace t = r.collect();
            if (check) check(t);
            ++count_;
          }
        }) {}
  ~Collector() { stop(); }
  void start() { go_ = true; }
  int count() const { return count_.load(); }
  int stop() {
    go_ = true;
    done_ = true;
    if (thread_.joinable()) thread_.join();
    return count_.load();
  }

 private:
  std::atomic<bool> go_{false}, done_{false};
  std::atomic<int> count_{0};
  std::thread thread_;  // last: started once the flags exist
};

constexpr int kThreads = 8;

TEST(RecorderThreads, NothingLostOrderKeptWhileCollecting) {
  const std::uint64_t per_thread = 20000;
  RecorderOptions o;
  o.capacity = kThreads * per_thread * 2 + 64;
  Recorder r(o);
  std::atomic<bool> go{false};
  Collector collector(r);
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      while (!go.load()) std::this_thread::yield();
      for (std::uint64_t i = 0; i < per_thread; ++i) {
        if (i == per_thread / 2) {  // halfway, a collect has happened (however the threads are scheduled)
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
          while (collector.count() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
        }
        std::uint64_t addr = (static_cast<std::uint64_t>(k + 1) << 40) | (i << 9);
        r.record(ev(Op::alloc, addr, i + 1, static_cast<std::uint64_t>(k)));
        r.record(ev(Op::free, addr, i + 1, static_cast<std::uint64_t>(k)));
      }
    });
  go = true;
  collector.start();
  for (auto& t : threads) t.join();
  EXPECT_GT(collector.stop(), 0);

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
  Collector collector(r);
  collector.start();
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
  collector.stop();
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

// Threads take turns on each lane under the lane's mutex, as a pool's do under its lock, numbering
// their events in `aux` in the mutex's order (the device is the lane's index); other threads write the
// shared ring meanwhile, each numbering its own. A collector runs all along. Every trace: consistent
// (check_trace), no torn event (the fields agree with each other), each lane's mutex order and each
// shared writer's order kept; the last one has every event. Twice all writers stop for 150 ms: the
// ticker goes idle, and the next events wake it.
TEST(RecorderThreads, LanesUnderAMutexAndTheSharedRingWhileCollecting) {
  constexpr int kLanes = 3, kPerLane = 2, kShared = 2, kRounds = 6000;
  RecorderOptions o;
  o.capacity = std::size_t{1} << 16;  // no ring wraps
  o.tick_us = 100;  // idle after 10 ms: the pauses below make the ticker go idle and wake it
  Recorder r(o);
  std::mutex mu[kLanes];
  std::uint64_t next[kLanes] = {};  // under mu[d]: the next event's number
  constexpr int kPauses = 2;
  constexpr auto kPause = std::chrono::milliseconds(150);
  std::uint64_t boundary[kPauses][kLanes] = {};  // next[d] at each pause
  int pauses = 0;
  std::barrier pause(kLanes * kPerLane + kShared, [&]() noexcept {
    for (int d = 0; d < kLanes; ++d) boundary[pauses][d] = next[d];
    ++pauses;
    std::this_thread::sleep_for(kPause);
  });
  auto maybe_pause = [&](int i) {
    if (i % (kRounds / (kPauses + 1)) == 0 && i > 0) pause.arrive_and_wait();
  };
  std::atomic<bool> go{false};
  // An event's fields follow from its ring (device: lane d, or kLanes + shared writer k) and number.
  auto addr_of = [](std::uint32_t device, std::uint64_t block) { return (std::uint64_t{device} + 1) << 40 | block << 8; };
  auto size_of = [](std::uint64_t block) { return block % 1000 + 1; };
  auto check = [&](const Trace& t, bool complete) {
    std::uint64_t last[kLanes + kShared];
    std::fill(std::begin(last), std::end(last), UINT64_MAX);
    std::uint64_t seen[kLanes + kShared] = {};
    for (const TraceEvent& e : t.events) {
      ASSERT_LT(e.device, static_cast<std::uint32_t>(kLanes + kShared));
      const std::uint32_t d = e.device;
      ASSERT_EQ(e.op, e.aux % 2 == 0 ? Op::alloc : Op::free) << "torn event";
      ASSERT_EQ(e.addr, addr_of(d, e.aux / 2)) << "torn event";
      ASSERT_EQ(e.size, size_of(e.aux / 2)) << "torn event";
      ASSERT_EQ(e.stream, e.aux % 5) << "torn event";
      ASSERT_TRUE(last[d] == UINT64_MAX || e.aux > last[d]) << "ring " << d << ": " << e.aux << " after " << last[d];
      if (complete) {
        ASSERT_EQ(e.aux, last[d] + 1) << "ring " << d << ": an event missing";  // UINT64_MAX + 1 == 0
      }
      last[d] = e.aux;
      ++seen[d];
    }
    if (complete) {
      for (int d = 0; d < kLanes; ++d) EXPECT_EQ(seen[d], next[d]);
      for (int k = 0; k < kShared; ++k) EXPECT_EQ(seen[kLanes + k], static_cast<std::uint64_t>(kRounds));
    }
  };
  Collector collector(r, [&](const Trace& t) { ASSERT_NO_FATAL_FAILURE(check(t, false)); });
  Recorder::Lane* lanes[kLanes];
  for (auto& l : lanes) ASSERT_NE(l = r.add_lane(), nullptr);
  std::vector<std::thread> threads;
  for (int d = 0; d < kLanes; ++d)
    for (int k = 0; k < kPerLane; ++k)
      threads.emplace_back([&, d] {
        while (!go.load()) std::this_thread::yield();
        for (int i = 0; i < kRounds; ++i) {
          maybe_pause(i);
          std::lock_guard lock(mu[d]);
          // Pairs: event 2m allocates block m, event 2m + 1 frees it (check_trace would refuse them in
          // the wrong order).
          const std::uint64_t n = next[d]++;
          const auto dev = static_cast<std::uint32_t>(d);
          lanes[d]->record(n % 2 == 0 ? Op::alloc : Op::free, dev, n % 5, addr_of(dev, n / 2), size_of(n / 2), n);
        }
      });
  for (int k = 0; k < kShared; ++k)
    threads.emplace_back([&, k] {
      while (!go.load()) std::this_thread::yield();
      const auto dev = static_cast<std::uint32_t>(kLanes + k);
      for (int i = 0; i < kRounds; ++i) {
        maybe_pause(i);
        const auto n = static_cast<std::uint64_t>(i);
        r.record(ev(n % 2 == 0 ? Op::alloc : Op::free, addr_of(dev, n / 2), size_of(n / 2), n % 5, dev, n));
      }
    });
  go = true;
  collector.start();
  for (auto& t : threads) t.join();
  EXPECT_GT(collector.stop(), 0);
  Trace t = r.collect();
  EXPECT_EQ(t.meta.events_dropped.value_or(1), 0u);
  ASSERT_EQ(t.events.size(), static_cast<std::size_t>((kLanes * kPerLane + kShared) * kRounds));
  check(t, true);
  for (std::size_t i = 1; i < t.events.size(); ++i) ASSERT_GE(t.events[i].t_us, t.events[i - 1].t_us);
  EXPECT_EQ(r.counters().lanes, static_cast<std::uint64_t>(kLanes));
  ASSERT_EQ(pauses, kPauses);
  // The events after a pause are placed after it. A lane's event that races the ticker going idle may
  // be placed up to one idle tick (50 ms) early (recorder.h), and a loaded machine or a sanitizer delays
  // ticks by some ms more: half the pause is asked for.
  for (int p = 0; p < kPauses; ++p)
    for (int d = 0; d < kLanes; ++d) {
      std::uint64_t before = 0, after = UINT64_MAX;  // the last t_us before the pause, the first after
      for (const TraceEvent& e : t.events)
        if (e.device == static_cast<std::uint32_t>(d)) {
          if (e.aux < boundary[p][d]) before = std::max(before, e.t_us);
          else after = std::min(after, e.t_us);
        }
      EXPECT_GE(after - before, 75000u) << "pause " << p << ", lane " << d;
    }
}

// Lanes too small for their events, written under their mutexes while the shared ring is written too:
// each drops exactly what did not fit, and keeps its newest.
TEST(RecorderThreads, SmallLanesCountDropsExactly) {
  constexpr int kLanes = 4, kPerLane = 2, kRounds = 2000;
  RecorderOptions o;
  o.capacity = 1024;
  Recorder r(o);
  std::mutex mu[kLanes];
  std::uint64_t next[kLanes] = {};
  Recorder::Lane* lanes[kLanes];
  for (auto& l : lanes) ASSERT_NE(l = r.add_lane(), nullptr);
  Collector collector(r);
  collector.start();
  std::vector<std::thread> threads;
  for (int d = 0; d < kLanes; ++d)
    for (int k = 0; k < kPerLane; ++k)
      threads.emplace_back([&, d] {
        // Lane d records kPerLane * kRounds * (d + 1) / kLanes events in all: 1000 (no wrap) to 4000.
        const int rounds = kRounds * (d + 1) / kLanes;
        for (int i = 0; i < rounds; ++i) {
          std::lock_guard lock(mu[d]);
          const std::uint64_t n = next[d]++;
          lanes[d]->record(Op::alloc, static_cast<std::uint32_t>(d), 0, (std::uint64_t{1} << 40) * (d + 1) + (n << 9), 512, n);
        }
      });
  threads.emplace_back([&] {
    for (int i = 0; i < 500; ++i) r.record(ev(Op::map, std::uint64_t{1} << 50 | static_cast<std::uint64_t>(i) << 21, 1, 0, 9));
  });
  for (auto& t : threads) t.join();
  collector.stop();
  std::uint64_t total = 500, dropped = 0;
  for (int d = 0; d < kLanes; ++d) {
    total += next[d];
    dropped += next[d] > 1024 ? next[d] - 1024 : 0;
  }
  ASSERT_GT(dropped, 0u);
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, total);
  EXPECT_EQ(c.dropped, dropped);
  Trace t = r.collect();
  EXPECT_EQ(*t.meta.events_dropped, dropped);
  EXPECT_EQ(t.events.size() + dropped, total);
  std::uint64_t first[kLanes], count[kLanes] = {};
  std::fill(std::begin(first), std::end(first), UINT64_MAX);
  for (const TraceEvent& e : t.events) {
    if (e.device == 9) continue;
    ASSERT_LT(e.device, static_cast<std::uint32_t>(kLanes));
    if (first[e.device] == UINT64_MAX) first[e.device] = e.aux;
    EXPECT_EQ(e.aux, first[e.device] + count[e.device]++) << "lane " << e.device;
  }
  for (int d = 0; d < kLanes; ++d) {
    EXPECT_EQ(count[d], std::min<std::uint64_t>(next[d], 1024)) << "lane " << d;
    EXPECT_EQ(first[d], next[d] > 1024 ? next[d] - 1024 : 0) << "lane " << d << ": its newest";
  }
}

// A traced pool used by many threads at once, with trims and stitches: its events (each emitted
// under the pool's lock) come out in an order in which every free names a live block, physical bytes
// never go negative, pages are mapped before they are used and unmapped only when mapped; the counts
// match the pool's statistics.
TEST(RecorderThreads, TracedPoolEventsStayConsistentUnderConcurrency) {
  pool::HostDriver::Options d;
  d.cost_model = false;
  d.granularity = 64 << 10;
  d.capacity = std::size_t{48} << 20;  // tight: stitches, reclaims and failures
  pool::HostDriver driver(d);
  pool::Allocator alloc(driver, pool::Config{});
  RecorderOptions o;
  o.capacity = std::size_t{1} << 20;  // no wrap
  Recorder r(o);
  PoolTraceObserver observer(&r);
  alloc.set_observer(&observer);
  std::atomic<bool> stop_trim{false};
  std::thread trimmer([&] {
    while (!stop_trim.load()) {
      alloc.trim(std::size_t{4} << 20);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      std::vector<pool::DevPtr> mine;
      std::uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(k + 1);
      for (int i = 0; i < 3000; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (mine.size() < 12 && (x % 3 != 0 || mine.empty())) {
          const std::size_t size = x % 4 == 0 ? 1 + x % 4000 : (std::size_t{1} << 16) * (1 + x % 40) - x % 3000;
          pool::DevPtr p = 0;
          if (alloc.allocate(size, static_cast<pool::StreamHandle>(k + 1), &p) == pool::Status::ok) mine.push_back(p);
        } else {
          const std::size_t j = x % mine.size();
          ASSERT_EQ(alloc.free(mine[j]), pool::Status::ok);
          mine[j] = mine.back();
          mine.pop_back();
        }
      }
      for (pool::DevPtr p : mine) ASSERT_EQ(alloc.free(p), pool::Status::ok);
    });
  for (auto& t : threads) t.join();
  stop_trim = true;
  trimmer.join();
  alloc.trim();
  Trace t = r.collect();
  alloc.set_observer(nullptr);
  pool::Stats st = alloc.stats();
  testing_util::PoolEventCounts c;
  ASSERT_EQ(testing_util::check_pool_events(t, driver.granularity(), &c), "");
  EXPECT_EQ(c.ops[Op::alloc], st.allocs);
  EXPECT_EQ(c.ops[Op::free], st.frees);
  EXPECT_EQ(c.ops[Op::create], st.creates);
  EXPECT_EQ(c.ops[Op::release], st.releases);
  EXPECT_EQ(c.ops[Op::map], st.maps);
  EXPECT_EQ(c.ops[Op::unmap], st.unmaps);
  EXPECT_EQ(c.ops[Op::stitch], st.stitches);
  EXPECT_EQ(c.physical, static_cast<std::int64_t>(st.physical.current));
  EXPECT_EQ(c.physical_peak, static_cast<std::int64_t>(st.physical.peak));
  // The workload reaches every kind of driver event.
  EXPECT_GT(st.releases, 0u);
  EXPECT_GT(st.unmaps, 0u);
  EXPECT_GT(st.stitches, 0u);
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
