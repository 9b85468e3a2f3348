// tests/tracer/test_trace_cut.cpp: trace_from(), the part of a trace from one moment on.
#include <gtest/gtest.h>

#include "tracer/replay.h"
#include "tracer/trace_cut.h"
#include "tracer/trace_reader.h"

namespace {

using namespace glake::tracer;
constexpr std::uint64_t MiB = 1 << 20;

// A "loading" phase (W1, W2 and a temporary T, then T freed), a step (X, Y, X freed) and a page
// created and one released on the way.
Trace sample() {
  return parse_trace(R"({"format":"glake-trace","version":1,
    "meta":{"name":"job","peak_live_bytes":999,"physical_at_start_bytes":4194304},
    "live_at_start":[[7,1048576,5,0,0]],
    "events":[[0,"a",10,2097152,5,0,0,1],[10,"a",11,4194304,5],[20,"create",0,2097152,0],[30,"a",12,8388608,6],
              [40,"f",12,8388608,6],[50,"release",0,2097152,0],[60,"create",0,4194304,0],[100,"a",13,3145728,5],
              [110,"a",14,1048576,5],[120,"f",13,3145728,5],[130,"f",7,1048576,5]],
    "stacks":{"1":[{"fn":"load"}]},
    "snapshots":[{"t_us":35,"device":0,"reason":"request","page_size":2097152,"regions":[]},
                 {"t_us":115,"device":0,"reason":"request","page_size":2097152,"regions":[]}]})",
                     "cut.json");
}

TEST(TraceFrom, PhysicalBytesOfCreatesOf2To63OrMore) {
  // A signed sum made the create of 2^63 + 1 negative: the part started with 0 bytes held, and its
  // release was refused ("release of ... but only 0 are held").
  Trace t = parse_trace(R"({"format":"glake-trace","version":1,"events":[[0,"create",0,9223372036854775809,0],)"
                        R"([1,"a",1,10,0],[2,"release",0,9223372036854775809,0],[3,"f",1,10,0]]})",
                        "huge.json");
  Trace c = trace_from(t, 2);
  EXPECT_EQ(c.meta.physical_at_start_bytes, 9223372036854775809ull);
  EXPECT_EQ(c.events.size(), 2u);
}

TEST(TraceFrom, LiveBlocksBecomeLiveAtStartInAllocationOrder) {
  Trace t = sample();
  Trace c = trace_from(t, 100);
  ASSERT_EQ(c.live_at_start.size(), 3u) << "7 (live at start), W1 (10), W2 (11); T (12) was freed";
  EXPECT_EQ(c.live_at_start[0].addr, 7u);
  EXPECT_EQ(c.live_at_start[1].addr, 10u);
  EXPECT_EQ(c.live_at_start[1].stream, 5u);
  EXPECT_EQ(c.live_at_start[1].stack, 1u) << "the block keeps its stack";
  EXPECT_EQ(c.live_at_start[2].addr, 11u);
  ASSERT_EQ(c.events.size(), 4u);
  EXPECT_EQ(c.events.front().t_us, 100u);
  EXPECT_EQ(c.allocs, 2u);
  EXPECT_EQ(c.frees, 2u) << "X and the block of live_at_start";
  EXPECT_EQ(c.peak_live_bytes, (1 + 2 + 4 + 3 + 1) * MiB);
  EXPECT_EQ(t.peak_live_bytes, (1 + 2 + 4 + 8) * MiB) << "the whole trace's peak is the loading's";
  EXPECT_FALSE(c.meta.peak_live_bytes) << "the recorder's figure is the whole trace's";
  EXPECT_EQ(c.meta.physical_at_start_bytes, (4 + 2 - 2 + 4) * MiB);
  EXPECT_EQ(c.peak_physical_bytes, (4 + 2 - 2 + 4) * MiB);
  ASSERT_EQ(c.snapshots.size(), 1u);
  EXPECT_EQ(c.snapshots[0].t_us, 115u);
  EXPECT_EQ(c.stacks.size(), 1u);
  EXPECT_NE(c.meta.name.find("from t = 0.000 s"), std::string::npos) << c.meta.name;
}

TEST(TraceFrom, AtTheStartIsTheWholeTraceAndBetweenEventsCutsAtTheNext) {
  Trace t = sample();
  Trace all = trace_from(t, 0);
  EXPECT_EQ(all.events.size(), t.events.size());
  EXPECT_EQ(all.live_at_start.size(), 1u);
  EXPECT_EQ(all.peak_live_bytes, t.peak_live_bytes);
  Trace mid = trace_from(t, 35);  // after T's alloc (30), before its free (40)
  EXPECT_EQ(mid.events.front().t_us, 40u);
  EXPECT_EQ(mid.live_at_start.size(), 4u);
  Trace none = trace_from(t, 1000);
  EXPECT_TRUE(none.events.empty());
  EXPECT_EQ(none.live_at_start.size(), 3u) << "7 was freed at 130";
}

TEST(TraceFrom, ReplaysTheStepWithoutTheLoadingPeak) {
  ReplayOptions o;
  o.reps = 0;
  Trace t = sample();
  ReplayReport whole = replay_trace(t, o);
  ReplayReport step = replay_trace(trace_from(t, 100), o);
  EXPECT_EQ(whole.peak_live_bytes, 15 * MiB);
  EXPECT_EQ(step.peak_live_bytes, 11 * MiB);
  EXPECT_EQ(step.live_at_start, 3u);
  EXPECT_LT(step.peak_physical_bytes, whole.peak_physical_bytes);
}

}  // namespace
