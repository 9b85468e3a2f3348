// tests/gpu/shim/shim_pair.cu: the cost of a cached allocation + free pair through the shim, beside
// CUDA's own stream-ordered pool in the same process. Run with LD_PRELOAD=libglake.so.
//
// glake: cudaMallocAsync + cudaFreeAsync on one stream, warm (the block comes straight back).
// CUDA pool: cudaMallocFromPoolAsync on a pool of the program's own (release threshold UINT64_MAX,
// so it keeps its memory; glake passes user pools through) + cudaFreeAsync.
// Both: the median over 200 batches of 1000 pairs, for a 1 MiB and a 4 KiB request. Prints
// "pair_ns_glake: N" (1 MiB), "pair_ns_glake_small: N", "pair_ns_cuda_pool: N" and
// "pair_ns_cuda_pool_small: N". The 1 MiB glake pair must be at most GLAKE_SHIM_PAIR_NS_MAX
// (default 300; 0 only reports).
#include <algorithm>
#include <chrono>
#include <vector>

#include "shim_gpu.h"

using namespace shim_gpu;
using Clock = std::chrono::steady_clock;

namespace {

template <class Alloc, class Free>
double median_pair_ns(Alloc alloc, Free free_) {
  constexpr int kBatches = 200, kPairs = 1000;
  for (int i = 0; i < 2000; ++i) free_(alloc());  // warm
  std::vector<double> per_pair;
  for (int b = 0; b < kBatches; ++b) {
    const auto t0 = Clock::now();
    for (int i = 0; i < kPairs; ++i) free_(alloc());
    per_pair.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / kPairs);
  }
  std::sort(per_pair.begin(), per_pair.end());
  return per_pair[per_pair.size() / 2];
}

TEST(Pair, GlakeBesideCudasPool) {
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device();
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaMemPoolCreate(&pool, &props));
  std::uint64_t keep = UINT64_MAX;
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));

  bool ok = true;
  for (std::size_t n : {std::size_t{1} << 20, std::size_t{4096}}) {  // outside the timed loops
    void* p = nullptr;
    CUDA_OK(cudaMallocAsync(&p, n, s));
    EXPECT_TRUE(owns(p)) << "glake does not serve cudaMallocAsync: the timing would be CUDA's";
    CUDA_OK(cudaFreeAsync(p, s));
  }
  auto glake = [&](std::size_t n) {
    return median_pair_ns(
        [&] {
          void* p = nullptr;
          ok &= cudaMallocAsync(&p, n, s) == cudaSuccess;
          return p;
        },
        [&](void* p) { ok &= cudaFreeAsync(p, s) == cudaSuccess; });
  };
  auto cuda_pool = [&](std::size_t n) {
    return median_pair_ns(
        [&] {
          void* p = nullptr;
          ok &= cudaMallocFromPoolAsync(&p, n, pool, s) == cudaSuccess;
          return p;
        },
        [&](void* p) { ok &= cudaFreeAsync(p, s) == cudaSuccess; });
  };
  const double g = glake(1 << 20), gs = glake(4096), c = cuda_pool(1 << 20), cs = cuda_pool(4096);
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_TRUE(ok);
  std::printf("pair_ns_glake: %.0f\npair_ns_glake_small: %.0f\npair_ns_cuda_pool: %.0f\npair_ns_cuda_pool_small: %.0f\n",
              g, gs, c, cs);
  const char* limit = std::getenv("GLAKE_SHIM_PAIR_NS_MAX");
  const double max_ns = limit != nullptr && *limit != '\0' ? std::atof(limit) : 300.0;
  if (max_ns > 0) EXPECT_LE(g, max_ns) << "glake's cudaMallocAsync+cudaFreeAsync pair";
  CUDA_OK(cudaMemPoolDestroy(pool));
  CUDA_OK(cudaStreamDestroy(s));
}

}  // namespace
