// tests/tracer/test_tools_cli.cpp: the glake-trace subcommands as a user runs them, on a trace recorded
// here from a real pool (with an out-of-memory snapshot), on the shipped demo trace, and on a PyTorch
// snapshot made by tests/tracer/make_torch_snapshot.py: summary (text and --json), replay's what-if
// options, export --chrome (valid trace-event JSON with counters and instants), import --torch (the
// numbers the snapshot implies; a pickle that is not a snapshot refused), report (self-contained HTML).
#include <map>
#include <utility>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tracer/cli_test_util.h"
#include "tests/tracer/recorder_test_util.h"
#include "tracer/pool_trace.h"
#include "tracer/trace_reader.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

using namespace testing_util;

constexpr std::size_t MiB = std::size_t{1} << 20;

class Tools : public ::testing::Test {
 protected:
  void SetUp() override {
    if (trace_bin() == nullptr) GTEST_SKIP() << "GLAKE_TRACE_BIN not set";
  }
  static std::string demo() { return env_dir("GLAKE_TEST_DATA", "tests/data") + "/demo-trace.json.gz"; }
  static std::string scripts() { return env_dir("GLAKE_SCRIPTS", "scripts"); }
  static std::string test_scripts() { return env_dir("GLAKE_TEST_SCRIPTS", "tests/tracer"); }

  // A glake trace of a pool on the host driver with stacks (if available), stitches and an
  // out-of-memory with its snapshot.
  static std::string recorded_trace() {
    static std::string path;
    if (!path.empty()) return path;
    RecorderOptions ro;
    ro.stacks = true;
    TracedPool tp(ro, std::size_t{64} << 20);
    std::vector<pool::DevPtr> live;
    for (int i = 0; i < 9; ++i) {  // 54 MiB of 64
      pool::DevPtr p = 0;
      EXPECT_EQ(tp.pool.allocate((i % 3 + 1) * 2 * MiB + 1000, 0, &p), pool::Status::ok);
      live.push_back(p);
    }
    for (std::size_t i = 0; i < live.size(); i += 2) EXPECT_EQ(tp.pool.free(live[i]), pool::Status::ok);
    pool::DevPtr p = 0;
    EXPECT_EQ(tp.pool.allocate(20 * MiB, 0, &p), pool::Status::ok);  // stitched from the holes
    EXPECT_EQ(tp.pool.allocate(60 * MiB, 0, &p), pool::Status::out_of_memory);
    SnapshotContext c;
    c.request = 60 * MiB;
    c.t_us = tp.recorder.now_us();
    TraceSnapshot snap = to_trace_snapshot(tp.pool.snapshot(), c);
    pool::Stats st = tp.pool.stats();
    CollectOptions co;
    co.name = "recorded";
    co.totals = Totals{st.requested.current, st.physical.current};
    co.snapshots.push_back(snap);
    Trace t = tp.recorder.collect(co);
    path = temp_path("recorded.json.gz");
    write_trace(t, path);
    return path;
  }
};

TEST_F(Tools, SummaryTextAndJson) {
  CmdResult r = glake_trace("summary " + quote(recorded_trace()));
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* part : {"peak live", "peak physical", "fragmentation over time", "allocation sites",
                           "out of memory on device 0", "a request of 60.00 MiB", "stitch"})
    EXPECT_NE(r.out.find(part), std::string::npos) << part << "\n" << r.out;
  if (Recorder::stacks_supported()) {
    EXPECT_NE(r.out.find("at "), std::string::npos) << r.out;
  }

  r = glake_trace("summary --json --buckets 4 " + quote(recorded_trace()) + " " + quote(demo()));
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    ++n;
    for (const char* key : {"peak_live_bytes", "peak_physical_bytes", "buckets", "peak_sites", "ooms", "snapshots",
                            "events_dropped"})
      EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_LE(j["buckets"].size(), 4u);
    if (n == 1) {
      EXPECT_TRUE(j["peak_physical_bytes"].is_number());
      EXPECT_EQ(j["ooms"].size(), 1u);
      ASSERT_EQ(j["snapshots"].size(), 1u);
      EXPECT_NE(j["snapshots"][0]["explanation"].get<std::string>().find("out of memory"), std::string::npos);
    } else {
      EXPECT_TRUE(j["peak_physical_bytes"].is_null()) << "the shared demo trace has no create/release";
    }
  }
  EXPECT_EQ(n, 2);
  r = glake_trace("summary --replay --json " + quote(demo()));
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["physical_source"], "glake replay");
  EXPECT_GE(j["peak_physical_bytes"].get<std::uint64_t>(), j["peak_live_bytes"].get<std::uint64_t>());
  EXPECT_EQ(j["replay"]["at_peak"]["physical_bytes"], j["peak_physical_bytes"]);
  r = glake_trace("summary --replay " + quote(demo()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("  at that peak    7.25 GiB physical = requests 7.24 GiB + rounding"), std::string::npos)
      << r.out;
}

TEST_F(Tools, SummaryErrorsNameTheFile) {
  std::string bad = write_file("bad.json", R"({"format":"glake-trace","version":1,"events":[[1,"a",0,1,0,0,0,9]]})");
  CmdResult r = glake_trace("summary " + quote(bad));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stack 9"), std::string::npos) << r.err;
  EXPECT_EQ(glake_trace("summary").status, 2);
  EXPECT_EQ(glake_trace("summary --top x " + quote(demo())).status, 2);
  // A device the trace does not have (a typo): an error that says which it has, not an empty summary.
  for (const std::string& cmd : {std::string("summary --device 3 "), "report --device 3 -o " + quote(temp_path("nodevice.html")) + " "}) {
    r = glake_trace(cmd + quote(demo()));
    EXPECT_EQ(r.status, 1) << cmd << r.out;
    EXPECT_NE(r.err.find("no device 3 in the trace (it has device 0)"), std::string::npos) << cmd << r.err;
  }
}

TEST_F(Tools, ReplayWhatIf) {
  CmdResult base = glake_trace("replay --json --reps 0 " + quote(demo()));
  ASSERT_EQ(base.status, 0) << base.err;
  auto b = nlohmann::json::parse(base.out);
  EXPECT_EQ(b["small_limit"], 1 << 20);
  CmdResult r = glake_trace("replay --json --reps 0 --small-limit 0 --granularity 4M --no-stitch " + quote(demo()));
  ASSERT_EQ(r.status, 0) << r.err;
  auto w = nlohmann::json::parse(r.out);
  EXPECT_EQ(w["small_limit"], 0);
  EXPECT_EQ(w["granularity"], 4 << 20);
  EXPECT_EQ(w["stitch"], false);
  EXPECT_EQ(w["stitches"], 0);
  EXPECT_GT(w["peak_physical_bytes"].get<std::uint64_t>(), b["peak_physical_bytes"].get<std::uint64_t>());
  // A what-if that does not fit: the error names the event and what the pool held.
  r = glake_trace("replay --reps 0 --capacity 1G " + quote(demo()));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("out_of_memory"), std::string::npos) << r.err;
  // A glake trace replays its a/f events only.
  r = glake_trace("replay --json --reps 0 " + quote(recorded_trace()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GT(nlohmann::json::parse(r.out)["other_events"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(glake_trace("replay --small-limit lots " + quote(demo())).status, 2);
}

TEST_F(Tools, ExportChrome) {
  std::string out = temp_path("chrome.json");
  CmdResult r = glake_trace("export --chrome --replay --blocks 1M " + quote(recorded_trace()) + " -o " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(slurp(out));
  ASSERT_TRUE(j["traceEvents"].is_array());
  int counters = 0, stitches = 0, ooms = 0, slices = 0, replay = 0;
  for (const auto& e : j["traceEvents"]) {
    ASSERT_TRUE(e.contains("ph") && e.contains("pid") && e.contains("name"));
    std::string ph = e["ph"];
    if (ph != "M") {
      ASSERT_TRUE(e["ts"].is_number());
    }
    if (ph == "C" && e["name"] == "memory (MiB)") {
      ++counters;
      EXPECT_TRUE(e["args"].contains("live") && e["args"].contains("physical") && e["args"].contains("fragmented"));
    }
    if (ph == "C" && e["name"] == "glake replay (MiB)") ++replay;
    if (ph == "i" && e["name"] == "stitch") ++stitches;
    if (ph == "i" && e["name"] == "out of memory") ++ooms;
    if (ph == "X") ++slices;
  }
  EXPECT_GT(counters, 10);
  EXPECT_GT(replay, 10);
  EXPECT_GT(stitches, 0);
  EXPECT_EQ(ooms, 1);
  EXPECT_GT(slices, 0);
  EXPECT_EQ(j["displayTimeUnit"], "ms");
  EXPECT_EQ(glake_trace("export " + quote(demo())).status, 2) << "the format must be named";
  // stdout, thinned.
  r = glake_trace("export --chrome --max-samples 100 " + quote(demo()));
  ASSERT_EQ(r.status, 0) << r.err;
  auto d = nlohmann::json::parse(r.out);
  EXPECT_LE(d["traceEvents"].size(), 200u);
}

TEST_F(Tools, ExportChromeBlocksIncludeThoseNeverFreed) {
  // --blocks: one slice per allocation of at least BYTES; one still live at the end of the trace (weights,
  // optimizer state: those holding the most) runs to the trace's last event, not left out.
  std::string in = write_file("blocks.json", R"({"events":[[1000,"a",1,4194304,0],[1500,"a",2,8388608,0],)"
                                             R"([2000,"f",1,4194304,0],[3000,"a",3,512,0],[4000,"f",3,512,0]]})");
  CmdResult r = glake_trace("export --chrome --blocks 1M " + quote(in));
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> slices;  // address -> ts, dur
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X") slices[e["args"]["address"].get<std::string>()] = {e["ts"], e["dur"]};
  ASSERT_EQ(slices.size(), 2u) << r.out;
  EXPECT_EQ(slices["0x1"], std::make_pair(std::uint64_t{0}, std::uint64_t{1000}));
  EXPECT_EQ(slices["0x2"], std::make_pair(std::uint64_t{500}, std::uint64_t{2500})) << "live until the end";
}

TEST_F(Tools, ImportTorchSnapshot) {
  std::string pickle = temp_path("snap.pickle"), out = temp_path("torch.json.gz");
  CmdResult gen = run_shell("python3 " + quote(test_scripts() + "/make_torch_snapshot.py") + " " + quote(pickle));
  if (gen.status != 0) GTEST_SKIP() << "python3 unavailable: " << gen.err;
  auto expect = nlohmann::json::parse(gen.out);
  CmdResult r = glake_trace("import --torch " + quote(pickle) + " -o " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("glake-trace replay"), std::string::npos) << r.out;
  Trace t = read_trace(out);
  EXPECT_EQ(t.events.size(), expect["events"].get<std::size_t>());
  EXPECT_EQ(t.allocs, expect["allocs"].get<std::uint64_t>());
  EXPECT_EQ(t.frees, expect["frees"].get<std::uint64_t>());
  EXPECT_EQ(t.peak_live_bytes, expect["peak_live_bytes"].get<std::uint64_t>());
  EXPECT_EQ(*t.meta.physical_at_start_bytes, expect["physical_at_start_bytes"].get<std::uint64_t>());
  EXPECT_EQ(*t.meta.peak_reserved_native, expect["peak_reserved_pytorch_native"].get<std::uint64_t>());
  ASSERT_EQ(t.live_at_start.size(), expect["live_at_start"].size());
  for (std::size_t i = 0; i < t.live_at_start.size(); ++i) {
    EXPECT_EQ(t.live_at_start[i].addr, expect["live_at_start"][i][0].get<std::uint64_t>());
    EXPECT_EQ(t.live_at_start[i].size, expect["live_at_start"][i][1].get<std::uint64_t>());
  }
  ASSERT_FALSE(t.stacks.empty());
  bool python_frame = false;
  for (const auto& [id, frames] : t.stacks)
    for (const Frame& f : frames) python_frame |= f.src == "/work/train.py:42";
  EXPECT_TRUE(python_frame);
  ASSERT_EQ(t.snapshots.size(), 1u);
  EXPECT_EQ(t.snapshots[0].reason, "pytorch segments at the snapshot");
  // Then the user's next steps work on it.
  r = glake_trace("replay --reps 0 " + quote(out));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("PyTorch native peak reserved"), std::string::npos) << r.out;
  r = glake_trace("summary " + quote(out));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("forward (/work/train.py:42)"), std::string::npos) << r.out;
}

TEST_F(Tools, ImportRefusesWhatIsNotASnapshot) {
  std::string out = temp_path("never.json");
  std::string junk = write_file("junk.pickle", "this is not a pickle");
  CmdResult r = glake_trace("import --torch " + quote(junk) + " -o " + quote(out));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(junk), std::string::npos) << r.err;
  EXPECT_FALSE(file_exists(out));
  std::string pickle = temp_path("bad.pickle");
  CmdResult gen = run_shell("python3 " + quote(test_scripts() + "/make_torch_snapshot.py") + " " + quote(pickle) + " --bad-class");
  if (gen.status != 0) GTEST_SKIP() << "python3 unavailable";
  r = glake_trace("import --torch " + quote(pickle) + " -o " + quote(out));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("collections.Counter"), std::string::npos) << r.err;
  EXPECT_FALSE(file_exists(out));
  EXPECT_EQ(glake_trace("import " + quote(pickle) + " -o " + quote(out)).status, 2);
  EXPECT_EQ(glake_trace("import --torch " + quote(pickle)).status, 2) << "-o is required";
  // The script is found through GLAKE_SCRIPTS; a wrong one is reported.
  r = run_shell("GLAKE_SCRIPTS=/nonexistent " + quote(trace_bin()) + " import --torch " + quote(pickle) + " -o " + quote(out));
  EXPECT_TRUE(r.status == 0 || r.status == 1);  // found elsewhere (next to the binary, the source tree) or not
}

// A conversion this reader rejects (here a stand-in script's: a free of an address nobody allocated)
// leaves no file behind, and an older trace at the output path stays as it was.
TEST_F(Tools, ImportThatTheReaderRejectsLeavesTheOutputAsItWas) {
  std::string scripts = temp_path("fake-scripts");
  ASSERT_EQ(run_shell("mkdir -p " + quote(scripts)).status, 0);
  write_file("fake-scripts/torch_snapshot_to_json.py",
             "import sys\nopen(sys.argv[sys.argv.index('-o') + 1], 'w').write('{\"events\":[[1,\"f\",5,10,0]]}')\n");
  std::string out = write_file("kept.json", R"({"events":[[1,"a",5,10,0]]})");
  std::string pickle = write_file("any.pickle", "unused by the stand-in");
  CmdResult r = run_shell("GLAKE_SCRIPTS=" + quote(scripts) + " " + quote(trace_bin()) + " import --torch " +
                          quote(pickle) + " -o " + quote(out));
  if (r.err.find("python3 not found") != std::string::npos) GTEST_SKIP() << "python3 unavailable";
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("rejects"), std::string::npos) << r.err;
  EXPECT_EQ(read_trace(out).events.size(), 1u) << "the older trace is intact";
  EXPECT_EQ(run_shell("ls -a " + quote(out.substr(0, out.rfind('/'))) + " | grep -c import-").out, "0\n")
      << "no temporary file left";
}

// Writes the pickle of a Python expression (builtin types only) to a temporary file; "" without python3.
std::string python_pickle(const std::string& name, const std::string& python) {
  std::string pickle = temp_path(name + ".pickle");
  CmdResult gen = run_shell("python3 -c " + quote("import pickle,sys; pickle.dump(" + python + ", open(sys.argv[1], 'wb'))") +
                            " " + quote(pickle));
  return gen.status == 0 ? pickle : std::string();
}

TEST_F(Tools, ImportKeepsSegmentsFreedBeforeTheSnapshot) {
  // empty_cache() before _dump_snapshot: every segment the history created was freed again, so the
  // snapshot has no segments and the history's net is 0. PyTorch still reserved 20 MiB at its peak.
  std::string pickle = python_pickle(
      "emptied", "{'segments': [], 'device_traces': [["
                 "{'action':'segment_alloc','addr':1<<40,'size':20<<20,'stream':0,'time_us':100},"
                 "{'action':'alloc','addr':1<<40,'size':4<<20,'stream':0,'time_us':110},"
                 "{'action':'alloc','addr':(1<<40)+(4<<20),'size':6<<20,'stream':0,'time_us':120},"
                 "{'action':'free_requested','addr':1<<40,'size':4<<20,'stream':0,'time_us':130},"
                 "{'action':'free_requested','addr':(1<<40)+(4<<20),'size':6<<20,'stream':0,'time_us':140},"
                 "{'action':'segment_free','addr':1<<40,'size':20<<20,'stream':0,'time_us':150}]]}");
  if (pickle.empty()) GTEST_SKIP() << "python3 unavailable";
  std::string out = temp_path("emptied.json");
  CmdResult r = glake_trace("import --torch " + quote(pickle) + " -o " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  Trace t = read_trace(out);
  EXPECT_EQ(t.events.size(), 6u) << "the segment events are PyTorch's reserved memory";
  EXPECT_EQ(t.peak_live_bytes, 10 * MiB);
  ASSERT_TRUE(t.peak_physical_bytes.has_value());
  EXPECT_EQ(*t.peak_physical_bytes, 20 * MiB);
  ASSERT_TRUE(t.meta.peak_reserved_native.has_value());
  EXPECT_EQ(*t.meta.peak_reserved_native, 20 * MiB);
  r = glake_trace("replay --reps 0 " + quote(out));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("PyTorch native peak reserved (20.00 MiB"), std::string::npos) << r.out;
}

TEST_F(Tools, ImportDropsARepeatedFree) {
  // A second free_requested of a block the history allocated and freed: not a block live before the
  // history (that made the trace allocate an address already live, and the import fail).
  std::string pickle = python_pickle(
      "twice", "{'segments': [], 'device_traces': [["
               "{'action':'alloc','addr':1<<40,'size':4<<20,'stream':0,'time_us':110},"
               "{'action':'free_requested','addr':1<<40,'size':4<<20,'stream':0,'time_us':130},"
               "{'action':'free_requested','addr':1<<40,'size':4<<20,'stream':0,'time_us':140}]]}");
  if (pickle.empty()) GTEST_SKIP() << "python3 unavailable";
  std::string out = temp_path("twice.json");
  CmdResult r = glake_trace("import --torch " + quote(pickle) + " -o " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  Trace t = read_trace(out);
  EXPECT_EQ(t.allocs, 1u);
  EXPECT_EQ(t.frees, 1u);
  EXPECT_TRUE(t.live_at_start.empty());
  EXPECT_EQ(t.peak_live_bytes, 4 * MiB);
}

TEST_F(Tools, ReportIsSelfContained) {
  for (const std::string& trace : {recorded_trace(), demo()}) {
    std::string out = temp_path("report.html");
    CmdResult r = glake_trace("report " + quote(trace) + " -o " + quote(out));
    ASSERT_EQ(r.status, 0) << r.err;
    std::string html = slurp(out);
    EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
    for (const char* part : {"<svg", "Memory over time", "Fragmentation over time", "Block maps", "data-ready",
                             "glake (replay)", "at glake's peak"})
      EXPECT_NE(html.find(part), std::string::npos) << part;
    for (const char* net : {"src=\"http", "href=\"http", "src='http", "@import", "url(http", "cdn."})
      EXPECT_EQ(html.find(net), std::string::npos) << "fetches from the network: " << net;
  }
  CmdResult r = glake_trace("report --no-replay " + quote(recorded_trace()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("oom (device 0"), std::string::npos) << "the trace's own snapshot is drawn";
}

// Malformed and hostile traces: each gets an exit status and a message, never a signal or a hang
// (`timeout` bounds a hang; a signal shows as status -1).
TEST_F(Tools, HostileTracesEndWithAStatusNotASignal) {
  // t_us 0 and 2^64 - 1 in one trace: the bucket width wrapped to no buckets at all, then buckets[0].
  std::string span = write_file("span.json", R"({"events":[[0,"a",1,10,0],[18446744073709551615,"f",1,10,0]]})");
  CmdResult r = glake_trace("summary " + quote(span));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("fragmentation over time"), std::string::npos) << r.out;
  r = glake_trace("report --no-replay -o " + quote(temp_path("span.html")) + " " + quote(span));
  EXPECT_EQ(r.status, 0) << r.err;

  // A snapshot's block map: a region up to 2^64 - 1 in pages of 2^63 walked past 2^64 forever; 24001
  // pages of 2^63 made a cell of 2^64 bytes, which wrapped to 0 (a division by zero).
  const std::string head = R"({"format":"glake-trace","version":1,"events":[],"snapshots":[{"t_us":0,)";
  std::string endless = write_file("endless.json", head + R"("page_size":9223372036854775808,)"
                                                          R"("regions":[[0,18446744073709551615,"allocated"]]}]})");
  r = run_shell("timeout 60 " + quote(trace_bin()) + " report --no-replay -o " + quote(temp_path("endless.html")) +
                " " + quote(endless));
  EXPECT_EQ(r.status, 0) << r.err;
  std::string regions;
  for (int i = 0; i < 24001; ++i) regions += std::string(i == 0 ? "" : ",") + R"([0,9223372036854775808,"free"])";
  std::string wide = write_file("wide.json", head + R"("page_size":9223372036854775808,"regions":[)" + regions + "]}]}");
  r = glake_trace("report --no-replay -o " + quote(temp_path("wide.html")) + " " + quote(wide));
  EXPECT_EQ(r.status, 0) << r.err;
  // A region past 2^64 is refused when read.
  std::string past = write_file("past.json", head + R"("page_size":4096,"regions":[[18446744073709547520,8192,"free"]]}]})");
  r = glake_trace("report --no-replay " + quote(past));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("passes 2^64"), std::string::npos) << r.err;
}

TEST_F(Tools, SizesAndTimesNear2To64) {
  // Device 0's physical bytes alone, from a create of 2^63 + 5: the signed sum of filter_device() made
  // it need a start of 2^63 (and overflowed, undefined behaviour, on the way).
  std::string two = write_file("two.json", R"({"format":"glake-trace","version":1,"events":[)"
                                           R"([0,"create",0,9223372036854775813,0],[1,"release",0,5,0],)"
                                           R"([2,"a",1,10,0,1]]})");
  CmdResult r = glake_trace("summary --json --device 0 " + quote(two));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["peak_physical_bytes"].get<std::uint64_t>(), 9223372036854775813ull);
  // --from 1 s on a trace whose clock is near 2^64: the sum wrapped to the start and replayed it all.
  std::string late = write_file("late.json", R"({"events":[[18446744073709551000,"a",1,10,0],)"
                                             R"([18446744073709551615,"f",1,10,0]]})");
  r = glake_trace("replay --reps 0 --from 1 " + quote(late));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("1 events (0 allocs, 1 frees), 1 blocks live at start"), std::string::npos) << r.out;
}

TEST_F(Tools, ReplayJsonOfAFileNameThatIsNotUtf8) {
  // The name (and meta.name, taken from it) is not UTF-8: the JSON line threw and the report was lost.
  std::string odd = write_file("latin1-\xe9.json", R"({"events":[[0,"a",1,10,0],[5,"f",1,10,0]]})");
  CmdResult r = glake_trace("replay --json --reps 0 " + quote(odd));
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["allocs"], 1);
}

TEST_F(Tools, ImportOfASnapshotOfTheWrongShapeSaysWhy) {
  // Builtin types only, but not where a snapshot has them: one line naming the file, no traceback.
  struct Case {
    const char* name;
    const char* python;  // the pickled object
    const char* expect;
  } cases[] = {
      {"time", "{'device_traces':[[{'action':'alloc','addr':1,'size':512,'time_us':'abc'}]],'segments':[]}",
       "time_us"},
      {"frames", "{'device_traces':[[{'action':'alloc','addr':1,'size':512,'frames':5}]],'segments':[]}",
       "unexpected content"},
      {"device", "{'device_traces':[],'segments':[{'device':[1],'total_size':10}]}", "segments[0] device"},
      {"negative", "{'device_traces':[[{'action':'alloc','addr':1,'size':512}]],'segments':[{'device':-1}]}",
       "segments[0] device"},
      {"block", "{'device_traces':[],'segments':[{'device':0,'total_size':10,'blocks':[5]}]}", "unexpected content"},
      {"huge", "{'device_traces':[[{'action':'alloc','addr':1,'size':2**70}]],'segments':[]}", "below 2^64"},
  };
  for (const Case& c : cases) {
    std::string pickle = temp_path(std::string(c.name) + ".pickle"), out = temp_path(std::string(c.name) + ".json");
    std::remove(out.c_str());
    CmdResult gen = run_shell("python3 -c " + quote(std::string("import pickle,sys; pickle.dump(") + c.python +
                                                    ", open(sys.argv[1], 'wb'))") + " " + quote(pickle));
    if (gen.status != 0) GTEST_SKIP() << "python3 unavailable: " << gen.err;
    CmdResult r = glake_trace("import --torch " + quote(pickle) + " -o " + quote(out));
    EXPECT_EQ(r.status, 1) << c.name;
    EXPECT_EQ(r.err.find("Traceback"), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find("torch_snapshot_to_json: error: " + pickle), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.name << ": " << r.err;
    EXPECT_FALSE(file_exists(out)) << c.name;
  }
}

}  // namespace
}  // namespace glake::tracer
