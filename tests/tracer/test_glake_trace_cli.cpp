// tests/tracer/test_glake_trace_cli.cpp: the glake-trace command as a user runs it: exit statuses,
// --json lines, and a malformed trace among good ones (reported on stderr with file and position, the
// others still reported). The binary comes from GLAKE_TRACE_BIN (meson sets it).
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tracer/trace_test_util.h"

namespace glake::tracer {
namespace {

struct CmdResult {
  int status = -1;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CmdResult run(const std::string& args) {
  const char* bin = std::getenv("GLAKE_TRACE_BIN");
  CmdResult r;
  if (bin == nullptr) return r;
  std::string err_path = testing_util::temp_path("stderr");
  std::string cmd = quote(bin) + " " + args + " 2>" + quote(err_path);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  return r;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("GLAKE_TRACE_BIN") == nullptr) GTEST_SKIP() << "GLAKE_TRACE_BIN not set";
  }
};

const std::string kGood = R"({"meta":{"name":"good"},"events":[[0,"a",1,4194304,0],[10,"f",1,4194304,0]]})";

TEST_F(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run("").status, 2);
  EXPECT_EQ(run("nosuch").status, 2);
  CmdResult r = run("replay --bogus x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--bogus"), std::string::npos) << r.err;
  EXPECT_EQ(run("replay").status, 2);
  EXPECT_EQ(run("replay --granularity 3000 x").status, 2);
  EXPECT_EQ(run("replay --capacity lots x").status, 2);
  r = run("replay --passes 0 x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--passes"), std::string::npos) << r.err;
  r = run("replay --from -1 x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--from"), std::string::npos) << r.err;
  EXPECT_EQ(run("replay --from soon x").status, 2);
}

TEST_F(Cli, Help) {
  CmdResult r = run("replay --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("usage: glake-trace replay"), std::string::npos) << r.out;
  r = run("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("replay"), std::string::npos) << r.out;
}

TEST_F(Cli, JsonLinesAndAMalformedTraceAmongGoodOnes) {
  std::string good = testing_util::write_file("good.json", kGood);
  std::string bad = testing_util::write_file("bad.json.gz",
                                             testing_util::gzip_bytes(R"({"events":[[0,"a",1,10,0],[5,"f",2,10,0]]})"));
  CmdResult r = run("replay --json --reps 1 " + quote(good) + " " + quote(bad) + " " + quote(good));
  EXPECT_EQ(r.status, 1) << r.err;
  // The bad trace is named with its position; both good ones are reported, one JSON object per line.
  EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("events[1]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("byte 26"), std::string::npos) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["trace"], good);
    EXPECT_EQ(j["peak_live_bytes"], 4194304);
    EXPECT_TRUE(j["driver_calls"].is_object());
    ++n;
  }
  EXPECT_EQ(n, 2);
}

TEST_F(Cli, TextReportAndOptions) {
  std::string good = testing_util::write_file("good.json", kGood);
  CmdResult r = run("replay --reps=0 --granularity 4M --capacity=1G --no-stitch " + quote(good));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("peak physical"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("granularity 4.00 MiB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("stitching off"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "") << "no progress line when stderr is not a terminal";
  r = run("replay --reps=0 --passes 3 " + quote(good));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("pass 2 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pass 3 "), std::string::npos) << r.out;
  // --from: the free at 10 us only, its block set up first.
  r = run("replay --reps 0 --from 0.00001 " + quote(good));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("good (from t = 0.000 s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 blocks live at start"), std::string::npos) << r.out;
  r = run("replay --reps 0 --from 1 " + quote(good));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("after its last event"), std::string::npos) << r.err;
}

TEST_F(Cli, MissingFile) {
  CmdResult r = run("replay /nonexistent/x.json.gz");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("/nonexistent/x.json.gz"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace glake::tracer
