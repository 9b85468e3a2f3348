// tests/tracer/test_gpu_torch_trace.cpp: a real trace recorded on the GPU under PyTorch through the
// shim (GLAKE_TRACE=... python train.py), tests/data/gpu-torch-trace.json.gz, opened with every
// glake-trace subcommand. Recorded on the lent H100 by tests/gpu/torch/record_test_data.py. What it checks holds for any real trace: it reads, it is in glake's format with pool events,
// every subcommand succeeds on it, and the replay's live peak equals the trace's.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/tracer/cli_test_util.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {
namespace {

using namespace testing_util;

std::string gpu_trace() { return env_dir("GLAKE_TEST_DATA", "tests/data") + "/gpu-torch-trace.json.gz"; }

class GpuTorchTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(gpu_trace())) GTEST_SKIP() << gpu_trace() << " is absent (recorded on the GPU, added later)";
    if (trace_bin() == nullptr) GTEST_SKIP() << "GLAKE_TRACE_BIN not set";
  }
};

TEST_F(GpuTorchTrace, Reads) {
  Trace t = read_trace(gpu_trace());
  EXPECT_EQ(t.format, "glake-trace");
  EXPECT_GT(t.allocs, 0u);
  EXPECT_TRUE(t.peak_physical_bytes.has_value()) << "the shim's pool records create/release";
}

TEST_F(GpuTorchTrace, EverySubcommand) {
  const std::string q = quote(gpu_trace());
  CmdResult r = glake_trace("summary " + q);
  EXPECT_EQ(r.status, 0) << r.err;
  r = glake_trace("summary --json " + q);
  ASSERT_EQ(r.status, 0) << r.err;
  auto s = nlohmann::json::parse(r.out);
  r = glake_trace("replay --json --reps 1 " + q);
  ASSERT_EQ(r.status, 0) << r.err;
  auto p = nlohmann::json::parse(r.out);
  EXPECT_EQ(p["peak_live_bytes"], s["peak_live_bytes"]);
  r = glake_trace("export --chrome " + q + " -o " + quote(temp_path("gpu.chrome.json")));
  EXPECT_EQ(r.status, 0) << r.err;
  r = glake_trace("report " + q + " -o " + quote(temp_path("gpu.html")));
  EXPECT_EQ(r.status, 0) << r.err;
}

// A real PyTorch memory snapshot of the same job run natively on the H100
// (tests/gpu/torch/record_test_data.py): import --torch makes a trace that replays.
TEST_F(GpuTorchTrace, ImportsARealTorchSnapshot) {
  const std::string snap = env_dir("GLAKE_TEST_DATA", "tests/data") + "/torch-snapshot.pickle.gz";
  if (!file_exists(snap)) GTEST_SKIP() << snap << " is absent";
  const std::string out = temp_path("snap.json.gz");
  CmdResult r = glake_trace("import --torch " + quote(snap) + " -o " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  r = glake_trace("replay --json --reps 1 " + quote(out));
  ASSERT_EQ(r.status, 0) << r.err;
  auto p = nlohmann::json::parse(r.out);
  EXPECT_GT(p["peak_live_bytes"].get<double>(), 100e6);
  EXPECT_GE(p["peak_physical_bytes"].get<double>(), p["peak_live_bytes"].get<double>());
}

}  // namespace
}  // namespace glake::tracer
