// tests/gpu/shim/shim_static_runtime.cu: a program linked with the static CUDA runtime (as NCCL and
// many libraries are), run with LD_PRELOAD=libglake.so. Its cudaMalloc never reaches glake's runtime
// hooks; the static runtime finds the driver with dlopen + dlsym(cuGetProcAddress) and takes every
// driver function from it, and glake answers those look-ups: its allocations are glake's all the same.
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

}  // namespace
