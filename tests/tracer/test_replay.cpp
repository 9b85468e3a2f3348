// tests/tracer/test_replay.cpp: the replay on small synthetic traces with known peaks and halves, its
// failures (out of memory, inconsistent in-memory traces), its JSON report, and the demo trace.
#include <dirent.h>
#include <sys/resource.h>

#include <cmath>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pool/host_driver.h"
#include "tests/tracer/trace_test_util.h"
#include "tracer/replay.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {
namespace {

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;

std::string fmt_event(std::uint64_t t, const char* op, std::uint64_t addr, std::uint64_t size, int stream) {
  return "[" + std::to_string(t) + ",\"" + op + "\"," + std::to_string(addr) + "," + std::to_string(size) + "," +
         std::to_string(stream) + "]";
}

// Driver work only at t_big (a 64M allocation); the first event (t=0) frees the set-up block, the last
// (t=200) frees the 64M block: a caching pool makes no driver call for either.
std::string fmt_json(int t_big) {
  return "{\"live_at_start\":[[1,2097152]],\"events\":[" + fmt_event(0, "f", 1, 2 * MiB, 0) + "," +
         fmt_event(static_cast<std::uint64_t>(t_big), "a", 2, 64 * MiB, 0) + "," + fmt_event(200, "f", 2, 64 * MiB, 0) +
         "]}";
}

ReplayOptions quick_options() {
  ReplayOptions o;
  o.config = pool::Config{};
  o.reps = 0;
  return o;
}

// Large blocks only (multiples of the 2 MiB granularity), so the ideal pool holds exactly the live bytes.
// live_at_start W (4M); A B C D (4M each) -> live 20M; free A and C (scattered 8M free), then E (8M)
// needs them stitched; everything but W freed by t=70. Second half (t >= 100): reuse only.
Trace fragmenting_trace() {
  std::string json = R"({"meta":{"name":"frag","peak_reserved_pytorch_native":41943040},)"
                     R"("live_at_start":[[1,4194304]],"events":[)"
                     R"([0,"a",10,4194304,0],[10,"a",11,4194304,0],[20,"a",12,4194304,0],[30,"a",13,4194304,0],)"
                     R"([40,"f",10,4194304,0],[50,"f",12,4194304,0],[60,"a",14,8388608,0],)"
                     R"([70,"f",11,4194304,0],[70,"f",13,4194304,0],[70,"f",14,8388608,0],)"
                     R"([100,"a",20,4194304,0],[110,"a",21,8388608,0],[120,"f",20,4194304,0],[130,"f",21,8388608,0],)"
                     R"([200,"a",22,2097152,0],[200,"f",22,2097152,0]]})";
  return parse_trace(json, "frag.json");
}

TEST(Replay, KnownPeaksWithStitching) {
  Trace t = fragmenting_trace();
  ASSERT_EQ(t.peak_live_bytes, 20 * MiB);
  ReplayReport r = replay_trace(t, quick_options());
  EXPECT_EQ(r.events, 16u);
  EXPECT_EQ(r.allocs, 8u);
  EXPECT_EQ(r.frees, 8u);
  EXPECT_EQ(r.live_at_start, 1u);
  EXPECT_EQ(r.peak_live_bytes, 20 * MiB);
  EXPECT_GE(r.peak_physical_bytes, 20 * MiB);
  EXPECT_LE(r.peak_physical_bytes, 22 * MiB) << "stitching should make A and C's pages serve E";
  EXPECT_GE(r.pool_stats.stitches, 1u);
  EXPECT_NEAR(r.ratio, static_cast<double>(r.peak_physical_bytes) / (20.0 * MiB), 1e-12);
  ASSERT_TRUE(r.native_ratio.has_value());
  EXPECT_NEAR(*r.native_ratio, static_cast<double>(r.peak_physical_bytes) / (40.0 * MiB), 1e-12);

  EXPECT_DOUBLE_EQ(r.wall_s, 200e-6);
  EXPECT_DOUBLE_EQ(r.wall_s_second_half, 100e-6);
  EXPECT_GT(r.modeled_driver_s, 0);
  EXPECT_GT(r.modeled_driver_s_setup, 0) << "W was allocated in the set-up";
  EXPECT_LE(r.modeled_driver_s_second_half, r.modeled_driver_s);
  EXPECT_GT(r.driver_calls[static_cast<int>(pool::Call::create)], 0u);
  std::uint64_t ns = 0;
  for (std::uint64_t n : r.driver_ns) ns += n;
  EXPECT_NEAR(r.modeled_driver_s, static_cast<double>(ns) * 1e-9, 1e-12);
  EXPECT_NEAR(r.driver_fraction(), r.modeled_driver_s / r.wall_s, 1e-12);
  EXPECT_TRUE(std::isnan(r.pair_ns)) << "reps = 0 measures nothing";
}

TEST(Replay, NoStitchNeedsAtLeastAsMuch) {
  Trace t = fragmenting_trace();
  ReplayOptions o = quick_options();
  ReplayReport with = replay_trace(t, o);
  o.config.stitch = false;
  ReplayReport without = replay_trace(t, o);
  EXPECT_FALSE(without.stitch);
  EXPECT_EQ(without.pool_stats.stitches, 0u);
  EXPECT_GE(without.peak_physical_bytes, with.peak_physical_bytes);
  EXPECT_GE(without.peak_physical_bytes, 20 * MiB);
}

TEST(Replay, SecondHalfStartsAtTheFirstEventAtOrAfterTheMidpoint) {
  // The only driver work is the 64M allocation; the midpoint of [0, 200] is 100.
  auto run = [](int t_big) {
    std::string json = fmt_json(t_big);
    return replay_trace(parse_trace(json, "half.json"), quick_options());
  };
  ReplayReport at_mid = run(100);
  EXPECT_GT(at_mid.modeled_driver_s, 0);
  EXPECT_DOUBLE_EQ(at_mid.modeled_driver_s_second_half, at_mid.modeled_driver_s);
  ReplayReport before_mid = run(99);
  EXPECT_GT(before_mid.modeled_driver_s, 0);
  EXPECT_EQ(before_mid.modeled_driver_s_second_half, 0.0);
}

TEST(Replay, OutOfMemoryNamesTheEvent) {
  Trace t = parse_trace(R"({"events":[[0,"a",1,4194304,0],[1,"a",2,16777216,0]]})", "oom.json");
  ReplayOptions o = quick_options();
  o.capacity = 8 * MiB;
  try {
    replay_trace(t, o);
    FAIL() << "expected ReplayError";
  } catch (const ReplayError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("oom.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("out_of_memory"), std::string::npos) << msg;
  }
}

TEST(Replay, InMemoryTraceWithUnknownFreeIsAnError) {
  Trace t;
  t.meta.name = "mem";
  t.events.push_back({0, 5, 4096, 0, Op::alloc});
  t.events.push_back({1, 6, 4096, 0, Op::free});
  try {
    replay_trace(t, quick_options());
    FAIL() << "expected ReplayError";
  } catch (const ReplayError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("free of unknown address 6"), std::string::npos) << msg;
  }
}

TEST(Replay, SmallBlocksStreamsAndTiming) {
  // Small and odd sizes on two streams, with frees on the allocation stream.
  std::string ev;
  std::uint64_t t = 0;
  for (int i = 0; i < 200; ++i) {
    std::uint64_t size = 512 * static_cast<std::uint64_t>(1 + (i * 37) % 700);
    int stream = i % 2 == 0 ? 0 : 7;
    ev += fmt_event(t++, "a", 1000 + i, size, stream) + ",";
    if (i >= 10) ev += fmt_event(t++, "f", 1000 + i - 10, 512 * static_cast<std::uint64_t>(1 + ((i - 10) * 37) % 700),
                                 (i - 10) % 2 == 0 ? 0 : 7) + ",";
  }
  ev.pop_back();
  Trace tr = parse_trace("{\"events\":[" + ev + "]}", "small.json");
  ReplayOptions o = quick_options();
  o.reps = 2;
  ReplayReport r = replay_trace(tr, o);
  EXPECT_GE(r.peak_physical_bytes, r.peak_live_bytes);
  EXPECT_TRUE(std::isfinite(r.pair_ns));
  EXPECT_GT(r.pair_ns, 0);
  EXPECT_TRUE(std::isfinite(r.glibc_pair_ns));
  EXPECT_GT(r.glibc_pair_ns, 0);
}

TEST(Replay, JsonReportHasTheKeys) {
  ReplayOptions o = quick_options();
  o.reps = 1;
  ReplayReport r = replay_trace(fragmenting_trace(), o);
  std::string line = format_report_json(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto j = nlohmann::json::parse(line);
  for (const char* key : {"trace", "events", "peak_live_bytes", "peak_physical_bytes", "ratio", "native_ratio",
                          "driver_calls", "modeled_driver_s", "modeled_driver_s_second_half", "wall_s",
                          "wall_s_second_half", "pair_ns", "glibc_pair_ns", "stitches", "creates"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["trace"], "frag.json");
  EXPECT_EQ(j["name"], "frag");
  EXPECT_EQ(j["events"], 16);
  EXPECT_EQ(j["peak_live_bytes"], 20 * MiB);
  ASSERT_TRUE(j["driver_calls"].is_object());
  EXPECT_EQ(j["driver_calls"].size(), static_cast<std::size_t>(pool::kCallKinds));
  EXPECT_GT(j["driver_calls"]["create"].get<std::uint64_t>(), 0u);
  EXPECT_TRUE(j["pair_ns"].is_number());
  std::string text = format_report_text(r);
  EXPECT_NE(text.find("peak physical"), std::string::npos) << text;
  EXPECT_NE(text.find("create"), std::string::npos) << text;
}

// Passes after the first: the trace's transient blocks again, its long-lived ones kept. W (live at
// start, freed by the trace) and L (allocated, never freed) are not replayed; T1 and T2 are, and a warm
// pool serves them from its cache.
TEST(Replay, LaterPassesRepeatTheTransientBlocks) {
  std::string json = R"({"live_at_start":[[1,8388608]],"events":[)"
                     R"([0,"a",10,4194304,0],[10,"a",11,6291456,0],[20,"a",12,2097152,0],[30,"f",1,8388608,0],)"
                     R"([40,"f",11,6291456,0],[50,"f",12,2097152,0]]})";
  Trace t = parse_trace(json, "passes.json");
  ReplayOptions o = quick_options();
  o.passes = 4;
  std::vector<std::size_t> steps;  // after_step's event indices, every pass
  o.after_step = [&](std::size_t i, const glake::pool::Allocator&) { steps.push_back(i); };
  ReplayReport r = replay_trace(t, o);  // throws if validate() finds a violation after any pass
  // Pass 1: all six events; passes 2-4: the allocs and frees of T1 and T2 (events 1, 2, 4, 5).
  std::vector<std::size_t> want = {0, 1, 2, 3, 4, 5};
  for (int pass = 2; pass <= 4; ++pass) want.insert(want.end(), {1, 2, 4, 5});
  EXPECT_EQ(steps, want);
  EXPECT_EQ(r.peak_live_bytes, 20 * MiB);
  ASSERT_EQ(r.passes.size(), 3u);
  for (const PassReport& p : r.passes) {
    EXPECT_EQ(p.peak_live_bytes, 12 * MiB) << "L (4M) + T1 (6M) + T2 (2M); W is gone";
    EXPECT_EQ(p.creates, 0u);
    EXPECT_EQ(p.maps, 0u);
    EXPECT_EQ(p.stitches, 0u);
    EXPECT_EQ(p.peak_physical_bytes, r.peak_physical_bytes);
    EXPECT_NEAR(p.ratio, static_cast<double>(r.peak_physical_bytes) / (20.0 * MiB), 1e-12);
    EXPECT_EQ(p.modeled_driver_s, 0);
    EXPECT_DOUBLE_EQ(p.wall_s, 50e-6);
  }
  auto j = nlohmann::json::parse(format_report_json(r));
  ASSERT_TRUE(j["passes"].is_array());
  ASSERT_EQ(j["passes"].size(), 3u);
  EXPECT_EQ(j["passes"][0]["pass"], 2);
  EXPECT_EQ(j["passes"][2]["peak_live_bytes"], 12 * MiB);
  EXPECT_TRUE(nlohmann::json::parse(format_report_json(replay_trace(t, quick_options())))["passes"].empty());
}

// ReplayOptions::trims: the release after X's free is a trim (the pool gives X's pages back, and Z
// needs a new page); the release after the oom is the recording's own and is not replayed.
TEST(Replay, TrimsWhereTheRecordingTrimmed) {
  std::string json = R"({"format":"glake-trace","version":1,"events":[[0,"create",0,16777216,0],)"
                     R"([0,"a",10,8388608,0],[10,"a",11,8388608,0],[20,"f",10,8388608,0],)"
                     R"([30,"release",0,8388608,0],[31,"release",0,2097152,0],)"
                     R"([40,"a",12,2097152,0],[50,"oom",0,1099511627776,0],[51,"release",0,2097152,0],)"
                     R"([60,"f",12,2097152,0],[70,"f",11,8388608,0]]})";
  Trace t = parse_trace(json, "trims.json");
  ReplayOptions o = quick_options();
  ReplayReport plain = replay_trace(t, o);
  EXPECT_EQ(plain.pool_stats.releases, 0u) << "Z reuses X's cached pages";
  EXPECT_FALSE(plain.replayed_trims);
  EXPECT_EQ(format_report_text(plain).find("  trims "), std::string::npos);

  o.trims = true;
  ReplayReport r = replay_trace(t, o);
  EXPECT_TRUE(r.replayed_trims);
  EXPECT_EQ(r.trims, 1u);
  EXPECT_EQ(r.pool_stats.releases, 4u) << "X's four pages, once";
  EXPECT_EQ(r.peak_physical_bytes, 16 * MiB);
  EXPECT_EQ(r.peak_live_since_trim, 10 * MiB) << "Y and Z";
  EXPECT_EQ(r.peak_physical_since_trim, 10 * MiB);
  EXPECT_DOUBLE_EQ(r.ratio_since_trim, 1.0);
  EXPECT_EQ(r.at_peak.physical, 10 * MiB) << "the breakdown is of the peak after the trim";
  std::string text = format_report_text(r);
  EXPECT_NE(text.find("trims           1 replayed; from the last on (of the last pass): peak live 10.00 MiB"),
            std::string::npos)
      << text;
  auto j = nlohmann::json::parse(format_report_json(r));
  EXPECT_EQ(j["trims"], 1);
  EXPECT_EQ(j["peak_physical_since_trim_bytes"], 10 * MiB);

  o.passes = 2;  // the trim again in the second pass (X and Z are transient; Y is freed too)
  r = replay_trace(t, o);
  EXPECT_EQ(r.trims, 2u);
}

// A release followed by an oom before the next allocation or free is the pool's answer to pressure,
// not a trim; a trim after the allocation of a block left live is replayed in later passes too (where
// that allocation itself is not).
TEST(Replay, TrimsLookAheadAndAfterLongLivedBlocks) {
  std::string json = R"({"format":"glake-trace","version":1,"events":[[0,"create",0,16777216,0],)"
                     R"([0,"a",10,8388608,0],[10,"f",10,8388608,0],[20,"a",11,8388608,0],)"
                     R"([30,"release",0,8388608,0],[40,"a",12,2097152,0],[50,"release",0,2097152,0],)"
                     R"([51,"oom",0,1099511627776,0],[60,"f",12,2097152,0]]})";
  Trace t = parse_trace(json, "trims2.json");
  ReplayOptions o = quick_options();
  o.trims = true;
  EXPECT_EQ(replay_trace(t, o).trims, 1u);
  o.passes = 3;
  EXPECT_EQ(replay_trace(t, o).trims, 3u);
}

// What the memory held at the peak: two 3 MiB blocks share their middle page (3 pages), a 100 KiB
// request is a piece of a new one-page chunk, and freeing the first block leaves its 2 MiB page free
// beside a live neighbour (the peak, 8 MiB, is before that free).
TEST(Replay, BreakdownAtThePeak) {
  std::string json = R"({"events":[[0,"a",10,3145728,0],[10,"a",11,3145728,0],[20,"a",12,102400,0],)"
                     R"([30,"f",10,3145728,0],[40,"f",11,3145728,0],[50,"f",12,102400,0]]})";
  ReplayReport r = replay_trace(parse_trace(json, "peak.json"), quick_options());
  const PeakBreakdown& b = r.at_peak;
  EXPECT_EQ(b.physical, 8 * MiB);
  EXPECT_EQ(b.requested, 6 * MiB + 102400);
  EXPECT_EQ(b.rounding, 0u);
  EXPECT_EQ(b.free_in_chunks, 2 * MiB - 102400);
  EXPECT_EQ(b.free_large, 0u);
  EXPECT_EQ(b.spare, 0u);
  EXPECT_EQ(b.physical, b.requested + b.rounding + b.free_in_chunks + b.free_large + b.spare);
  std::string text = format_report_text(r);
  EXPECT_NE(text.find("at the peak     8.00 MiB physical = requests 6.10 MiB + rounding 0 B"), std::string::npos) << text;
  auto j = nlohmann::json::parse(format_report_json(r));
  EXPECT_EQ(j["at_peak"]["free_in_chunks_bytes"], 2 * MiB - 102400);
}

// The parts add up to the peak on a real trace too, and the peak is the report's.
TEST(Replay, BreakdownAddsUpOnTheDemoTrace) {
  std::string path = testing_util::env_dir("GLAKE_TEST_DATA", "tests/data") + "/demo-trace.json.gz";
  if (!testing_util::file_exists(path)) GTEST_SKIP() << path << " not found";
  ReplayReport r = replay_trace(read_trace(path), quick_options());
  const PeakBreakdown& b = r.at_peak;
  EXPECT_EQ(b.physical, r.peak_physical_bytes);
  EXPECT_EQ(b.physical, b.requested + b.rounding + b.free_in_chunks + b.free_large + b.spare);
  EXPECT_LE(b.free_large_below_page, b.free_large_blocks);
}

// The replay's driver keeps books only (no memfd per page): a trace holding more pages than the process
// may open files replays.
TEST(Replay, HoldsMorePagesThanTheProcessMayOpenFiles) {
  std::string events;
  for (int i = 0; i < 200; ++i) events += (i ? "," : "") + fmt_event(static_cast<std::uint64_t>(i), "a", 100 + i, 2 * MiB, 0);
  for (int i = 0; i < 200; ++i) events += "," + fmt_event(static_cast<std::uint64_t>(300 + i), "f", 100 + i, 2 * MiB, 0);
  Trace t = parse_trace("{\"events\":[" + events + "]}", "pages.json");
  int open_fds = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++open_fds;
    closedir(dir);
  }
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(open_fds + 32);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  ReplayReport r;
  std::string error;
  try {
    r = replay_trace(t, quick_options());
  } catch (const std::exception& e) {
    error = e.what();
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(error, "");
  EXPECT_EQ(r.peak_physical_bytes, 400 * MiB);
}

TEST(Replay, DemoTrace) {
  std::string path = testing_util::env_dir("GLAKE_TEST_DATA", "tests/data") + "/demo-trace.json.gz";
  if (!testing_util::file_exists(path)) GTEST_SKIP() << path << " not found";
  Trace t = read_trace(path);
  // reps = 0: the glibc timing of gigabytes of blocks is for the command and the 'replay' suite, not for
  // the unit suite (which also runs under sanitizers).
  ReplayReport r = replay_trace(t, quick_options());  // throws if validate() finds a violation
  EXPECT_EQ(r.peak_live_bytes, t.peak_live_bytes);
  EXPECT_GE(r.peak_physical_bytes, r.peak_live_bytes);
  EXPECT_LE(r.ratio, 1.25);
  EXPECT_GT(r.wall_s, 0.5);
}

}  // namespace
}  // namespace glake::tracer
