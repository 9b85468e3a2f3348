// tests/gpu/shim/shim_kernels.cu: glake memory under real kernels, and the doors to the driver on the
// real runtime and driver. Run with LD_PRELOAD=libglake.so.
//
// - cudaMalloc / cudaMallocAsync blocks of many sizes carry patterns written and checked by kernels.
// - The real libcudart reaches the driver through a door glake answers: its own cudaMalloc, called
//   past glake's runtime hook (dlvsym), still gets glake memory through cuMemAlloc_v2; the entry
//   points it and dlsym hand out are glake's.
// - cudaMemGetInfo and the default pool's attributes report glake's figures; host, managed and
//   user-pool memory pass through; foreign pointers are freed by the real API.
// - Zero-byte requests get the same answers as in the same program run without glake.
#include <cuda.h>
#include <unistd.h>

#include <cstdio>

#include <string>
#include <vector>

#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

std::string object_of(const void* fn) {
  Dl_info info{};
  if (fn == nullptr || dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "(none)";
  std::string path = info.dli_fname;
  return path.substr(path.rfind('/') + 1);
}
bool is_glake(const void* fn) { return object_of(fn).rfind("libglake.so", 0) == 0; }

class Kernels : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(device()));
    CUDA_OK(cudaFree(nullptr));
  }
  void TearDown() override { EXPECT_EQ("", validate()); }
};

TEST_F(Kernels, BlocksOfEverySizeCarryPatterns) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::vector<std::size_t> sizes = {4, 512, 4096, 100000, kMiB - 4, kMiB, 2 * kMiB, 3 * kMiB + 4096,
                                          17 * kMiB + 12, 64 * kMiB, 300 * kMiB};
  std::vector<void*> sync_blocks, async_blocks;
  std::uint32_t seed = 1;
  for (std::size_t n : sizes) {
    void* p = nullptr;
    CUDA_OK(cudaMalloc(&p, n));
    ASSERT_TRUE(owns(p)) << n;
    fill(p, n, seed++);
    sync_blocks.push_back(p);
    void* q = nullptr;
    CUDA_OK(cudaMallocAsync(&q, n, s));
    ASSERT_TRUE(owns(q)) << n;
    fill(q, n, seed++, s);
    async_blocks.push_back(q);
  }
  seed = 1;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(0u, mismatches(sync_blocks[i], sizes[i], seed++)) << sizes[i];
    EXPECT_EQ(0u, mismatches(async_blocks[i], sizes[i], seed++, s)) << sizes[i];
  }
  for (void* p : sync_blocks) CUDA_OK(cudaFree(p));
  for (void* q : async_blocks) CUDA_OK(cudaFreeAsync(q, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

TEST_F(Kernels, TheRealRuntimeReachesGlakeThroughTheDriver) {
  void* cudart = dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(nullptr, cudart) << "this program must link the shared runtime";
  using MallocFn = cudaError_t (*)(void**, size_t);
  auto real_malloc = reinterpret_cast<MallocFn>(dlvsym(cudart, "cudaMalloc", "libcudart.so.13"));
  ASSERT_NE(nullptr, real_malloc);
  ASSERT_FALSE(is_glake(reinterpret_cast<void*>(real_malloc)));
  // Past glake's runtime hook: the runtime's own table of driver functions, which it filled through
  // cuGetProcAddress, holds glake's cuMemAlloc_v2.
  void* p = nullptr;
  CUDA_OK(real_malloc(&p, 8 * kMiB));
  EXPECT_TRUE(owns(p)) << "the real runtime's cudaMalloc did not reach glake's cuMemAlloc_v2";
  fill(p, 8 * kMiB, 77);
  EXPECT_EQ(0u, mismatches(p, 8 * kMiB, 77));
  CUDA_OK(cudaFree(p));

  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 13000, cudaEnableDefault, &q));
  EXPECT_TRUE(is_glake(fn)) << object_of(fn);
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemFreeAsync", &fn, 13000, cudaEnableDefault, &q));
  EXPECT_TRUE(is_glake(fn)) << object_of(fn);
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 13000, cudaEnableDefault, &q));
  EXPECT_FALSE(is_glake(fn)) << "other symbols must pass through";
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(nullptr, driver);
  EXPECT_TRUE(is_glake(dlsym(driver, "cuMemAlloc_v2")));
  EXPECT_TRUE(is_glake(dlsym(driver, "cuGetProcAddress_v2")));
  EXPECT_FALSE(is_glake(dlsym(driver, "cuMemMap")));

  // Through the entry point: glake memory, usable by kernels.
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 13000, cudaEnableDefault, &q));
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, reinterpret_cast<decltype(&cuMemAlloc_v2)>(fn)(&d, 5 * kMiB));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(d)));
  fill(reinterpret_cast<void*>(d), 5 * kMiB, 78);
  EXPECT_EQ(0u, mismatches(reinterpret_cast<void*>(d), 5 * kMiB, 78));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemFree", &fn, 13000, cudaEnableDefault, &q));
  ASSERT_EQ(CUDA_SUCCESS, reinterpret_cast<decltype(&cuMemFree_v2)>(fn)(d));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(d)));
}

TEST_F(Kernels, MemGetInfoAndTheDefaultPoolReportGlakesFigures) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 256 * kMiB));
  size_t free_live = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free_live, &total));
  CUDA_OK(cudaFree(p));
  const glake_stats_t s = stats();
  ASSERT_GE(s.cached, 256 * kMiB);
  size_t free_cached = 0;
  CUDA_OK(cudaMemGetInfo(&free_cached, &total));
  // Freed into glake's cache: free again for the program, though the driver still counts it used.
  EXPECT_GE(free_cached + 64 * kMiB, free_live + 256 * kMiB);
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, device()));
  cuuint64_t reserved = 0, used = 0;
  CUDA_OK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
  CUDA_OK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  EXPECT_EQ(stats().physical, reserved);
  EXPECT_EQ(stats().requested, used);
  CUDA_OK(cudaMemPoolTrimTo(pool, 0));
  size_t free_trimmed = 0;
  CUDA_OK(cudaMemGetInfo(&free_trimmed, &total));
  EXPECT_GE(free_trimmed + 64 * kMiB, free_cached) << "trim returns the cache to the driver";
  EXPECT_LE(stats().cached, 64 * kMiB);
}

TEST_F(Kernels, OtherMemoryPassesThrough) {
  void* h = nullptr;
  CUDA_OK(cudaMallocHost(&h, kMiB));
  EXPECT_FALSE(owns(h));
  CUDA_OK(cudaFreeHost(h));
  void* m = nullptr;
  CUDA_OK(cudaMallocManaged(&m, kMiB));
  EXPECT_FALSE(owns(m));
  fill(m, kMiB, 5);
  EXPECT_EQ(0u, mismatches(m, kMiB, 5));
  CUDA_OK(cudaFree(m));
  void* pitched = nullptr;
  size_t pitch = 0;
  CUDA_OK(cudaMallocPitch(&pitched, &pitch, 1000, 100));
  EXPECT_FALSE(owns(pitched));
  CUDA_OK(cudaFree(pitched));
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device();
  cudaMemPool_t user = nullptr;
  CUDA_OK(cudaMemPoolCreate(&user, &props));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  void* u = nullptr;
  CUDA_OK(cudaMallocFromPoolAsync(&u, 3 * kMiB, user, s));
  EXPECT_FALSE(owns(u));
  fill(u, 3 * kMiB, 6, s);
  EXPECT_EQ(0u, mismatches(u, 3 * kMiB, 6, s));
  CUDA_OK(cudaFreeAsync(u, s));  // not glake's: the real free
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaMemPoolDestroy(user));
  CUDA_OK(cudaStreamDestroy(s));
}

// The answers of the four allocation calls to a zero-byte request, as "name error pointer; ...".
std::string zero_byte_answers() {
  std::string out;
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return "no stream";
  auto note = [&](const char* name, int err, bool null) {
    out += std::string(name) + " " + std::to_string(err) + (null ? " null; " : " pointer; ");
  };
  void* p = reinterpret_cast<void*>(1);
  cudaError_t e = cudaMalloc(&p, 0);
  note("cudaMalloc", e, p == nullptr);
  if (e == cudaSuccess && p != nullptr) (void)cudaFree(p);
  p = reinterpret_cast<void*>(1);
  e = cudaMallocAsync(&p, 0, s);
  note("cudaMallocAsync", e, p == nullptr);
  if (e == cudaSuccess && p != nullptr) (void)cudaFreeAsync(p, s);
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, device()) == cudaSuccess) {
    p = reinterpret_cast<void*>(1);
    e = cudaMallocFromPoolAsync(&p, 0, pool, s);
    note("cudaMallocFromPoolAsync", e, p == nullptr);
    if (e == cudaSuccess && p != nullptr) (void)cudaFreeAsync(p, s);
  }
  (void)cudaGetLastError();
  void* fa = nullptr;
  void* faa = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuMemAlloc", &fa, 13000, cudaEnableDefault, &q) != cudaSuccess ||
      cudaGetDriverEntryPointByVersion("cuMemAllocAsync", &faa, 13000, cudaEnableDefault, &q) != cudaSuccess)
    return out + "no entry points";
  CUdeviceptr d = 1;
  CUresult r = reinterpret_cast<decltype(&cuMemAlloc_v2)>(fa)(&d, 0);
  note("cuMemAlloc", r, d == 0);
  if (r == CUDA_SUCCESS && d != 0) (void)cudaFree(reinterpret_cast<void*>(d));
  d = 1;
  r = reinterpret_cast<decltype(&cuMemAllocAsync)>(faa)(&d, 0, reinterpret_cast<CUstream>(s));
  note("cuMemAllocAsync", r, d == 0);
  if (r == CUDA_SUCCESS && d != 0) (void)cudaFreeAsync(reinterpret_cast<void*>(d), s);
  (void)cudaStreamSynchronize(s);
  (void)cudaStreamDestroy(s);
  return out;
}

// Under glake the answers must be those of this same program run without it (a child process).
TEST(ZeroBytes, GetTheAnswersCudaGives) {
  if (std::getenv("GLAKE_ZERO_PROBE") != nullptr) {  // the child, without glake
    CUDA_OK(cudaSetDevice(device()));
    std::printf("zero-byte answers: %s\n", zero_byte_answers().c_str());
    return;
  }
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  int mode = cudaComputeModeDefault;
  CUDA_OK(cudaDeviceGetAttribute(&mode, cudaDevAttrComputeMode, device()));
  if (mode != cudaComputeModeDefault) GTEST_SKIP() << "the child process needs a context of its own";
  const std::string mine = zero_byte_answers();
  char exe[4096] = {};
  ASSERT_GT(readlink("/proc/self/exe", exe, sizeof exe - 1), 0);
  const std::string cmd = std::string("env -u LD_PRELOAD -u GTEST_OUTPUT -u GTEST_SHARD_INDEX -u GTEST_TOTAL_SHARDS GLAKE_ZERO_PROBE=1 '") + exe +
                          "' --gtest_filter=ZeroBytes.GetTheAnswersCudaGives 2>&1";
  FILE* child = popen(cmd.c_str(), "r");
  ASSERT_NE(nullptr, child);
  std::string native;
  const std::string tag = "zero-byte answers: ";
  char line[1024];
  while (std::fgets(line, sizeof line, child) != nullptr) {
    std::string l = line;
    if (l.rfind(tag, 0) == 0) native = l.substr(tag.size(), l.find_last_not_of('\n') + 1 - tag.size());
  }
  EXPECT_EQ(0, pclose(child));
  std::printf("zero-byte answers without glake: %s\nzero-byte answers under glake:   %s\n", native.c_str(), mine.c_str());
  EXPECT_EQ(native, mine);
  // The driver documents CUDA_ERROR_INVALID_VALUE for cuMemAlloc of zero bytes.
  EXPECT_NE(std::string::npos, mine.find("cuMemAlloc 1 ")) << mine;
  EXPECT_EQ("", validate());
}

}  // namespace
