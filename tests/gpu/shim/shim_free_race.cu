// tests/gpu/shim/shim_free_race.cu: freed memory is never handed out again while work issued before
// the free may still touch it — on any stream, non-blocking ones included. Run with
// LD_PRELOAD=libglake.so.
//
// A reader kernel on a non-blocking stream re-reads a buffer for ~300 ms and counts every word that is
// not the pattern. While it runs, the host frees the buffer, allocates again (glake hands out the same
// block) and overwrites it from another non-blocking stream. If the allocator handed the block out
// before the reader finished, the reader sees the new bytes. A control first proves, on this GPU, that
// the reader does see a concurrent write.
#include <chrono>

#include "shim_gpu.h"

using namespace shim_gpu;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kBytes = 64 << 20;
constexpr unsigned long long kReadNs = 300'000'000;

__device__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Re-reads p (volatile: from L2/memory, never a stale L1 line) until `ns` have passed; *bad += words
// that differed from the pattern. *started is set once the kernel runs.
__global__ void slow_reader(const volatile std::uint32_t* p, std::uint64_t n, std::uint32_t seed,
                            unsigned long long ns, unsigned long long* bad, volatile int* started) {
  const unsigned long long t0 = now_ns();
  if (blockIdx.x == 0 && threadIdx.x == 0) *started = 1;
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  unsigned long long mine = 0;
  while (now_ns() - t0 < ns) {
    for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
      mine += p[i] != word(seed, i);
  }
  if (mine != 0) atomicAdd(bad, mine);
}

struct Probe {
  unsigned long long* bad = nullptr;
  int* started = nullptr;
  Probe() {
    EXPECT_EQ(cudaSuccess, cudaMallocHost(&bad, sizeof *bad));
    EXPECT_EQ(cudaSuccess, cudaMallocHost(&started, sizeof *started));
    *bad = 0;
    *started = 0;
  }
  ~Probe() {
    cudaFreeHost(bad);
    cudaFreeHost(started);
  }
  // Returns once the reader runs on the GPU (so the free below really races with it).
  void launch(const void* p, std::uint32_t seed, cudaStream_t s) {
    slow_reader<<<264, 256, 0, s>>>(static_cast<const volatile std::uint32_t*>(p), kBytes / 4, seed, kReadNs, bad,
                                     started);
    EXPECT_EQ(cudaSuccess, cudaGetLastError());
    while (*reinterpret_cast<volatile int*>(started) == 0) {
    }
  }
};

class FreeRace : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(device()));
    CUDA_OK(cudaStreamCreateWithFlags(&reader_, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamCreateWithFlags(&writer_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    cudaStreamDestroy(reader_);
    cudaStreamDestroy(writer_);
    EXPECT_EQ("", validate());
  }
  cudaStream_t reader_ = nullptr;
  cudaStream_t writer_ = nullptr;
};

TEST_F(FreeRace, TheReaderSeesAConcurrentWrite) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, kBytes));
  fill(p, kBytes, 1);
  Probe probe;
  probe.launch(p, 1, reader_);
  write_words<<<1024, 256, 0, writer_>>>(static_cast<std::uint32_t*>(p), kBytes / 4, 2);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_GT(*probe.bad, 0u) << "the detector cannot see a race on this GPU: the other tests prove nothing";
  CUDA_OK(cudaFree(p));
}

TEST_F(FreeRace, CudaFreeWaitsForWorkOnANonBlockingStream) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, kBytes));
  fill(p, kBytes, 3);
  Probe probe;
  probe.launch(p, 3, reader_);
  const auto t0 = Clock::now();
  CUDA_OK(cudaFree(p));
  const double waited_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  void* q = nullptr;
  CUDA_OK(cudaMalloc(&q, kBytes));
  EXPECT_EQ(p, q) << "glake did not reuse the block: this run proves nothing";
  write_words<<<1024, 256, 0, writer_>>>(static_cast<std::uint32_t*>(q), kBytes / 4, 4);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(0u, *probe.bad) << "the block was reused while the work issued before cudaFree still read it";
  std::printf("cudaFree waited %.1f ms for the reader\n", waited_ms);
  CUDA_OK(cudaFree(q));
}

TEST_F(FreeRace, StreamOrderedFreeIsReusedElsewhereOnlyAfterItsWork) {
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, kBytes, reader_));
  fill(p, kBytes, 5, reader_);
  Probe probe;
  probe.launch(p, 5, reader_);
  CUDA_OK(cudaFreeAsync(p, reader_));
  // Another stream, then cudaMalloc (safe on every stream by contract), while the reader still reads.
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, kBytes, writer_));
  write_words<<<1024, 256, 0, writer_>>>(static_cast<std::uint32_t*>(q), kBytes / 4, 6);
  CUDA_OK(cudaGetLastError());
  void* r = nullptr;
  CUDA_OK(cudaMalloc(&r, kBytes));
  write_words<<<1024, 256, 0, writer_>>>(static_cast<std::uint32_t*>(r), kBytes / 4, 7);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(0u, *probe.bad) << "handed out to another stream before the work before its free completed";
  std::printf("reuse while reading: stream %s, cudaMalloc %s\n", q == p ? "same block" : "other block",
              r == p ? "same block" : "other block");
  CUDA_OK(cudaFreeAsync(q, writer_));
  CUDA_OK(cudaFree(r));
  CUDA_OK(cudaStreamSynchronize(writer_));
}

TEST_F(FreeRace, SameStreamReuseIsImmediateAndOrdered) {
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, kBytes, reader_));
  fill(p, kBytes, 8, reader_);
  Probe probe;
  probe.launch(p, 8, reader_);
  CUDA_OK(cudaFreeAsync(p, reader_));
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, kBytes, reader_));
  EXPECT_EQ(p, q);
  write_words<<<1024, 256, 0, reader_>>>(static_cast<std::uint32_t*>(q), kBytes / 4, 9);  // after the reader
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamSynchronize(reader_));
  EXPECT_EQ(0u, *probe.bad);
  EXPECT_EQ(0u, mismatches(q, kBytes, 9, reader_));
  CUDA_OK(cudaFreeAsync(q, reader_));
  CUDA_OK(cudaStreamSynchronize(reader_));
}

}  // namespace
