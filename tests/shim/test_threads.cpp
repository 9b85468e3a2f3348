// tests/shim/test_threads.cpp: the shim under threads (suite 'concurrency', run under ThreadSanitizer by
// scripts/test). Threads allocate and free through every door at once, on their own streams, on the
// legacy stream and across devices, while others read statistics, trim and ask for entry points; each
// block is written and checked before it is freed, so a block handed out twice shows up as wrong bytes.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "shim_test.h"

using namespace glake_test;

namespace {

struct Held {
  unsigned char* p;
  std::size_t n;
  unsigned char tag;
  int kind;  // 0 cudaMalloc, 1 cudaMallocAsync, 2 glake_malloc
};

TEST(Threads, AllocateAndFreeFromManyThreads) {
  REQUIRE_GLAKE();
  constexpr int kThreads = 8;
  constexpr int kRounds = 400;
  std::atomic<int> wrong{0};
  std::atomic<int> failed{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      const int device = t % 2;
      if (cudaSetDevice(device) != cudaSuccess) {
        ++failed;
        return;
      }
      cudaStream_t s = nullptr;
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        ++failed;
        return;
      }
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<Held> held;
      auto release = [&](const Held& h) {
        if (cudaStreamSynchronize(s) != cudaSuccess) ++failed;
        for (std::size_t i = 0; i < h.n; i += 997) wrong += h.p[i] != h.tag;
        cudaError_t e = cudaSuccess;
        if (h.kind == 0) e = cudaFree(h.p);
        if (h.kind == 1) e = cudaFreeAsync(h.p, s);
        if (h.kind == 2) api().free(h.p, static_cast<ssize_t>(h.n), device, s);
        if (e != cudaSuccess) ++failed;
      };
      for (int r = 0; r < kRounds; ++r) {
        const std::size_t n = (rng() % 3 == 0) ? (1 + rng() % 6) << 20 : 1 + rng() % 200000;
        const int kind = static_cast<int>(rng() % 3);
        void* p = nullptr;
        cudaError_t e = cudaSuccess;
        if (kind == 0) e = cudaMalloc(&p, n);
        if (kind == 1) e = cudaMallocAsync(&p, n, s);
        if (kind == 2) p = api().malloc(static_cast<ssize_t>(n), device, s);
        if (e != cudaSuccess || p == nullptr) {
          ++failed;
          continue;
        }
        const auto tag = static_cast<unsigned char>(t * 31 + r);
        if (cudaMemsetAsync(p, tag, n, s) != cudaSuccess) ++failed;
        held.push_back({static_cast<unsigned char*>(p), n, tag, kind});
        if (held.size() > 6 || rng() % 2 == 0) {
          const std::size_t i = rng() % held.size();
          release(held[i]);
          held.erase(held.begin() + static_cast<long>(i));
        }
      }
      for (const Held& h : held) release(h);
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    });
  }
  std::thread observer([&] {
    cudaSetDevice(0);
    cudaMemPool_t pool = nullptr;
    cudaDeviceGetDefaultMemPool(&pool, 0);
    void* fn = nullptr;
    while (!done.load()) {
      glake_stats_t s;
      api().stats(0, &s, sizeof s);
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      cuuint64_t v = 0;
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v);
      cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 13000, cudaEnableDefault, nullptr);
      api().trim(1, 0);
      std::this_thread::yield();
    }
  });
  for (auto& w : workers) w.join();
  done = true;
  observer.join();
  EXPECT_EQ(0, wrong.load()) << "a block was handed out while another still used it";
  EXPECT_EQ(0, failed.load());
  for (int d = 0; d < 2; ++d) {
    EXPECT_EQ("", validate(d)) << "device " << d;
    EXPECT_EQ(0u, stats(d).requested) << "device " << d;
  }
}

// cudaStreamPerThread is each thread's own stream, so are its captures: a failed end of capture on one
// thread's stream (which is not capturing) must leave another thread's capture counted, or glake would
// serve allocations (and synchronize the device in frees) while that capture is under way.
TEST(Threads, ACaptureOfAThreadsOwnStreamIsThatThreads) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  std::atomic<int> step{0};
  std::thread other([&] {
    if (cudaSetDevice(0) != cudaSuccess ||
        cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
      step = -1;
      return;
    }
    step = 1;
    while (step.load() == 1) std::this_thread::yield();
    cudaGraph_t g = nullptr;
    step = cudaStreamEndCapture(cudaStreamPerThread, &g) == cudaSuccess && cudaGraphDestroy(g) == cudaSuccess ? 3 : -1;
  });
  while (step.load() == 0) std::this_thread::yield();
  if (step.load() != 1) {
    other.join();
    FAIL() << "the other thread could not begin its capture";
  }
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaErrorIllegalState, cudaStreamEndCapture(cudaStreamPerThread, &g)) << "this thread's stream captures nothing";
  (void)cudaGetLastError();
  void* p = nullptr;
  EXPECT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));
  EXPECT_FALSE(owns(p)) << "another thread's failed end took this capture off glake's count";
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  step = 2;
  other.join();
  ASSERT_EQ(3, step.load());
  EXPECT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));
  EXPECT_TRUE(owns(p)) << "the capture ended on its own thread but is still counted";
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  EXPECT_EQ(0, standin::streams_capturing(0)) << "a capture of device 0 is still under way";
}

// A thread that exits in the middle of a capture of its own stream takes the capture with it (its stream
// goes too): glake serves and frees again. Counted on, every later cudaMalloc went to the real API and
// every cudaFree was held for good.
TEST(Threads, AThreadExitingMidCaptureOfItsStreamEndsTheCapture) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  void* eager = nullptr;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&eager, 1 << 20));
  ASSERT_TRUE(owns(eager));
  bool begun = false;
  void* during = nullptr;
  std::thread other([&] {
    begun = cudaSetDevice(0) == cudaSuccess &&
            cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed) == cudaSuccess &&
            cudaMalloc(&during, 1 << 20) == cudaSuccess;
  });
  other.join();
  ASSERT_TRUE(begun);
  EXPECT_FALSE(owns(during)) << "a synchronous allocation during the capture";
  EXPECT_EQ(cudaSuccess, cudaFree(during));
  void* p = nullptr;
  EXPECT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));
  EXPECT_TRUE(owns(p)) << "the exited thread's capture is still counted";
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  EXPECT_EQ(cudaSuccess, cudaFree(eager));
  EXPECT_FALSE(owns(eager)) << "a cudaFree after the capturing thread exited was held";
  EXPECT_EQ("", validate(0));
  EXPECT_EQ(0, standin::streams_capturing(0)) << "the exited thread's capture is still under way (stand-in)";
}

// A cudaFree made during such a capture is held (no device synchronization under way), and the
// capturing thread's exit frees it: held, it stayed glake's for good.
TEST(Threads, AFreeHeldDuringACaptureIsDoneWhenTheCapturingThreadExits) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  void* held = nullptr;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&held, 1 << 20));
  ASSERT_TRUE(owns(held));
  std::atomic<int> stage{0};
  bool begun = false;
  std::thread other([&] {
    begun = cudaSetDevice(0) == cudaSuccess &&
            cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeGlobal) == cudaSuccess;
    stage = 1;
    while (stage.load() != 2) std::this_thread::yield();
  });
  while (stage.load() != 1) std::this_thread::yield();
  EXPECT_EQ(cudaSuccess, cudaFree(held));
  EXPECT_TRUE(owns(held)) << "a free during another thread's global capture is held";
  stage = 2;
  other.join();
  ASSERT_TRUE(begun);
  EXPECT_FALSE(owns(held)) << "the held free was not done when the capturing thread exited";
  EXPECT_EQ("", validate(0));
  EXPECT_EQ(0, standin::streams_capturing(0)) << "the exited thread's capture is still under way (stand-in)";
}

// A thread has its own stream on each device: a failed end of capture of its stream on device 1 must
// leave the capture of its stream on device 0 counted.
TEST(Threads, ACaptureOfAThreadsOwnStreamIsThatDevices) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  ASSERT_EQ(cudaSuccess, cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed));
  ASSERT_EQ(cudaSuccess, cudaSetDevice(1));
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaErrorIllegalState, cudaStreamEndCapture(cudaStreamPerThread, &g)) << "device 1's stream captures nothing";
  (void)cudaGetLastError();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  void* p = nullptr;
  EXPECT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));
  EXPECT_FALSE(owns(p)) << "the failed end on device 1 took device 0's capture off glake's count";
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  ASSERT_EQ(cudaSuccess, cudaStreamEndCapture(cudaStreamPerThread, &g));
  EXPECT_EQ(cudaSuccess, cudaGraphDestroy(g));
  EXPECT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));
  EXPECT_TRUE(owns(p)) << "the capture ended but is still counted";
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  EXPECT_EQ(0, standin::streams_capturing(0)) << "a capture of device 0 is still under way";
}

// cudaFree synchronizes the device, which would break a capture under way: a free of a glake block
// that found no capture counted must not still be synchronizing the device when one begins. One
// thread begins and ends captures while others allocate and free; no cuCtxSynchronize may fall inside
// a capture. (While a capture is counted, cudaMalloc goes to the real API.) Only this test's stream's
// captures count: a capture that an earlier test left under way in the stand-in (which glake does not
// count) would make every synchronization here one "in a capture"; that is reported on its own.
TEST(Threads, NoFreeSynchronizesTheDeviceDuringACapture) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaSuccess, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const int left_over = standin::streams_capturing(0);  // 0 unless an earlier test failed its own check
  std::atomic<bool> done{false};
  std::atomic<int> failed{0};
  std::atomic<int> glake_frees{0};
  std::atomic<int> running{0};
  std::vector<std::thread> freers;
  for (int t = 0; t < 3; ++t)
    freers.emplace_back([&] {
      if (cudaSetDevice(0) != cudaSuccess) ++failed;
      ++running;
      while (!done.load()) {
        void* p = nullptr;
        if (cudaMalloc(&p, 64 << 10) != cudaSuccess) {
          ++failed;
          break;
        }
        if (owns(p)) ++glake_frees;
        if (cudaFree(p) != cudaSuccess) ++failed;
      }
    });
  while (running.load() < 3) std::this_thread::yield();
  for (int i = 0; i < 1000; ++i) {
    cudaGraph_t g = nullptr;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) != cudaSuccess) ++failed;
    std::this_thread::yield();
    if (cudaStreamEndCapture(s, &g) != cudaSuccess || cudaGraphDestroy(g) != cudaSuccess) ++failed;
    std::this_thread::yield();
  }
  done = true;
  for (auto& t : freers) t.join();
  EXPECT_EQ(0, failed.load());
  EXPECT_GT(glake_frees.load(), 0);
  EXPECT_EQ(0u, standin::stream_syncs_in_capture(s)) << "a free synchronized the device while a capture was under way";
  EXPECT_EQ(left_over, standin::streams_capturing(0)) << "a capture of this test's is still under way";
  EXPECT_EQ(cudaSuccess, cudaStreamDestroy(s));
  EXPECT_EQ("", validate(0));
}

// glake makes a pool holding its lock while it calls the driver (cuInit, a context, a stream). A
// driver whose fork handler locks what those calls need (the stand-in's does) ran that handler before
// glake's, which took the same lock: the two orders could deadlock a fork made while another thread
// makes a pool. Under ThreadSanitizer (scripts/test) the pool's creation and this fork report the
// inversion if glake's fork handler takes the lock that pool creation holds.
TEST(Threads, AForkTakesTheLocksInTheOrderPoolCreationDoes) {
  REQUIRE_GLAKE();
  ASSERT_EQ(cudaSuccess, cudaSetDevice(1));
  void* p = nullptr;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&p, 1 << 20));  // device 1's pool, if no test before made it
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  ASSERT_GT(pid, 0);
  int status = -1;
  ASSERT_EQ(pid, waitpid(pid, &status, 0));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(cudaSuccess, cudaFree(p));
  EXPECT_EQ(cudaSuccess, cudaSetDevice(0));
}

}  // namespace
