// tests/tracer/test_trace_reader.cpp: the trace reader on small inline traces, plain and gzip, and on
// malformed and truncated input: every error must name the file and the position (byte offset in the
// decompressed JSON, the event index and what was expected).
#include <sys/stat.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "tests/tracer/trace_test_util.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {
namespace {

using testing_util::gzip_bytes;
using testing_util::write_file;

// peak live: 100 (start) + 4096 + 512 = 4708 after event 1; the free of the start block comes last.
const std::string kSmall =
    R"({"meta":{"name":"small","peak_live_bytes":4708,"peak_reserved_pytorch_native":8192,"median_iter_s":0.5,)"
    R"("workload":{"x":[1,2,{"y":null}]}},)"
    R"("live_at_start":[[7,100]],)"
    R"("events":[[10,"a",1000,4096,0],[12,"a",2000,512,5],[15,"f",1000,4096,0],[15,"a",1000,1024,0],)"
    R"([20,"f",7,100,0]]})";

// Runs `body` expecting a TraceError; returns its message (empty if none was thrown).
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

// True if msg says "byte N" for exactly this N.
bool has_byte(const std::string& msg, std::size_t n) {
  std::string key = "byte " + std::to_string(n);
  for (auto at = msg.find(key); at != std::string::npos; at = msg.find(key, at + 1)) {
    std::size_t end = at + key.size();
    if (end == msg.size() || msg[end] < '0' || msg[end] > '9') return true;
  }
  return false;
}

std::string parse_error(const std::string& json, std::optional<std::uint64_t>* offset = nullptr) {
  return error_of([&] { parse_trace(json, "inline.json"); }, offset);
}

void expect_small(const Trace& t) {
  EXPECT_EQ(t.meta.name, "small");
  ASSERT_TRUE(t.meta.peak_live_bytes.has_value());
  EXPECT_EQ(*t.meta.peak_live_bytes, 4708u);
  ASSERT_TRUE(t.meta.peak_reserved_native.has_value());
  EXPECT_EQ(*t.meta.peak_reserved_native, 8192u);
  ASSERT_TRUE(t.meta.median_iter_s.has_value());
  EXPECT_DOUBLE_EQ(*t.meta.median_iter_s, 0.5);
  ASSERT_EQ(t.live_at_start.size(), 1u);
  EXPECT_EQ(t.live_at_start[0].addr, 7u);
  EXPECT_EQ(t.live_at_start[0].size, 100u);
  ASSERT_EQ(t.events.size(), 5u);
  EXPECT_EQ(t.events[1].t_us, 12u);
  EXPECT_EQ(t.events[1].op, Op::alloc);
  EXPECT_EQ(t.events[1].addr, 2000u);
  EXPECT_EQ(t.events[1].size, 512u);
  EXPECT_EQ(t.events[1].stream, 5u);
  EXPECT_EQ(t.events[2].op, Op::free);
  EXPECT_EQ(t.peak_live_bytes, 4708u);
  EXPECT_EQ(t.allocs, 3u);
  EXPECT_EQ(t.frees, 2u);
  ASSERT_EQ(t.event_offsets.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(kSmall[t.event_offsets[i]], '[') << i;
  EXPECT_EQ(kSmall.substr(t.event_offsets[3], 6), "[15,\"a");
}

TEST(TraceReader, PlainFile) {
  Trace t = read_trace(write_file("small.json", kSmall));
  expect_small(t);
  EXPECT_NE(t.path.find("small.json"), std::string::npos);
  EXPECT_EQ(t.meta.json.front(), '{');
  EXPECT_NE(t.meta.json.find("workload"), std::string::npos);
}

TEST(TraceReader, GzipFileGivesTheSameTrace) {
  // Named .json on purpose: gzip is detected by magic bytes, not by the name.
  Trace t = read_trace(write_file("small.json", gzip_bytes(kSmall)));
  expect_small(t);
}

TEST(TraceReader, ConcatenatedGzipMembersAreOneStream) {
  std::string half = kSmall.substr(0, 100);
  Trace t = read_trace(write_file("two.json.gz", gzip_bytes(half) + gzip_bytes(kSmall.substr(100))));
  expect_small(t);
}

TEST(TraceReader, WhitespaceKeyOrderUnknownKeysAndOptionalSections) {
  std::string json = " \n{ \"events\" : [ [ 1 , \"a\" , 5 , 10 , 0 ] ,\n [2,\"\\u0066\",5,10,0] ] ,"
                     " \"future\" : {\"a\":[true,false,null,-1.5e3,\"s\\\"\\u00e9\"]} }\n";
  Trace t = read_trace(write_file("ws-trace.json", json));
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[1].op, Op::free) << "\\u0066 is \"f\"";
  EXPECT_TRUE(t.live_at_start.empty());
  EXPECT_EQ(t.peak_live_bytes, 10u);
  EXPECT_FALSE(t.meta.peak_reserved_native.has_value());
  // No meta.name: the file name without .json/.gz.
  EXPECT_NE(t.meta.name.find("ws-trace"), std::string::npos);
  EXPECT_EQ(t.meta.name.find(".json"), std::string::npos);
  EXPECT_EQ(t.meta.json, "{}");
}

TEST(TraceReader, EmptyEventsAndNullMetaFields) {
  Trace t = parse_trace(R"({"meta":{"name":"e","peak_live_bytes":null},"events":[]})", "x");
  EXPECT_TRUE(t.events.empty());
  EXPECT_FALSE(t.meta.peak_live_bytes.has_value());
}

TEST(TraceReaderErrors, MissingFile) {
  std::string msg = error_of([] { read_trace("/nonexistent/dir/trace.json.gz"); });
  EXPECT_NE(msg.find("/nonexistent/dir/trace.json.gz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, EmptyFile) {
  std::string path = write_file("empty.json", "");
  std::string msg = error_of([&] { read_trace(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty input"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, TruncatedGzip) {
  std::string gz = gzip_bytes(kSmall);
  std::string path = write_file("cut.json.gz", gz.substr(0, gz.size() / 2));
  std::optional<std::uint64_t> off;
  std::string msg = error_of([&] { read_trace(path); }, &off);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("gzip"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(*off, gz.size() / 2);
}

TEST(TraceReaderErrors, GzipTrailerCut) {
  // All of the deflate data but part of the CRC/size trailer.
  std::string gz = gzip_bytes(kSmall);
  std::string msg = error_of([&] { read_trace(write_file("trailer.json.gz", gz.substr(0, gz.size() - 3))); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, CorruptGzip) {
  std::string gz = gzip_bytes(kSmall);
  gz[gz.size() - 6] = static_cast<char>(gz[gz.size() - 6] ^ 0x5a);  // the CRC
  std::string msg = error_of([&] { read_trace(write_file("crc.json.gz", gz)); });
  EXPECT_NE(msg.find("gzip"), std::string::npos) << msg;
  EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, GarbageAfterGzip) {
  std::string msg = error_of([&] { read_trace(write_file("junk.json.gz", gzip_bytes(kSmall) + "junk")); });
  EXPECT_NE(msg.find("after the end of the gzip stream"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, TruncatedJsonInsideEvents) {
  std::size_t cut = kSmall.find("[15,\"f\"") + 5;  // inside events[2], after "[15,\"
  std::string path = write_file("cut.json", kSmall.substr(0, cut));
  std::optional<std::uint64_t> off;
  std::string msg = error_of([&] { read_trace(path); }, &off);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("events[2]"), std::string::npos) << msg;
  EXPECT_TRUE(has_byte(msg, cut)) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(*off, cut);
}

TEST(TraceReaderErrors, TruncatedGzipOfTruncatedJson) {
  // A complete gzip stream whose JSON is cut: the position is in the decompressed JSON.
  std::size_t cut = kSmall.find("\"events\"") + 12;
  std::string msg = error_of([&] { read_trace(write_file("cutjson.json.gz", gzip_bytes(kSmall.substr(0, cut)))); });
  EXPECT_TRUE(has_byte(msg, cut)) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, TruncatedInMeta) {
  std::string msg = parse_error(kSmall.substr(0, 30));
  EXPECT_NE(msg.find("in meta"), std::string::npos) << msg;
  EXPECT_TRUE(has_byte(msg, 30)) << msg;
}

TEST(TraceReaderErrors, WrongTypes) {
  struct Case {
    std::string json;
    std::string expect1, expect2;
  } cases[] = {
      {R"({"events":[[1,"a",5,10,0],[2,7,5,10,0]]})", "events[1] (op)", "expected op \"a\" or \"f\""},
      {R"({"events":[[1,"x",5,10,0]]})", "events[0] (op)", "found \"x\""},
      {R"({"events":[[1,"a",5,"10",0]]})", "events[0] (size)", "expected a non-negative integer"},
      {R"({"events":[[1,"a",-5,10,0]]})", "events[0] (addr)", "non-negative"},
      {R"({"events":[[1.5,"a",5,10,0]]})", "events[0] (t_us)", "not a fraction"},
      {R"({"events":[[1,"a",5,10,0,9]]})", "events[0]", "5 elements"},
      {R"({"events":[[1,"a",5,10]]})", "events[0] (stream)", "',' after size"},
      {R"({"events":[[1,"a",5,99999999999999999999,0]]})", "events[0] (size)", "64 bits"},
      {R"({"events":{"a":1}})", "byte 10", "'[' to open \"events\""},
      {R"({"events":[1]})", "events[0]", "'[' to open an event"},
      {R"({"live_at_start":[[1]],"events":[]})", "live_at_start[0]", "',' after addr"},
      {R"({"live_at_start":[[1,2],[3,"4"]],"events":[]})", "live_at_start[1]", "non-negative integer"},
      {R"({"meta":[1],"events":[]})", "in meta", "expected an object"},
      {R"({"meta":{"peak_live_bytes":"big"},"events":[]})", "meta.peak_live_bytes", "non-negative integer"},
      {R"({"meta":{"name":3},"events":[]})", "meta.name", "expected a string"},
      {R"([1,2])", "byte 0", "'{'"},
  };
  for (const Case& c : cases) {
    std::string msg = parse_error(c.json);
    EXPECT_NE(msg.find("inline.json"), std::string::npos) << c.json << " -> " << msg;
    EXPECT_NE(msg.find(c.expect1), std::string::npos) << c.json << " -> " << msg;
    EXPECT_NE(msg.find(c.expect2), std::string::npos) << c.json << " -> " << msg;
  }
}

TEST(TraceReaderErrors, NumbersPastTheirRange) {
  // nlohmann throws out_of_range, not parse_error, for 1e400: the message named neither file nor byte.
  std::string msg = parse_error(R"({"meta":{"median_iter_s":1e400},"events":[]})");
  EXPECT_NE(msg.find("inline.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("in meta"), std::string::npos) << msg;
  // Live bytes past 2^64 wrapped: the peaks were silently wrong.
  msg = parse_error(R"({"events":[[1,"a",5,18446744073709551615,0],[2,"a",6,1,0]]})");
  EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pass 2^64"), std::string::npos) << msg;
  msg = parse_error(R"({"live_at_start":[[1,9223372036854775808],[2,9223372036854775808]],"events":[]})");
  EXPECT_NE(msg.find("live_at_start[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pass 2^64"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, NotARegularFile) {
  // errno was stale ("cannot read: Success"); a FIFO without a writer blocked in open() forever.
  std::string msg = error_of([] { read_trace("/dev/null"); });
  EXPECT_NE(msg.find("/dev/null: cannot read: not a regular file"), std::string::npos) << msg;
  std::string fifo = testing_util::temp_path("fifo.json");
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  msg = error_of([&] { read_trace(fifo); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  std::remove(fifo.c_str());
  msg = error_of([] { read_trace(::testing::TempDir()); });
  EXPECT_NE(msg.find("is a directory"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, MissingKeys) {
  std::string msg = parse_error(R"({"meta":{"name":"x"},"live_at_start":[]})");
  EXPECT_NE(msg.find("no key \"events\""), std::string::npos) << msg;
  msg = parse_error(R"({})");
  EXPECT_NE(msg.find("no key \"events\""), std::string::npos) << msg;
}

TEST(TraceReaderErrors, DuplicateKeyAndTrailingData) {
  std::string msg = parse_error(R"({"events":[],"events":[]})");
  EXPECT_NE(msg.find("appears twice"), std::string::npos) << msg;
  EXPECT_TRUE(has_byte(msg, 13)) << msg;
  msg = parse_error(R"({"events":[]} x)");
  EXPECT_NE(msg.find("after the trace object"), std::string::npos) << msg;
  EXPECT_TRUE(has_byte(msg, 14)) << msg;
}

TEST(TraceReaderErrors, FreeOfUnknownAddress) {
  std::string json = R"({"events":[[1,"a",5,10,0],[2,"f",5,10,0],[3,"f",5,10,0]]})";
  std::optional<std::uint64_t> off;
  std::string msg = parse_error(json, &off);
  EXPECT_NE(msg.find("events[2]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("free of unknown address 5"), std::string::npos) << msg;
  std::size_t at = json.find("[3,");
  EXPECT_TRUE(has_byte(msg, at)) << msg;
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(*off, at);
}

TEST(TraceReaderErrors, InconsistentEvents) {
  std::string msg = parse_error(R"({"events":[[1,"a",5,10,0],[2,"a",5,10,0]]})");
  EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("live already"), std::string::npos) << msg;
  msg = parse_error(R"({"events":[[1,"a",5,10,0],[2,"f",5,11,0]]})");
  EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("allocated with size 10"), std::string::npos) << msg;
  msg = parse_error(R"({"events":[[5,"a",5,10,0],[4,"f",5,10,0]]})");
  EXPECT_NE(msg.find("events[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("backwards"), std::string::npos) << msg;
  msg = parse_error(R"({"live_at_start":[[1,2],[1,3]],"events":[]})");
  EXPECT_NE(msg.find("live_at_start[1]"), std::string::npos) << msg;
}

TEST(TraceReaderErrors, EveryTruncationIsATraceErrorAtTheEnd) {
  for (std::size_t n = 0; n < kSmall.size(); ++n) {
    std::optional<std::uint64_t> off;
    std::string msg = parse_error(kSmall.substr(0, n), &off);
    ASSERT_FALSE(msg.empty()) << "prefix of " << n << " bytes parsed";
    ASSERT_TRUE(off.has_value()) << msg;
    EXPECT_LE(*off, n) << msg;
  }
  std::string gz = gzip_bytes(kSmall);
  for (std::size_t n = 0; n < gz.size(); ++n) {
    std::string msg = error_of([&] { gunzip(gz.substr(0, n), "cut.gz"); });
    EXPECT_NE(msg.find("cut.gz: gzip"), std::string::npos) << n << ": " << msg;
  }
}

TEST(TraceReaderErrors, CorruptedBytesNeverCrash) {
  // Every single-byte change either still parses or gives a TraceError; nothing else escapes.
  for (std::size_t i = 0; i < kSmall.size(); ++i) {
    for (char c : {'"', '[', ']', '{', '}', ',', ':', '9', '-', 'x', ' ', '\\', '\0'}) {
      std::string bad = kSmall;
      bad[i] = c;
      try {
        parse_trace(bad, "bad.json");
      } catch (const TraceError&) {
      }
    }
  }
}

TEST(TraceReader, FreeOfLiveAtStartBlock) {
  Trace t = parse_trace(R"({"live_at_start":[[9,64]],"events":[[1,"f",9,64,0],[2,"a",9,32,0]]})", "x");
  EXPECT_EQ(t.peak_live_bytes, 64u);
}

TEST(TraceReader, DemoTrace) {
  std::string dir = testing_util::env_dir("GLAKE_TEST_DATA", "tests/data");
  std::string path = dir + "/demo-trace.json.gz";
  if (!testing_util::file_exists(path)) GTEST_SKIP() << path << " not found";
  Trace t = read_trace(path);
  EXPECT_GT(t.events.size(), 1000u);
  ASSERT_TRUE(t.meta.peak_live_bytes.has_value());
  EXPECT_EQ(*t.meta.peak_live_bytes, t.peak_live_bytes);
  EXPECT_FALSE(t.meta.peak_reserved_native.has_value());
}

}  // namespace
}  // namespace glake::tracer
