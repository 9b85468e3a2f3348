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

// The static runtime's memory-pool calls reach the driver's (cuMemPoolGetAttribute, cuMemPoolTrimTo,
// cuMemAllocFromPoolAsync, cuMemSetMemPool, cuMemPoolDestroy) through cuGetProcAddress: the default
// pool reports and trims glake's memory, allocates from glake, and destroying another pool that was
// made current makes glake serve cudaMallocAsync again.
TEST(StaticRuntime, TheDefaultPoolIsGlakesThroughTheDriver) {
  REQUIRE_GLAKE();
  constexpr std::size_t kMiB = 1u << 20;
  CUDA_OK(cudaSetDevice(device()));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaMemPool_t def = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&def, device()));
  void* p = nullptr;
  CUDA_OK(cudaMallocFromPoolAsync(&p, 40 * kMiB, def, s));
  EXPECT_TRUE(owns(p)) << "cudaMallocFromPoolAsync on the default pool";
  fill(p, 40 * kMiB, 9, s);
  EXPECT_EQ(0u, mismatches(p, 40 * kMiB, 9, s));
  std::uint64_t reserved = 0, used = 0;
  CUDA_OK(cudaMemPoolGetAttribute(def, cudaMemPoolAttrReservedMemCurrent, &reserved));
  CUDA_OK(cudaMemPoolGetAttribute(def, cudaMemPoolAttrUsedMemCurrent, &used));
  EXPECT_EQ(stats().physical, reserved);
  EXPECT_EQ(stats().requested, used);
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  ASSERT_GE(stats().cached, 40 * kMiB);
  CUDA_OK(cudaMemPoolTrimTo(def, 0));
  EXPECT_LT(stats().cached, 40 * kMiB) << "cudaMemPoolTrimTo gave glake's cache back";

  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device();
  cudaMemPool_t user = nullptr;
  CUDA_OK(cudaMemPoolCreate(&user, &props));
  CUDA_OK(cudaDeviceSetMemPool(device(), user));
  CUDA_OK(cudaMallocAsync(&p, 3 * kMiB, s));
  EXPECT_FALSE(owns(p)) << "another pool is current";
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  // CUDA 13's cudaMemSetMemPool, for a device and pinned memory, chooses the same way.
  cudaMemLocation loc{};
  loc.type = cudaMemLocationTypeDevice;
  loc.id = device();
  CUDA_OK(cudaMemSetMemPool(&loc, cudaMemAllocationTypePinned, def));
  CUDA_OK(cudaMallocAsync(&p, 3 * kMiB, s));
  EXPECT_TRUE(owns(p)) << "cudaMemSetMemPool made the default pool current";
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaMemSetMemPool(&loc, cudaMemAllocationTypePinned, user));
  CUDA_OK(cudaMallocAsync(&p, 3 * kMiB, s));
  EXPECT_FALSE(owns(p)) << "cudaMemSetMemPool made another pool current";
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaMemPoolDestroy(user));
  cudaMemPool_t now = nullptr;
  CUDA_OK(cudaDeviceGetMemPool(&now, device()));
  EXPECT_EQ(def, now) << "CUDA makes the default pool current when the current one is destroyed";
  CUDA_OK(cudaMallocAsync(&p, 3 * kMiB, s));
  EXPECT_TRUE(owns(p)) << "the default pool is current again";
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
