// tests/tracer/test_trace_reader_glake.cpp: the reader on glake's own format (FORMAT.md): everything it
// holds, the key order, and malformed and truncated files: each error names the file, the byte offset
// and what was expected; elements only the glake format allows are refused in shared-format files.
#include <string>

#include <gtest/gtest.h>

#include "tests/tracer/trace_test_util.h"
#include "tracer/trace_reader.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

using testing_util::gzip_bytes;
using testing_util::write_file;

const std::string kGlake =
    R"({"format":"glake-trace","version":1,"meta":{"name":"g","physical_at_start_bytes":0,"stacks":"on"},)"
    R"("live_at_start":[[7,100,3,1,2]],)"
    R"("events":[[1,"create",0,4096,0],[2,"a",1000,64,3,1,55,1],[3,"stitch",1000,4096,3,1,55,0,2],)"
    R"([4,"f",1000,64,3],[5,"f",7,100,3,1],[6,"release",0,4096,0],[7,"oom",0,9999,3,1,55,1]],)"
    R"("stacks":{"1":[{"fn":"main","src":"a.c:3","obj":"a.out+0x10"},"bare"],"2":[]},)"
    R"("snapshots":[{"t_us":7,"device":1,"reason":"oom","request":9999,"page_size":4096,)"
    R"("regions":[[4096,4096,"allocated",3,64],[8192,4096,"free"]],"small_blocks":[]}]})";

template <typename F>
std::string error_of(F body, std::optional<std::uint64_t>* offset = nullptr) {
  try {
    body();
  } catch (const TraceError& e) {
    if (offset != nullptr) *offset = e.offset();
    return e.what();
  }
  return "";
}
std::string parse_error(const std::string& json, std::optional<std::uint64_t>* offset = nullptr) {
  return error_of([&] { parse_trace(json, "g.json"); }, offset);
}
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

void expect_glake(const Trace& t) {
  EXPECT_EQ(t.format, "glake-trace");
  EXPECT_EQ(t.version, 1u);
  EXPECT_EQ(t.meta.name, "g");
  EXPECT_EQ(t.meta.stacks_note, "on");
  ASSERT_EQ(t.live_at_start.size(), 1u);
  EXPECT_EQ(t.live_at_start[0].stream, 3u);
  EXPECT_EQ(t.live_at_start[0].device, 1u);
  EXPECT_EQ(t.live_at_start[0].stack, 2u);
  ASSERT_EQ(t.events.size(), 7u);
  EXPECT_EQ(t.events[0].op, Op::create);
  EXPECT_EQ(t.events[1].op, Op::alloc);
  EXPECT_EQ(t.events[1].device, 1u);
  EXPECT_EQ(t.events[1].thread, 55u);
  EXPECT_EQ(t.events[1].stack, 1u);
  EXPECT_EQ(t.events[2].op, Op::stitch);
  EXPECT_EQ(t.events[2].aux, 2u);
  EXPECT_EQ(t.events[3].device, 0u) << "columns left out are 0";
  EXPECT_EQ(t.events[6].op, Op::oom);
  EXPECT_EQ(t.allocs, 1u);
  EXPECT_EQ(t.frees, 2u);
  EXPECT_EQ(t.other_events, 4u);
  EXPECT_EQ(t.peak_live_bytes, 164u);
  ASSERT_TRUE(t.peak_physical_bytes.has_value());
  EXPECT_EQ(*t.peak_physical_bytes, 4096u);
  ASSERT_EQ(t.stacks.size(), 2u);
  const auto& s1 = t.stacks.at(1);
  ASSERT_EQ(s1.size(), 2u);
  EXPECT_EQ(s1[0].fn, "main");
  EXPECT_EQ(s1[0].src, "a.c:3");
  EXPECT_EQ(s1[0].obj, "a.out+0x10");
  EXPECT_EQ(s1[1].fn, "bare");
  EXPECT_TRUE(t.stacks.at(2).empty());
  ASSERT_EQ(t.snapshots.size(), 1u);
  const TraceSnapshot& sn = t.snapshots[0];
  EXPECT_EQ(sn.device, 1u);
  EXPECT_EQ(sn.reason, "oom");
  EXPECT_EQ(sn.request, 9999u);
  ASSERT_EQ(sn.regions.size(), 2u);
  EXPECT_EQ(sn.regions[0].state, "allocated");
  EXPECT_EQ(sn.regions[0].requested, 64u);
  EXPECT_EQ(sn.regions[1].state, "free");
  EXPECT_EQ(sn.json.front(), '{');
}

TEST(GlakeFormat, ReadsEverything) {
  expect_glake(parse_trace(kGlake, "g.json"));
  expect_glake(read_trace(write_file("g.json.gz", gzip_bytes(kGlake))));
}

TEST(GlakeFormat, KeysInAnyOrder) {
  // "format" and "version" after the events: the glake-only rows are accepted once the format is known.
  std::string moved = kGlake;
  moved.erase(1, std::string(R"("format":"glake-trace","version":1,)").size());
  moved.insert(moved.size() - 1, R"(,"version":1,"format":"glake-trace")");
  expect_glake(parse_trace(moved, "g.json"));
}

TEST(GlakeFormat, WriterRoundTrip) {
  Trace t = parse_trace(kGlake, "g.json");
  std::string text = trace_to_json(t);
  Trace back = parse_trace(text, "back.json");
  expect_glake(back);
  EXPECT_EQ(trace_to_json(back), text);
}

TEST(GlakeFormat, SharedFormatRefusesGlakeOnlyElements) {
  struct Case {
    std::string json, where;
  } cases[] = {
      {R"({"events":[[1,"create",0,4096,0]]})", "events[0]"},
      {R"({"events":[[1,"a",5,10,0,1]]})", "events[0]"},
      {R"({"live_at_start":[[1,2,3]],"events":[]})", "live_at_start[0]"},
      {R"({"events":[],"stacks":{}})", "stacks"},
      {R"({"events":[],"snapshots":[]})", "snapshots"},
  };
  for (const Case& c : cases) {
    std::optional<std::uint64_t> off;
    std::string msg = parse_error(c.json, &off);
    EXPECT_TRUE(has(msg, "g.json")) << msg;
    EXPECT_TRUE(has(msg, c.where)) << msg;
    EXPECT_TRUE(has(msg, "\"format\": \"glake-trace\"")) << msg;
    ASSERT_TRUE(off.has_value()) << msg;
    EXPECT_TRUE(has(msg, "byte " + std::to_string(*off))) << msg;
  }
}

TEST(GlakeFormat, MalformedNamesPositionAndExpectation) {
  const std::string head = R"({"format":"glake-trace","version":1,)";
  struct Case {
    std::string json, expect1, expect2;
  } cases[] = {
      {R"({"format":"other","version":1,"events":[]})", "byte 10", "unknown format \"other\""},
      {R"({"format":"glake-trace","version":2,"events":[]})", "byte 34", "unsupported version 2"},
      {R"({"format":"glake-trace","events":[]})", "byte 0", "needs \"version\""},
      {R"({"version":1,"events":[]})", "byte 11", "without \"format\""},
      {head + R"("events":[[1,"bogus",0,1,0]]})", "events[0] (op)", "found \"bogus\""},
      {head + R"("events":[[1,"a",0,1,0,1,2,3,4,5]]})", "events[0]", "5 to 9 elements"},
      {head + R"("events":[[1,"a",0,1,0,4294967296]]})", "events[0] (device)", "32 bits"},
      {head + R"("events":[[1,"a",0,1,0,0,0,7]]})", "events[0]", "stack 7 is not in \"stacks\""},
      {head + R"("events":[[1,"release",0,1,0]]})", "events[0]", "release of 1 bytes"},
      {head + R"("events":[],"stacks":{"x":[]}})", "stacks", "stack id \"x\""},
      {head + R"("events":[],"stacks":{"0":[]}})", "stacks", "from 1"},
      {head + R"("events":[],"stacks":{"1":[3]}})", "stacks[\"1\"]", "a frame"},
      {head + R"("events":[],"stacks":{"1":[{"fn":3}]}})", "stacks[\"1\"] (fn)", "the function name"},
      {head + R"("events":[],"snapshots":[{"t_us":1,"regions":[]}]})", "snapshots[0]", "\"page_size\""},
      {head + R"("events":[],"snapshots":[{"t_us":1,"page_size":4096,"regions":[[0,1,"odd"]]}]})", "snapshots[0]",
       "regions[0] state"},
      {head + R"("events":[],"snapshots":[7]})", "snapshots[0]", "a snapshot object"},
      {head + R"("live_at_start":[[1,2,3,4,5,6]],"events":[]})", "live_at_start[0]", "at most 5 elements"},
      // Physical bytes past 2^64 wrapped silently; a region past 2^64 made the report's block map loop.
      {head + R"("events":[[1,"create",0,18446744073709551615,0],[2,"create",0,1,0]]})", "events[1]", "pass 2^64"},
      {head + R"("events":[],"snapshots":[{"t_us":1,"page_size":4096,"regions":[[4096,18446744073709551615,"free"]]}]})",
       "snapshots[0]", "regions[0]: base 4096 + size 18446744073709551615 passes 2^64"},
      {head + R"("events":[],"snapshots":[{"t_us":1e400,"page_size":4096,"regions":[]}]})", "snapshots[0]", "bad JSON"},
  };
  for (const Case& c : cases) {
    std::string msg = parse_error(c.json);
    EXPECT_TRUE(has(msg, "g.json")) << c.json << " -> " << msg;
    EXPECT_TRUE(has(msg, c.expect1)) << c.json << " -> " << msg;
    EXPECT_TRUE(has(msg, c.expect2)) << c.json << " -> " << msg;
  }
}

TEST(GlakeFormat, TruncatedAnywhere) {
  for (std::size_t n = 0; n < kGlake.size(); ++n) {
    std::optional<std::uint64_t> off;
    std::string msg = parse_error(kGlake.substr(0, n), &off);
    ASSERT_FALSE(msg.empty()) << "prefix of " << n << " bytes was accepted";
    EXPECT_TRUE(has(msg, "g.json")) << n << ": " << msg;
    ASSERT_TRUE(off.has_value()) << n << ": " << msg;
    EXPECT_LE(*off, n) << msg;
  }
  std::string gz = gzip_bytes(kGlake);
  for (std::size_t n : {gz.size() / 3, gz.size() - 5}) {
    std::string path = write_file("cut.json.gz", gz.substr(0, n));
    std::string msg = error_of([&] { read_trace(path); });
    EXPECT_TRUE(has(msg, "gzip")) << msg;
    EXPECT_TRUE(has(msg, "truncated")) << msg;
  }
}

TEST(GlakeFormat, SharedTracesStillRead) {
  Trace t = parse_trace(R"({"events":[[0,"a",1,4194304,0],[10,"f",1,4194304,0]]})", "s.json");
  EXPECT_EQ(t.format, "shared");
  EXPECT_FALSE(t.peak_physical_bytes.has_value());
  EXPECT_EQ(t.other_events, 0u);
}

}  // namespace
}  // namespace glake::tracer
