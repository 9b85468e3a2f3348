// tests/tracer/test_round_trip.cpp: record a real pool on the host driver through the observer, write
// the trace, read it back, replay it: the replay reaches the same peaks (live and physical) as the
// recorded pool, the trace's own peaks equal the pool's statistics, and stitches show up as events.
#include <random>
#include <unordered_map>

#include <gtest/gtest.h>

#include "tests/tracer/recorder_test_util.h"
#include "tests/tracer/trace_test_util.h"
#include "tracer/replay.h"
#include "tracer/timeline.h"
#include "tracer/trace_reader.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// A deterministic mix: small and large blocks on three streams, frees on the allocation stream, a
// pattern that leaves holes so that the pool stitches.
void workload(pool::Allocator& a, std::uint32_t seed) {
  std::mt19937 rng(seed);
  struct Live {
    pool::DevPtr p;
    pool::StreamHandle s;
  };
  std::vector<Live> live;
  for (int i = 0; i < 3000; ++i) {
    bool alloc = live.empty() || rng() % 100 < 55;
    if (alloc && live.size() < 200) {
      std::size_t size = rng() % 4 == 0 ? (1 + rng() % 24) * MiB + rng() % MiB : 512 + rng() % (256 << 10);
      pool::StreamHandle s = static_cast<pool::StreamHandle>(1 + rng() % 3);
      pool::DevPtr p = 0;
      ASSERT_EQ(a.allocate(size, s, &p), pool::Status::ok);
      live.push_back({p, s});
    } else if (!live.empty()) {
      std::size_t k = rng() % live.size();
      ASSERT_EQ(a.free(live[k].p, live[k].s), pool::Status::ok);
      live[k] = live.back();
      live.pop_back();
    }
  }
  for (const Live& l : live) ASSERT_EQ(a.free(l.p, l.s), pool::Status::ok);
}

// Every page under an allocation or a stitch is mapped at that point of the trace (its last map or
// unmap event before it is a map). Pages are the size of the map events.
void expect_mapped_at_allocation(const Trace& t) {
  std::uint64_t page = 0;
  for (const TraceEvent& e : t.events)
    if (e.op == Op::map) page = e.size;
  ASSERT_NE(page, 0u) << "no map events";
  std::unordered_map<std::uint64_t, bool> mapped;  // page address -> mapped
  std::uint64_t checked = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    if (e.op == Op::map || e.op == Op::unmap) {
      ASSERT_EQ(e.addr % page, 0u);
      for (std::uint64_t a = e.addr; a < e.addr + e.size; a += page) mapped[a] = e.op == Op::map;
    } else if ((e.op == Op::alloc || e.op == Op::stitch) && e.size > 0) {
      for (std::uint64_t a = e.addr / page * page; a < e.addr + e.size; a += page) {
        auto it = mapped.find(a);
        ASSERT_TRUE(it != mapped.end() && it->second)
            << "event " << i << " (" << op_name(e.op) << " at " << e.addr << ", " << e.size << " bytes): page " << a
            << " not mapped before it";
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0u);
}

TEST(RoundTrip, RecordWriteReadReplaySamePeaks) {
  testing_util::TracedPool tp;
  ASSERT_NO_FATAL_FAILURE(workload(tp.pool, 7));
  pool::Stats st = tp.pool.stats();
  ASSERT_GT(st.stitches, 0u) << "the workload should make the pool stitch";

  CollectOptions co;
  co.name = "round-trip";
  co.totals = Totals{st.requested.current, st.physical.current};
  Trace recorded = tp.recorder.collect(co);
  EXPECT_EQ(recorded.peak_live_bytes, st.requested.peak);
  ASSERT_TRUE(recorded.peak_physical_bytes.has_value());
  EXPECT_EQ(*recorded.peak_physical_bytes, st.physical.peak);
  std::uint64_t stitches = 0, creates = 0;
  for (const TraceEvent& e : recorded.events) {
    stitches += e.op == Op::stitch;
    creates += e.op == Op::create;
  }
  EXPECT_EQ(stitches, st.stitches);
  EXPECT_EQ(creates, st.creates);
  // Every event of the pool went to its lane, in the pool's order: every page of a block is mapped
  // when the block is allocated or stitched.
  EXPECT_EQ(tp.recorder.counters().lanes, 1u);
  ASSERT_NO_FATAL_FAILURE(expect_mapped_at_allocation(recorded));

  std::string path = testing_util::temp_path("rt.json.gz");
  write_trace(recorded, path);
  Trace t = read_trace(path);
  EXPECT_EQ(t.events.size(), recorded.events.size());
  EXPECT_EQ(t.peak_live_bytes, st.requested.peak);
  EXPECT_EQ(*t.peak_physical_bytes, st.physical.peak);

  ReplayOptions o;
  o.reps = 0;
  o.capacity = std::size_t{1} << 36;
  ReplayReport r = replay_trace(t, o);
  EXPECT_EQ(r.peak_live_bytes, st.requested.peak);
  EXPECT_EQ(r.peak_physical_bytes, st.physical.peak) << "the same sequence through the same pool";
  EXPECT_EQ(r.pool_stats.stitches, st.stitches);
  EXPECT_GT(r.other_events, 0u);

  // The timeline the tools draw agrees.
  Timeline tl = build_timeline(t);
  EXPECT_EQ(tl.peak_live, st.requested.peak);
  EXPECT_EQ(tl.peak_physical, st.physical.peak);
  std::remove(path.c_str());
}

TEST(RoundTrip, WrappedRingStillReplays) {
  RecorderOptions ro;
  ro.capacity = 1024;  // far fewer than the workload's events
  testing_util::TracedPool tp(ro);
  ASSERT_NO_FATAL_FAILURE(workload(tp.pool, 11));
  pool::Stats st = tp.pool.stats();
  CollectOptions co;
  co.totals = Totals{st.requested.current, st.physical.current};
  Trace t = tp.recorder.collect(co);
  // The pool's lane kept its newest 1024; what is not there is counted.
  EXPECT_EQ(t.events.size(), 1024u);
  EXPECT_GT(*t.meta.events_dropped, 0u);
  EXPECT_EQ(t.events.size() + *t.meta.events_dropped, tp.recorder.counters().recorded);
  // The window ends with everything freed: the physical bytes at its start are what the pool held.
  EXPECT_EQ(t.meta.physical_at_start_bytes.value_or(0) > 0, true);
  std::string path = testing_util::temp_path("wrap.json");
  write_trace(t, path);
  Trace back = read_trace(path);
  ReplayOptions o;
  o.reps = 0;
  ReplayReport r = replay_trace(back, o);
  EXPECT_EQ(r.peak_live_bytes, back.peak_live_bytes);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace glake::tracer
