// tests/gpu/shim/shim_ipc.cu: CUDA IPC of glake memory between two processes (built twice: with the
// shared runtime, and with the static one, whose cudaIpc* reach glake through the driver). Run with
// LD_PRELOAD=libglake.so. Legacy cudaIpcGetMemHandle fails on VMM memory; under glake it works (the
// pages travel as file descriptors, shim/ipc.h). The parent fills a block with a kernel and exports
// it; a child process (this program, started again with --child) opens the handle, checks the
// pattern with a kernel, writes a reply with another, and closes it; the parent sees the reply.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "shim_gpu.h"

extern char** environ;

using namespace shim_gpu;

namespace {

std::string g_self;

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

bool unhex(const std::string& s, void* out, std::size_t n) {
  if (s.size() != 2 * n) return false;
  for (std::size_t i = 0; i < n; ++i)
    static_cast<unsigned char*>(out)[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return true;
}

// Child: 0 if the block holds the pattern and the reply was written, else a code saying what failed.
int child(const std::string& handle_hex, std::size_t bytes, std::uint32_t seed) {
  if (cudaSetDevice(device()) != cudaSuccess) return 10;
  cudaIpcMemHandle_t h;
  if (!unhex(handle_hex, &h, sizeof h)) return 11;
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    std::fprintf(stderr, "child: cudaIpcOpenMemHandle: %s\n", cudaGetErrorString(e));
    return 12;
  }
  const unsigned long long bad = mismatches(p, bytes, seed);
  if (bad != 0) {
    std::fprintf(stderr, "child: %llu words differ\n", bad);
    return 13;
  }
  write_words<<<512, 256>>>(static_cast<std::uint32_t*>(p), bytes / 4, seed + 1);
  if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) return 14;
  if (cudaIpcCloseMemHandle(p) != cudaSuccess) return 15;
  return 0;
}

int run_child(const cudaIpcMemHandle_t& h, std::size_t bytes, std::uint32_t seed) {
  const std::string hx = hex(&h, sizeof h), n = std::to_string(bytes), sd = std::to_string(seed);
  std::vector<char*> argv = {const_cast<char*>(g_self.c_str()), const_cast<char*>("--child"),
                             const_cast<char*>(hx.c_str()), const_cast<char*>(n.c_str()),
                             const_cast<char*>(sd.c_str()), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, g_self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

void roundtrip(std::size_t bytes, std::uint32_t seed) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, bytes));
  ASSERT_TRUE(owns(p));
  fill(p, bytes, seed);
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  EXPECT_EQ(0, run_child(h, bytes, seed));
  EXPECT_EQ(0u, mismatches(p, bytes, seed + 1)) << "the child's reply is not in the parent's block";
  CUDA_OK(cudaFree(p));
}

class Ipc : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(device()));
  }
  void TearDown() override { EXPECT_EQ("", validate()); }
};

TEST_F(Ipc, ALargeBlockOfManyPages) { roundtrip(200u << 20, 11); }

TEST_F(Ipc, ASmallBlockSharingAPage) { roundtrip(96u << 10, 21); }

TEST_F(Ipc, AStreamOrderedBlock) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, 10u << 20, s));
  fill(p, 10u << 20, 31, s);
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  EXPECT_EQ(0, run_child(h, 10u << 20, 31));
  EXPECT_EQ(0u, mismatches(p, 10u << 20, 32, s));
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

// CUDA refuses to open a handle in the process that exported it (measured natively on an H100, CUDA 13:
// cudaErrorDeviceUninitialized; the driver's CUDA_ERROR_INVALID_CONTEXT), and so does glake; the
// block still travels to another process.
TEST_F(Ipc, AHandleOpenedByItsOwnProcessIsRefused) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 4u << 20));
  ASSERT_TRUE(owns(p));
  fill(p, 4u << 20, 41);
  cudaIpcMemHandle_t h;
  CUDA_OK(cudaIpcGetMemHandle(&h, p));
  void* q = nullptr;
  EXPECT_EQ(cudaErrorDeviceUninitialized, cudaIpcOpenMemHandle(&q, h, cudaIpcMemLazyEnablePeerAccess));
  EXPECT_EQ(nullptr, q);
  (void)cudaGetLastError();
  EXPECT_EQ(0, run_child(h, 4u << 20, 41));
  EXPECT_EQ(0u, mismatches(p, 4u << 20, 42));
  CUDA_OK(cudaFree(p));
}

}  // namespace

int main(int argc, char** argv) {
  char self[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  g_self = n > 0 ? std::string(self, static_cast<std::size_t>(n)) : std::string(argv[0]);
  if (argc == 5 && std::string(argv[1]) == "--child")
    return child(argv[2], std::strtoull(argv[3], nullptr, 10), static_cast<std::uint32_t>(std::strtoul(argv[4], nullptr, 10)));
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
