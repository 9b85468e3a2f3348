// tests/gpu/shim/shim_graph.cu: CUDA graphs under the shim. Run with LD_PRELOAD=libglake.so.
//
// Allocations on a capturing stream go to the real API (they become the graph's own memory nodes);
// glake memory allocated before the capture is used by the graph's kernels; the graph replays
// correctly several times; glake serves the stream again once the capture has ended.
#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

constexpr std::size_t kBytes = 8 << 20;

__global__ void copy_words(std::uint32_t* dst, const std::uint32_t* src, std::uint64_t n) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = src[i];
}

TEST(Graph, CaptureUsesTheRealAllocatorAndReplays) {
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  void* out = nullptr;
  CUDA_OK(cudaMallocAsync(&out, kBytes, s));
  ASSERT_TRUE(owns(out));
  CUDA_OK(cudaMemsetAsync(out, 0, kBytes, s));
  CUDA_OK(cudaStreamSynchronize(s));
  const auto passed = stats().passthrough_allocs;

  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  void* tmp = nullptr;
  CUDA_OK(cudaMallocAsync(&tmp, kBytes, s));  // a memory node of the graph
  EXPECT_FALSE(owns(tmp));
  write_words<<<512, 256, 0, s>>>(static_cast<std::uint32_t*>(tmp), kBytes / 4, 42);
  copy_words<<<512, 256, 0, s>>>(static_cast<std::uint32_t*>(out), static_cast<const std::uint32_t*>(tmp), kBytes / 4);
  CUDA_OK(cudaFreeAsync(tmp, s));
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  EXPECT_EQ(passed + 1, stats().passthrough_allocs);

  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) {
    CUDA_OK(cudaMemsetAsync(out, 0, kBytes, s));
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_EQ(0u, mismatches(out, kBytes, 42, s)) << "replay " << i;
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));

  void* after = nullptr;
  CUDA_OK(cudaMallocAsync(&after, kBytes, s));
  EXPECT_TRUE(owns(after)) << "glake serves the stream again after the capture";
  CUDA_OK(cudaFreeAsync(after, s));
  CUDA_OK(cudaFreeAsync(out, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate());
}

// What CUDA does with a stream destroyed in the middle of its capture, and glake after it: if the
// destroy succeeds, the capture is over for glake too (its cudaMalloc serves again, its cudaFree frees,
// synchronizing the device: a global-mode capture still under way would make that fail).
TEST(Graph, AStreamDestroyedMidCaptureEndsTheCapture) {
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  void* eager = nullptr;
  CUDA_OK(cudaMalloc(&eager, 4u << 20));
  ASSERT_TRUE(owns(eager));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  const cudaError_t destroyed = cudaStreamDestroy(s);
  std::printf("cudaStreamDestroy of a capturing stream: %s\n", cudaGetErrorName(destroyed));
  (void)cudaGetLastError();
  if (destroyed != cudaSuccess) {
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(s, &g);
    if (g != nullptr) CUDA_OK(cudaGraphDestroy(g));
    CUDA_OK(cudaStreamDestroy(s));
  }
  void* after = nullptr;
  CUDA_OK(cudaMalloc(&after, 4u << 20));
  EXPECT_TRUE(owns(after)) << "the destroyed stream's capture is still counted";
  CUDA_OK(cudaFree(after));
  CUDA_OK(cudaFree(eager));
  EXPECT_FALSE(owns(eager)) << "a cudaFree after the capture's stream was destroyed was held";
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ("", validate());
}

}  // namespace
