// tests/tracer/test_recorder_lanes.cpp: the recorder's lanes, one thread at a time: what collect()
// returns for lane events (fields, order, meta), the bound on lanes, the merge of the rings by time
// (each ring's order kept), full lanes (keep newest: dropped, live_at_start, unseen bytes; keep oldest:
// refused; each lane on its own), time on lanes (sampled, across the ticker's idle time, an event that
// missed the idle flag; exact), stacks on lanes, and the pool observer's lane (one per pool, the
// shared ring past the last). Many threads: test_recorder_threads.cpp.
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tracer/recorder_test_util.h"
#include "tracer/recorder.h"

namespace glake::tracer {
namespace {

using testing_util::ev;

nlohmann::json meta_of(const Trace& t) { return nlohmann::json::parse(t.meta.json); }

// Returns once the recorder's clock has moved on: events around it get distinct exact times.
void clock_moves(const Recorder& r) {
  const std::uint64_t t = r.clock().ticks();
  while (r.clock().ticks() == t) {
  }
}

TEST(RecorderLanes, LaneEventsKeepTheirFieldsAndOrder) {
  Recorder r(RecorderOptions{});
  Recorder::Lane* lane = r.add_lane();
  ASSERT_NE(lane, nullptr);
  EXPECT_NE(r.add_lane(), lane) << "a new lane each time";
  lane->record(Op::alloc, 3, 7, 0x1000, 100, 0);
  lane->record(Op::stitch, 3, 7, 0x200000, 2 << 20, 5);
  lane->record(Op::alloc, 4, 7, 0x200000, 3000, 0);  // the device is the event's, not the lane's
  lane->record(Op::oom, 3, 9, 0, 1 << 30, 0);
  lane->record(Op::free, 3, 7, 0x1000, 100, 0);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 5u);
  const Op want[] = {Op::alloc, Op::stitch, Op::alloc, Op::oom, Op::free};
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(t.events[i].op, want[i]) << i;
    EXPECT_EQ(t.events[i].device, i == 2 ? 4u : 3u) << i;
    EXPECT_EQ(t.events[i].thread, static_cast<std::uint32_t>(::gettid())) << i;
  }
  EXPECT_EQ(t.events[1].aux, 5u);
  EXPECT_EQ(t.events[1].size, 2u << 20);
  EXPECT_EQ(t.events[3].stream, 9u);
  EXPECT_EQ(t.peak_live_bytes, 3100u);
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, 5u);
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(c.lanes, 2u);
  auto m = meta_of(t);
  EXPECT_EQ(m["events_recorded"], 5);
  EXPECT_EQ(m["events_written"], 5);
  EXPECT_EQ(m["lanes"], 2);
}

TEST(RecorderLanes, LanesAreBounded) {
  RecorderOptions o;
  o.capacity = 16;
  Recorder r(o);
  std::vector<Recorder::Lane*> lanes;
  for (std::uint32_t i = 0; i < Recorder::kMaxLanes; ++i) {
    lanes.push_back(r.add_lane());
    ASSERT_NE(lanes.back(), nullptr) << i;
  }
  EXPECT_EQ(r.add_lane(), nullptr) << "past kMaxLanes";
  EXPECT_EQ(r.counters().lanes, Recorder::kMaxLanes);
  for (std::size_t i = 0; i < lanes.size(); ++i) lanes[i]->record(Op::alloc, 0, 0, 0x1000 * (i + 1), 10, 0);
  r.record(ev(Op::alloc, 0x100000, 10));
  Trace t = r.collect();
  EXPECT_EQ(t.events.size(), Recorder::kMaxLanes + 1);
  EXPECT_EQ(meta_of(t)["lanes"], Recorder::kMaxLanes);
}

// Events on two lanes and the shared ring, one after another: (ring, op, addr); ring -1 is the shared one.
struct Step {
  int ring;
  Op op;
  std::uint64_t addr;
};
const Step kSteps[] = {{0, Op::create, 0},      {0, Op::map, 0x200000}, {0, Op::alloc, 0x200000}, {1, Op::alloc, 0x9000},
                       {-1, Op::oom, 0},        {0, Op::free, 0x200000}, {1, Op::free, 0x9000},   {0, Op::unmap, 0x200000},
                       {-1, Op::alloc, 0x5000}, {0, Op::release, 0},     {-1, Op::free, 0x5000}};
template <typename Between>
void record_steps(Recorder& r, Between between) {
  Recorder::Lane* lanes[2] = {r.add_lane(), r.add_lane()};
  for (const Step& s : kSteps) {
    const std::uint64_t size = s.op == Op::alloc || s.op == Op::free ? 100 : 2 << 20;
    if (s.ring < 0) r.record(ev(s.op, s.addr, size, 0, 2));
    else lanes[s.ring]->record(s.op, static_cast<std::uint32_t>(s.ring), 0, s.addr, size, 0);
    between();
  }
}
void expect_steps(const Trace& t) {
  ASSERT_EQ(t.events.size(), std::size(kSteps));
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    EXPECT_EQ(t.events[i].op, kSteps[i].op) << i;
    EXPECT_EQ(t.events[i].addr, kSteps[i].addr) << i;
    EXPECT_EQ(t.events[i].device, kSteps[i].ring < 0 ? 2u : static_cast<std::uint32_t>(kSteps[i].ring)) << i;
  }
  for (std::size_t i = 1; i < t.events.size(); ++i) EXPECT_GE(t.events[i].t_us, t.events[i - 1].t_us);
}

TEST(RecorderLanes, RingsMergeByExactTime) {
  RecorderOptions o;
  o.time = RecorderOptions::Time::exact;
  Recorder r(o);
  record_steps(r, [&] { clock_moves(r); });
  expect_steps(r.collect());
}

TEST(RecorderLanes, RingsMergeBySampledTime) {
  Recorder r(RecorderOptions{});
  // Sampled times are off by up to a tick (1 ms), more if the ticker runs late on a loaded machine:
  // each step waits for the ticker's next look at every ring, so that two steps never share one.
  record_steps(r, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(RecorderTestPeer::wait_ticked(r));
  });
  expect_steps(r.collect());
}

TEST(RecorderLanes, FullLaneKeepNewestCountsAndStaysConsistent) {
  RecorderOptions o;
  o.capacity = 64;
  Recorder r(o);
  Recorder::Lane* lane = r.add_lane();
  // The shared ring's one event (it does not wrap) comes first: recorded after the lane's, it would sort
  // before or after their last frees depending on whether a clock tick fell in between.
  r.record(ev(Op::alloc, 0xb00000, 7));
  // As Recorder.FullRingKeepNewestCountsAndStaysConsistent, on a lane, with creates as a pool has them.
  lane->record(Op::create, 0, 0, 0, 1 << 21, 0);
  lane->record(Op::alloc, 0, 0, 0x100, 5000, 0);
  for (std::uint64_t i = 0; i < 100; ++i) {
    lane->record(Op::alloc, 0, 0, 0x10000 + i * 0x100, 100 + i, 0);
    lane->record(Op::free, 0, 0, 0x10000 + i * 0x100, 100 + i, 0);
  }
  for (std::uint64_t i = 0; i < 20; ++i) lane->record(Op::alloc, 0, 0, 0x900000 + i * 0x100, 10, 0);
  for (std::uint64_t i = 0; i < 43; ++i) lane->record(Op::alloc, 0, 0, 0xa00000 + i * 0x100, 1, 0);
  for (std::uint64_t i = 0; i < 20; ++i) lane->record(Op::free, 0, 0, 0x900000 + i * 0x100, 10, 0);
  lane->record(Op::create, 0, 0, 0, 1 << 21, 0);
  const std::uint64_t lane_recorded = 1 + 1 + 200 + 20 + 43 + 20 + 1;
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, lane_recorded + 1);
  EXPECT_EQ(c.dropped, lane_recorded - 64);

  CollectOptions co;
  co.totals = Totals{5000 + 43 + 7, 2 << 21};
  Trace t = r.collect(co);
  ASSERT_EQ(t.events.size(), 64u + 1);
  EXPECT_EQ(*t.meta.events_dropped, lane_recorded - 64);
  std::uint64_t named = 0, unseen = 0;
  for (const LiveBlock& b : t.live_at_start) (b.addr == 1 ? unseen : named) += b.size;
  EXPECT_EQ(named, 20u * 10);
  EXPECT_EQ(unseen, 5000u);
  EXPECT_EQ(meta_of(t)["unseen_live_bytes"], 5000);
  EXPECT_EQ(t.peak_live_bytes, 5000u + 200 + 43 + 7);
  // The first create was overwritten: the window starts with its page.
  EXPECT_EQ(t.meta.physical_at_start_bytes.value_or(0), 1u << 21);
  EXPECT_EQ(*t.peak_physical_bytes, 2u << 21);
}

TEST(RecorderLanes, FullLaneKeepOldestRefusesAndCounts) {
  RecorderOptions o;
  o.capacity = 16;
  o.keep = RecorderOptions::Keep::oldest;
  Recorder r(o);
  Recorder::Lane* lane = r.add_lane();
  for (std::uint64_t i = 0; i < 50; ++i) lane->record(Op::alloc, 1, 0, 0x1000 * (i + 1), 10, 0);
  r.record(ev(Op::alloc, 0x100000, 10, 0, 1));  // the shared ring still has room
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 17u);
  std::vector<std::uint64_t> lane_addrs;
  for (const TraceEvent& e : t.events)
    if (e.addr != 0x100000) lane_addrs.push_back(e.addr);
  ASSERT_EQ(lane_addrs.size(), 16u);
  for (std::size_t i = 0; i < 16; ++i) EXPECT_EQ(lane_addrs[i], 0x1000u * (i + 1)) << "the first 16 are kept";
  EXPECT_EQ(*t.meta.events_dropped, 34u);
  EXPECT_EQ(r.counters().dropped, 34u);
  EXPECT_NE(meta_of(t)["dropped_note"].get<std::string>().find("last 34"), std::string::npos);
}

TEST(RecorderLanes, EachLaneWrapsOnItsOwn) {
  RecorderOptions o;
  o.capacity = 16;
  Recorder r(o);
  Recorder::Lane* busy = r.add_lane();
  Recorder::Lane* quiet = r.add_lane();
  quiet->record(Op::alloc, 1, 0, 0x100, 10, 0);
  for (std::uint64_t i = 0; i < 40; ++i) {
    busy->record(Op::alloc, 0, 0, 0x1000 * (i + 1), 10, 0);
    busy->record(Op::free, 0, 0, 0x1000 * (i + 1), 10, 0);
  }
  quiet->record(Op::free, 1, 0, 0x100, 10, 0);
  for (int i = 0; i < 3; ++i) r.record(ev(Op::map, 0x200000 * (i + 1), 2 << 20, 0, 2));
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, 80u + 2 + 3);
  EXPECT_EQ(c.dropped, 80u - 16);
  Trace t = r.collect();
  EXPECT_EQ(*t.meta.events_dropped, 80u - 16);
  std::vector<TraceEvent> busy_events, quiet_events;
  std::size_t maps = 0;
  for (const TraceEvent& e : t.events) {
    if (e.device == 0) busy_events.push_back(e);
    if (e.device == 1) quiet_events.push_back(e);
    maps += e.op == Op::map;
  }
  EXPECT_EQ(maps, 3u);
  ASSERT_EQ(quiet_events.size(), 2u) << "the quiet lane lost nothing";
  EXPECT_EQ(quiet_events[0].op, Op::alloc);
  EXPECT_EQ(quiet_events[1].op, Op::free);
  ASSERT_EQ(busy_events.size(), 16u) << "the busy lane's newest";
  for (std::size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(busy_events[i].addr, 0x1000u * (33 + i / 2)) << i;
    EXPECT_EQ(busy_events[i].op, i % 2 == 0 ? Op::alloc : Op::free) << i;
  }
}

double time_of(const Trace& t, Op op, std::uint64_t addr) {
  for (const TraceEvent& e : t.events)
    if (e.op == op && e.addr == addr) return static_cast<double>(e.t_us);
  ADD_FAILURE() << "no " << op_name(op) << " at " << addr;
  return 0;
}

// Waits (at most 10 s) until the ticker is idle, or not; false if it did not come to that.
bool wait_idle(const Recorder& r, bool idle) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (RecorderTestPeer::idle(r) == idle) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

TEST(RecorderLanes, SampledTimesFollowTheClockAcrossPauses) {
  // An event that starts a ring's 64 (its first) or ends the ticker's idle time is pinned when it is
  // recorded; lane b's next, just after lane a's, must not be placed back in the pause: these are asked
  // of every try. An event on the fast path is placed between the ticker's looks around it: within a
  // tick (1 ms) on time, off by as much as the scheduler holds the ticker back; that bound (5 ms) is
  // asked of one of three tries, and of every try only that it lies between its neighbours.
  auto attempt = [](int n) {
    Recorder r(RecorderOptions{});
    Recorder::Lane* a = r.add_lane();
    Recorder::Lane* b = r.add_lane();
    double around[5][2];  // the clock before and after each record
    auto record = [&](int i, Recorder::Lane* l, Op op, std::uint32_t device, std::uint64_t addr) {
      around[i][0] = static_cast<double>(r.now_us());
      l->record(op, device, 0, addr, 100, 0);
      around[i][1] = static_cast<double>(r.now_us());
    };
    record(0, a, Op::alloc, 0, 0x1000);
    record(1, b, Op::alloc, 1, 0x2000);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the ticker ticks on
    record(2, a, Op::free, 0, 0x1000);
    // Longer than the ticker's 100 idle ticks: it goes idle. Lane a's next event wakes it; lane b's,
    // just after, must not be placed back in the pause.
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    EXPECT_TRUE(wait_idle(r, true)) << "try " << n;
    std::this_thread::sleep_for(std::chrono::milliseconds(40));  // in the middle of an idle tick
    record(3, a, Op::alloc, 0, 0x3000);
    record(4, b, Op::free, 1, 0x2000);
    EXPECT_FALSE(RecorderTestPeer::idle(r)) << "the event ended the idle time";
    Trace t = r.collect();
    EXPECT_EQ(t.events.size(), 5u) << "try " << n;
    if (t.events.size() != 5) return false;
    const double alloc_a = time_of(t, Op::alloc, 0x1000), alloc_b = time_of(t, Op::alloc, 0x2000);
    const double free_a = time_of(t, Op::free, 0x1000), after_a = time_of(t, Op::alloc, 0x3000);
    const double free_b = time_of(t, Op::free, 0x2000);
    EXPECT_GE(alloc_a, around[0][0]) << "try " << n;
    EXPECT_LE(alloc_a, around[0][1]) << "try " << n;
    EXPECT_GE(alloc_b, around[1][0]) << "try " << n;
    EXPECT_LE(alloc_b, around[1][1]) << "try " << n;
    EXPECT_GE(free_a, around[0][0]) << "try " << n;
    EXPECT_LE(free_a, around[3][1]) << "try " << n;
    EXPECT_GE(after_a, around[3][0]) << "try " << n;
    EXPECT_LE(after_a, around[3][1]) << "try " << n;
    EXPECT_GE(free_b, around[3][0]) << "try " << n << ": lane b's event was placed in the pause";
    EXPECT_LE(free_b, around[4][1]) << "try " << n;
    return free_a >= around[2][0] - 5000 && free_a <= around[2][1] + 5000;
  };
  bool any = false;
  for (int n = 0; n < 3 && !any; ++n) any = attempt(n);
  EXPECT_TRUE(any) << "in three tries the fast-path event was always placed over 5 ms before it was recorded";
}

TEST(RecorderLanes, AnEventThatMissedTheIdleFlagIsPlacedAtMostATickOfTheIdleTickerEarly) {
  Recorder r(RecorderOptions{});
  Recorder::Lane* lane = r.add_lane();
  lane->record(Op::alloc, 0, 0, 0x1000, 100, 0);
  ASSERT_TRUE(wait_idle(r, true));
  // Idle for 600 ms, then an event on the fast path, as if it had raced with the ticker going idle.
  // Had the idle ticker slept for good, the lane's last checkpoint would date from 600 ms ago; it ticks
  // every 50 ms, so the event is placed at most that early, and the head it moved ends the idle time.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const std::uint64_t before = r.now_us();
  RecorderTestPeer::record_missing_the_flag(*lane, Op::free, 0x1000, 100);
  const std::uint64_t after = r.now_us();
  EXPECT_TRUE(wait_idle(r, false)) << "the idle ticker saw the lane's head move";
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 2u);
  const double placed = time_of(t, Op::free, 0x1000);
  // 50 ms, and 250 more for an idle ticker that wakes late on a loaded machine (still far from 600).
  EXPECT_GE(placed, static_cast<double>(before) - 300000);
  EXPECT_LE(placed, static_cast<double>(after));
}

TEST(RecorderLanes, ExactTimes) {
  RecorderOptions o;
  o.time = RecorderOptions::Time::exact;
  Recorder r(o);
  Recorder::Lane* lane = r.add_lane();
  const double before = static_cast<double>(r.now_us());
  lane->record(Op::alloc, 0, 0, 0x1000, 100, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // may oversleep: the clock is the measure
  lane->record(Op::free, 0, 0, 0x1000, 100, 0);
  const double after = static_cast<double>(r.now_us());
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 2u);
  const double d = static_cast<double>(t.events[1].t_us - t.events[0].t_us);
  EXPECT_GE(d, 20000 - 1);
  EXPECT_LE(d, after - before + 1);
}

TEST(RecorderLanes, Stacks) {
  if (!Recorder::stacks_supported()) GTEST_SKIP() << "built without libunwind";
  RecorderOptions o;
  o.stacks = true;
  Recorder r(o);
  Recorder::Lane* lane = r.add_lane();
  volatile int twice = 2;  // one call site, called twice
  for (int i = 0; i < twice; ++i) glake_test_lane_site(lane, 0x1000 * static_cast<std::uint64_t>(i + 1));
  lane->record(Op::free, 0, 0, 0x1000, 4096, 0);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 3u);
  EXPECT_NE(t.events[0].stack, 0u);
  EXPECT_EQ(t.events[0].stack, t.events[1].stack);
  EXPECT_EQ(t.events[2].stack, 0u) << "frees carry no stack";
  const auto& frames = t.stacks.at(t.events[0].stack);
  ASSERT_FALSE(frames.empty());
  // The recorder's frames are trimmed; the first is the site that inlined Lane::record.
  EXPECT_NE(frames[0].fn.find("glake_test_lane_site"), std::string::npos) << frames[0].fn;
  if (meta_of(t)["symbolizer"] == "addr2line") {
    EXPECT_NE(frames[0].src.find("recorder_test_util.h:"), std::string::npos) << frames[0].src;
  }
  bool has_test_fn = false;
  for (const Frame& f : frames) has_test_fn |= f.fn.find("RecorderLanes_Stacks_Test") != std::string::npos;
  EXPECT_TRUE(has_test_fn) << frames[0].fn;
}

// Two pools of one device on one recorder: a lane each, each pool's events complete and consistent.
TEST(RecorderLanes, ObserverGivesEachPoolALane) {
  Recorder r(RecorderOptions{});
  pool::HostDriver::Options d;
  d.cost_model = false;
  d.device = 5;
  pool::HostDriver da(d), db(d);
  pool::Allocator a(da, pool::Config{}), b(db, pool::Config{});
  PoolTraceObserver oa(&r), ob(&r);
  a.set_observer(&oa);
  b.set_observer(&ob);
  EXPECT_EQ(r.counters().lanes, 0u) << "a lane is made on the first event";
  std::vector<pool::DevPtr> pa, pb;
  for (int i = 0; i < 20; ++i) {
    pool::DevPtr p = 0;
    ASSERT_EQ(a.allocate(std::size_t{1} << (12 + i % 10), 0, &p), pool::Status::ok);
    pa.push_back(p);
    ASSERT_EQ(b.allocate(std::size_t{3} << (10 + i % 12), 0, &p), pool::Status::ok);
    pb.push_back(p);
  }
  for (pool::DevPtr p : pa) ASSERT_EQ(a.free(p), pool::Status::ok);
  for (pool::DevPtr p : pb) ASSERT_EQ(b.free(p), pool::Status::ok);
  a.trim();
  EXPECT_EQ(r.counters().lanes, 2u);
  Trace t = r.collect();
  a.set_observer(nullptr);
  b.set_observer(nullptr);
  testing_util::PoolEventCounts c;
  ASSERT_EQ(testing_util::check_pool_events(t, da.granularity(), &c), "");
  pool::Stats sa = a.stats(), sb = b.stats();
  EXPECT_EQ(c.ops[Op::alloc], sa.allocs + sb.allocs);
  EXPECT_EQ(c.ops[Op::create], sa.creates + sb.creates);
  EXPECT_EQ(c.ops[Op::release], sa.releases + sb.releases);
  EXPECT_GT(sa.releases, 0u);
  EXPECT_EQ(c.physical, static_cast<std::int64_t>(sa.physical.current + sb.physical.current));
  for (const TraceEvent& e : t.events) EXPECT_EQ(e.device, 5u);
}

TEST(RecorderLanes, ObserverPastTheLastLaneUsesTheSharedRing) {
  RecorderOptions o;
  o.capacity = 1024;
  testing_util::TracedPool tp(o);
  for (std::uint32_t i = 0; i < Recorder::kMaxLanes; ++i) ASSERT_NE(tp.recorder.add_lane(), nullptr);
  pool::DevPtr p = 0, q = 0;
  ASSERT_EQ(tp.pool.allocate(std::size_t{3} << 20, 0, &p), pool::Status::ok);
  ASSERT_EQ(tp.pool.allocate(1000, 0, &q), pool::Status::ok);
  ASSERT_EQ(tp.pool.free(p), pool::Status::ok);
  ASSERT_EQ(tp.pool.free(q), pool::Status::ok);
  EXPECT_EQ(tp.recorder.counters().lanes, Recorder::kMaxLanes);
  pool::Stats st = tp.pool.stats();
  Trace t = tp.recorder.collect();
  EXPECT_EQ(t.allocs, 2u);
  EXPECT_EQ(t.frees, 2u);
  EXPECT_EQ(*t.peak_physical_bytes, st.physical.peak);
  EXPECT_EQ(t.peak_live_bytes, st.requested.peak);
  testing_util::PoolEventCounts c;
  EXPECT_EQ(testing_util::check_pool_events(t, tp.driver.granularity(), &c), "");
}

}  // namespace
}  // namespace glake::tracer
