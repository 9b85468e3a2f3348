// tests/shim/test_process.cpp: process life under the preload, and what only separate processes show:
// settings (bad values fall back to passing through, with one line), fork (with and without CUDA in
// the parent, and while other threads allocate), exit after the driver's teardown, subprocesses that
// never touch CUDA, IPC of glake memory between processes, PyTorch's allocator selection, GLAKE_TRACE
// and scripts/glake-run.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "shim_test.h"
#include "driver_proc.h"
#include "tracer/trace_reader.h"

using namespace glake_test;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

std::string hex(const void* data, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<const unsigned char*>(data)[i];
    s += digits[c >> 4];
    s += digits[c & 15];
  }
  return s;
}

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

class Process : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    ASSERT_FALSE(helper().empty()) << "GLAKE_TEST_HELPER is not set";
    CUDA_OK(cudaSetDevice(0));
  }
};

// ---- settings --------------------------------------------------------------------------------------

TEST_F(Process, ABadValueGivesOneLineAndPassesThrough) {
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_LIMIT", "12XB"}});
  EXPECT_EQ(0, r.status) << r.err;
  const auto lines = glake_lines(r.err);
  ASSERT_EQ(1u, lines.size()) << r.err;
  EXPECT_TRUE(has(lines[0], "GLAKE_LIMIT='12XB'")) << lines[0];
  EXPECT_TRUE(has(lines[0], "pass through")) << lines[0];
  EXPECT_TRUE(has(r.out, "malloc=0\nowns=0\nstatus=2\n")) << r.out;
  EXPECT_TRUE(has(r.out, "free=0")) << r.out;
}

TEST_F(Process, SeveralBadValuesStillGiveOneLine) {
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_STITCH", "maybe"}, {"GLAKE_SMALL_LIMIT", "-3"},
                                          {"GLAKE_TRACE", "/nonexistent-dir/trace.json"}});
  EXPECT_EQ(0, r.status) << r.err;
  const auto lines = glake_lines(r.err);
  ASSERT_EQ(1u, lines.size()) << r.err;
  EXPECT_TRUE(has(lines[0], "GLAKE_STITCH") && has(lines[0], "GLAKE_SMALL_LIMIT") && has(lines[0], "GLAKE_TRACE"))
      << lines[0];
  EXPECT_TRUE(has(r.out, "owns=0")) << r.out;
}

// A GLAKE_TRACE naming a directory (in a writable one) passed the check of the setting, and the trace
// was lost at exit (a file cannot be renamed over a directory): it is a bad value now, as a path in an
// unwritable directory is.
TEST_F(Process, ATracePathThatIsADirectoryIsABadValue) {
  const std::string dir = "/tmp/glake-shim-trace-dir-" + std::to_string(getpid());
  ASSERT_EQ(0, ::mkdir(dir.c_str(), 0700));
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_TRACE", dir}});
  ::rmdir(dir.c_str());
  EXPECT_EQ(0, r.status) << r.err;
  const auto lines = glake_lines(r.err);
  ASSERT_EQ(1u, lines.size()) << r.err;
  EXPECT_TRUE(has(lines[0], "GLAKE_TRACE='" + dir + "'") && has(lines[0], "is a directory")) << lines[0];
  EXPECT_TRUE(has(r.out, "owns=0")) << r.out;
}

TEST_F(Process, DisableSwitchPassesEverythingThroughSilently) {
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_DISABLE", "1"}});
  EXPECT_EQ(0, r.status);
  EXPECT_TRUE(glake_lines(r.err).empty()) << r.err;
  EXPECT_TRUE(has(r.out, "owns=0\nstatus=2\n")) << r.out;
}

TEST_F(Process, VerboseSaysWhatItMade) {
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_VERBOSE", "1"}});
  EXPECT_EQ(0, r.status);
  EXPECT_TRUE(has(r.err, "glake: device 0: pool on")) << r.err;
  EXPECT_TRUE(has(r.out, "owns=1\nstatus=1\n")) << r.out;
}

TEST_F(Process, ASubprocessThatNeverTouchesCudaPaysNothing) {
  // Not even a bad setting is read: nothing of glake's runs before a CUDA call.
  const Outcome r = run({helper(), "no-cuda"}, {{"GLAKE_LIMIT", "nonsense"}});
  EXPECT_EQ(0, r.status);
  EXPECT_TRUE(glake_lines(r.err).empty()) << r.err;
  EXPECT_TRUE(has(r.out, "status=0\ndriver_loaded=0\n")) << r.out;
}

// ---- PyTorch's allocator choice ---------------------------------------------------------------------

// Python under the preload (as with PyTorch): the C++ unwinder and backtrace() that its libraries get
// are the system's (libgcc_s, libc). A libunwind linked into libglake.so came before libgcc_s in that
// scope and took over every C++ exception thrown in the process.
TEST_F(Process, ThePreloadLeavesTheHostsUnwinderAlone) {
  const char* probe = R"(
import ctypes
libc = ctypes.CDLL(None)
class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
print("glake", hasattr(libc, "glake_status"))
for name in ("_Unwind_RaiseException", "_Unwind_Resume", "_Unwind_Backtrace", "backtrace"):
    info = DlInfo()
    libc.dladdr(ctypes.cast(getattr(libc, name), ctypes.c_void_p).value, ctypes.byref(info))
    print(name, info.fname.decode())
)";
  const Outcome r = run({"/usr/bin/env", "python3", "-c", probe});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "glake True")) << "libglake.so is not preloaded: " << r.out;
  EXPECT_TRUE(has(r.out, "_Unwind_RaiseException /")) << r.out;
  EXPECT_FALSE(has(r.out, "libunwind")) << r.out;
}

// Python under the preload again: libglake.so loads no C++ runtime of its own (libstdc++, fmt) into
// the host. Had it one, the system's libstdc++.so.6 would be loaded before the newer one that a conda
// environment's PyTorch needs, and `import torch` would fail on a missing GLIBCXX version. (Python
// itself is not a C++ program: nothing else here maps them.)
TEST_F(Process, ThePreloadBringsNoCxxRuntime) {
  const char* probe = R"(
import ctypes
print("glake", hasattr(ctypes.CDLL(None), "glake_status"))
for line in open("/proc/self/maps"):
    if "libstdc++" in line or "libfmt" in line:
        print("mapped", line.split()[-1])
)";
  const Outcome r = run({"/usr/bin/env", "python3", "-c", probe});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "glake True")) << "libglake.so is not preloaded: " << r.out;
  EXPECT_FALSE(has(r.out, "mapped")) << r.out;
  // And by what the library asks the loader for (binutils' readelf, which the compiler brings).
  const char* lib = std::getenv("GLAKE_LIB");
  ASSERT_NE(nullptr, lib);
  const Outcome needed = run({"/usr/bin/env", "readelf", "-d", lib});
  ASSERT_EQ(needed.status, 0) << needed.err;
  EXPECT_TRUE(has(needed.out, "(NEEDED)")) << needed.out;
  EXPECT_FALSE(has(needed.out, "libstdc++") || has(needed.out, "libfmt")) << needed.out;
}

TEST_F(Process, PyTorchIsPointedAtCudaMallocAsync) {
  Outcome r = run({helper(), "no-cuda"}, {}, {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  // Options of no particular backend get the backend added.
  r = run({helper(), "no-cuda"}, {{"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True"}},
          {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)")) << r.out;
}

// The backend is appended to what the user wrote: a value PyTorch accepts must stay one it accepts.
// "k:v," and " " are valid (PyTorch's tokenizer skips spaces and one trailing comma), but "k:v,,backend:.."
// and " ,backend:.." start a key with ',' ("Unrecognized key ','" / "Unrecognized CachingAllocator
// option: ,"), so PyTorch failed at its first CUDA allocation.
TEST_F(Process, PyTorchConfWithATrailingCommaOrOnlySpacesStaysValid) {
  Outcome r = run({helper(), "no-cuda"}, {{"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True,"}},
                  {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
  r = run({helper(), "no-cuda"}, {{"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True , "}},
          {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
  r = run({helper(), "no-cuda"}, {{"PYTORCH_CUDA_ALLOC_CONF", " "}}, {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
}

// PyTorch versions differ in which variable they read first (2.9: PYTORCH_ALLOC_CONF; later ones:
// PYTORCH_CUDA_ALLOC_CONF): with both set, a choice in either is kept, and otherwise each gets the backend.
TEST_F(Process, PyTorchsTwoVariablesAreReadAlike) {
  Outcome r = run({helper(), "no-cuda"},
                  {{"PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"},
                   {"PYTORCH_ALLOC_CONF", "pinned_use_cuda_host_register:True"}},
                  {"GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=pinned_use_cuda_host_register:True\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n")) << r.out;
  r = run({helper(), "no-cuda"},
          {{"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True"},
           {"PYTORCH_ALLOC_CONF", "pinned_num_register_threads:4"}},
          {"GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=pinned_num_register_threads:4,backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
}

// A variable set but empty is set for PyTorch: a version that reads it first stops there and takes the
// native allocator, so it gets the backend as the other, non-empty one does.
TEST_F(Process, PyTorchsEmptyButSetVariableGetsTheBackendToo) {
  Outcome r = run({helper(), "no-cuda"},
                  {{"PYTORCH_ALLOC_CONF", ""}, {"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True"}},
                  {"GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
  r = run({helper(), "no-cuda"}, {{"PYTORCH_ALLOC_CONF", "pinned_num_register_threads:4"}, {"PYTORCH_CUDA_ALLOC_CONF", ""}},
          {"GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=pinned_num_register_threads:4,backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
}

// backend:cudaMallocAsync in one variable is no choice against glake: the other one, set without a
// backend (empty, or options of no particular backend), is what a PyTorch version that reads it first
// goes by, and it stayed as it was, so that version ran the native allocator.
TEST_F(Process, PyTorchsCudaMallocAsyncInOneVariableReachesTheOther) {
  Outcome r = run({helper(), "no-cuda"},
                  {{"PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync"}, {"PYTORCH_ALLOC_CONF", ""}},
                  {"GLAKE_PYTORCH", "GLAKE_PYTORCH_SET"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  r = run({helper(), "no-cuda"},
          {{"PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync"},
           {"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True"}},
          {"GLAKE_PYTORCH", "GLAKE_PYTORCH_SET"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\n")) << r.out;
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True,backend:cudaMallocAsync\n"))
      << r.out;
  // Unset stays unset; a native choice in the other one is the user's, and both stay as they are.
  r = run({helper(), "no-cuda"}, {{"PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync"}},
          {"PYTORCH_CUDA_ALLOC_CONF", "GLAKE_PYTORCH", "GLAKE_PYTORCH_SET"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out;
  r = run({helper(), "no-cuda"},
          {{"PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync"}, {"PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128"}},
          {"GLAKE_PYTORCH", "GLAKE_PYTORCH_SET"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\nPYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128\n"))
      << r.out;
}

// The choice is written into the environment, which children inherit: a script run under the preload
// (glake-run -- ./train.sh) got glake's values in both variables at its start, and a choice it then
// made in one of them (export PYTORCH_CUDA_ALLOC_CONF=backend:native, as the README advises for
// torch.compile's CUDA graphs; expandable_segments:True; GLAKE_PYTORCH=0) lost to glake's value left in
// the other, which PyTorch 2.9 reads first: its Python ran PyTorch's cudaMallocAsync backend anyway.
TEST_F(Process, AScriptsOwnChoiceIsNotOverriddenByWhatGlakeSetInItsShell) {
  const std::vector<std::string> unset = {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "GLAKE_PYTORCH",
                                          "GLAKE_PYTORCH_SET"};
  auto script = [&](const std::string& line) { return run({"/bin/sh", "-c", line + " exec \"$0\" no-cuda", helper()}, {}, unset); };
  Outcome r = script("");  // the shell's choice stands in its child
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:cudaMallocAsync\nPYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync\n"))
      << r.out << r.err;
  r = script("PYTORCH_CUDA_ALLOC_CONF=backend:native");
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=backend:native\n")) << r.out << r.err;
  r = script("PYTORCH_ALLOC_CONF=expandable_segments:True");
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=expandable_segments:True\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n"))
      << r.out << r.err;
  r = script("GLAKE_PYTORCH=0");
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out << r.err;
  // Options of the user's that got the backend in the shell: a later native choice gets them back as written.
  r = run({"/bin/sh", "-c", "PYTORCH_ALLOC_CONF=max_split_size_mb:128 exec \"$0\" no-cuda", helper()},
          {{"PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:True"}},
          {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH", "GLAKE_PYTORCH_SET"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=max_split_size_mb:128\nPYTORCH_CUDA_ALLOC_CONF=pinned_use_cuda_host_register:True\n"))
      << r.out << r.err;
}

// A negative byte count behind a space is a bad value like "-1": one line, and glake passes through.
TEST_F(Process, ANegativeByteCountBehindASpaceIsABadValue) {
  for (const char* var : {"GLAKE_LIMIT", "GLAKE_VA_RESERVE"}) {
    const Outcome r = run({helper(), "alloc"}, {{var, " -1"}});
    EXPECT_EQ(0, r.status) << var << ": " << r.out << r.err;
    const auto lines = glake_lines(r.err);
    ASSERT_EQ(1u, lines.size()) << var << ": " << r.err;
    EXPECT_TRUE(has(lines[0], std::string(var) + "=' -1'")) << lines[0];
    EXPECT_TRUE(has(r.out, "malloc=0\nowns=0\nstatus=2\n")) << var << ": " << r.out;
  }
}

// An empty GLAKE_* value is unset, for the pool's variables as for GLAKE_DISABLE, GLAKE_TRACE and the
// rest (a script's GLAKE_LIMIT=${LIMIT:-}): glake serves, silently.
TEST_F(Process, AnEmptyValueIsUnset) {
  for (const char* var : {"GLAKE_LIMIT", "GLAKE_SMALL_LIMIT", "GLAKE_VA_RESERVE", "GLAKE_MAX_CREATE", "GLAKE_STITCH",
                          "GLAKE_LEND", "GLAKE_DISABLE", "GLAKE_TRACE"}) {
    const Outcome r = run({helper(), "alloc"}, {{var, ""}});
    EXPECT_EQ(0, r.status) << var << ": " << r.out << r.err;
    EXPECT_TRUE(glake_lines(r.err).empty()) << var << ": " << r.err;
    EXPECT_TRUE(has(r.out, "malloc=0\nowns=1\nstatus=1\n")) << var << ": " << r.out;
  }
}

TEST_F(Process, PyTorchOptOutAndUserChoicesAreKept) {
  Outcome r = run({helper(), "no-cuda"}, {{"GLAKE_PYTORCH", "0"}}, {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out;
  r = run({helper(), "no-cuda"}, {{"PYTORCH_ALLOC_CONF", "backend:native"}}, {"PYTORCH_CUDA_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=backend:native\n")) << r.out;
  r = run({helper(), "no-cuda"}, {{"PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128"}},
          {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128\n")) << r.out;
  EXPECT_TRUE(glake_lines(r.err).empty()) << "said something without a CUDA call: " << r.err;
}

// glake that will pass every call through leaves PyTorch's allocator as it is: disabled, or off for a
// bad GLAKE_* value (GLAKE_PYTORCH's own included).
TEST_F(Process, GlakeOffLeavesPyTorchsAllocatorAlone) {
  const std::vector<std::string> unset = {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "GLAKE_PYTORCH"};
  Outcome r = run({helper(), "no-cuda"}, {{"GLAKE_DISABLE", "1"}}, unset);
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out;
  r = run({helper(), "env"}, {{"GLAKE_LIMIT", "12XB"}}, unset);
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out;
  EXPECT_TRUE(has(r.out, "owns=0")) << r.out;
  r = run({helper(), "env"}, {{"GLAKE_PYTORCH", "OFF"}}, {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"});
  EXPECT_TRUE(has(r.out, "PYTORCH_ALLOC_CONF=(unset)\nPYTORCH_CUDA_ALLOC_CONF=(unset)\n")) << r.out;
}

TEST_F(Process, ExpandableSegmentsAreKeptAndExplainedOnce) {
  const Outcome r = run({helper(), "env"}, {{"PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"}},
                    {"PYTORCH_ALLOC_CONF", "GLAKE_PYTORCH"});
  EXPECT_EQ(0, r.status);
  EXPECT_TRUE(has(r.out, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n")) << r.out;
  const auto lines = glake_lines(r.err);
  ASSERT_EQ(1u, lines.size()) << r.err;
  EXPECT_TRUE(has(lines[0], "expandable_segments")) << lines[0];
  EXPECT_TRUE(has(r.out, "owns=1")) << "glake still serves cudaMalloc: " << r.out;
}

// ---- fork ---------------------------------------------------------------------------------------------

TEST_F(Process, AChildOfAParentThatUsedCudaIsUnaffectedWithoutCuda) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    std::vector<int> v(1000, 1);  // ordinary work
    int code = v[999] == 1 ? 0 : 1;
    if (api().status() != GLAKE_STATUS_OFF) code = 2;
    glake_stats_t s;
    if (api().stats(0, &s, sizeof s) != -1) code = 3;
    // CUDA in such a child fails, as without glake: an error, not a crash or a hang.
    void* q = nullptr;
    if (cudaMalloc(&q, MiB) == cudaSuccess) code = 4;
    _exit(code);
  }
  int st = 0;
  ASSERT_EQ(pid, waitpid(pid, &st, 0));
  ASSERT_TRUE(WIFEXITED(st)) << "signal " << WTERMSIG(st);
  EXPECT_EQ(0, WEXITSTATUS(st));
  EXPECT_TRUE(owns(p));
  CUDA_OK(cudaFree(p));
}

// A fork while another thread makes glake's first pool (after the driver is initialised, before the
// pool is published): the child must find glake off, as a child of a process with a pool does; it
// stayed on and could reach the parent's half-published pool.
TEST_F(Process, AForkWhileAPoolIsMadeLeavesTheChildOff) {
  const Outcome r = run({helper(), "fork-while-creating"}, {{"GLAKE_STANDIN_STREAM_DELAY_US", "400000"}});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "child_status=2\n")) << r.out << r.err;
}

// glake's set-up of a device's pool makes the runtime see the device as used (cudaFree(nullptr)), which
// CUDA refuses, invalidating the capture, from a thread in the global mode while another thread
// captures in it (measured on an H100, tests/gpu/probe_capture_neighbours).
TEST_F(Process, APoolMadeDuringAnotherThreadsCaptureLeavesTheCaptureIntact) {
  const Outcome r = run({helper(), "first-alloc-during-capture"});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "alloc=0\nowns=1\nend=0\n")) << r.out << r.err;
}

TEST_F(Process, AChildForkedBeforeAnyCudaCallUsesGlake) {
  const Outcome r = run({helper(), "fork-first"});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "child=0")) << r.out;
}

// A child forked after glake started (GLAKE_TRACE's session made) but before its parent had a pool keeps
// glake on and makes pools of its own: it recorded into the parent's session, which writes only in the
// parent, and its events were lost without a word. It writes its own trace ("%p": its own id).
TEST_F(Process, AChildForkedAfterStartBeforeAPoolWritesItsOwnTrace) {
  const std::string base = "/tmp/glake-shim-forktrace-" + std::to_string(getpid()) + "-";
  const Outcome r = run({helper(), "fork-after-start"}, {{"GLAKE_TRACE", base + "%p.json"}, {"GLAKE_TRACE_QUIET", "1"}});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  ASSERT_TRUE(has(r.out, "status=1\n")) << "glake did not start before the fork: " << r.out;
  ASSERT_TRUE(has(r.out, "child=0\n")) << r.out << r.err;
  const auto at = r.out.find("child_pid=");
  ASSERT_NE(std::string::npos, at) << r.out;
  const int child = std::atoi(r.out.c_str() + at + 10);
  const std::string path = base + std::to_string(child) + ".json";
  try {
    const glake::tracer::Trace t = glake::tracer::read_trace(path);
    EXPECT_EQ(1u, t.allocs);
    EXPECT_EQ(1u, t.frees);
    EXPECT_EQ(3 * MiB, t.peak_live_bytes);
    EXPECT_NE(std::string::npos, t.meta.json.find("\"pid\":" + std::to_string(child))) << t.meta.json;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "the child's trace: " << e.what() << "\n" << r.err;
  }
  std::remove(path.c_str());
  if (DIR* d = opendir("/tmp")) {  // the parent's (no events)
    const std::string prefix = base.substr(5);
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind(prefix, 0) == 0) std::remove((std::string("/tmp/") + e->d_name).c_str());
    closedir(d);
  }
}

TEST_F(Process, ForkWhileOtherThreadsAllocateLeavesNoLockHeld) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      cudaSetDevice(0);
      cudaStream_t s = nullptr;
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
      while (!stop.load()) {
        void* p = nullptr;
        if (cudaMallocAsync(&p, (t + 1) * 300000, s) == cudaSuccess) cudaFreeAsync(p, s);
        void* q = nullptr;
        if (cudaMalloc(&q, 4 * MiB) == cudaSuccess) cudaFree(q);
      }
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    });
  }
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(20);  // a lock left held would hang here; the alarm turns it into a failure
      (void)api().status();
      glake_stats_t s;
      (void)api().stats(0, &s, sizeof s);
      void* q = nullptr;
      (void)cudaMalloc(&q, MiB);
      (void)cudaGetLastError();
      void* h = std::malloc(1000);
      std::free(h);
      _exit(0);
    }
    int st = 0;
    ASSERT_EQ(pid, waitpid(pid, &st, 0));
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child " << i << ": status " << st;
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ("", validate(0));
}

// ---- exit -------------------------------------------------------------------------------------------

TEST_F(Process, FreesAfterTheDriversTeardownAtExitAreHarmless) {
  const Outcome r = run({helper(), "exit-free"});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_TRUE(has(r.out, "owns=1")) << r.out;
  EXPECT_TRUE(has(r.err, "exit-free: cudaFree=0 cudaFreeAsync=0")) << r.err;
}

// ---- thread exit --------------------------------------------------------------------------------------

// glake ends a capture of a thread's own stream at the thread's exit through a pthread key made at the
// first such capture. With every key of the process taken it gets none: its begin must then set no
// key at all (the unmade key's variable reads 0, another library's key, whose destructor would get
// glake's value at the thread's exit).
TEST_F(Process, ACaptureOfAThreadsStreamWithNoKeyLeftSetsNoOtherLibrarysKey) {
  const Outcome r = run({helper(), "keys-taken"});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_TRUE(has(r.out, "begin=0\nend=0\nchanged=0\n")) << r.out;
}

// ---- IPC ----------------------------------------------------------------------------------------------

void ipc_roundtrip(std::size_t n, int seed) {
  void* p = nullptr;
  const std::uint64_t creates = stats().creates;
  CUDA_OK(cudaMalloc(&p, n));
  ASSERT_TRUE(owns(p));
  // Under GLAKE_MAX_CREATE=4M (shim_process_ipc_4m) a block of 4 granules lies on 2 allocations of 2.
  if (std::getenv("GLAKE_MAX_CREATE") != nullptr && n > 4 * MiB) {
    EXPECT_EQ(stats().creates - creates, 2u);
  }
  std::vector<unsigned char> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<unsigned char>(seed + i * 13);
  CUDA_OK(cudaMemcpy(p, data.data(), n, cudaMemcpyHostToDevice));
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  const Outcome r = run({helper(), "ipc-import", hex(&h, sizeof h), std::to_string(n), std::to_string(seed)});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\n")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "other_device_open=0\nother_device_own_mapping=1\nclose=0\n")) << r.out << r.err;
  unsigned char reply[4] = {};
  CUDA_OK(cudaMemcpy(reply, p, 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(0xde, reply[0]);
  EXPECT_EQ(0xef, reply[3]);
  CUDA_OK(cudaFree(p));
  // Freed: the handle names nothing any more.
  const Outcome gone = run({helper(), "ipc-import", hex(&h, sizeof h), std::to_string(n), std::to_string(seed)});
  EXPECT_TRUE(has(gone.out, "open=" + std::to_string(static_cast<int>(cudaErrorInvalidResourceHandle))))
      << gone.out << gone.err;
}

TEST_F(Process, IpcOfAMultiPageBlock) { ipc_roundtrip(6 * MiB + 123, 3); }

TEST_F(Process, IpcOfASmallBlockSharingAPage) { ipc_roundtrip(64 * 1024, 5); }

TEST_F(Process, IpcOfForeignMemoryIsTheRealRuntimes) {
  CUDA_OK(cudaFree(nullptr));
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, standin::raw_alloc(&d, MiB));
  void* p = reinterpret_cast<void*>(d);
  std::vector<unsigned char> data(MiB);
  for (std::size_t i = 0; i < MiB; ++i) data[i] = static_cast<unsigned char>(7 + i * 13);
  CUDA_OK(cudaMemcpy(p, data.data(), MiB, cudaMemcpyHostToDevice));
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  const Outcome r = run({helper(), "ipc-import", hex(&h, sizeof h), std::to_string(MiB), "7"});
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\n") && has(r.out, "close=0\n")) << r.out << r.err;
  CUDA_OK(cudaFree(p));
}

// An exporter that goes away (exits, is killed, or times out) while an importer waits for its answer:
// the importer gets an error, and closes no descriptor that is not its own. Before, a failed receive
// walked control data the kernel had not written: it closed descriptors left over from an earlier
// import's batch (other files of the process by now), or read past the buffer. The exporter here is
// a fake one of this process, speaking glake's wire format (shim/ipc.cpp, version 2).
namespace fake_exporter {

struct Wire {
  char magic[8];
  std::uint32_t version;
  std::int32_t pid;
  std::uint64_t nonce, base, id, size;
  std::int32_t device;
  std::uint32_t check;
};
struct Reply {
  std::int32_t status;
  std::uint32_t count;
  std::uint64_t bytes, offset, size;
  std::uint64_t sizes[64];
};

cudaIpcMemHandle_t handle(std::uint64_t nonce, std::size_t size) {
  Wire w{};
  std::memcpy(w.magic, "GLAKEIPC", 8);
  w.version = 2;
  w.pid = getpid();
  w.nonce = nonce;
  w.base = 0x1000000;
  w.id = 1;
  w.size = size;
  const auto* b = reinterpret_cast<const unsigned char*>(&w);
  std::uint32_t h = 2166136261u;
  for (std::size_t i = 0; i < offsetof(Wire, check); ++i) h = (h ^ b[i]) * 16777619u;
  w.check = h;
  cudaIpcMemHandle_t out{};
  std::memcpy(&out, &w, sizeof w);
  return out;
}

int listen_as(std::uint64_t nonce) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const int n = std::snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "glake-ipc-%d-%016llx", getpid(),
                              static_cast<unsigned long long>(nonce));
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(fd, 4) != 0) return -1;
  return fd;
}

bool send_fds(int conn, const Reply& r, const int* fds, std::size_t n) {  // n: 1 to 64
  iovec iov{const_cast<Reply*>(&r), sizeof r};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  return sendmsg(conn, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof r);
}

bool send_one(int conn, const Reply& r, int fd) { return send_fds(conn, r, &fd, 1); }

// Answers one request on lfd with `n` fresh pages of `page` bytes in one message, then waits for the
// importer to hang up: a successful import.
void answer_with_pages(int lfd, std::size_t page, int n) {
  const int conn = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
  if (conn < 0) return;
  char req[64];
  (void)recv(conn, req, sizeof req, 0);
  Reply r{};
  r.count = static_cast<std::uint32_t>(n);
  r.bytes = n * page;
  r.size = n * page;
  std::vector<int> mem;
  for (int i = 0; i < n; ++i) {
    mem.push_back(memfd_create("page", MFD_CLOEXEC));
    if (mem.back() < 0 || ftruncate(mem.back(), static_cast<off_t>(page)) != 0) break;
    r.sizes[i] = page;
  }
  if (mem.size() == static_cast<std::size_t>(n) && mem.back() >= 0) (void)send_fds(conn, r, mem.data(), mem.size());
  for (int fd : mem)
    if (fd >= 0) ::close(fd);
  char b;
  (void)recv(conn, &b, 1, 0);
  ::close(conn);
}

// Descriptors the process opened: each must still be open afterwards (then closed).
void expect_open(const std::vector<int>& fds) {
  for (int fd : fds) {
    EXPECT_NE(-1, fcntl(fd, F_GETFD)) << "descriptor " << fd << " was closed by cudaIpcOpenMemHandle";
    ::close(fd);
  }
}

}  // namespace fake_exporter

TEST_F(Process, IpcOfAnExporterThatGoesAwayBeforeAnsweringIsAnError) {
  using namespace fake_exporter;
  CUDA_OK(cudaFree(nullptr));
  const std::size_t page = 2 * MiB;  // the stand-in's granularity
  for (int round = 0; round < 5; ++round) {
    // A successful import first, whose last batch leaves its control data on the stack (from a fake
    // exporter too: this process's own handles are refused).
    const std::uint64_t ok_nonce = 0x0cc0000000000000ull + static_cast<std::uint64_t>(round);
    const int ok_fd = listen_as(ok_nonce);
    ASSERT_GE(ok_fd, 0);
    std::thread ok_exporter([&] { answer_with_pages(ok_fd, page, 3); });
    void* pa = nullptr;
    const cudaError_t ok = cudaIpcOpenMemHandle(&pa, handle(ok_nonce, 3 * page), cudaIpcMemLazyEnablePeerAccess);
    if (ok == cudaSuccess) {
      EXPECT_EQ(cudaSuccess, cudaIpcCloseMemHandle(pa));
    }
    ok_exporter.join();
    ::close(ok_fd);
    ASSERT_EQ(cudaSuccess, ok) << "round " << round;
    std::vector<int> mine;
    for (int i = 0; i < 16; ++i) mine.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
    const std::uint64_t nonce = 0x5550000000000000ull + static_cast<std::uint64_t>(round);
    const int lfd = listen_as(nonce);
    ASSERT_GE(lfd, 0);
    std::thread exporter([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ::close(lfd);  // never accepted: the queued connection is reset
    });
    void* p = nullptr;
    const cudaError_t e = cudaIpcOpenMemHandle(&p, handle(nonce, 2 * page), cudaIpcMemLazyEnablePeerAccess);
    exporter.join();
    EXPECT_EQ(cudaErrorInvalidResourceHandle, e) << "round " << round;
    expect_open(mine);
  }
}

TEST_F(Process, IpcOfAnExporterThatGoesAwayMidAnswerClosesOnlyWhatCame) {
  using namespace fake_exporter;
  CUDA_OK(cudaFree(nullptr));
  const std::size_t page = 2 * MiB;
  const std::uint64_t nonce = 0x1234567890abcdefull ^ static_cast<std::uint64_t>(getpid());
  const int lfd = listen_as(nonce);
  ASSERT_GE(lfd, 0);
  std::vector<int> mine;  // opened while the import is under way, under numbers it has just closed
  std::thread exporter([&] {
    const int conn = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    const int mem = memfd_create("page", MFD_CLOEXEC);
    if (conn < 0 || mem < 0 || ftruncate(mem, static_cast<off_t>(page)) != 0) return;
    Reply r{};
    r.count = 1;
    r.bytes = 2 * page;  // two pages: a second batch must follow
    r.size = 2 * page;
    r.sizes[0] = page;
    send_one(conn, r, mem);
    ::close(mem);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the importer maps it, closes its copy
    for (int i = 0; i < 32; ++i) mine.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
    ::close(conn);  // the request unread: the importer's next receive fails
  });
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, handle(nonce, 2 * page), cudaIpcMemLazyEnablePeerAccess);
  exporter.join();
  ::close(lfd);
  EXPECT_EQ(cudaErrorInvalidResourceHandle, e);
  ASSERT_EQ(32u, mine.size());
  expect_open(mine);
}

// CUDA: "If the memory handle has already been opened by the current context, the reference count on
// the handle is incremented by 1 and the existing device pointer is returned." Two threads that open
// the same handle at once must get the same pointer too, and close it once each (the fake exporter
// answers only once both have asked, so both opens are past the look-up of the open handles).
TEST_F(Process, IpcOpensOfOneHandleAtOnceShareOneMapping) {
  using namespace fake_exporter;
  CUDA_OK(cudaFree(nullptr));
  const std::size_t page = 2 * MiB;
  const std::uint64_t nonce = 0x0dd0000000000000ull ^ static_cast<std::uint64_t>(getpid());
  const int lfd = listen_as(nonce);
  ASSERT_GE(lfd, 0);
  std::thread exporter([&] {
    int conns[2] = {accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC), accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC)};
    const int mem = memfd_create("page", MFD_CLOEXEC);
    if (mem < 0 || ftruncate(mem, static_cast<off_t>(page)) != 0) return;
    Reply r{};
    r.count = 1;
    r.bytes = page;
    r.size = page;
    r.sizes[0] = page;
    for (int conn : conns) {
      if (conn < 0) continue;
      char req[64];
      (void)recv(conn, req, sizeof req, 0);
      send_one(conn, r, mem);
    }
    ::close(mem);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (int conn : conns) ::close(conn);
  });
  const cudaIpcMemHandle_t h = handle(nonce, page);
  void* p[2] = {};
  cudaError_t e[2] = {cudaErrorUnknown, cudaErrorUnknown};
  std::thread second([&] { e[1] = cudaIpcOpenMemHandle(&p[1], h, cudaIpcMemLazyEnablePeerAccess); });
  e[0] = cudaIpcOpenMemHandle(&p[0], h, cudaIpcMemLazyEnablePeerAccess);
  second.join();
  exporter.join();
  ::close(lfd);
  ASSERT_EQ(cudaSuccess, e[0]);
  ASSERT_EQ(cudaSuccess, e[1]);
  EXPECT_EQ(p[0], p[1]) << "two mappings of one handle in one context";
  // The program closes what it opened, once per open, with the pointer CUDA promises.
  EXPECT_EQ(cudaSuccess, cudaIpcCloseMemHandle(p[0]));
  EXPECT_EQ(cudaSuccess, cudaIpcCloseMemHandle(p[0]));
  if (p[0] != p[1]) (void)cudaIpcCloseMemHandle(p[1]);
  (void)cudaGetLastError();
}

// Starts the helper's ipc-export-exit mode (cmd) and reads the handle it prints; null if it printed none.
FILE* start_exporter(const std::string& cmd, cudaIpcMemHandle_t* h) {
  FILE* f = popen(cmd.c_str(), "r");
  if (f != nullptr) setvbuf(f, nullptr, _IONBF, 0);  // a later line stays in the pipe, for poll()
  char line[256] = {};
  if (f == nullptr || fgets(line, sizeof line, f) == nullptr || std::strlen(line) < 2 * sizeof *h) {
    if (f != nullptr) pclose(f);
    return nullptr;
  }
  for (std::size_t i = 0; i < sizeof *h; ++i) {
    unsigned v = 0;
    std::sscanf(line + 2 * i, "%2x", &v);
    reinterpret_cast<unsigned char*>(h)[i] = static_cast<unsigned char>(v);
  }
  return f;
}

// An exporter that is exiting answers with an error and no driver call: the driver may be torn down
// (glake's exit handler runs before it). The helper exports a block, exits, and lingers in an atexit
// handler of its own that runs after the driver's teardown.
TEST_F(Process, IpcOfAnExitingExporterMakesNoDriverCall) {
  const std::string cmd = helper() + " ipc-export-exit";
  cudaIpcMemHandle_t h;
  FILE* f = start_exporter(cmd, &h);
  ASSERT_NE(nullptr, f);
  char line[64] = {};  // the exporter's atexit handler says when it is past the driver's teardown
  pollfd pfd{fileno(f), POLLIN, 0};
  ASSERT_EQ(1, poll(&pfd, 1, 10000)) << "the exporter did not reach its exit in 10 s";
  ASSERT_NE(nullptr, fgets(line, sizeof line, f));
  ASSERT_STREQ("exiting\n", line);
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  pclose(f);
  // cudaErrorMapBufferObjectFailed: the exporter's server asked the torn-down driver for the pages.
  EXPECT_EQ(cudaErrorInvalidResourceHandle, e);
  if (e == cudaSuccess) (void)cudaIpcCloseMemHandle(p);
}

// The exporter begins to exit while its server is inside a batch's driver calls (the stand-in's export
// takes 1 s a page here, 2 s for the block's two; the exporter exits 1.5 s after printing its handle):
// glake's exit handler waits (at most 2 s) for that batch, so its calls finish before the driver's
// teardown and the importer gets the block. The importer has 1.5 s to ask, on a loaded machine too.
TEST_F(Process, IpcOfAnExporterExitingMidAnswerFinishesTheAnswer) {
  const std::string cmd = "GLAKE_STANDIN_EXPORT_DELAY_US=1000000 " + helper() + " ipc-export-exit 1500";
  cudaIpcMemHandle_t h;
  FILE* f = start_exporter(cmd, &h);
  ASSERT_NE(nullptr, f);
  // At once (within the 1.5 s): the exporter then exits while its server waits on the slow export.
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  pclose(f);
  // cudaErrorMapBufferObjectFailed: the batch's export ran into the driver's teardown.
  EXPECT_EQ(cudaSuccess, e);
  if (e == cudaSuccess) {
    EXPECT_EQ(cudaSuccess, cudaIpcCloseMemHandle(p));
  }
}

// The driver's IPC calls, found through cuGetProcAddress as a program linked with the static runtime
// finds them (NCCL's, which shares cudaMalloc buffers this way when NCCL_CUMEM_ENABLE=0): glake's
// blocks are exported and opened as through the runtime, foreign memory by the real driver.
TEST_F(Process, IpcThroughTheDriver) {
  const auto get = driver_proc<decltype(&cuIpcGetMemHandle)>("cuIpcGetMemHandle");
  ASSERT_NE(nullptr, get);
  const std::size_t n = 3 * MiB + 4096;
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, n));
  ASSERT_TRUE(owns(p));
  std::vector<unsigned char> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<unsigned char>(9 + i * 13);
  CUDA_OK(cudaMemcpy(p, data.data(), n, cudaMemcpyHostToDevice));
  CUipcMemHandle h;
  ASSERT_EQ(CUDA_SUCCESS, get(&h, reinterpret_cast<CUdeviceptr>(p)));
  Outcome r = run({helper(), "cu-ipc-import", hex(&h, sizeof h), std::to_string(n), "9"});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\nclose=0\n")) << r.out << r.err;
  unsigned char reply[4] = {};
  CUDA_OK(cudaMemcpy(reply, p, 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(0xde, reply[0]);
  EXPECT_EQ(0xef, reply[3]);
  // The runtime names the same export with the same 64 bytes.
  cudaIpcMemHandle_t rh;
  CUDA_OK(cudaIpcGetMemHandle(&rh, p));
  EXPECT_EQ(0, std::memcmp(&rh, &h, sizeof h));
  CUDA_OK(cudaFree(p));
  r = run({helper(), "cu-ipc-import", hex(&h, sizeof h), std::to_string(n), "9"});
  EXPECT_TRUE(has(r.out, "open=" + std::to_string(static_cast<int>(CUDA_ERROR_INVALID_HANDLE)))) << r.out << r.err;
  // Foreign memory: the real driver's legacy IPC.
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, standin::raw_alloc(&d, MiB));
  CUDA_OK(cudaMemcpy(reinterpret_cast<void*>(d), data.data(), MiB, cudaMemcpyHostToDevice));
  ASSERT_EQ(CUDA_SUCCESS, get(&h, d));
  r = run({helper(), "cu-ipc-import", hex(&h, sizeof h), std::to_string(MiB), "9"});
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\nclose=0\n")) << r.out << r.err;
  CUDA_OK(cudaFree(reinterpret_cast<void*>(d)));
}

// CUDA refuses to open a handle in the process that exported it: the runtime with
// cudaErrorDeviceUninitialized, the driver with CUDA_ERROR_INVALID_CONTEXT (both 201; measured on an
// H100, CUDA 13, driver 580). glake mapped the block a second time. A child forked after the export
// has a pid of its own: it is not refused as the exporter (it gets what CUDA gives such a child).
TEST_F(Process, IpcOfAHandleInTheProcessThatExportedItIsRefused) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 3 * MiB));
  ASSERT_TRUE(owns(p));
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  void* q = nullptr;
  EXPECT_EQ(cudaErrorDeviceUninitialized, cudaIpcOpenMemHandle(&q, h, cudaIpcMemLazyEnablePeerAccess));
  EXPECT_EQ(cudaErrorDeviceUninitialized, cudaGetLastError());
  EXPECT_EQ(nullptr, q);
  if (q != nullptr) (void)cudaIpcCloseMemHandle(q);
  const auto open = driver_proc<decltype(&cuIpcOpenMemHandle_v2)>("cuIpcOpenMemHandle");
  ASSERT_NE(nullptr, open);
  CUipcMemHandle ch;
  std::memcpy(&ch, &h, sizeof ch);
  CUdeviceptr d = 0;
  EXPECT_EQ(CUDA_ERROR_INVALID_CONTEXT, open(&d, ch, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
  if (d != 0) (void)cudaIpcCloseMemHandle(reinterpret_cast<void*>(d));
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    void* c = nullptr;
    const cudaError_t e = cudaIpcOpenMemHandle(&c, h, cudaIpcMemLazyEnablePeerAccess);
    _exit(e == cudaErrorDeviceUninitialized ? 1 : 0);
  }
  int st = 0;
  ASSERT_EQ(pid, waitpid(pid, &st, 0));
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the child was refused as the exporter: status " << st;
  // Still exported: another process opens it.
  const unsigned char head[4] = {5, 5 + 13, 5 + 26, 5 + 39};
  CUDA_OK(cudaMemcpy(p, head, sizeof head, cudaMemcpyHostToDevice));
  const Outcome r = run({helper(), "ipc-import", hex(&h, sizeof h), "4", "5"});
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\n")) << r.out << r.err;
  CUDA_OK(cudaFree(p));
}

// The exporter frees the block and trims its pool while its server is between the check that the
// block is live and the export of its pages (the stand-in holds the server in its first export until
// the trim is done, or 1 s): the server exported handles the pool had given back to the driver (the
// importer got cudaErrorMapBufferObjectFailed; on CUDA a released handle, or one reused for another
// block). Now the check and the export are one step against trims: the trim waits, and the importer
// gets the block (freed under it: undefined, as with CUDA, but no released handle goes out).
namespace export_race {
struct Pause {
  std::mutex mu;
  std::condition_variable cv;
  bool exporting = false;
  bool trimmed = false;
};
void hold(void* arg) {
  auto* s = static_cast<Pause*>(arg);
  std::unique_lock lock(s->mu);
  s->exporting = true;
  s->cv.notify_all();
  s->cv.wait_for(lock, std::chrono::seconds(1), [&] { return s->trimmed; });
}
}  // namespace export_race

TEST_F(Process, IpcOfABlockFreedAndTrimmedMidExportSendsNoReleasedPage) {
  using namespace export_race;
  const std::size_t n = 4 * MiB;
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, n));
  ASSERT_TRUE(owns(p));
  std::vector<unsigned char> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<unsigned char>(11 + i * 13);
  CUDA_OK(cudaMemcpy(p, data.data(), n, cudaMemcpyHostToDevice));
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  Pause pause;
  standin::before_next_export(hold, &pause);
  Outcome r;
  std::thread importer([&] { r = run({helper(), "ipc-import", hex(&h, sizeof h), std::to_string(n), "11"}); });
  bool exporting;
  {
    std::unique_lock lock(pause.mu);
    exporting = pause.cv.wait_for(lock, std::chrono::seconds(20), [&] { return pause.exporting; });
  }
  const cudaError_t freed = cudaFree(p);
  EXPECT_EQ(0, api().trim(0, 0));
  {
    std::lock_guard lock(pause.mu);
    pause.trimmed = true;
  }
  pause.cv.notify_all();
  importer.join();
  standin::before_next_export(nullptr, nullptr);  // not reached: must not fire later
  ASSERT_TRUE(exporting) << "the exporter's server never exported: " << r.out << r.err;
  EXPECT_EQ(cudaSuccess, freed);
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "open=0\nwrong=0\n")) << r.out << r.err;
  EXPECT_EQ("", validate(0));
}

// ---- GLAKE_TRACE and glake-run ------------------------------------------------------------------------

TEST_F(Process, TraceFileIsATraceTheToolsRead) {
  // "%p" in the setting becomes the writing process's id.
  const std::string prefix = "glake-shim-trace-" + std::to_string(getpid()) + "-";
  const Outcome r = run({helper(), "alloc"}, {{"GLAKE_TRACE", "/tmp/" + prefix + "%p.json"}});
  EXPECT_EQ(0, r.status) << r.err;
  std::string path;
  if (DIR* d = opendir("/tmp")) {
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind(prefix, 0) == 0) path = std::string("/tmp/") + e->d_name;
    closedir(d);
  }
  ASSERT_FALSE(path.empty()) << "no trace file";
  EXPECT_EQ(std::string::npos, path.find("%p"));
  glake::tracer::Trace t;
  try {
    t = glake::tracer::read_trace(path);
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  EXPECT_GE(t.allocs, 1u);
  EXPECT_GE(t.frees, 1u);
  EXPECT_EQ(3 * MiB, t.peak_live_bytes);
  std::remove(path.c_str());
}

// LD_PRELOAD without libglake.so (a sanitizer's runtime, if any, stays: glake-run adds after it).
std::string preload_without_glake() {
  std::string out, item;
  std::string all = env_path("LD_PRELOAD") + " ";
  for (char c : all) {
    if (c != ' ' && c != ':') {
      item += c;
      continue;
    }
    if (!item.empty() && item.find("libglake") == std::string::npos) out += (out.empty() ? "" : " ") + item;
    item.clear();
  }
  return out;
}

// glake.h: cudaMemGetInfo / cuMemGetInfo report free "capped by GLAKE_LIMIT when one is set". Before
// the device's first allocation (no pool yet) the driver's free came back uncapped: a framework that
// sizes its caches from the first cudaMemGetInfo (vLLM's profile, TensorFlow's BFC) planned for the
// whole device and then ran out of memory at the limit.
TEST_F(Process, MemGetInfoIsCappedByTheLimitBeforeThePoolExists) {
  const Outcome r = run({helper(), "mem-info-limit"}, {{"GLAKE_LIMIT", "64M"}});
  ASSERT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "before=64\ncu_before=64\n")) << r.out;
  EXPECT_TRUE(has(r.out, "after=64\ncu_after=64\n")) << r.out;
  EXPECT_FALSE(has(r.out, "total=64\n")) << "total is the driver's: " << r.out;
}

TEST_F(Process, OutOfMemoryLeavesASnapshotAndTheTraceCanBeWrittenOnRequest) {
  const std::string base = "/tmp/glake-shim-oom-" + std::to_string(getpid());
  const Outcome r = run({helper(), "trace-oom", base + "-now.json"},
                        {{"GLAKE_TRACE", base + ".json"}, {"GLAKE_LIMIT", "64M"}, {"GLAKE_TRACE_QUIET", "1"}});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_TRUE(has(r.out, "first=0\nsecond=2\ndump=0\n")) << r.out << r.err;
  std::ifstream snapshot(base + ".oom.json");
  EXPECT_TRUE(snapshot.good()) << "no out-of-memory snapshot at " << base << ".oom.json";
  for (const std::string& path : {base + "-now.json", base + ".json"}) {
    try {
      const glake::tracer::Trace t = glake::tracer::read_trace(path);
      EXPECT_GE(t.allocs, 1u) << path;
    } catch (const std::exception& e) {
      ADD_FAILURE() << path << ": " << e.what();
    }
    std::remove(path.c_str());
  }
  std::remove((base + ".oom.json").c_str());
}

// A job ended by SIGTERM (a scheduler's) lost its whole trace: the trace is written, then the job
// still ends by the signal.
TEST_F(Process, SigtermWritesTheTraceAndStillEndsTheJob) {
  const std::string path = "/tmp/glake-shim-term-" + std::to_string(getpid()) + ".json";
  std::remove(path.c_str());
  const Outcome r = run({helper(), "trace-sigterm"}, {{"GLAKE_TRACE", path}});
  EXPECT_EQ(128 + SIGTERM, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "owns=1")) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "glake: trace written to " + path)) << r.err;
  try {
    const glake::tracer::Trace t = glake::tracer::read_trace(path);
    EXPECT_EQ(1u, t.allocs);
    EXPECT_EQ(3 * MiB, t.peak_live_bytes);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  std::remove(path.c_str());
}

// GLAKE_TRACE_STACKS=1: a trace written before exit (glake_trace_dump, a USR2, an out-of-memory) made
// the symboliser's note of which object is glake's own, a static destroyed before the at-exit writer
// ran: the at-exit trace then kept glake's frames (the hook, the router) at the top of every stack
// first seen after that write.
TEST_F(Process, StacksAtExitAfterAnEarlierWriteStartAtTheCaller) {
  const std::string base = "/tmp/glake-shim-stacks-" + std::to_string(getpid());
  const Outcome r = run({helper(), "trace-stacks", base + "-now.json"},
                        {{"GLAKE_TRACE", base + ".json"}, {"GLAKE_TRACE_STACKS", "1"}, {"GLAKE_TRACE_QUIET", "1"},
                         {"GLAKE_TRACE_SYMBOLS", "dladdr"}});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "owns=11")) << r.out << r.err;
  try {
    const glake::tracer::Trace t = glake::tracer::read_trace(base + ".json");
    if (t.meta.stacks_note != "on") {
      std::remove((base + ".json").c_str());
      std::remove((base + "-now.json").c_str());
      GTEST_SKIP() << "no stacks here: " << t.meta.stacks_note;
    }
    EXPECT_EQ(2u, t.stacks.size());
    for (const auto& [id, frames] : t.stacks) {
      ASSERT_FALSE(frames.empty()) << id;
      EXPECT_EQ(std::string::npos, frames[0].obj.find("libglake")) << "stack " << id << " starts in glake: "
                                                                   << frames[0].fn << " " << frames[0].obj;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  std::remove((base + ".json").c_str());
  std::remove((base + "-now.json").c_str());
}

// A library's constructor (inside dlopen, holding the loader's lock) makes a CUDA call while another
// thread's first CUDA call looks up the real entry points (dlopen, dlsym): the lookup must not hold
// glake's lock while it waits for the loader's, or the constructor's call waits for it: a hang.
TEST_F(Process, AConstructorsCudaCallDuringAnotherThreadsFirstDoesNotHang) {
  const Outcome r = run({helper(), "dlopen-ctor"});
  EXPECT_EQ(0, r.status) << "killed by signal " << (r.status - 128) << " (14: the alarm; a hang)\n" << r.out << r.err;
  EXPECT_TRUE(has(r.out, "loaded")) << r.out << r.err;
}

// The same while another thread is making the device's first pool: pool creation must not wait for the
// loader's lock (the driver's dlopen) while holding the lock the constructor's allocation waits for.
TEST_F(Process, AConstructorsAllocationDuringAnotherThreadsFirstPoolDoesNotHang) {
  const Outcome r = run({helper(), "dlopen-ctor-pool"}, {{"GLAKE_TEST_CTOR_POOL", "1"}});
  EXPECT_EQ(0, r.status) << "killed by signal " << (r.status - 128) << " (14: the alarm; a hang)\n" << r.out << r.err;
  EXPECT_TRUE(has(r.out, "loaded")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "other=1")) << r.out << r.err;
}

// Host memory exhausted inside a hook (the slow path's first malloc fails): CUDA's answer to the caller
// and as the last error, and the pool stays consistent and serves the next request.
TEST_F(Process, HostMemoryExhaustedInAHookIsAnAllocationErrorAndLosesNothing) {
  const std::string preload = env_path("GLAKE_TEST_FAIL_MALLOC") + " " + env_path("LD_PRELOAD");
  const Outcome one = run({helper(), "hook-oom"}, {{"LD_PRELOAD", preload}});
  EXPECT_EQ(0, one.status) << one.out << one.err;
  EXPECT_TRUE(has(one.out, "failures=1\n")) << one.out << one.err;  // the malloc did fail inside glake
  EXPECT_TRUE(has(one.out, "wrong=0\n")) << one.out << one.err;  // cudaErrorMemoryAllocation, also the last error
  EXPECT_TRUE(has(one.out, "again=0 owns=1")) << one.out << one.err;
  EXPECT_TRUE(has(one.out, "valid_end=0")) << one.out << one.err;
}

// At every point of the slow path (a stitch, a trim, a free): the pool checked whole after each call
// (the helper exits 5 naming the call and the point where it was not).
TEST_F(Process, HostMemoryExhaustedAtAnyPointOfThePoolLeavesItWhole) {
  const std::string preload = env_path("GLAKE_TEST_FAIL_MALLOC") + " " + env_path("LD_PRELOAD");
  const Outcome r = run({helper(), "hook-oom", "200"}, {{"LD_PRELOAD", preload}});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_FALSE(has(r.out, "failures=0\n")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "wrong=0\n")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "again=0 owns=1")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "valid_end=0")) << r.out << r.err;
}

TEST_F(Process, GlakeRunSetsThePreloadAndTheSettings) {
  const std::string script = env_path("GLAKE_RUN");
  ASSERT_FALSE(script.empty());
  const std::string trace = "/tmp/glake-run-trace-" + std::to_string(getpid()) + ".json";
  // Started without the preload: glake-run adds it.
  const Outcome r = run({script, "--lib", env_path("GLAKE_LIB"), "--limit", "512M", "--no-stitch", "--trace", trace,
                         "--small-limit", "64K", "--max-create", "32M", "--verbose", "--", helper(), "env"},
                        {{"LD_PRELOAD", preload_without_glake()}});
  EXPECT_EQ(0, r.status) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "GLAKE_LIMIT=512M\n")) << r.out;
  EXPECT_TRUE(has(r.out, "GLAKE_STITCH=0\n")) << r.out;
  EXPECT_TRUE(has(r.out, "GLAKE_TRACE=" + trace + "\n")) << r.out;
  EXPECT_TRUE(has(r.out, "GLAKE_SMALL_LIMIT=64K\n")) << r.out;
  EXPECT_TRUE(has(r.out, "GLAKE_MAX_CREATE=32M\n")) << r.out;
  EXPECT_TRUE(has(r.out, "libglake.so")) << r.out;
  EXPECT_TRUE(has(r.out, "owns=1")) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "glake: device 0: pool on")) << r.err;
  std::remove(trace.c_str());
  // A flag it does not know is a usage error before anything runs.
  const Outcome bad = run({script, "--no-such-flag", "--", helper(), "env"});
  EXPECT_EQ(2, bad.status);
  EXPECT_TRUE(has(bad.err, "usage")) << bad.err;
  // The pass-through switch.
  const Outcome off = run({script, "--lib", env_path("GLAKE_LIB"), "--disable", "--", helper(), "alloc"},
                          {{"LD_PRELOAD", preload_without_glake()}});
  EXPECT_TRUE(has(off.out, "owns=0\nstatus=2\n")) << off.out << off.err;
}

// glake-run cannot hand LD_PRELOAD a path with a space or a colon (the loader splits on both): it
// must refuse such a --lib rather than run the command without glake.
TEST_F(Process, GlakeRunRefusesALibraryPathTheLoaderWouldSplit) {
  const std::string dir = "/tmp/glake run " + std::to_string(getpid());
  ASSERT_EQ(0, run({"/bin/mkdir", "-p", dir}).status);
  const std::string lib = dir + "/libglake.so";
  ASSERT_EQ(0, run({"/bin/cp", env_path("GLAKE_LIB"), lib}).status);
  const Outcome r = run({env_path("GLAKE_RUN"), "--lib", lib, "--", helper(), "alloc"},
                        {{"LD_PRELOAD", preload_without_glake()}});
  EXPECT_NE(0, r.status) << "ran without glake: " << r.out << r.err;
  EXPECT_FALSE(has(r.out, "malloc=")) << r.out << r.err;
  run({"/bin/rm", "-rf", dir});
}

// glake-run checks a size as the library reads it: every spelling the library takes runs ("512Mi"
// was refused), and every one it refuses (which would run the job without glake) is a usage error.
TEST_F(Process, GlakeRunTakesTheSizesTheLibraryTakes) {
  const std::string script = env_path("GLAKE_RUN");
  const Outcome mi = run({script, "--lib", env_path("GLAKE_LIB"), "--limit", "512Mi", "--", "/usr/bin/printenv",
                          "GLAKE_LIMIT"});
  EXPECT_EQ(0, mi.status) << mi.err;
  EXPECT_EQ("512Mi\n", mi.out);
  const Outcome eq = run({script, "--lib=" + env_path("GLAKE_LIB"), "--limit=70G", "--", "/usr/bin/printenv",
                          "GLAKE_LIMIT"});
  EXPECT_EQ(0, eq.status) << "--limit=70G, as --limit 70G: " << eq.err;
  EXPECT_EQ("70G\n", eq.out);
  EXPECT_EQ(2, run({script, "--limit=", "--", "/bin/true"}).status) << "an empty value is no byte count";
  const std::pair<const char*, const char*> flags[] = {{"--limit", "GLAKE_LIMIT"}, {"--small-limit", "GLAKE_SMALL_LIMIT"},
                                                       {"--max-create", "GLAKE_MAX_CREATE"},
                                                       {"--va-reserve", "GLAKE_VA_RESERVE"}};
  for (const char* value : {"0", "1", "511", "512", "64k", "512Mi", "512mib", "512MB", "70GiB", "1T", "512B", "512i",
                            "1023M", "1024M", "16777215T", "16777216T", "17179869184G", "18446744073709551615",
                            "18446744073709551616", "000000000000000000000000001", "12XB", "1.5G", "-1", " 1"}) {
    for (const auto& [flag, var] : flags) {
      const Outcome lib = run({helper(), "alloc"}, {{var, value}});
      const bool lib_takes = has(lib.out, "\nstatus=1\n");  // on (some of these leave it no memory)
      const Outcome launcher = run({script, "--lib", env_path("GLAKE_LIB"), flag, value, "--", "/bin/true"});
      EXPECT_EQ(lib_takes ? 0 : 2, launcher.status)
          << flag << " '" << value << "': the library " << (lib_takes ? "takes" : "refuses") << " it; " << lib.err
          << launcher.err;
    }
  }
}

// LD_PRELOAD, as the loader reads it: entries split at spaces and colons. glake-run keeps every other
// entry, in order, and leaves one libglake.so, last; it added a second when the list already had it
// after a colon, or by another path.
TEST_F(Process, GlakeRunPreloadsTheLibraryOnceAndKeepsTheOthers) {
  const std::string lib = env_path("GLAKE_LIB");
  const std::string other = "/nonexistent/libother.so", other2 = "/nonexistent/libother2.so";
  const std::string shim_dir = lib.substr(0, lib.rfind('/'));
  const std::string same_lib = shim_dir + "/../" + shim_dir.substr(shim_dir.rfind('/') + 1) + "/libglake.so";
  const std::string link = "/tmp/glake-preload-link-" + std::to_string(getpid()) + ".so";  // the same file
  ASSERT_EQ(0, run({"/bin/ln", "-sf", lib, link}).status);
  const std::pair<std::string, std::string> cases[] = {
      {"", lib},
      {lib, lib},
      {other + ":" + lib, other + " " + lib},
      {other + " " + lib, other + " " + lib},
      {lib + ":" + other, other + " " + lib},
      {other + "::" + other2 + " ", other + " " + other2 + " " + lib},
      {same_lib + ":" + other, other + " " + lib},
      {"/elsewhere/libglake.so " + other, other + " " + lib},
      {link + " " + other, other + " " + lib},
  };
  for (const auto& [before, after] : cases) {
    const Outcome r = run({env_path("GLAKE_RUN"), "--lib", lib, "--", "/usr/bin/printenv", "LD_PRELOAD"},
                          {{"LD_PRELOAD", before}});
    EXPECT_EQ(0, r.status) << before << ": " << r.err;
    EXPECT_EQ(after + "\n", r.out) << "LD_PRELOAD was '" << before << "'";
  }
  std::remove(link.c_str());
}

// --help is asked for: on stdout (glake-run --help | less), exit 0. A usage error: on stderr, exit 2.
TEST_F(Process, GlakeRunHelpGoesToStdout) {
  const Outcome r = run({env_path("GLAKE_RUN"), "--help"});
  EXPECT_EQ(0, r.status);
  EXPECT_TRUE(has(r.out, "usage: glake-run")) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;
  const Outcome bad = run({env_path("GLAKE_RUN"), "--limit", "lots", "--", "/bin/true"});
  EXPECT_EQ(2, bad.status);
  EXPECT_TRUE(bad.out.empty()) << bad.out;
  EXPECT_TRUE(has(bad.err, "--limit") && has(bad.err, "usage: glake-run")) << bad.err;
}

// With CDPATH set (export CDPATH=.:~ is common), `cd dir` searches it and prints where it went, which
// went into the path of a relative --lib (and of the script's own folder): glake-run refused to run.
TEST_F(Process, GlakeRunTakesARelativeLibraryUnderCdpath) {
  const std::string lib = env_path("GLAKE_LIB");
  const std::string shim_dir = lib.substr(0, lib.rfind('/'));
  const std::string build_dir = shim_dir.substr(0, shim_dir.rfind('/'));
  const std::string relative = shim_dir.substr(build_dir.size() + 1) + "/libglake.so";
  const Outcome r = run({"/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", build_dir, env_path("GLAKE_RUN"), "--lib",
                         relative, "--", "/usr/bin/printenv", "LD_PRELOAD"},
                        {{"CDPATH", ".:/"}, {"LD_PRELOAD", ""}});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_EQ(lib + "\n", r.out) << r.err;
}

// Run through a link (~/bin/glake-run -> checkout/scripts/glake-run), it finds the library next to the
// script itself, as run directly; it looked next to the link.
TEST_F(Process, GlakeRunThroughALinkFindsTheLibraryOfItsCheckout) {
  const std::vector<std::string> unset = {"GLAKE_LIB"};
  const Outcome direct = run({env_path("GLAKE_RUN"), "--", "/usr/bin/printenv", "LD_PRELOAD"}, {{"LD_PRELOAD", ""}}, unset);
  if (direct.status != 0) GTEST_SKIP() << "no libglake.so next to the script (a build folder other than build/)";
  const std::string dir = "/tmp/glake-run-link-" + std::to_string(getpid());
  ASSERT_EQ(0, run({"/bin/mkdir", "-p", dir}).status);
  ASSERT_EQ(0, run({"/bin/ln", "-sf", env_path("GLAKE_RUN"), dir + "/glake-run"}).status);
  const Outcome linked = run({dir + "/glake-run", "--", "/usr/bin/printenv", "LD_PRELOAD"}, {{"LD_PRELOAD", ""}}, unset);
  EXPECT_EQ(0, linked.status) << linked.err;
  EXPECT_EQ(direct.out, linked.out) << linked.err;
  run({"/bin/rm", "-rf", dir});
}

// --trace names a file from where glake-run runs; the job's processes open it at exit, after any chdir
// of theirs (Hydra runs a job in its output folder): glake-run hands them an absolute path.
TEST_F(Process, GlakeRunMakesTheTracePathAbsolute) {
  char cwd[4096];
  ASSERT_NE(nullptr, getcwd(cwd, sizeof cwd));
  const std::string script = env_path("GLAKE_RUN"), lib = env_path("GLAKE_LIB");
  Outcome r = run({script, "--lib", lib, "--trace", "t-%p.json", "--", "/usr/bin/printenv", "GLAKE_TRACE"});
  EXPECT_EQ(0, r.status) << r.err;
  EXPECT_EQ(std::string(cwd) + "/t-%p.json\n", r.out);
  r = run({script, "--lib", lib, "--trace", "/tmp/t.json", "--", "/usr/bin/printenv", "GLAKE_TRACE"});
  EXPECT_EQ("/tmp/t.json\n", r.out);
  r = run({script, "--lib", lib, "--trace", "", "--", "/bin/true"});
  EXPECT_EQ(2, r.status) << "an empty --trace would trace nothing";
}

}  // namespace
