// tests/gpu/shim/shim_static_runtime.cu: a program linked with the static CUDA runtime (as NCCL and
// many libraries are), run with LD_PRELOAD=libglake.so. Its cudaMalloc never reaches glake's runtime
// hooks; the static runtime finds the driver with dlopen + dlsym(cuGetProcAddress) and takes every
// driver function from it, and glake answers those look-ups: its allocations are glake's all the same.
// Its graph captures reach glake the same way (cuStreamBeginCapture, cuStreamEndCapture): an
// allocation on a capturing stream is the graph's, and its memory is not handed out again while the
// graph may replay. Built a second time for the per-thread default stream (shim_static_runtime_ptds):
// the static runtime then takes the driver's per-thread variants (cuStreamBeginCapture_v2_ptsz, ...).
#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

TEST(StaticRuntime, AllocationsReachGlakeThroughTheDriver) {
  REQUIRE_GLAKE();
  ASSERT_EQ(nullptr, dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD)) << "built with the shared runtime";
  CUDA_OK(cudaSetDevice(device()));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 6u << 20));
  EXPECT_TRUE(owns(p));
  fill(p, 6u << 20, 3);
  EXPECT_EQ(0u, mismatches(p, 6u << 20, 3));
  CUDA_OK(cudaFree(p));
  EXPECT_FALSE(owns(p));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  CUDA_OK(cudaMallocAsync(&p, 3u << 20, s));
  EXPECT_TRUE(owns(p));
  fill(p, 3u << 20, 4, s);
  EXPECT_EQ(0u, mismatches(p, 3u << 20, 4, s));
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate());
}

// Before glake counted captures begun through the driver, the capture's cudaMallocAsync was glake's,
// its cudaFreeAsync was done at capture time, and the next allocation got the graph's memory: every
// replay then wrote into it.
TEST(StaticRuntime, AGraphCaptureKeepsItsMemoryFromGlake) {
  REQUIRE_GLAKE();
  constexpr std::size_t kBytes = 8u << 20;
  CUDA_OK(cudaSetDevice(device()));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  void* out = nullptr;
  CUDA_OK(cudaMallocAsync(&out, kBytes, s));
  ASSERT_TRUE(owns(out));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  void* tmp = nullptr;
  CUDA_OK(cudaMallocAsync(&tmp, kBytes, s));
  EXPECT_FALSE(owns(tmp)) << "glake served an allocation on a capturing stream";
  write_words<<<512, 256, 0, s>>>(static_cast<std::uint32_t*>(tmp), kBytes / 4, 42);
  CUDA_OK(cudaMemcpyAsync(out, tmp, kBytes, cudaMemcpyDeviceToDevice, s));
  CUDA_OK(cudaFreeAsync(tmp, s));
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  void* other = nullptr;
  CUDA_OK(cudaMallocAsync(&other, kBytes, s));
  EXPECT_TRUE(owns(other)) << "glake serves the stream again once the capture has ended";
  fill(other, kBytes, 7, s);
  for (int i = 0; i < 3; ++i) {
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_EQ(0u, mismatches(out, kBytes, 42, s)) << "replay " << i;
    EXPECT_EQ(0u, mismatches(other, kBytes, 7, s)) << "replay " << i << " wrote into a block glake handed out";
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFreeAsync(other, s));
  CUDA_OK(cudaFreeAsync(out, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate());
}

}  // namespace
