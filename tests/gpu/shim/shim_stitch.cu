// tests/gpu/shim/shim_stitch.cu: kernels across stitched ranges, through the shim. Run with
// LD_PRELOAD=libglake.so and GLAKE_LIMIT=192M (meson.build): the program fills the pool to its limit
// with 4 MiB blocks, frees every other one, and asks for one block larger than any free one. Only
// stitching can serve it (nothing may be created past the limit): the scattered free pages are mapped
// side by side into one range, a kernel writes and checks a pattern across all of it, and the blocks
// still live keep theirs.
#include <vector>

#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

TEST(Stitch, AKernelRunsAcrossAStitchedRange) {
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  CUDA_OK(cudaFree(nullptr));
  const char* limit = std::getenv("GLAKE_LIMIT");
  ASSERT_TRUE(limit != nullptr && std::string(limit) == "192M") << "run with GLAKE_LIMIT=192M";
  constexpr int kBlocks = 48;  // 48 x 4 MiB = the limit
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<void*> blocks;
  for (int i = 0; i < kBlocks; ++i) {
    void* p = nullptr;
    CUDA_OK(cudaMallocAsync(&p, 4 * kMiB, s));
    fill(p, 4 * kMiB, 100 + static_cast<std::uint32_t>(i), s);
    blocks.push_back(p);
  }
  void* over = nullptr;
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMallocAsync(&over, 4 * kMiB, s)) << "the limit must hold";
  (void)cudaGetLastError();
  for (int i = 0; i < kBlocks; i += 2) CUDA_OK(cudaFreeAsync(blocks[i], s));
  CUDA_OK(cudaStreamSynchronize(s));

  const glake_stats_t before = stats();
  void* big = nullptr;
  CUDA_OK(cudaMallocAsync(&big, 80 * kMiB, s));  // larger than any free block: 20 pages stitched
  const glake_stats_t after = stats();
  EXPECT_GT(after.stitches, before.stitches);
  EXPECT_EQ(before.creates, after.creates) << "served past the limit instead of stitching";
  EXPECT_LE(after.physical, 192 * kMiB);
  fill(big, 80 * kMiB, 7, s);
  EXPECT_EQ(0u, mismatches(big, 80 * kMiB, 7, s));
  for (int i = 1; i < kBlocks; i += 2)
    EXPECT_EQ(0u, mismatches(blocks[i], 4 * kMiB, 100 + static_cast<std::uint32_t>(i), s)) << "block " << i;

  // Copies across the stitched range (the copy engine sees it as one range too).
  void* copy = nullptr;
  CUDA_OK(cudaFreeAsync(blocks[1], s));
  CUDA_OK(cudaFreeAsync(blocks[3], s));
  CUDA_OK(cudaFreeAsync(blocks[5], s));
  CUDA_OK(cudaMallocAsync(&copy, 8 * kMiB, s));
  CUDA_OK(cudaMemcpyAsync(copy, static_cast<char*>(big) + 30 * kMiB, 8 * kMiB, cudaMemcpyDeviceToDevice, s));
  std::vector<std::uint32_t> host(2 * kMiB);
  CUDA_OK(cudaMemcpyAsync(host.data(), copy, 8 * kMiB, cudaMemcpyDeviceToHost, s));
  CUDA_OK(cudaStreamSynchronize(s));
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < host.size(); ++i) wrong += host[i] != word(7, 30 * kMiB / 4 + i);
  EXPECT_EQ(0u, wrong);

  CUDA_OK(cudaFreeAsync(copy, s));
  CUDA_OK(cudaFreeAsync(big, s));
  for (int i = 7; i < kBlocks; i += 2) CUDA_OK(cudaFreeAsync(blocks[i], s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate());
  EXPECT_EQ(0u, stats().requested);
}

}  // namespace
