// tests/shim/test_runtime.cpp: runtime interposition through the dynamic linker. The program calls
// cudaMalloc & co. of libcudart.so.13 (versioned references, as PyTorch's); libglake.so, preloaded,
// must receive them and route them (shim/router.h): device memory to the pool of the current device,
// host/managed/pitched memory and user pools to the real runtime, foreign pointers to the real free.
#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "shim_test.h"

using namespace glake_test;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// Writes a pattern through the device API and reads it back.
void expect_roundtrip(void* p, std::size_t n, unsigned char seed) {
  std::vector<unsigned char> in(n), out(n);
  for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<unsigned char>(seed + i * 7);
  ASSERT_EQ(cudaSuccess, cudaMemcpy(p, in.data(), n, cudaMemcpyHostToDevice));
  ASSERT_EQ(cudaSuccess, cudaMemcpy(out.data(), p, n, cudaMemcpyDeviceToHost));
  ASSERT_EQ(in, out);
}

class Runtime : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(0));
  }
  void TearDown() override { EXPECT_EQ("", validate(0)); }
};

TEST_F(Runtime, MallocAndFreeAreServedByGlake) {
  const glake_stats_t before = stats();
  const int live = standin::live_allocations();
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 3 * MiB + 5));
  ASSERT_NE(nullptr, p);
  EXPECT_EQ(GLAKE_STATUS_ON, api().status());
  EXPECT_TRUE(owns(p));
  EXPECT_EQ(0, api().device_of(p));
  EXPECT_EQ(live, standin::live_allocations()) << "the real runtime allocated: glake did not serve cudaMalloc";
  expect_roundtrip(p, 3 * MiB + 5, 1);
  const glake_stats_t mid = stats();
  EXPECT_EQ(before.allocs + 1, mid.allocs);
  EXPECT_EQ(before.requested + 3 * MiB + 5, mid.requested);
  CUDA_OK(cudaFree(p));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(before.frees + 1, stats().frees);
  EXPECT_EQ(before.requested, stats().requested);
}

TEST_F(Runtime, ZeroAndSmallSizes) {
  void* p = reinterpret_cast<void*>(1);
  CUDA_OK(cudaMalloc(&p, 0));
  EXPECT_EQ(nullptr, p);
  std::vector<void*> small;
  for (std::size_t n : {1u, 100u, 512u, 4000u, 70000u}) {
    void* q = nullptr;
    CUDA_OK(cudaMalloc(&q, n));
    EXPECT_TRUE(owns(q));
    expect_roundtrip(q, n, static_cast<unsigned char>(n));
    small.push_back(q);
  }
  for (void* q : small) CUDA_OK(cudaFree(q));
  EXPECT_EQ(cudaErrorInvalidValue, cudaMalloc(nullptr, 16));
  (void)cudaGetLastError();
}

TEST_F(Runtime, StreamOrderedAllocationsAreServedOnTheirStream) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  void* p = nullptr;
  CUDA_OK(cudaMallocAsync(&p, 5 * MiB, s));
  EXPECT_TRUE(owns(p));
  CUDA_OK(cudaMemsetAsync(p, 0x5a, 5 * MiB, s));
  CUDA_OK(cudaStreamSynchronize(s));
  std::vector<unsigned char> out(5 * MiB);
  CUDA_OK(cudaMemcpy(out.data(), p, out.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(std::vector<unsigned char>(5 * MiB, 0x5a), out);
  CUDA_OK(cudaFreeAsync(p, s));
  EXPECT_FALSE(owns(p));
  // Freed on s, reusable on s at once.
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, 5 * MiB, s));
  EXPECT_EQ(p, q);
  CUDA_OK(cudaFreeAsync(q, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

// The per-thread default stream is each host thread's own stream behind one handle, which the pool
// cannot key: allocations on it go to the real API, and a glake block freed on it is freed as
// cudaFree frees it (after the device's work).
TEST_F(Runtime, PerThreadDefaultStreamVariants) {
  using MallocFn = cudaError_t (*)(void**, size_t, cudaStream_t);
  using FreeFn = cudaError_t (*)(void*, cudaStream_t);
  auto m = reinterpret_cast<MallocFn>(dlsym(RTLD_DEFAULT, "cudaMallocAsync_ptsz"));
  auto f = reinterpret_cast<FreeFn>(dlsym(RTLD_DEFAULT, "cudaFreeAsync_ptsz"));
  ASSERT_NE(nullptr, m);
  ASSERT_NE(nullptr, f);
  const int live = standin::live_allocations();
  void* p = nullptr;
  CUDA_OK(m(&p, MiB, nullptr));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(live + 1, standin::live_allocations());
  CUDA_OK(f(p, nullptr));
  CUDA_OK(cudaMallocAsync(&p, MiB, cudaStreamPerThread));
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaFreeAsync(p, cudaStreamPerThread));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(live, standin::live_allocations());

  void* q = nullptr;
  CUDA_OK(cudaMalloc(&q, MiB));
  ASSERT_TRUE(owns(q));
  CUDA_OK(f(q, nullptr));
  EXPECT_FALSE(owns(q));
  CUDA_OK(cudaMalloc(&q, MiB));
  ASSERT_TRUE(owns(q));
  CUDA_OK(cudaFreeAsync(q, cudaStreamPerThread));
  EXPECT_FALSE(owns(q));
}

// cudaGetLastError returns the latest error, whichever of the runtime and glake gave it.
TEST_F(Runtime, LastErrorIsTheLatest) {
  (void)cudaGetLastError();
  int x = 0;
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(&x));  // the runtime's
  void* p = nullptr;
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, std::size_t{64} << 30));  // glake's, later
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaPeekAtLastError());
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaGetLastError());
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, std::size_t{64} << 30));
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(&x));  // the runtime's, later
  EXPECT_EQ(cudaErrorInvalidValue, cudaGetLastError());
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

TEST_F(Runtime, DefaultPoolGoesToGlakeUserPoolsPassThrough) {
  cudaMemPool_t def = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&def, 0));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  void* p = nullptr;
  CUDA_OK(cudaMallocFromPoolAsync(&p, MiB, def, s));
  EXPECT_TRUE(owns(p));
  CUDA_OK(cudaFreeAsync(p, s));

  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t mine = nullptr;
  CUDA_OK(cudaMemPoolCreate(&mine, &props));
  const int live = standin::live_allocations();
  const auto passed = stats().passthrough_allocs;
  CUDA_OK(cudaMallocFromPoolAsync(&p, MiB, mine, s));
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(live + 1, standin::live_allocations());
  EXPECT_EQ(passed + 1, stats().passthrough_allocs);
  CUDA_OK(cudaFreeAsync(p, s));  // not glake's: the real free
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(live, standin::live_allocations());

  // A user pool made current for the device takes cudaMallocAsync too.
  CUDA_OK(cudaDeviceSetMemPool(0, mine));
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaDeviceSetMemPool(0, def));
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(p));
  CUDA_OK(cudaFreeAsync(p, s));

  // CUDA 13's cudaMemSetMemPool for a device and pinned memory is cudaDeviceSetMemPool.
  cudaMemLocation loc{};
  loc.type = cudaMemLocationTypeDevice;
  loc.id = 0;
  CUDA_OK(cudaMemSetMemPool(&loc, cudaMemAllocationTypePinned, mine));
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(p)) << "served by glake while cudaMemSetMemPool made another pool current";
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaMemSetMemPool(&loc, cudaMemAllocationTypePinned, def));
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(p)) << "cudaMemSetMemPool made the default pool current again";
  CUDA_OK(cudaFreeAsync(p, s));

  // CUDA: "Destroying the current mempool of a device sets the default mempool of that device as the
  // current mempool": glake serves cudaMallocAsync again.
  CUDA_OK(cudaDeviceSetMemPool(0, mine));
  CUDA_OK(cudaMemPoolDestroy(mine));
  cudaMemPool_t now = nullptr;
  CUDA_OK(cudaDeviceGetMemPool(&now, 0));
  ASSERT_EQ(def, now);
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(p)) << "the current pool was destroyed: the default one is current again";
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

TEST_F(Runtime, HostManagedAndPitchedMemoryPassThrough) {
  const int live = standin::live_allocations();
  void* h = nullptr;
  CUDA_OK(cudaMallocHost(&h, MiB));
  EXPECT_FALSE(owns(h));
  CUDA_OK(cudaFreeHost(h));
  void* m = nullptr;
  CUDA_OK(cudaMallocManaged(&m, MiB, cudaMemAttachGlobal));
  EXPECT_FALSE(owns(m));
  EXPECT_EQ(live + 1, standin::live_allocations());
  CUDA_OK(cudaFree(m));
  void* p = nullptr;
  size_t pitch = 0;
  CUDA_OK(cudaMallocPitch(&p, &pitch, 1000, 64));
  EXPECT_FALSE(owns(p));
  CUDA_OK(cudaFree(p));
  EXPECT_EQ(live, standin::live_allocations());
}

TEST_F(Runtime, ForeignPointersAreFreedByTheRealApi) {
  CUDA_OK(cudaFree(nullptr));
  const int live = standin::live_allocations();
  CUdeviceptr a = 0, b = 0;
  ASSERT_EQ(CUDA_SUCCESS, standin::raw_alloc(&a, 3 * MiB));
  ASSERT_EQ(CUDA_SUCCESS, standin::raw_alloc(&b, 100));
  EXPECT_EQ(live + 2, standin::live_allocations());
  EXPECT_FALSE(owns(reinterpret_cast<void*>(a)));
  CUDA_OK(cudaFree(reinterpret_cast<void*>(a)));
  CUDA_OK(cudaFreeAsync(reinterpret_cast<void*>(b), nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(live, standin::live_allocations());
  // Not a live allocation of anyone: the real runtime's error.
  int x = 0;
  EXPECT_EQ(cudaErrorInvalidValue, cudaFree(&x));
  EXPECT_EQ(cudaErrorInvalidValue, cudaGetLastError());
}

TEST_F(Runtime, MemGetInfoCountsWhatGlakeCaches) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 64 * MiB));
  CUDA_OK(cudaFree(p));
  const glake_stats_t s = stats();
  ASSERT_GE(s.cached, 64 * MiB);
  size_t free = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free, &total));
  EXPECT_EQ(total - standin::memory_in_use(0) + s.cached, free);
  EXPECT_LE(free, total);
}

cuuint64_t attribute(cudaMemPool_t pool, cudaMemPoolAttr a) {
  cuuint64_t v = 0;
  EXPECT_EQ(cudaSuccess, cudaMemPoolGetAttribute(pool, a, &v));
  return v;
}

TEST_F(Runtime, DefaultPoolAttributesReportGlakesFigures) {
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 0));
  auto get = [&](cudaMemPoolAttr a) { return attribute(pool, a); };
  cuuint64_t zero = 0;
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 40 * MiB + 3));
  glake_stats_t s = stats();
  EXPECT_EQ(s.physical, get(cudaMemPoolAttrReservedMemCurrent));
  EXPECT_EQ(s.requested, get(cudaMemPoolAttrUsedMemCurrent));
  EXPECT_GE(get(cudaMemPoolAttrUsedMemHigh), 40 * MiB + 3);
  CUDA_OK(cudaFree(p));
  EXPECT_EQ(stats().requested, get(cudaMemPoolAttrUsedMemCurrent));
  EXPECT_GE(get(cudaMemPoolAttrUsedMemHigh), 40 * MiB + 3) << "the peak survives the free";
  // Setting a High value (to 0) resets it to the current value.
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  EXPECT_EQ(get(cudaMemPoolAttrUsedMemCurrent), get(cudaMemPoolAttrUsedMemHigh));
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
  EXPECT_EQ(get(cudaMemPoolAttrReservedMemCurrent), get(cudaMemPoolAttrReservedMemHigh));
  // TrimTo returns what glake caches.
  ASSERT_GT(stats().cached, 0u);
  CUDA_OK(cudaMemPoolTrimTo(pool, 0));
  s = stats();
  EXPECT_EQ(0u, s.cached);
  EXPECT_EQ(s.physical, get(cudaMemPoolAttrReservedMemCurrent));
  // The release threshold is the real pool's (PyTorch sets it to UINT64_MAX).
  cuuint64_t big = UINT64_MAX;
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &big));
  EXPECT_EQ(UINT64_MAX, get(cudaMemPoolAttrReleaseThreshold));
}

// CUDA: after cudaMemPoolTrimTo(pool, n) a pool that held at least n bytes still holds at least n
// ("guaranteed to have at least minBytesToKeep bytes reserved after the operation"). glake gives
// pages back whole: it keeps a page that would take it below n.
TEST_F(Runtime, TrimToKeepsAtLeastWhatItIsTold) {
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 0));
  auto get = [&](cudaMemPoolAttr a) { return attribute(pool, a); };
  void* live = nullptr;
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&live, 4 * MiB));
  CUDA_OK(cudaMalloc(&p, 16 * MiB));
  CUDA_OK(cudaFree(p));
  const cuuint64_t reserved = get(cudaMemPoolAttrReservedMemCurrent);
  ASSERT_GE(stats().cached, 16 * MiB);
  const cuuint64_t keep = reserved - 5 * MiB;  // 2.5 pages less
  CUDA_OK(cudaMemPoolTrimTo(pool, keep));
  EXPECT_GE(get(cudaMemPoolAttrReservedMemCurrent), keep) << "trimmed below minBytesToKeep";
  EXPECT_LE(get(cudaMemPoolAttrReservedMemCurrent), reserved - 4 * MiB) << "kept more than whole pages need";
  CUDA_OK(cudaMemPoolTrimTo(pool, 0));
  EXPECT_EQ(0u, stats().cached);
  CUDA_OK(cudaFree(live));
}

// CUDA: cudaMemPoolAttrReservedMemHigh and cudaMemPoolAttrUsedMemHigh are separate high-water marks;
// setting one to 0 resets that one only. Programs reset UsedMemHigh alone to measure a phase's peak
// use while keeping the run's reserved peak.
TEST_F(Runtime, EachHighWaterMarkResetsOnlyItself) {
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 0));
  auto get = [&](cudaMemPoolAttr a) { return attribute(pool, a); };
  cuuint64_t zero = 0;
  (void)api().trim(0, 0);  // -1 before the device's first allocation: no pool yet
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 40 * MiB));
  CUDA_OK(cudaFree(p));
  ASSERT_EQ(0, api().trim(0, 0));  // reserved and used are both back down; their peaks are not
  const cuuint64_t reserved_high = get(cudaMemPoolAttrReservedMemHigh);
  const cuuint64_t used_high = get(cudaMemPoolAttrUsedMemHigh);
  ASSERT_GE(reserved_high, 40 * MiB);
  ASSERT_GE(used_high, 40 * MiB);
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  EXPECT_EQ(get(cudaMemPoolAttrUsedMemCurrent), get(cudaMemPoolAttrUsedMemHigh));
  EXPECT_EQ(reserved_high, get(cudaMemPoolAttrReservedMemHigh)) << "resetting UsedMemHigh reset ReservedMemHigh";
  CUDA_OK(cudaMalloc(&p, 40 * MiB));
  CUDA_OK(cudaFree(p));
  ASSERT_EQ(0, api().trim(0, 0));
  const cuuint64_t used_high2 = get(cudaMemPoolAttrUsedMemHigh);
  ASSERT_GE(used_high2, 40 * MiB);
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
  EXPECT_EQ(get(cudaMemPoolAttrReservedMemCurrent), get(cudaMemPoolAttrReservedMemHigh));
  EXPECT_EQ(used_high2, get(cudaMemPoolAttrUsedMemHigh)) << "resetting ReservedMemHigh reset UsedMemHigh";
}

TEST_F(Runtime, OutOfMemoryIsTheErrorCallersExpect) {
  const std::size_t before = standin::memory_in_use(0);
  void* p = reinterpret_cast<void*>(1);
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMalloc(&p, std::size_t{64} << 30));
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaPeekAtLastError());
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaGetLastError());
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  EXPECT_EQ(cudaErrorMemoryAllocation, cudaMallocAsync(&p, std::size_t{64} << 30, s));
  (void)cudaGetLastError();
  EXPECT_GE(stats().ooms, 2u);
  // Nothing held on to: the pool can still serve.
  CUDA_OK(cudaMallocAsync(&p, MiB, s));
  CUDA_OK(cudaFreeAsync(p, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  // What the failed attempts made is cached, not lost: a trim gives it back.
  ASSERT_EQ(0, api().trim(0, 0));
  EXPECT_LE(standin::memory_in_use(0), before);
}

TEST_F(Runtime, EachDeviceHasItsOwnPool) {
  int n = 0;
  CUDA_OK(cudaGetDeviceCount(&n));
  ASSERT_GE(n, 2);
  void* p0 = nullptr;
  CUDA_OK(cudaMalloc(&p0, 2 * MiB));
  CUDA_OK(cudaSetDevice(1));
  const std::size_t used1 = standin::memory_in_use(1);
  void* p1 = nullptr;
  CUDA_OK(cudaMalloc(&p1, 2 * MiB));
  EXPECT_EQ(0, api().device_of(p0));
  EXPECT_EQ(1, api().device_of(p1));
  EXPECT_GT(standin::memory_in_use(1), used1) << "device 1's memory must come from device 1";
  EXPECT_GT(stats(1).allocs, 0u);
  // Freed from another device's context: the owning pool is found.
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFree(p1));
  CUDA_OK(cudaFree(p0));
  EXPECT_FALSE(owns(p1));
  EXPECT_EQ("", validate(1));
}

TEST_F(Runtime, PeerAccessCoversExistingAndLaterMappings) {
  int n = 0;
  CUDA_OK(cudaGetDeviceCount(&n));
  ASSERT_GE(n, 3) << "run with GLAKE_STANDIN_DEVICES=3";
  CUDA_OK(cudaSetDevice(2));
  void* before = nullptr;
  CUDA_OK(cudaMalloc(&before, 4 * MiB));
  EXPECT_EQ(1, standin::mapping_access(before, 2));
  EXPECT_EQ(0, standin::mapping_access(before, 0));
  // Device 0 gains access to device 2's memory.
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaDeviceEnablePeerAccess(2, 0));
  EXPECT_EQ(1, standin::mapping_access(before, 0)) << "an existing mapping";
  CUDA_OK(cudaSetDevice(2));
  void* after = nullptr;
  CUDA_OK(cudaMalloc(&after, 200 * MiB));  // needs new pages
  EXPECT_EQ(1, standin::mapping_access(after, 0)) << "a later mapping";
  EXPECT_EQ(0, standin::mapping_access(after, 1));
  // PyTorch's way: cudaMemPoolSetAccess on the default pool.
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 2));
  cudaMemAccessDesc desc{};
  desc.location.type = cudaMemLocationTypeDevice;
  desc.location.id = 1;
  desc.flags = cudaMemAccessFlagsProtReadWrite;
  CUDA_OK(cudaMemPoolSetAccess(pool, &desc, 1));
  EXPECT_EQ(1, standin::mapping_access(before, 1));
  EXPECT_EQ(1, standin::mapping_access(after, 1));
  CUDA_OK(cudaFree(before));
  CUDA_OK(cudaFree(after));
  EXPECT_EQ("", validate(2));
  CUDA_OK(cudaSetDevice(0));
}

TEST_F(Runtime, PluggableAllocatorEntryPoints) {
  ASSERT_NE(nullptr, api().malloc);
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  void* p = api().malloc(3 * MiB, 0, s);
  ASSERT_NE(nullptr, p);
  EXPECT_TRUE(owns(p));
  expect_roundtrip(p, 3 * MiB, 9);
  api().free(p, 3 * MiB, 0, s);
  EXPECT_FALSE(owns(p));
  EXPECT_EQ(nullptr, api().malloc(0, 0, s));
  EXPECT_EQ(nullptr, api().malloc(std::int64_t{1} << 40, 0, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

// glake_stats' out_size is the caller's sizeof(glake_stats_t): a program built against a newer glake.h
// (a larger struct) gets the fields this library does not know as zeros, as a pool-less device gets
// every field.
TEST_F(Runtime, StatsZeroTheFieldsOfALargerStruct) {
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  struct Newer {
    glake_stats_t known;
    std::uint64_t later[4];
  };
  for (int device : {0, 2, -1, 99}) {
    Newer n;
    std::memset(&n, 0xab, sizeof n);
    (void)api().stats(device, &n.known, sizeof n);
    for (std::uint64_t v : n.later) EXPECT_EQ(0u, v) << "device " << device;
  }
  Newer n;
  std::memset(&n, 0xab, sizeof n);
  ASSERT_EQ(0, api().stats(0, &n.known, sizeof n));
  EXPECT_EQ(stats().requested, n.known.requested);
  CUDA_OK(cudaFree(p));
}

// PyTorch's pluggable allocator frees every pointer it got, the NULL of a 0-byte tensor included:
// nothing to do, and no error left for cudaGetLastError (PyTorch checks it after each kernel launch).
TEST_F(Runtime, PluggableFreeOfNullIsANoOp) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  CUDA_OK(cudaGetLastError());
  void* p = api().malloc(0, 0, s);
  ASSERT_EQ(nullptr, p);
  api().free(p, 0, 0, s);
  api().free(nullptr, 0, 0, nullptr);
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
  CUDA_OK(cudaStreamDestroy(s));
}

// A device PyTorch names that does not exist (the stand-in has 3) gets no memory and CUDA's error,
// not memory of the stream's device (glake used to try to make it a pool, then pass the call through).
TEST_F(Runtime, PluggableMallocOnADeviceThatDoesNotExist) {
  const int live = standin::live_allocations();
  for (int device : {3, 7, 63, 64, -1}) {
    EXPECT_EQ(nullptr, api().malloc(MiB, device, nullptr)) << device;
    EXPECT_EQ(cudaErrorInvalidDevice, cudaGetLastError()) << device;
  }
  EXPECT_EQ(live, standin::live_allocations());
  // The devices that exist are served as before.
  void* p = api().malloc(MiB, 2, nullptr);
  ASSERT_NE(nullptr, p);
  EXPECT_EQ(2, api().device_of(p));
  api().free(p, MiB, 2, nullptr);
  EXPECT_EQ("", validate(2));
}

}  // namespace
