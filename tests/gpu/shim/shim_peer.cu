// tests/gpu/shim/shim_peer.cu: two GPUs under the shim: each device has its own pool, and
// cudaDeviceEnablePeerAccess grants the peer access to glake's existing mappings and to those made
// later, stitched ranges included (a missing grant makes the peer's kernel fault); so does the
// driver's cuCtxEnablePeerAccess, as a statically linked runtime calls it. Skips with fewer than two
// devices or when they cannot reach each other.
#include <cuda.h>

#include <vector>

#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// Two devices that can reach each other both ways, or a skip.
#define REQUIRE_TWO_PEERS()                                                         \
  do {                                                                              \
    int n_ = 0;                                                                     \
    CUDA_OK(cudaGetDeviceCount(&n_));                                               \
    if (n_ < 2) GTEST_SKIP() << "needs two GPUs (" << n_ << " here)";               \
    int a_ = 0, b_ = 0;                                                             \
    CUDA_OK(cudaDeviceCanAccessPeer(&a_, 0, 1));                                    \
    CUDA_OK(cudaDeviceCanAccessPeer(&b_, 1, 0));                                    \
    if (a_ == 0 || b_ == 0) GTEST_SKIP() << "GPUs 0 and 1 cannot access each other"; \
  } while (0)

int device_of(const void* p) {
  cudaPointerAttributes a{};
  return cudaPointerGetAttributes(&a, p) == cudaSuccess ? a.device : -1;
}

TEST(Peer, EachDeviceHasItsOwnPool) {
  REQUIRE_GLAKE();
  REQUIRE_TWO_PEERS();
  void* on[2] = {};
  glake_stats_t before[2];
  for (int d = 0; d < 2; ++d) {
    CUDA_OK(cudaSetDevice(d));
    before[d] = stats(d);
    CUDA_OK(cudaMalloc(&on[d], 6 * kMiB));
    fill(on[d], 6 * kMiB, 40 + static_cast<std::uint32_t>(d));
  }
  for (int d = 0; d < 2; ++d) {
    EXPECT_TRUE(owns(on[d]));
    EXPECT_EQ(d, device_of(on[d])) << "device " << d << "'s block lies on another device";
    EXPECT_EQ(before[d].requested + 6 * kMiB, stats(d).requested) << "device " << d;
    CUDA_OK(cudaSetDevice(d));
    EXPECT_EQ(0u, mismatches(on[d], 6 * kMiB, 40 + static_cast<std::uint32_t>(d)));
  }
  // Freed from the other device's context: still the owner's pool that takes it back.
  CUDA_OK(cudaSetDevice(1));
  CUDA_OK(cudaFree(on[0]));
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFree(on[1]));
  for (int d = 0; d < 2; ++d) {
    EXPECT_EQ(before[d].requested, stats(d).requested) << "device " << d;
    EXPECT_EQ("", validate(d)) << "device " << d;
  }
}

TEST(Peer, AccessCoversExistingLaterAndStitchedMappings) {
  REQUIRE_GLAKE();
  REQUIRE_TWO_PEERS();
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t s0 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
  void* existing = nullptr;  // mapped before device 1 is granted access
  CUDA_OK(cudaMallocAsync(&existing, 10 * kMiB, s0));
  fill(existing, 10 * kMiB, 1, s0);

  CUDA_OK(cudaSetDevice(1));
  const cudaError_t e = cudaDeviceEnablePeerAccess(0, 0);
  ASSERT_TRUE(e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled) << cudaGetErrorName(e);
  (void)cudaGetLastError();

  // Later: a new block, and one stitched from pages that freed blocks held (new mappings of old pages).
  CUDA_OK(cudaSetDevice(0));
  void* later = nullptr;
  CUDA_OK(cudaMallocAsync(&later, 14 * kMiB, s0));
  fill(later, 14 * kMiB, 2, s0);
  std::vector<void*> blocks(8);
  for (void*& b : blocks) CUDA_OK(cudaMallocAsync(&b, 4 * kMiB, s0));
  for (std::size_t i = 0; i < blocks.size(); i += 2) CUDA_OK(cudaFreeAsync(blocks[i], s0));
  CUDA_OK(cudaStreamSynchronize(s0));
  const glake_stats_t st0 = stats(0);
  void* stitched = nullptr;
  CUDA_OK(cudaMallocAsync(&stitched, 12 * kMiB, s0));  // larger than any free block
  EXPECT_GT(stats(0).stitches, st0.stitches) << "expected a stitched block";
  fill(stitched, 12 * kMiB, 3, s0);

  // Device 1's kernels read device 0's glake memory, and a copy across the devices lands intact.
  CUDA_OK(cudaSetDevice(1));
  EXPECT_EQ(0u, mismatches(existing, 10 * kMiB, 1));
  EXPECT_EQ(0u, mismatches(later, 14 * kMiB, 2));
  EXPECT_EQ(0u, mismatches(stitched, 12 * kMiB, 3));
  fill(later, 14 * kMiB, 4);  // and write it
  void* mine = nullptr;
  CUDA_OK(cudaMalloc(&mine, 12 * kMiB));
  EXPECT_EQ(1, device_of(mine));
  CUDA_OK(cudaMemcpyPeer(mine, 1, stitched, 0, 12 * kMiB));
  EXPECT_EQ(0u, mismatches(mine, 12 * kMiB, 3));

  CUDA_OK(cudaSetDevice(0));
  EXPECT_EQ(0u, mismatches(later, 14 * kMiB, 4, s0)) << "device 1's writes are not visible on device 0";
  for (void* p : {existing, later, stitched}) CUDA_OK(cudaFreeAsync(p, s0));
  for (std::size_t i = 1; i < blocks.size(); i += 2) CUDA_OK(cudaFreeAsync(blocks[i], s0));
  CUDA_OK(cudaStreamSynchronize(s0));
  CUDA_OK(cudaStreamDestroy(s0));
  CUDA_OK(cudaSetDevice(1));
  CUDA_OK(cudaFree(mine));
  EXPECT_EQ("", validate(0));
  EXPECT_EQ("", validate(1));
}

// Device 0 reaches device 1's memory through the driver's cuCtxEnablePeerAccess (the other test
// enables only 1 -> 0 through the runtime), found as a framework finds it.
TEST(Peer, AccessEnabledThroughTheDriverCoversExistingMappings) {
  REQUIRE_GLAKE();
  REQUIRE_TWO_PEERS();
  using Enable = CUresult (*)(CUcontext, unsigned int);
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuCtxEnablePeerAccess", &fn, 13000, cudaEnableDefault, &q));
  ASSERT_NE(nullptr, fn);
  CUDA_OK(cudaSetDevice(1));
  void* existing = nullptr;  // mapped before device 0 is granted access
  CUDA_OK(cudaMalloc(&existing, 10 * kMiB));
  fill(existing, 10 * kMiB, 5);
  CUDA_OK(cudaDeviceSynchronize());
  CUcontext ctx1 = nullptr;  // device 1's primary context, current now
  void* get_current = nullptr;
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get_current, 13000, cudaEnableDefault, &q));
  ASSERT_EQ(CUDA_SUCCESS, reinterpret_cast<CUresult (*)(CUcontext*)>(get_current)(&ctx1));
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFree(nullptr));
  const CUresult r = reinterpret_cast<Enable>(fn)(ctx1, 0);
  ASSERT_TRUE(r == CUDA_SUCCESS || r == CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) << r;
  EXPECT_EQ(0u, mismatches(existing, 10 * kMiB, 5)) << "device 0's kernel read device 1's glake memory";
  CUDA_OK(cudaSetDevice(1));
  CUDA_OK(cudaFree(existing));
  EXPECT_EQ("", validate(1));
  CUDA_OK(cudaSetDevice(0));
}

}  // namespace
