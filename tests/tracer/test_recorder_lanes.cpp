// tests/tracer/test_recorder_lanes.cpp: the recorder's per-device lanes, one thread at a time: what
// collect() returns for lane events (fields, order, meta), their merge with the shared ring (each
// shared event after the lane events before it, the shared ring's own order kept), a full lane (keep
// newest: dropped, live_at_start, unseen bytes; keep oldest: refused), time on lanes (sampled, after
// the ticker fell asleep, with and without membarrier; exact), stacks on lanes, and the devices that
// have no lane. Many threads: test_recorder_threads.cpp.
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

std::vector<TraceEvent> of_device(const Trace& t, std::uint32_t device) {
  std::vector<TraceEvent> out;
  for (const TraceEvent& e : t.events)
    if (e.device == device) out.push_back(e);
  return out;
}

TEST(RecorderLanes, LaneEventsKeepTheirFieldsAndOrder) {
  Recorder r(RecorderOptions{});
  Recorder::Lane* lane = r.lane(3);
  ASSERT_NE(lane, nullptr);
  EXPECT_EQ(lane->device(), 3u);
  EXPECT_EQ(r.lane(3), lane) << "one lane per device";
  lane->record(Op::alloc, 7, 0x1000, 100, 0);
  lane->record(Op::stitch, 7, 0x200000, 2 << 20, 5);
  lane->record(Op::alloc, 7, 0x200000, 3000, 0);
  lane->record(Op::oom, 9, 0, 1 << 30, 0);
  lane->record(Op::free, 7, 0x1000, 100, 0);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 5u);
  const Op want[] = {Op::alloc, Op::stitch, Op::alloc, Op::oom, Op::free};
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(t.events[i].op, want[i]) << i;
    EXPECT_EQ(t.events[i].device, 3u) << i;
    EXPECT_EQ(t.events[i].thread, static_cast<std::uint32_t>(::gettid())) << i;
  }
  EXPECT_EQ(t.events[1].aux, 5u);
  EXPECT_EQ(t.events[1].size, 2u << 20);
  EXPECT_EQ(t.events[3].stream, 9u);
  EXPECT_EQ(t.peak_live_bytes, 3100u);
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, 5u);
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(c.lanes, 1u);
  auto m = meta_of(t);
  EXPECT_EQ(m["events_recorded"], 5);
  EXPECT_EQ(m["events_written"], 5);
  EXPECT_EQ(m["lanes"], 1);
}

TEST(RecorderLanes, NoLaneBeyondTheLastDevice) {
  Recorder r(RecorderOptions{});
  EXPECT_EQ(r.lane(Recorder::kMaxLanes), nullptr);
  EXPECT_NE(r.lane(Recorder::kMaxLanes - 1), nullptr);
  EXPECT_EQ(r.counters().lanes, 1u);
}

// What the pool does: allocs and frees on the lane; creates and maps, from the growing thread, on the
// shared ring, before the allocation they serve; another device meanwhile.
void interleaved(Recorder& r) {
  Recorder::Lane* d0 = r.lane(0);
  Recorder::Lane* d1 = r.lane(1);
  d0->record(Op::alloc, 1, 0x1000, 10, 0);        // 0
  r.record(ev(Op::create, 0, 2 << 20, 0, 0));     // 1
  r.record(ev(Op::map, 0x200000, 2 << 20, 0, 0));  // 2
  d0->record(Op::stitch, 1, 0x200000, 2 << 20, 1);  // 3
  d0->record(Op::alloc, 1, 0x200000, 20, 0);        // 4
  d1->record(Op::alloc, 2, 0x9000, 30, 0);          // 5
  r.record(ev(Op::create, 0, 2 << 20, 0, 1));     // 6
  d0->record(Op::free, 1, 0x1000, 10, 0);           // 7
  r.record(ev(Op::unmap, 0x200000, 2 << 20, 0, 0));  // 8
  r.record(ev(Op::release, 0, 2 << 20, 0, 0));    // 9
  d1->record(Op::free, 2, 0x9000, 30, 0);           // 10
  r.record(ev(Op::oom, 0, 1 << 30, 0, 2));        // 11: a device without a lane
}
// (op, addr) of the events above, by index.
const std::pair<Op, std::uint64_t> kInterleaved[] = {
    {Op::alloc, 0x1000},  {Op::create, 0},    {Op::map, 0x200000},   {Op::stitch, 0x200000},
    {Op::alloc, 0x200000}, {Op::alloc, 0x9000}, {Op::create, 0},      {Op::free, 0x1000},
    {Op::unmap, 0x200000}, {Op::release, 0},  {Op::free, 0x9000},   {Op::oom, 0}};

TEST(RecorderLanes, SharedEventsGoAfterTheLaneEventsBeforeThem) {
  Recorder r(RecorderOptions{});
  interleaved(r);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 12u);
  for (std::size_t i = 1; i < t.events.size(); ++i) ASSERT_GE(t.events[i].t_us, t.events[i - 1].t_us);
  // Each device's events in the order they were recorded (sampled times may tie across devices).
  for (std::uint32_t d : {0u, 1u, 2u}) {
    std::vector<TraceEvent> got = of_device(t, d);
    std::size_t k = 0;
    for (std::size_t i = 0; i < 12; ++i) {
      const bool of_d = (d == 0 && (i <= 4 || i == 7 || i == 8 || i == 9)) || (d == 1 && (i == 5 || i == 6 || i == 10)) ||
                        (d == 2 && i == 11);
      if (!of_d) continue;
      ASSERT_LT(k, got.size()) << "device " << d;
      EXPECT_EQ(got[k].op, kInterleaved[i].first) << "device " << d << ", event " << i;
      EXPECT_EQ(got[k].addr, kInterleaved[i].second) << "device " << d << ", event " << i;
      ++k;
    }
    EXPECT_EQ(k, got.size()) << "device " << d;
  }
  // The shared ring keeps its own order across devices.
  std::vector<std::size_t> shared_order;
  for (const TraceEvent& e : t.events)
    if (!PoolTraceObserver::serialised(static_cast<pool::EventKind>(e.op)) || e.device == 2)
      shared_order.push_back(e.device * 100 + static_cast<std::size_t>(e.op));
  const std::vector<std::size_t> want = {static_cast<std::size_t>(Op::create), static_cast<std::size_t>(Op::map),
                                         100 + static_cast<std::size_t>(Op::create), static_cast<std::size_t>(Op::unmap),
                                         static_cast<std::size_t>(Op::release), 200 + static_cast<std::size_t>(Op::oom)};
  EXPECT_EQ(shared_order, want);
  EXPECT_EQ(meta_of(t)["lanes"], 2);
}

TEST(RecorderLanes, ExactTimeGivesTheRecordedOrderAcrossDevices) {
  RecorderOptions o;
  o.time = RecorderOptions::Time::exact;
  Recorder r(o);
  interleaved(r);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 12u);
  for (std::size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(t.events[i].op, kInterleaved[i].first) << i;
    EXPECT_EQ(t.events[i].addr, kInterleaved[i].second) << i;
  }
}

TEST(RecorderLanes, FullLaneKeepNewestCountsAndStaysConsistent) {
  RecorderOptions o;
  o.capacity = 64;
  Recorder r(o);
  Recorder::Lane* lane = r.lane(0);
  // As Recorder.FullRingKeepNewestCountsAndStaysConsistent, with the creates on the shared ring.
  r.record(ev(Op::create, 0, 1 << 21));
  lane->record(Op::alloc, 0, 0x100, 5000, 0);
  for (std::uint64_t i = 0; i < 100; ++i) {
    lane->record(Op::alloc, 0, 0x10000 + i * 0x100, 100 + i, 0);
    lane->record(Op::free, 0, 0x10000 + i * 0x100, 100 + i, 0);
  }
  for (std::uint64_t i = 0; i < 20; ++i) lane->record(Op::alloc, 0, 0x900000 + i * 0x100, 10, 0);
  for (std::uint64_t i = 0; i < 44; ++i) lane->record(Op::alloc, 0, 0xa00000 + i * 0x100, 1, 0);
  for (std::uint64_t i = 0; i < 20; ++i) lane->record(Op::free, 0, 0x900000 + i * 0x100, 10, 0);
  r.record(ev(Op::create, 0, 1 << 21));
  const std::uint64_t lane_recorded = 1 + 200 + 20 + 44 + 20;
  RecorderCounters c = r.counters();
  EXPECT_EQ(c.recorded, lane_recorded + 2);
  EXPECT_EQ(c.dropped, lane_recorded - 64);

  CollectOptions co;
  co.totals = Totals{5000 + 44, 2 << 21};
  Trace t = r.collect(co);
  ASSERT_EQ(t.events.size(), 64u + 2);
  EXPECT_EQ(t.events.front().op, Op::create) << "the first create came before the lane's window";
  EXPECT_EQ(t.events.back().op, Op::create);
  EXPECT_EQ(*t.meta.events_dropped, lane_recorded - 64);
  std::uint64_t named = 0, unseen = 0;
  for (const LiveBlock& b : t.live_at_start) (b.addr == 1 ? unseen : named) += b.size;
  EXPECT_EQ(named, 20u * 10);
  EXPECT_EQ(unseen, 5000u);
  EXPECT_EQ(meta_of(t)["unseen_live_bytes"], 5000);
  EXPECT_EQ(t.peak_live_bytes, 5000u + 200 + 44);
  // Both creates are in the window: nothing physical before it.
  EXPECT_EQ(t.meta.physical_at_start_bytes.value_or(0), 0u);
  EXPECT_EQ(*t.peak_physical_bytes, 2u << 21);
}

TEST(RecorderLanes, FullLaneKeepOldestRefusesAndCounts) {
  RecorderOptions o;
  o.capacity = 16;
  o.keep = RecorderOptions::Keep::oldest;
  Recorder r(o);
  Recorder::Lane* lane = r.lane(1);
  for (std::uint64_t i = 0; i < 50; ++i) lane->record(Op::alloc, 0, 0x1000 * (i + 1), 10, 0);
  r.record(ev(Op::create, 0, 1 << 21, 0, 1));  // the shared ring still has room
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 17u);
  std::vector<TraceEvent> allocs;
  for (const TraceEvent& e : t.events)
    if (e.op == Op::alloc) allocs.push_back(e);
  ASSERT_EQ(allocs.size(), 16u);
  EXPECT_EQ(allocs.front().addr, 0x1000u);
  EXPECT_EQ(allocs.back().addr, 0x1000u * 16);
  EXPECT_EQ(t.events.back().op, Op::create) << "after the lane's 16 (its lane head was 50)";
  EXPECT_EQ(*t.meta.events_dropped, 34u);
  EXPECT_EQ(r.counters().dropped, 34u);
  EXPECT_NE(meta_of(t)["dropped_note"].get<std::string>().find("last 34"), std::string::npos);
}

TEST(RecorderLanes, WrappedLaneStillMergesWithTheSharedRing) {
  RecorderOptions o;
  o.capacity = 16;
  Recorder r(o);
  Recorder::Lane* lane = r.lane(0);
  for (std::uint64_t i = 0; i < 40; ++i) {
    lane->record(Op::alloc, 0, 0x1000 * (i + 1), 10, 0);
    if (i % 8 == 7) r.record(ev(Op::map, 0x1000 * (i + 1), 4096));  // after alloc i
    lane->record(Op::free, 0, 0x1000 * (i + 1), 10, 0);
  }
  Trace t = r.collect();
  // The lane's window: its last 16 events (allocs and frees 32..39); the maps: all five.
  ASSERT_EQ(t.events.size(), 16u + 5);
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    if (e.op != Op::map) continue;
    const std::uint64_t block = e.addr / 0x1000 - 1;
    if (block < 32) {
      EXPECT_LT(i, 4u) << "a map from before the window comes first";
    } else {
      ASSERT_GT(i, 0u);
      EXPECT_EQ(t.events[i - 1].op, Op::alloc);
      EXPECT_EQ(t.events[i - 1].addr, e.addr) << "right after its allocation";
    }
  }
}

TEST(RecorderLanes, SampledTimesFollowTheClockAcrossPauses) {
  for (bool membarrier : {true, false}) {
    SCOPED_TRACE(membarrier ? "membarrier" : "no membarrier");
    RecorderOptions o;
    o.membarrier = membarrier;
    Recorder r(o);
    Recorder::Lane* a = r.lane(0);
    Recorder::Lane* b = r.lane(1);
    a->record(Op::alloc, 0, 0x1000, 100, 0);
    b->record(Op::alloc, 0, 0x2000, 100, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the ticker ticks on
    a->record(Op::free, 0, 0x1000, 100, 0);
    // Longer than the ticker's 100 idle ticks: it falls asleep. Lane a's next event wakes it; lane b's,
    // just after, must not be placed back at the pause's start.
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    a->record(Op::alloc, 0, 0x3000, 100, 0);
    b->record(Op::free, 0, 0x2000, 100, 0);
    Trace t = r.collect();
    ASSERT_EQ(t.events.size(), 5u);
    auto at = [&](Op op, std::uint64_t addr) {
      for (const TraceEvent& e : t.events)
        if (e.op == op && e.addr == addr) return static_cast<double>(e.t_us);
      ADD_FAILURE() << "no event";
      return 0.0;
    };
    const double t0 = at(Op::alloc, 0x1000);
    EXPECT_NEAR(at(Op::alloc, 0x2000) - t0, 0, 3000);
    EXPECT_NEAR(at(Op::free, 0x1000) - t0, 30000, 6000);
    // Without membarrier the worst case is 50 ms off; the writer sees the ticker's flag nearly always.
    EXPECT_NEAR(at(Op::alloc, 0x3000) - t0, 280000, 15000);
    EXPECT_NEAR(at(Op::free, 0x2000) - t0, 280000, 15000);
  }
}

TEST(RecorderLanes, ExactTimes) {
  RecorderOptions o;
  o.time = RecorderOptions::Time::exact;
  Recorder r(o);
  Recorder::Lane* lane = r.lane(0);
  lane->record(Op::alloc, 0, 0x1000, 100, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  lane->record(Op::free, 0, 0x1000, 100, 0);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_NEAR(static_cast<double>(t.events[1].t_us - t.events[0].t_us), 20000, 5000);
}

TEST(RecorderLanes, Stacks) {
  if (!Recorder::stacks_supported()) GTEST_SKIP() << "built without libunwind";
  RecorderOptions o;
  o.stacks = true;
  Recorder r(o);
  Recorder::Lane* lane = r.lane(0);
  volatile int twice = 2;  // one call site, called twice
  for (int i = 0; i < twice; ++i) glake_test_lane_site(lane, 0x1000 * static_cast<std::uint64_t>(i + 1));
  lane->record(Op::free, 0, 0x1000, 4096, 0);
  Trace t = r.collect();
  ASSERT_EQ(t.events.size(), 3u);
  EXPECT_NE(t.events[0].stack, 0u);
  EXPECT_EQ(t.events[0].stack, t.events[1].stack);
  EXPECT_EQ(t.events[2].stack, 0u) << "frees carry no stack";
  const auto& frames = t.stacks.at(t.events[0].stack);
  ASSERT_FALSE(frames.empty());
  // The recorder's frames are trimmed (the site's own frame too where addr2line names the inlined
  // Lane::record for its return address); the test body is there.
  EXPECT_EQ(frames[0].fn.find("glake::tracer::Recorder::"), std::string::npos) << frames[0].fn;
  bool has_test_fn = false;
  for (const Frame& f : frames) has_test_fn |= f.fn.find("RecorderLanes_Stacks_Test") != std::string::npos;
  EXPECT_TRUE(has_test_fn) << frames[0].fn;
}

TEST(RecorderLanes, ObserverUsesTheLaneOfThePoolsDevice) {
  for (int device : {5, static_cast<int>(Recorder::kMaxLanes) + 3}) {
    SCOPED_TRACE(device);
    testing_util::TracedPool tp({}, std::size_t{1} << 36, pool::Config{}, device);
    pool::DevPtr p = 0, q = 0;
    ASSERT_EQ(tp.pool.allocate(std::size_t{3} << 20, 0, &p), pool::Status::ok);
    ASSERT_EQ(tp.pool.allocate(1000, 0, &q), pool::Status::ok);
    ASSERT_EQ(tp.pool.free(p), pool::Status::ok);
    ASSERT_EQ(tp.pool.free(q), pool::Status::ok);
    const bool has_lane = device < static_cast<int>(Recorder::kMaxLanes);
    EXPECT_EQ(tp.recorder.counters().lanes, has_lane ? 1u : 0u) << "beyond the lanes: the shared ring";
    pool::Stats st = tp.pool.stats();
    Trace t = tp.recorder.collect();
    EXPECT_EQ(t.allocs, 2u);
    EXPECT_EQ(t.frees, 2u);
    EXPECT_EQ(*t.peak_physical_bytes, st.physical.peak);
    EXPECT_EQ(t.peak_live_bytes, st.requested.peak);
    for (const TraceEvent& e : t.events) EXPECT_EQ(e.device, static_cast<std::uint32_t>(device) & 0xff);
  }
}

}  // namespace
}  // namespace glake::tracer
