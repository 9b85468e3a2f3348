// tests/gpu/shim/shim_gpu.h: what the shim's GPU programs share. They are ordinary CUDA programs
// linked with the shared libcudart.so.13 (as PyTorch is) and run with LD_PRELOAD=libglake.so and the
// real driver; they reach glake's API through dlsym(RTLD_DEFAULT, ...), as a user would.
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shim/glake.h"

namespace shim_gpu {

#define CUDA_OK(expr)                                                                                       \
  do {                                                                                                      \
    const cudaError_t err_ = (expr);                                                                        \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorName(err_) << ": " << cudaGetErrorString(err_); \
  } while (0)

// After every launch: the launch itself, then its execution.
#define LAUNCH_OK(stream)                   \
  do {                                      \
    CUDA_OK(cudaGetLastError());            \
    CUDA_OK(cudaStreamSynchronize(stream)); \
  } while (0)

struct Api {
  int (*status)() = nullptr;
  int (*stats)(int, glake_stats_t*, size_t) = nullptr;
  int (*validate)(int, char*, size_t) = nullptr;
  int (*owns)(const void*) = nullptr;
  int (*trim)(int, size_t) = nullptr;
  static const Api& get() {
    static const Api a = [] {
      Api r;
      auto look = [](const char* name, auto* slot) {
        void* p = dlsym(RTLD_DEFAULT, name);
        std::memcpy(slot, &p, sizeof p);
      };
      look("glake_status", &r.status);
      look("glake_stats", &r.stats);
      look("glake_validate", &r.validate);
      look("glake_owns", &r.owns);
      look("glake_trim", &r.trim);
      return r;
    }();
    return a;
  }
};

inline const Api& api() { return Api::get(); }
#define REQUIRE_GLAKE() ASSERT_NE(nullptr, ::shim_gpu::api().status) << "not running under LD_PRELOAD=libglake.so"

inline int device() {
  const char* v = std::getenv("GLAKE_TEST_DEVICE");
  return v != nullptr && *v != '\0' ? std::atoi(v) : 0;
}

inline glake_stats_t stats(int dev = device()) {
  glake_stats_t s{};
  api().stats(dev, &s, sizeof s);
  return s;
}

inline bool owns(const void* p) { return api().owns(p) == 1; }

inline std::string validate(int dev = device()) {
  char msg[512] = {};
  return api().validate(dev, msg, sizeof msg) > 0 ? std::string(msg) : std::string();
}

// The 32-bit word at index i of the pattern `seed`.
__host__ __device__ inline std::uint32_t word(std::uint32_t seed, std::uint64_t i) {
  std::uint64_t x = i * 0x9e3779b97f4a7c15ull + seed * 0xbf58476d1ce4e5b9ull + 1;
  x ^= x >> 31;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 29;
  return static_cast<std::uint32_t>(x);
}

static __global__ void write_words(std::uint32_t* p, std::uint64_t n, std::uint32_t seed) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    p[i] = word(seed, i);
}

// *bad += the number of words that differ from the pattern.
static __global__ void check_words(const std::uint32_t* p, std::uint64_t n, std::uint32_t seed, unsigned long long* bad) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  unsigned long long mine = 0;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    mine += p[i] != word(seed, i);
  if (mine != 0) atomicAdd(bad, mine);
}

// Writes the pattern into [p, p + bytes/4 words) on `stream` and waits.
inline void fill(void* p, std::size_t bytes, std::uint32_t seed, cudaStream_t stream = nullptr) {
  write_words<<<1024, 256, 0, stream>>>(static_cast<std::uint32_t*>(p), bytes / 4, seed);
  LAUNCH_OK(stream);
}

// Mismatching words of the pattern in [p, p + bytes/4 words).
inline unsigned long long mismatches(const void* p, std::size_t bytes, std::uint32_t seed, cudaStream_t stream = nullptr) {
  unsigned long long* bad = nullptr;
  if (cudaMallocManaged(&bad, sizeof *bad) != cudaSuccess) return ~0ull;
  *bad = 0;
  check_words<<<1024, 256, 0, stream>>>(static_cast<const std::uint32_t*>(p), bytes / 4, seed, bad);
  if (cudaGetLastError() != cudaSuccess || cudaStreamSynchronize(stream) != cudaSuccess) return ~0ull;
  const unsigned long long r = *bad;
  cudaFree(bad);
  return r;
}

}  // namespace shim_gpu
