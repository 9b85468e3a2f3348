// tests/shim/test_streams.cpp: the routing rules that involve streams. In the stand-in every stream
// is a worker thread and cudaLaunchHostFunc plays a kernel, so "a kernel still running" is real: a
// host function that sleeps, then reads the buffer. CUDA's contract: memory freed with cudaFree is
// never handed out again while work issued before the free may still touch it, on any stream,
// non-blocking ones included; a stream-ordered free makes a block reusable at once on its stream and
// on others only after the work before the free has completed; allocations on a capturing stream go
// to the real API.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "driver_proc.h"
#include "shim_test.h"

using namespace glake_test;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// A "kernel": waits, then checks that every byte of the buffer still holds `expect`.
struct SlowReader {
  const unsigned char* p;
  std::size_t n;
  unsigned char expect;
  int delay_ms;
  std::atomic<int> bad{-1};  // -1: not run; else the number of wrong bytes seen
  static void run(void* self) {
    auto* r = static_cast<SlowReader*>(self);
    std::this_thread::sleep_for(std::chrono::milliseconds(r->delay_ms));
    int wrong = 0;
    for (int pass = 0; pass < 20; ++pass) {
      for (std::size_t i = 0; i < r->n; i += 4096) wrong += r->p[i] != r->expect;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    r->bad = wrong;
  }
};

class Streams : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(0));
  }
  void TearDown() override { EXPECT_EQ("", validate(0)); }
};

TEST_F(Streams, CudaFreeWaitsForWorkOnANonBlockingStream) {
  const std::size_t n = 8 * MiB;
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, n));
  CUDA_OK(cudaMemset(p, 0xab, n));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  SlowReader reader{static_cast<unsigned char*>(p), n, 0xab, 300};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));
  const auto t0 = Clock::now();
  CUDA_OK(cudaFree(p));  // the "kernel" still reads p
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  void* q = nullptr;
  CUDA_OK(cudaMalloc(&q, n));
  EXPECT_EQ(p, q) << "glake did not reuse the block: the test proves nothing";
  CUDA_OK(cudaMemset(q, 0x11, n));  // legacy stream: no implicit order with the non-blocking stream
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0, reader.bad.load()) << "reused while the work before the free still read it";
  EXPECT_GE(waited, 250) << "cudaFree returned before the work issued before it had finished";
  CUDA_OK(cudaFree(q));
  CUDA_OK(cudaStreamDestroy(s));
}

// A device granted peer access may run a "kernel" on another device's block: cudaFree waits for it too.
TEST_F(Streams, CudaFreeWaitsForAPeersWork) {
  const std::size_t n = 8 * MiB;
  CUDA_OK(cudaSetDevice(1));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, n));
  CUDA_OK(cudaMemset(p, 0xab, n));
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaSetDevice(0));
  const cudaError_t e = cudaDeviceEnablePeerAccess(1, 0);
  ASSERT_TRUE(e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled) << cudaGetErrorName(e);
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  SlowReader reader{static_cast<unsigned char*>(p), n, 0xab, 300};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));  // device 0 reads device 1's block
  CUDA_OK(cudaSetDevice(1));
  const auto t0 = Clock::now();
  CUDA_OK(cudaFree(p));
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  void* q = nullptr;
  CUDA_OK(cudaMalloc(&q, n));
  EXPECT_EQ(p, q) << "glake did not reuse the block: the test proves nothing";
  CUDA_OK(cudaMemset(q, 0x11, n));
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0, reader.bad.load()) << "reused while the peer's work before the free still read it";
  EXPECT_GE(waited, 250) << "cudaFree returned before the peer's work issued before it had finished";
  CUDA_OK(cudaFree(q));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate(1));
}

TEST_F(Streams, StreamOrderedFreeIsReusedElsewhereOnlyAfterItsWork) {
  const std::size_t n = 8 * MiB;
  cudaStream_t s1 = nullptr, s2 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, n, s1));
  CUDA_OK(cudaMemsetAsync(p, 0xcd, n, s1));
  SlowReader reader{static_cast<unsigned char*>(p), n, 0xcd, 300};
  CUDA_OK(cudaLaunchHostFunc(s1, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(p, s1));
  // Another stream, and cudaMalloc (which must be safe on every stream), while s1 still reads.
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, n, s2));
  CUDA_OK(cudaMemsetAsync(q, 0x22, n, s2));
  void* r = nullptr;
  CUDA_OK(cudaMalloc(&r, n));
  CUDA_OK(cudaMemset(r, 0x33, n));
  CUDA_OK(cudaStreamSynchronize(s2));
  CUDA_OK(cudaStreamSynchronize(s1));
  EXPECT_EQ(0, reader.bad.load());
  // Once s1's work is done, the block is everyone's again.
  void* later = nullptr;
  CUDA_OK(cudaMallocAsync(&later, n, s2));
  CUDA_OK(cudaFreeAsync(later, s2));
  CUDA_OK(cudaFreeAsync(q, s2));
  CUDA_OK(cudaFree(r));
  CUDA_OK(cudaStreamSynchronize(s2));
  CUDA_OK(cudaStreamDestroy(s1));
  CUDA_OK(cudaStreamDestroy(s2));
}

// cudaMallocAsync allocates from the pool of the stream's device, whichever device is current.
TEST_F(Streams, AsyncAllocationComesFromTheStreamsDevice) {
  const std::size_t n = 4 * MiB;
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t s1 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaSetDevice(0));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, n, s1));
  EXPECT_EQ(1, api().device_of(p)) << "glake served a stream of device 1 from device 0's pool";
  CUDA_OK(cudaMemsetAsync(p, 0x5a, n, s1));
  CUDA_OK(cudaFreeAsync(p, s1));
  CUDA_OK(cudaStreamSynchronize(s1));
  CUDA_OK(cudaStreamDestroy(s1));
  EXPECT_EQ("", validate(1));
}

// A block freed on a stream of another device (device 0 read device 1's block, then freed it on its
// own stream), through the runtime or the driver: no stream of device 1 gets it while that work
// still runs.
TEST_F(Streams, FreeOnAnotherDevicesStreamWaitsForItsWork) {
  auto cu_free_async = driver_proc<decltype(&cuMemFreeAsync)>("cuMemFreeAsync");
  ASSERT_NE(nullptr, cu_free_async);
  const std::size_t n = 8 * MiB;
  const cudaError_t e = cudaDeviceEnablePeerAccess(1, 0);
  ASSERT_TRUE(e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled) << cudaGetErrorName(e);
  struct Case {
    bool legacy, driver;
    const char* what;
  };
  for (const Case c : {Case{false, false, "cudaFreeAsync on a non-blocking stream of device 0"},
                       Case{true, false, "cudaFreeAsync on device 0's legacy stream"},
                       Case{false, true, "cuMemFreeAsync on a non-blocking stream of device 0"}}) {
    SCOPED_TRACE(c.what);
    CUDA_OK(cudaSetDevice(1));
    void* p = nullptr;
    CUDA_OK(cudaMalloc(&p, n));
    CUDA_OK(cudaMemset(p, 0x6b, n));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaSetDevice(0));
    cudaStream_t s0 = nullptr;
    if (!c.legacy) {
      CUDA_OK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
    }
    SlowReader reader{static_cast<unsigned char*>(p), n, 0x6b, 300};
    CUDA_OK(cudaLaunchHostFunc(s0, SlowReader::run, &reader));
    if (c.driver) {
      ASSERT_EQ(CUDA_SUCCESS, cu_free_async(reinterpret_cast<CUdeviceptr>(p), reinterpret_cast<CUstream>(s0)));
    } else {
      CUDA_OK(cudaFreeAsync(p, s0));
    }
    CUDA_OK(cudaSetDevice(1));
    cudaStream_t s1 = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    void* q = nullptr;
    CUDA_OK(cudaMallocAsync(&q, n, s1));
    EXPECT_EQ(p, q) << "glake did not reuse the block: the test proves nothing";
    CUDA_OK(cudaMemsetAsync(q, 0x11, n, s1));
    CUDA_OK(cudaStreamSynchronize(s1));
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaStreamSynchronize(s0));
    EXPECT_EQ(0, reader.bad.load()) << "reused on device 1 while device 0's work before the free still read it";
    CUDA_OK(cudaSetDevice(1));
    CUDA_OK(cudaFreeAsync(q, s1));
    CUDA_OK(cudaStreamSynchronize(s1));
    CUDA_OK(cudaStreamDestroy(s1));
    CUDA_OK(cudaSetDevice(0));
    if (!c.legacy) {
      CUDA_OK(cudaStreamDestroy(s0));
    }
  }
  EXPECT_EQ("", validate(1));
}

// A thread whose first CUDA call frees device 1's block on its (device 0's) legacy stream: the wait
// goes through the runtime, which makes the device's context current, and the free succeeds.
TEST_F(Streams, CrossDeviceFreeOnAFreshThreadSucceeds) {
  CUDA_OK(cudaSetDevice(1));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 4 * MiB));
  CUDA_OK(cudaSetDevice(0));
  cudaError_t e = cudaErrorUnknown;
  std::thread([&] { e = cudaFreeAsync(p, nullptr); }).join();
  EXPECT_EQ(cudaSuccess, e) << cudaGetErrorName(e);
  EXPECT_FALSE(owns(p));
  EXPECT_EQ("", validate(1));
}

// A thread whose first CUDA calls are stream-ordered ones on a stream of device 1 (a worker handed
// that stream) is still on device 0 afterwards, as under CUDA: what glake does in device 1's context
// for them must not leave that context current on the thread, which the runtime would then take as
// the thread's device (so its next cudaMalloc would land on device 1).
TEST_F(Streams, StreamOrderedCallsOnAnotherDevicesStreamLeaveAFreshThreadOnItsDevice) {
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t s1 = nullptr, s1b = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&s1b, cudaStreamNonBlocking));
  CUDA_OK(cudaSetDevice(0));
  int device = -1, p_device = -1, q_device = -1;
  cudaError_t e = cudaErrorUnknown;
  std::thread([&] {
    // The second stream's allocation makes the pool settle what was freed on the first (an event
    // of device 1's context recorded on s1 and queried).
    void* p = nullptr;
    if ((e = cudaMallocAsync(&p, 8 * MiB, s1)) != cudaSuccess) return;
    p_device = api().device_of(p);
    if ((e = cudaFreeAsync(p, s1)) != cudaSuccess) return;
    if ((e = cudaMallocAsync(&p, 8 * MiB, s1b)) != cudaSuccess) return;
    if ((e = cudaFreeAsync(p, s1b)) != cudaSuccess) return;
    if ((e = cudaGetDevice(&device)) != cudaSuccess) return;
    void* q = nullptr;
    if ((e = cudaMalloc(&q, MiB)) != cudaSuccess) return;
    q_device = api().device_of(q);
    e = cudaFree(q);
  }).join();
  EXPECT_EQ(cudaSuccess, e) << cudaGetErrorName(e);
  EXPECT_EQ(1, p_device);
  EXPECT_EQ(0, device) << "glake left device 1's context current on the thread";
  EXPECT_EQ(0, q_device) << "the thread's cudaMalloc went to device 1";
  for (cudaStream_t x : {s1, s1b}) {
    CUDA_OK(cudaStreamSynchronize(x));
    CUDA_OK(cudaStreamDestroy(x));
  }
  EXPECT_EQ("", validate(1));
}

// A destroyed stream's handle may come back for a stream of another device: what glake remembered of
// the old stream's device must not send the new one's allocations to the old device's pool.
TEST_F(Streams, ARecycledStreamHandleIsAskedAgain) {
  const std::size_t n = 4 * MiB;
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t old_stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&old_stream, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, n, old_stream));  // glake learns: this handle is device 1's
  EXPECT_EQ(1, api().device_of(p));
  CUDA_OK(cudaFreeAsync(p, old_stream));
  CUDA_OK(cudaStreamSynchronize(old_stream));
  CUDA_OK(cudaStreamDestroy(old_stream));
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t s = nullptr;
  std::vector<cudaStream_t> others;
  // The handle comes back once the old stream's worker has finished: give a loaded machine 10 s.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (s != old_stream && Clock::now() < deadline) {
    if (s != nullptr) others.push_back(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  for (cudaStream_t o : others) CUDA_OK(cudaStreamDestroy(o));
  ASSERT_EQ(old_stream, s) << "the stand-in gave no handle back: the test proves nothing";
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, n, s));
  EXPECT_EQ(0, api().device_of(q)) << "a stream of device 0 was served by device 1's pool";
  CUDA_OK(cudaMemsetAsync(q, 0x7e, n, s));
  CUDA_OK(cudaFreeAsync(q, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ("", validate(1));
}

// cudaFree of a cudaMallocAsync block after its stream was destroyed (CUDA allows it): the block must
// be reusable and trimmable; freed on its dead stream's handle, it never settled.
TEST_F(Streams, CudaFreeAfterTheBlocksStreamWasDestroyedGivesTheMemoryBack) {
  const std::size_t n = 64 * MiB;
  std::vector<void*> ps;
  for (int i = 0; i < 3; ++i) {
    cudaStream_t s = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    void* p = nullptr;
    CUDA_OK(cudaMallocAsync(&p, n, s));
    EXPECT_TRUE(owns(p));
    CUDA_OK(cudaMemsetAsync(p, 1, n, s));
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaStreamDestroy(s));
    ps.push_back(p);
  }
  for (void* p : ps) CUDA_OK(cudaFree(p));
  EXPECT_EQ(0u, stats().requested);
  ASSERT_NE(nullptr, api().trim);
  EXPECT_EQ(0, api().trim(0, 0));
  EXPECT_EQ(0u, stats().physical) << "what was freed after its stream died stayed cached";
  EXPECT_EQ("", validate(0));
}

// The same for a block of device 1 freed on a stream of device 0 (the free waits for that stream).
TEST_F(Streams, AFreeOnAnotherDevicesStreamAfterTheBlocksStreamWasDestroyedGivesTheMemoryBack) {
  cudaStream_t s0 = nullptr;  // made first: the dead stream's handle must not come back for it
  CUDA_OK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t s1 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, 64 * MiB, s1));
  EXPECT_EQ(1, api().device_of(p));
  CUDA_OK(cudaStreamSynchronize(s1));
  CUDA_OK(cudaStreamDestroy(s1));
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFreeAsync(p, s0));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(0, api().trim(1, 0));
  EXPECT_EQ(0u, stats(1).physical) << "what was freed after its stream died stayed cached";
  CUDA_OK(cudaStreamDestroy(s0));
  EXPECT_EQ("", validate(1));
}

// A host function that holds its stream until the test opens it (or 10 s pass: then it says so).
struct Gate {
  std::atomic<bool> open{false}, gave_up{false};
  static void run(void* self) {
    auto* g = static_cast<Gate*>(self);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!g->open.load()) {
      if (Clock::now() > deadline) {
        g->gave_up = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
};

// PyTorch's pluggable allocator frees a cuda:1 tensor on its device's default stream without making
// device 1 current: that is device 1's legacy stream, not device 0's busy one, and nothing waits.
TEST_F(Streams, PluggableFreeTakesTheDeviceItIsGiven) {
  ASSERT_NE(nullptr, api().malloc);
  void* p = api().malloc(4 * MiB, 1, nullptr);
  ASSERT_NE(nullptr, p);
  EXPECT_EQ(1, api().device_of(p));
  Gate busy;
  CUDA_OK(cudaLaunchHostFunc(nullptr, Gate::run, &busy));  // device 0's legacy stream, held until the free returns
  api().free(p, 4 * MiB, 1, nullptr);
  busy.open = true;
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_FALSE(busy.gave_up) << "the free waited for device 0's legacy stream";
  EXPECT_EQ("", validate(1));
}

// cudaMallocFromPoolAsync from device 0's default pool on a stream of device 1: CUDA allows it; the
// pool keeps only its own device's streams, so the real API serves it.
TEST_F(Streams, DefaultPoolWithAnotherDevicesStreamGoesToTheRealApi) {
  cudaMemPool_t pool0 = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool0, 0));
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t s1 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocFromPoolAsync(&p, 4 * MiB, pool0, s1));
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaFreeAsync(p, s1));
  CUDA_OK(cudaStreamSynchronize(s1));
  CUDA_OK(cudaStreamDestroy(s1));
  CUDA_OK(cudaSetDevice(0));
}

TEST_F(Streams, SameStreamReuseIsImmediateAndOrdered) {
  const std::size_t n = 4 * MiB;
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, n, s));
  CUDA_OK(cudaMemsetAsync(p, 0x44, n, s));
  SlowReader reader{static_cast<unsigned char*>(p), n, 0x44, 200};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(p, s));
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, n, s));
  EXPECT_EQ(p, q);
  CUDA_OK(cudaMemsetAsync(q, 0x55, n, s));  // after the reader, in stream order
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0, reader.bad.load());
  CUDA_OK(cudaFreeAsync(q, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

struct Fill {
  unsigned char* p;
  std::size_t n;
  unsigned char v;
  static void run(void* self) {
    auto* f = static_cast<Fill*>(self);
    std::memset(f->p, f->v, f->n);
  }
};

// cudaStreamPerThread is each host thread's own stream: what thread A freed on its stream while its
// kernel still reads the block is not thread B's to reuse at once on B's.
TEST_F(Streams, PerThreadDefaultStreamsOfTwoThreadsAreTwoStreams) {
  const std::size_t n = 8 * MiB;
  void* p = nullptr;
  SlowReader reader{nullptr, n, 0xab, 300};
  std::atomic<bool> freed{false};
  std::thread a([&] {
    ASSERT_EQ(cudaSuccess, cudaSetDevice(0));
    ASSERT_EQ(cudaSuccess, cudaMallocAsync(&p, n, cudaStreamPerThread));
    ASSERT_EQ(cudaSuccess, cudaMemsetAsync(p, 0xab, n, cudaStreamPerThread));
    ASSERT_EQ(cudaSuccess, cudaStreamSynchronize(cudaStreamPerThread));
    reader.p = static_cast<unsigned char*>(p);
    ASSERT_EQ(cudaSuccess, cudaLaunchHostFunc(cudaStreamPerThread, SlowReader::run, &reader));
    ASSERT_EQ(cudaSuccess, cudaFreeAsync(p, cudaStreamPerThread));
    freed = true;
    ASSERT_EQ(cudaSuccess, cudaStreamSynchronize(cudaStreamPerThread));
  });
  while (!freed) std::this_thread::yield();
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, n, cudaStreamPerThread));
  const bool reused = q == p;
  CUDA_OK(cudaMemsetAsync(q, 0x11, n, cudaStreamPerThread));
  CUDA_OK(cudaStreamSynchronize(cudaStreamPerThread));
  a.join();
  EXPECT_EQ(0, reader.bad.load()) << "reused=" << reused;
  CUDA_OK(cudaFreeAsync(q, cudaStreamPerThread));
  CUDA_OK(cudaStreamSynchronize(cudaStreamPerThread));
}

TEST_F(Streams, AllocationsOnACapturingStreamGoToTheRealApi) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const int live = standin::live_allocations();
  const auto passed = stats().passthrough_allocs;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(live + 1, standin::live_allocations());
  // A synchronous allocation while a capture is under way goes to the real API too (in relaxed mode
  // it succeeds there).
  void* q = nullptr;
  CUDA_OK(cudaMalloc(&q, MiB));
  EXPECT_FALSE(owns(q));
  EXPECT_EQ(passed + 2, stats().passthrough_allocs);
  Fill fill{static_cast<unsigned char*>(p), MiB, 0x66};
  CUDA_OK(cudaLaunchHostFunc(s, Fill::run, &fill));
  CUDA_OK(cudaFreeAsync(p, s));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, s));
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0x66, static_cast<unsigned char*>(p)[MiB - 1]);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFree(q));  // not glake's: the real free
  // Capture over: glake serves the stream again.
  void* r = nullptr;
  CUDA_OK(cudaMallocAsync(&r, MiB, s));
  EXPECT_TRUE(owns(r));
  CUDA_OK(cudaFreeAsync(r, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  EXPECT_EQ(live, standin::live_allocations());
}

// What passes through is counted for the device it was asked of: an allocation on a capturing stream of
// device 1, made while device 0 is current (runtime and driver), is device 1's, as one on device 1's
// stream that glake serves would have been.
TEST_F(Streams, AnAllocationOnACapturingStreamIsCountedForTheStreamsDevice) {
  auto cu_alloc_async = driver_proc<decltype(&cuMemAllocAsync)>("cuMemAllocAsync");
  ASSERT_NE(nullptr, cu_alloc_async);
  CUDA_OK(cudaSetDevice(1));
  cudaStream_t s1 = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaSetDevice(0));
  const auto passed0 = stats(0).passthrough_allocs, passed1 = stats(1).passthrough_allocs;
  CUDA_OK(cudaStreamBeginCapture(s1, cudaStreamCaptureModeRelaxed));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, MiB, s1));
  EXPECT_FALSE(owns(p));
  CUdeviceptr q = 0;
  ASSERT_EQ(CUDA_SUCCESS, cu_alloc_async(&q, MiB, reinterpret_cast<CUstream>(s1)));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(q)));
  CUDA_OK(cudaFreeAsync(p, s1));
  CUDA_OK(cudaFreeAsync(reinterpret_cast<void*>(q), s1));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s1, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  EXPECT_EQ(passed1 + 2, stats(1).passthrough_allocs);
  EXPECT_EQ(passed0, stats(0).passthrough_allocs) << "device 1's stream's allocations were counted for device 0";
  CUDA_OK(cudaStreamDestroy(s1));
}

// However many captures ran at once, once they have all ended glake serves and frees again.
TEST_F(Streams, ManyConcurrentCapturesEndAndGlakeServesAgain) {
  void* before = nullptr;
  CUDA_OK(cudaMalloc(&before, MiB));
  ASSERT_TRUE(owns(before));
  std::vector<cudaStream_t> streams(100);
  for (auto& s : streams) CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (auto& s : streams) CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  for (auto& s : streams) {
    cudaGraph_t g = nullptr;
    CUDA_OK(cudaStreamEndCapture(s, &g));
    CUDA_OK(cudaGraphDestroy(g));
  }
  CUDA_OK(cudaFree(before));
  EXPECT_FALSE(owns(before)) << "cudaFree held although no capture is under way";
  void* after = nullptr;
  CUDA_OK(cudaMalloc(&after, MiB));
  EXPECT_TRUE(owns(after)) << "cudaMalloc passes through although no capture is under way";
  CUDA_OK(cudaFree(after));
  for (auto& s : streams) CUDA_OK(cudaStreamDestroy(s));
}

// A second free of a block whose first (a cudaFree) was held for a capture is refused, as CUDA
// refuses a double free; accepted, it could free at the flush whoever got the address next.
TEST_F(Streams, ASecondFreeOfAHeldBlockIsRefused) {
  cudaStream_t s = nullptr, other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaFree(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaGetLastError());
  // On a stream that is not capturing: the pool still has the block live, so the check is the router's.
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, other));
  (void)cudaGetLastError();
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, MiB, other));
  EXPECT_NE(p, q) << "the held block was handed out again";
  CUDA_OK(cudaFreeAsync(q, other));
  CUDA_OK(cudaStreamSynchronize(other));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(p)) << "freed once, at the end of the capture";
  (void)cudaGetLastError();
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(other));
  EXPECT_EQ("", validate(0));
}

TEST_F(Streams, FreesOfGlakeBlocksDuringACapture) {
  cudaStream_t s = nullptr, other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  void* eager = nullptr;
  void* in_graph = nullptr;
  void* elsewhere = nullptr;
  CUDA_OK(cudaMalloc(&eager, MiB));
  CUDA_OK(cudaMallocAsync(&in_graph, MiB, s));
  CUDA_OK(cudaMallocAsync(&elsewhere, MiB, other));
  CUDA_OK(cudaStreamSynchronize(s));
  const auto held = stats().capture_frees_held;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  // cudaFree cannot synchronize the device now: the block is freed when the capture ends.
  CUDA_OK(cudaFree(eager));
  EXPECT_TRUE(owns(eager));
  // A free captured into the graph would happen at every replay: the block is kept for good.
  CUDA_OK(cudaFreeAsync(in_graph, s));
  EXPECT_TRUE(owns(in_graph));
  EXPECT_EQ(held + 1, stats().capture_frees_held);
  // A stream that is not capturing frees as usual.
  CUDA_OK(cudaFreeAsync(elsewhere, other));
  EXPECT_FALSE(owns(elsewhere));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  EXPECT_FALSE(owns(eager));
  EXPECT_TRUE(owns(in_graph));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(other));
}

// cudaMemPoolTrimTo (PyTorch's empty_cache()) or glake_trim while a capture is under way (another
// thread's, in CUDA's default global mode) must not query or wait for any event or stream: in CUDA that
// invalidates the capture. Such a trim gives back only what is already known free; what was freed on a
// stream whose work may still run stays cached until a trim after the capture.
TEST_F(Streams, ATrimDuringACaptureWaitsForNothing) {
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 0));
  cudaStream_t s = nullptr, cap = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
  void* known = nullptr;
  void* pending = nullptr;
  CUDA_OK(cudaMallocAsync(&known, 16 * MiB, s));
  CUDA_OK(cudaMallocAsync(&pending, 8 * MiB, s));
  CUDA_OK(cudaMemsetAsync(pending, 0x5a, 8 * MiB, s));
  CUDA_OK(cudaFreeAsync(known, s));
  CUDA_OK(cudaStreamSynchronize(s));
  ASSERT_EQ(0, api().trim(0, 8 * MiB));  // settles every free: what stays cached is known free
  ASSERT_GT(stats().cached, 0u);
  SlowReader reader{static_cast<unsigned char*>(pending), 8 * MiB, 0x5a, 300};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(pending, s));  // its work still runs
  const glake_stats_t before = stats();
  CUDA_OK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
  const unsigned long long waits = standin::waits_in_capture();
  CUDA_OK(cudaMemPoolTrimTo(pool, 0));
  EXPECT_EQ(0, api().trim(0, 0));
  EXPECT_EQ(waits, standin::waits_in_capture()) << "a trim waited for a stream or an event during a capture";
  const glake_stats_t during = stats();
  EXPECT_LT(during.physical, before.physical) << "what was known free stayed";
  EXPECT_GE(during.cached, 8 * MiB) << "a block whose stream's work may still run went back";
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(cap, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaMemPoolTrimTo(pool, 0));  // no capture: waits for the stream, then gives the block back
  EXPECT_LE(stats().physical + 8 * MiB, during.physical);
  EXPECT_EQ(0, reader.bad.load());
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(cap));
}

// An allocation by another thread, on a stream that is not capturing, while a capture in CUDA's
// default global mode is under way: where the pool must find out whether another stream's free is done
// (an event query) or wait for it, those calls are "potentially unsafe" in CUDA's terms, and made from
// a thread in global mode they are refused and invalidate the capture. glake makes its own calls in
// relaxed mode (as PyTorch's allocator does around cudaMalloc): the capture survives and the block
// still waits for the work before it.
TEST_F(Streams, AnAllocationDuringAnotherThreadsCaptureLeavesTheCaptureIntact) {
  cudaStream_t s = nullptr, other = nullptr, cap = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
  void* pending = nullptr;
  CUDA_OK(cudaMallocAsync(&pending, 8 * MiB, s));
  CUDA_OK(cudaMemsetAsync(pending, 0x5a, 8 * MiB, s));
  SlowReader reader{static_cast<unsigned char*>(pending), 8 * MiB, 0x5a, 100};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(pending, s));  // its work still runs
  CUDA_OK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
  cudaError_t alloc = cudaErrorUnknown;
  void* p = nullptr;
  std::thread t([&] {
    alloc = cudaMallocAsync(&p, 8 * MiB, other);
    if (alloc == cudaSuccess) alloc = cudaMemsetAsync(p, 0x11, 8 * MiB, other);
  });
  t.join();
  EXPECT_EQ(cudaSuccess, alloc);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaSuccess, cudaStreamEndCapture(cap, &graph)) << "glake's calls invalidated the capture";
  if (graph != nullptr) {
    CUDA_OK(cudaGraphDestroy(graph));
  }
  (void)cudaGetLastError();
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0, reader.bad.load()) << "the block was handed out while the work before its free ran";
  if (p != nullptr) {
    CUDA_OK(cudaFreeAsync(p, other));
  }
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(other));
  CUDA_OK(cudaStreamDestroy(cap));
}

// The same, for an allocation that began before the capture: glake saw no capture under way when the
// allocation came in, and another thread began one before the pool's slow path asked whether another
// stream's free was done. That query, made in the thread's global mode, invalidated the capture.
TEST_F(Streams, AnAllocationUnderWayWhenACaptureBeginsLeavesTheCaptureIntact) {
  cudaStream_t s = nullptr, other = nullptr, cap = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
  ASSERT_EQ(0, api().trim(0, 0));  // nothing cached: the allocation below takes the slow path
  void* pending = nullptr;
  CUDA_OK(cudaMallocAsync(&pending, 8 * MiB, s));
  CUDA_OK(cudaMemsetAsync(pending, 0x5a, 8 * MiB, s));
  SlowReader reader{static_cast<unsigned char*>(pending), 8 * MiB, 0x5a, 100};
  CUDA_OK(cudaLaunchHostFunc(s, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(pending, s));  // its work still runs
  // The capturing thread: begins when the pool first queries or waits for an event, ends when told.
  struct Capturer {
    cudaStream_t cap = nullptr;
    std::mutex mu;
    std::condition_variable cv;
    bool begun = false, end = false;
    cudaError_t begin_result = cudaErrorUnknown, end_result = cudaErrorUnknown;
    std::thread t;
    static void start(void* self) {
      auto* c = static_cast<Capturer*>(self);
      c->t = std::thread([c] {
        const cudaError_t b = cudaStreamBeginCapture(c->cap, cudaStreamCaptureModeGlobal);
        std::unique_lock lk(c->mu);
        c->begin_result = b;
        c->begun = true;
        c->cv.notify_all();
        c->cv.wait(lk, [c] { return c->end; });
        cudaGraph_t graph = nullptr;
        if (b == cudaSuccess) c->end_result = cudaStreamEndCapture(c->cap, &graph);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
      });
      std::unique_lock lk(c->mu);
      c->cv.wait(lk, [c] { return c->begun; });
    }
  } capturer;
  capturer.cap = cap;
  standin::before_next_event_wait(Capturer::start, &capturer);
  void* p = nullptr;
  EXPECT_EQ(cudaSuccess, cudaMallocAsync(&p, 8 * MiB, other));
  standin::before_next_event_wait(nullptr, nullptr);
  ASSERT_TRUE(capturer.t.joinable()) << "the pool queried no event: the test proves nothing";
  {
    std::lock_guard lk(capturer.mu);
    capturer.end = true;
    capturer.cv.notify_all();
  }
  capturer.t.join();
  EXPECT_EQ(cudaSuccess, capturer.begin_result);
  EXPECT_EQ(cudaSuccess, capturer.end_result) << "glake's calls invalidated the capture";
  (void)cudaGetLastError();
  if (p != nullptr) {
    CUDA_OK(cudaMemsetAsync(p, 0x11, 8 * MiB, other));
    CUDA_OK(cudaStreamSynchronize(other));
  }
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(0, reader.bad.load()) << "the block was handed out while the work before its free ran";
  if (p != nullptr) {
    CUDA_OK(cudaFreeAsync(p, other));
  }
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(other));
  CUDA_OK(cudaStreamDestroy(cap));
}

// Destroying a stream of another context (cuCtxCreate) on which glake blocks were freed, while another
// thread captures in global mode: no event of the pool's context records on it, so the pool waits for
// the stream itself before it forgets it (README, "Streams of another context"). That wait, made in
// the thread's global mode, was refused and invalidated the capture; the destroy alone does not.
TEST_F(Streams, DestroyingAnotherContextsStreamDuringACaptureLeavesTheCaptureIntact) {
  // CUDA 12.5's cuCtxCreate (cuda.h's cuCtxCreate_v4), which glake does not hook.
  auto cu_ctx_create = reinterpret_cast<decltype(&cuCtxCreate_v4)>(dlsym(dlopen("libcuda.so.1", RTLD_NOW), "cuCtxCreate_v4"));
  auto cu_ctx_pop = driver_proc<decltype(&cuCtxPopCurrent_v2)>("cuCtxPopCurrent");
  auto cu_stream_create = driver_proc<decltype(&cuStreamCreate)>("cuStreamCreate");
  auto cu_stream_destroy = driver_proc<decltype(&cuStreamDestroy_v2)>("cuStreamDestroy");
  ASSERT_NE(nullptr, cu_ctx_create);
  ASSERT_NE(nullptr, cu_ctx_pop);
  ASSERT_NE(nullptr, cu_stream_create);
  ASSERT_NE(nullptr, cu_stream_destroy);
  CUstream x = nullptr;
  std::thread([&] {  // the other context is current only on this thread
    CUcontext ctx = nullptr;
    ASSERT_EQ(CUDA_SUCCESS, cu_ctx_create(&ctx, nullptr, 0, 0));
    ASSERT_EQ(CUDA_SUCCESS, cu_stream_create(&x, CU_STREAM_NON_BLOCKING));
    CUcontext popped = nullptr;
    ASSERT_EQ(CUDA_SUCCESS, cu_ctx_pop(&popped));
  }).join();
  ASSERT_NE(nullptr, x);
  const auto xs = reinterpret_cast<cudaStream_t>(x);
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, 8 * MiB, xs));
  ASSERT_TRUE(owns(p)) << "the test proves nothing";
  CUDA_OK(cudaMemsetAsync(p, 0x5a, 8 * MiB, xs));
  SlowReader reader{static_cast<unsigned char*>(p), 8 * MiB, 0x5a, 100};
  CUDA_OK(cudaLaunchHostFunc(xs, SlowReader::run, &reader));
  CUDA_OK(cudaFreeAsync(p, xs));  // its work still runs
  cudaStream_t cap = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
  CUresult destroyed = CUDA_ERROR_UNKNOWN;
  std::thread([&] { destroyed = cu_stream_destroy(x); }).join();
  EXPECT_EQ(CUDA_SUCCESS, destroyed);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaSuccess, cudaStreamEndCapture(cap, &graph)) << "glake's calls invalidated the capture";
  if (graph != nullptr) {
    CUDA_OK(cudaGraphDestroy(graph));
  }
  (void)cudaGetLastError();
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(0, reader.bad.load());
  CUDA_OK(cudaStreamDestroy(cap));
}

// A stream destroyed in the middle of its capture ends it: no graph comes of it. Counted on, the
// capture would send every later cudaMalloc to the real API and hold every cudaFree for good.
TEST_F(Streams, AStreamDestroyedMidCaptureEndsTheCapture) {
  auto cu_stream_destroy = driver_proc<decltype(&cuStreamDestroy_v2)>("cuStreamDestroy");
  ASSERT_NE(nullptr, cu_stream_destroy);
  void* eager = nullptr;
  CUDA_OK(cudaMalloc(&eager, MiB));
  for (int api = 0; api < 2; ++api) {
    SCOPED_TRACE(api == 0 ? "cudaStreamDestroy" : "cuStreamDestroy");
    cudaStream_t s = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    void* during = nullptr;
    CUDA_OK(cudaMalloc(&during, MiB));
    EXPECT_FALSE(owns(during)) << "a synchronous allocation during a capture";
    CUDA_OK(cudaFree(during));
    if (api == 0)
      CUDA_OK(cudaStreamDestroy(s));
    else
      ASSERT_EQ(CUDA_SUCCESS, cu_stream_destroy(reinterpret_cast<CUstream>(s)));
    void* after = nullptr;
    CUDA_OK(cudaMalloc(&after, MiB));
    EXPECT_TRUE(owns(after)) << "the destroyed stream's capture is still counted";
    CUDA_OK(cudaFree(after));
    EXPECT_FALSE(owns(after)) << "a cudaFree after the stream was destroyed was held";
  }
  CUDA_OK(cudaFree(eager));
  EXPECT_FALSE(owns(eager));
  EXPECT_EQ("", validate(0));
}


// A stream-ordered free of another device's block waits for the stream it was freed on before the
// block is reused (router.h), however the free is done: held because a capture (elsewhere) is under
// way, the flush waited only for the block's device and its peers; on cudaStreamPerThread, the free
// did too. Device 0's stream reads device 2's block (a copy needs no peer access).
TEST_F(Streams, ACrossDeviceFreeWaitsForItsStreamHeldOrOnTheThreadsStream) {
  const std::size_t n = 8 * MiB;
  for (const bool held : {true, false}) {
    SCOPED_TRACE(held ? "held for a capture" : "on cudaStreamPerThread");
    CUDA_OK(cudaSetDevice(2));
    void* p = nullptr;
    CUDA_OK(cudaMalloc(&p, n));
    CUDA_OK(cudaMemset(p, 0x3c, n));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaSetDevice(0));
    cudaStream_t cap = nullptr, s0 = cudaStreamPerThread;
    if (held) {
      CUDA_OK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
      CUDA_OK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
      CUDA_OK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeRelaxed));
    }
    SlowReader reader{static_cast<unsigned char*>(p), n, 0x3c, 300};
    CUDA_OK(cudaLaunchHostFunc(s0, SlowReader::run, &reader));
    CUDA_OK(cudaFreeAsync(p, s0));
    if (held) {
      EXPECT_TRUE(owns(p));
      cudaGraph_t graph = nullptr;
      CUDA_OK(cudaStreamEndCapture(cap, &graph));  // the flush
      CUDA_OK(cudaGraphDestroy(graph));
    }
    CUDA_OK(cudaSetDevice(2));
    void* q = nullptr;
    CUDA_OK(cudaMalloc(&q, n));
    EXPECT_EQ(p, q) << "glake did not reuse the block: the test proves nothing";
    CUDA_OK(cudaMemset(q, 0x11, n));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaFree(q));
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaStreamSynchronize(s0));
    EXPECT_EQ(0, reader.bad.load()) << "reused while device 0's work before the free still read it";
    if (held) {
      CUDA_OK(cudaStreamDestroy(cap));
      CUDA_OK(cudaStreamDestroy(s0));
    }
    EXPECT_EQ("", validate(2));
  }
}

// A free on the capturing stream of a block whose cudaFree is already held is a second
// free: refused as on every other path, not accepted and counted as a kept block.
TEST_F(Streams, AFreeOnTheCapturingStreamOfAHeldBlockIsRefused) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  const auto held = stats().capture_frees_held;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaFree(p));  // held until the capture ends
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, s));
  (void)cudaGetLastError();
  EXPECT_EQ(held, stats().capture_frees_held) << "the second free was counted as a block kept for the graph";
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaStreamDestroy(s));
}


// The reverse order: a block freed on its capturing stream is kept for good (the graph may touch it
// at each replay), so any later free of it, in the capture or after it, on any path, is a second
// free: refused, as CUDA refuses one. Accepted, a cudaFree during the capture was held and done at
// the capture's end, handing the graph's block to the next allocation.
TEST_F(Streams, AFreeOfABlockKeptForAGraphIsRefused) {
  auto cu_free_async = driver_proc<decltype(&cuMemFreeAsync)>("cuMemFreeAsync");
  ASSERT_NE(nullptr, cu_free_async);
  cudaStream_t s = nullptr, other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  CUDA_OK(cudaStreamSynchronize(s));
  const auto held = stats().capture_frees_held;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaFreeAsync(p, s));  // kept for the graph
  EXPECT_EQ(held + 1, stats().capture_frees_held);
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, s));
  EXPECT_EQ(cudaErrorInvalidValue, cudaGetLastError());
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cu_free_async(reinterpret_cast<CUdeviceptr>(p), reinterpret_cast<CUstream>(s)));
  EXPECT_EQ(held + 1, stats().capture_frees_held) << "a second free was counted as another kept block";
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(p)) << "a cudaFree of the kept block was held, to be done at the end";
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, other));
  (void)cudaGetLastError();
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  EXPECT_TRUE(owns(p)) << "the graph's block was freed at the end of the capture";
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, other));
  (void)cudaGetLastError();
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, MiB, other));
  EXPECT_NE(p, q) << "the block kept for the graph was handed out again";
  CUDA_OK(cudaFreeAsync(q, other));
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(other));
}


// A second free while a first cudaFree waits for the device: refused at once, as CUDA refuses a double
// free. Accepted, a cudaFreeAsync made the block another stream's at once, before the work the first
// free waits for was done (and the first then freed whoever got the address next); a second cudaFree
// waited too, and then freed the block a second time.
TEST_F(Streams, ASecondFreeWhileTheFirstWaitsIsRefused) {
  cudaStream_t gated = nullptr, other = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&gated, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 4 * MiB));
  Gate gate;
  CUDA_OK(cudaLaunchHostFunc(gated, Gate::run, &gate));  // work the first free must wait for
  cudaError_t first = cudaErrorUnknown, second = cudaErrorUnknown;
  std::atomic<bool> second_done{false};
  std::thread t1([&] { first = cudaFree(p); });
  // t1 waits for the device (its free is listed from before that wait). Polled, not slept on: on a
  // loaded machine t1 may not have got that far after any fixed time, and the frees below would be first.
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (standin::device_syncs_waiting() == 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_NE(0, standin::device_syncs_waiting()) << "the first free does not wait for the device";
  std::thread t2([&] {
    second = cudaFree(p);
    second_done = true;
  });
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, other));
  (void)cudaGetLastError();
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, 4 * MiB, other));
  EXPECT_NE(p, q) << "handed out while the first free still waits for the work before it";
  // Refused at once, while the gate still holds the first free: a second free that waits would still
  // be waiting when the deadline passes (the gate gives up only after 10 s).
  deadline = Clock::now() + std::chrono::seconds(5);
  while (!second_done.load() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(second_done.load()) << "the second cudaFree waited instead of being refused";
  gate.open = true;
  t1.join();
  t2.join();
  EXPECT_EQ(cudaSuccess, first);
  EXPECT_EQ(cudaErrorInvalidValue, second);
  EXPECT_FALSE(gate.gave_up);
  EXPECT_FALSE(owns(p));
  EXPECT_TRUE(owns(q)) << "the second free freed the block of whoever got the address";
  CUDA_OK(cudaFreeAsync(q, other));
  CUDA_OK(cudaDeviceSynchronize());
  for (cudaStream_t x : {gated, other}) CUDA_OK(cudaStreamDestroy(x));
  EXPECT_EQ("", validate(0));
}

// A second free while another thread's capture end is flushing the held free
// (the flush is held in its device wait by a gated stream of device 0).
TEST_F(Streams, ASecondFreeDuringTheFlushIsRefused) {
  cudaStream_t s = nullptr, other = nullptr, gated = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&gated, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  Gate gate;
  CUDA_OK(cudaLaunchHostFunc(gated, Gate::run, &gate));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaFree(p));  // held
  cudaError_t end = cudaErrorUnknown;
  std::thread ender([&] {
    cudaGraph_t graph = nullptr;
    end = cudaStreamEndCapture(s, &graph);
    if (end == cudaSuccess) (void)cudaGraphDestroy(graph);
  });
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusActive;
  while (st != cudaStreamCaptureStatusNone) CUDA_OK(cudaStreamIsCapturing(s, &st));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the ender is in the flush's wait
  EXPECT_TRUE(owns(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(p));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFreeAsync(p, other));
  (void)cudaGetLastError();
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, MiB, other));
  EXPECT_NE(p, q);
  CUDA_OK(cudaFreeAsync(q, other));
  gate.open = true;
  ender.join();
  EXPECT_EQ(cudaSuccess, end);
  EXPECT_FALSE(gate.gave_up);
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaDeviceSynchronize());
  for (cudaStream_t x : {s, other, gated}) CUDA_OK(cudaStreamDestroy(x));
  EXPECT_EQ("", validate(0));
}

}  // namespace
