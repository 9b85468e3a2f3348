// tests/gpu/shim/shim_graph.cu: CUDA graphs under the shim. Run with LD_PRELOAD=libglake.so.
//
// Allocations on a capturing stream go to the real API (they become the graph's own memory nodes);
// glake memory allocated before the capture is used by the graph's kernels; the graph replays
// correctly several times; glake serves the stream again once the capture has ended.
#include <condition_variable>
#include <mutex>
#include <thread>

#include "shim_gpu.h"

using namespace shim_gpu;

namespace {

constexpr std::size_t kBytes = 8 << 20;

__global__ void copy_words(std::uint32_t* dst, const std::uint32_t* src, std::uint64_t n) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = src[i];
}

// First in this file, so that it makes the process's pool: glake's set-up of a device's pool makes the
// runtime see the device as used (cudaFree(nullptr)), which CUDA refuses from a thread in the global
// mode while another thread captures in it, and the capture is then invalidated.
TEST(Graph, APoolMadeDuringAnotherThreadsCaptureLeavesTheCaptureIntact) {
  REQUIRE_GLAKE();
  glake_stats_t none{};
  if (api().stats(device(), &none, sizeof none) == 0) GTEST_SKIP() << "the pool was made by an earlier test";
  const int dev = device();
  CUDA_OK(cudaSetDevice(dev));
  cudaStream_t cap = nullptr, other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
  cudaError_t alloc = cudaErrorUnknown;
  void* p = nullptr;
  std::thread([&] {
    if (dev != 0) (void)cudaSetDevice(dev);
    alloc = cudaMallocAsync(&p, kBytes, other);
  }).join();
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaSuccess, cudaStreamEndCapture(cap, &graph)) << "glake's set-up invalidated the capture";
  if (graph != nullptr) CUDA_OK(cudaGraphDestroy(graph));
  (void)cudaGetLastError();
  ASSERT_EQ(cudaSuccess, alloc);
  EXPECT_TRUE(owns(p));
  fill(p, kBytes, 7, other);
  EXPECT_EQ(0ull, mismatches(p, kBytes, 7, other));
  CUDA_OK(cudaFreeAsync(p, other));
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(cap));
  CUDA_OK(cudaStreamDestroy(other));
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

// What CUDA does when a thread exits in the middle of a global-mode capture of its own stream, and glake
// after it. First the control: while such a capture is under way, another thread's
// cudaDeviceSynchronize is refused. Then a thread begins one and exits: if CUDA lets the device
// synchronize again, the capture is over, and glake must serve and free again (counted on, every
// cudaMalloc went to the real API and every cudaFree was held for good).
TEST(Graph, AThreadExitingMidCaptureOfItsStreamEndsTheCapture) {
  REQUIRE_GLAKE();
  CUDA_OK(cudaSetDevice(device()));
  void* eager = nullptr;
  CUDA_OK(cudaMalloc(&eager, 4u << 20));
  ASSERT_TRUE(owns(eager));

  std::mutex m;
  std::condition_variable cv;
  int stage = 0;  // 1: the capture began; 2: the control is done
  cudaError_t begun = cudaErrorUnknown, ended = cudaErrorUnknown;
  std::thread live([&] {
    (void)cudaSetDevice(device());
    begun = cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeGlobal);
    {
      std::unique_lock lk(m);
      stage = 1;
      cv.notify_all();
      cv.wait(lk, [&] { return stage == 2; });
    }
    cudaGraph_t g = nullptr;
    ended = cudaStreamEndCapture(cudaStreamPerThread, &g);
    if (g != nullptr) (void)cudaGraphDestroy(g);
    (void)cudaGetLastError();
  });
  cudaError_t during = cudaErrorUnknown;
  {
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return stage == 1; });
    during = cudaDeviceSynchronize();
    (void)cudaGetLastError();
    stage = 2;
    cv.notify_all();
  }
  live.join();
  std::printf("control: begin %s, cudaDeviceSynchronize during the capture %s, end %s\n", cudaGetErrorName(begun),
              cudaGetErrorName(during), cudaGetErrorName(ended));
  ASSERT_EQ(cudaSuccess, begun);

  // A cudaFree made during that capture is held; the thread's exit frees it (glake's end of the count
  // flushes it from the exiting thread).
  void* held = nullptr;
  CUDA_OK(cudaMalloc(&held, 4u << 20));
  ASSERT_TRUE(owns(held));
  stage = 0;
  cudaError_t held_free = cudaErrorUnknown;
  std::thread exits([&] {
    (void)cudaSetDevice(device());
    begun = cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeGlobal);
    write_words<<<1, 32, 0, cudaStreamPerThread>>>(nullptr, 0, 1);
    std::unique_lock lk(m);
    stage = 1;
    cv.notify_all();
    cv.wait(lk, [&] { return stage == 2; });
  });
  {
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return stage == 1; });
    held_free = cudaFree(held);
    stage = 2;
    cv.notify_all();
  }
  exits.join();
  EXPECT_EQ(cudaSuccess, held_free);
  EXPECT_FALSE(owns(held)) << "the free held during the exited thread's capture was not done";
  const cudaError_t after_exit = cudaDeviceSynchronize();
  (void)cudaGetLastError();
  std::printf("a thread began a capture of its stream (%s) and exited: cudaDeviceSynchronize %s\n",
              cudaGetErrorName(begun), cudaGetErrorName(after_exit));
  ASSERT_EQ(cudaSuccess, begun);
  ASSERT_NE(cudaSuccess, during) << "the control shows nothing: CUDA lets the device synchronize during a capture";
  ASSERT_EQ(cudaSuccess, after_exit) << "the exited thread's capture is still under way";
  void* after = nullptr;
  CUDA_OK(cudaMalloc(&after, 4u << 20));
  EXPECT_TRUE(owns(after)) << "the exited thread's capture is still counted";
  CUDA_OK(cudaFree(after));
  CUDA_OK(cudaFree(eager));
  EXPECT_FALSE(owns(eager)) << "a cudaFree after the capturing thread exited was held";
  EXPECT_EQ("", validate());
}

}  // namespace
