// tests/shim/test_driver.cpp: driver interposition. The real runtime reaches the driver through
// cuGetProcAddress (found with dlsym on libcuda.so.1), frameworks through cudaGetDriverEntryPoint*,
// and programs linked with -lcuda through the dynamic linker: every door must hand out glake's
// cuMemAlloc_v2, cuMemFree_v2, cuMemAllocAsync, cuMemFreeAsync (and _ptsz), cuMemGetInfo_v2 and the
// cuIpc* functions, and every other symbol unchanged. This program links the stand-in libcuda.so.1 directly too.
#include <cuda.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shim_test.h"

using namespace glake_test;

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

std::string object_of(const void* fn) {
  Dl_info info{};
  if (fn == nullptr || dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "";
  std::string path = info.dli_fname;
  return path.substr(path.rfind('/') + 1);
}
bool is_glake(const void* fn) { return object_of(fn).rfind("libglake.so", 0) == 0; }
bool is_driver(const void* fn) { return object_of(fn).rfind("libcuda.so", 0) == 0; }

void* libcuda() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(nullptr, h);
  return h;
}

using GetProcV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using GetProcV1 = CUresult (*)(const char*, void**, int, cuuint64_t);

void* proc(GetProcV2 get, const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
  void* p = nullptr;
  CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  const CUresult r = get(name, &p, version, flags, &st);
  return r == CUDA_SUCCESS ? p : nullptr;
}

class Driver : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_GLAKE();
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaFree(nullptr));  // runtime and context up
  }
  void TearDown() override { EXPECT_EQ("", validate(0)); }
};

TEST_F(Driver, DlsymOnTheDriverHandleAnswersGlakesFunctions) {
  void* h = libcuda();
  for (const char* name : {"cuMemAlloc_v2", "cuMemFree_v2", "cuMemAllocAsync", "cuMemAllocAsync_ptsz",
                           "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemGetInfo_v2", "cuGetProcAddress",
                           "cuGetProcAddress_v2", "cuIpcGetMemHandle", "cuIpcOpenMemHandle_v2",
                           "cuIpcCloseMemHandle", "cuStreamDestroy_v2", "cuStreamBeginCapture_v2",
                           "cuStreamBeginCaptureToGraph", "cuStreamEndCapture", "cuStreamBeginCapture_v2_ptsz",
                           "cuStreamBeginCaptureToGraph_ptsz", "cuStreamEndCapture_ptsz", "cuCtxEnablePeerAccess",
                           "cuDeviceSetMemPool", "cuMemSetMemPool", "cuMemPoolDestroy", "cuMemPoolGetAttribute",
                           "cuMemPoolSetAttribute", "cuMemPoolTrimTo", "cuMemPoolSetAccess",
                           "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz"}) {
    void* p = dlsym(h, name);
    EXPECT_TRUE(is_glake(p)) << name << " came from " << object_of(p);
    EXPECT_EQ(dlsym(RTLD_DEFAULT, name), p) << name;
  }
  // CUDA 10.0's capture calls, without a mode, are not watched.
  for (const char* name : {"cuMemCreate", "cuMemMap", "cuStreamCreate", "cuMemAlloc", "cuMemAllocPitch_v2",
                           "cuStreamBeginCapture", "cuStreamBeginCapture_ptsz"})
    EXPECT_TRUE(is_driver(dlsym(h, name))) << name << " must pass through";
  EXPECT_EQ(nullptr, dlsym(h, "cuNoSuchFunction"));
  EXPECT_NE(nullptr, dlerror());
}

TEST_F(Driver, RtldNextAndDefaultKeepTheCallersView) {
  // glibc answers these relative to the calling object. From this program, the next dlsym is
  // libglake.so's (the preload comes right after the program); a stub that called glibc's dlsym
  // instead of jumping to it would be taken for the caller and answer libc's.
  EXPECT_TRUE(is_glake(dlsym(RTLD_NEXT, "dlsym"))) << object_of(dlsym(RTLD_NEXT, "dlsym"));
  EXPECT_TRUE(is_glake(dlsym(RTLD_NEXT, "cudaMalloc")));
  EXPECT_TRUE(is_glake(dlsym(RTLD_DEFAULT, "cudaMalloc")));
  EXPECT_NE(nullptr, dlsym(RTLD_NEXT, "malloc"));
  EXPECT_EQ(nullptr, dlsym(RTLD_DEFAULT, "glake_no_such_symbol"));
}

TEST_F(Driver, TheRuntimesOwnTableHoldsGlakesFunctions) {
  for (const char* name : {"cuMemAlloc_v2", "cuMemFree_v2", "cuMemAllocAsync", "cuMemAllocAsync_ptsz",
                           "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemGetInfo_v2", "cuIpcGetMemHandle",
                           "cuIpcOpenMemHandle", "cuIpcCloseMemHandle", "cuStreamDestroy", "cuStreamBeginCapture",
                           "cuStreamEndCapture"})
    EXPECT_TRUE(is_glake(standin_runtime_driver_entry(name))) << name;
  EXPECT_TRUE(is_driver(standin_runtime_driver_entry("cuStreamCreate")));
}

TEST_F(Driver, GetProcAddressSwapsOnlyWhatGlakeInterposes) {
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  ASSERT_TRUE(is_glake(reinterpret_cast<void*>(get)));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), proc(get, "cuMemAlloc", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemFree_v2"), proc(get, "cuMemFree", 12000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2"), proc(get, "cuMemGetInfo", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemAllocAsync"), proc(get, "cuMemAllocAsync", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemAllocAsync_ptsz"),
            proc(get, "cuMemAllocAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemFreeAsync_ptsz"),
            proc(get, "cuMemFreeAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"), proc(get, "cuGetProcAddress", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuGetProcAddress"), proc(get, "cuGetProcAddress", 11000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle"), proc(get, "cuIpcGetMemHandle", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuIpcOpenMemHandle_v2"), proc(get, "cuIpcOpenMemHandle", 12000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuIpcCloseMemHandle"), proc(get, "cuIpcCloseMemHandle", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamDestroy_v2"), proc(get, "cuStreamDestroy", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamBeginCapture_v2"), proc(get, "cuStreamBeginCapture", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamBeginCaptureToGraph"), proc(get, "cuStreamBeginCaptureToGraph", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamEndCapture"), proc(get, "cuStreamEndCapture", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuCtxEnablePeerAccess"), proc(get, "cuCtxEnablePeerAccess", 13000));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuDeviceSetMemPool"), proc(get, "cuDeviceSetMemPool", 13000));
  constexpr cuuint64_t ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamBeginCapture_v2_ptsz"), proc(get, "cuStreamBeginCapture", 13000, ptds));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamBeginCaptureToGraph_ptsz"),
            proc(get, "cuStreamBeginCaptureToGraph", 13000, ptds));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuStreamEndCapture_ptsz"), proc(get, "cuStreamEndCapture", 13000, ptds));
  // Not glake's: CUDA 10.0's cuStreamBeginCapture (no mode).
  for (void* p : {proc(get, "cuStreamBeginCapture", 10000), proc(get, "cuStreamBeginCapture", 10000, ptds)})
    EXPECT_TRUE(is_driver(p)) << object_of(p);
  // The 32-bit cuMemAlloc of CUDA < 3.2 is not glake's.
  void* old = proc(get, "cuMemAlloc", 3000);
  EXPECT_TRUE(is_driver(old)) << object_of(old);
  // Everything else is the driver's own.
  for (const char* name : {"cuMemCreate", "cuMemAddressReserve", "cuStreamCreate", "cuEventRecord", "cuMemAllocPitch"})
    EXPECT_TRUE(is_driver(proc(get, name, 13000))) << name;
  EXPECT_EQ(nullptr, proc(get, "cuNoSuchFunction", 13000));
  // The old door answers the same.
  auto get_v1 = reinterpret_cast<GetProcV1>(dlsym(libcuda(), "cuGetProcAddress"));
  void* p = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, get_v1("cuMemFree", &p, 13000, 0));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemFree_v2"), p);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TEST_F(Driver, DriverEntryPointsAnswerGlakesFunctions) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  CUDA_OK(cudaGetDriverEntryPoint("cuMemAlloc", &p, cudaEnableDefault, &q));
  EXPECT_EQ(cudaDriverEntryPointSuccess, q);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), p);
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemGetInfo", &p, 13000, cudaEnableDefault, &q));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2"), p);
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemFreeAsync", &p, 12080, cudaEnablePerThreadDefaultStream, &q));
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemFreeAsync_ptsz"), p);
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemCreate", &p, 13000, cudaEnableDefault, &q));
  EXPECT_TRUE(is_driver(p));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &p, 3000, cudaEnableDefault, &q));
  EXPECT_FALSE(is_glake(p));
}
#pragma GCC diagnostic pop

TEST_F(Driver, AllocationsThroughEntryPointsAreGlakes) {
  void* fa = nullptr;
  void* ff = nullptr;
  void* faa = nullptr;
  void* ffa = nullptr;
  void* fi = nullptr;
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fa, 13000, cudaEnableDefault, nullptr));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemFree", &ff, 13000, cudaEnableDefault, nullptr));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAllocAsync", &faa, 13000, cudaEnableDefault, nullptr));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemFreeAsync", &ffa, 13000, cudaEnableDefault, nullptr));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemGetInfo", &fi, 13000, cudaEnableDefault, nullptr));
  auto mem_alloc = reinterpret_cast<decltype(&cuMemAlloc_v2)>(fa);
  auto mem_free = reinterpret_cast<decltype(&cuMemFree_v2)>(ff);
  auto alloc_async = reinterpret_cast<decltype(&cuMemAllocAsync)>(faa);
  auto free_async = reinterpret_cast<decltype(&cuMemFreeAsync)>(ffa);
  auto get_info = reinterpret_cast<decltype(&cuMemGetInfo_v2)>(fi);
  const int live = standin::live_allocations();
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, mem_alloc(&d, 3 * MiB));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(d)));
  EXPECT_EQ(CUDA_SUCCESS, mem_free(d));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(d)));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  ASSERT_EQ(CUDA_SUCCESS, alloc_async(&d, MiB, reinterpret_cast<CUstream>(s)));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(d)));
  EXPECT_EQ(CUDA_SUCCESS, free_async(d, reinterpret_cast<CUstream>(s)));
  EXPECT_EQ(live, standin::live_allocations());
  std::size_t free = 0, total = 0;
  ASSERT_EQ(CUDA_SUCCESS, get_info(&free, &total));
  EXPECT_EQ(total - standin::memory_in_use(0) + stats().cached, free);
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
}

// Zero bytes: each allocation call gives the real API's answer (the driver's cuMemAlloc refuses them;
// glake used to answer success with a null pointer). tests/gpu/shim checks the real ones agree.
TEST_F(Driver, ZeroBytesGetTheRealApisAnswer) {
  void* fa = nullptr;
  void* faa = nullptr;
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fa, 13000, cudaEnableDefault, nullptr));
  CUDA_OK(cudaGetDriverEntryPointByVersion("cuMemAllocAsync", &faa, 13000, cudaEnableDefault, nullptr));
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  const auto passed = stats().passthrough_allocs;
  CUdeviceptr d = 1;
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, reinterpret_cast<decltype(&cuMemAlloc_v2)>(fa)(&d, 0));
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE, cuMemAlloc_v2(&d, 0));
  d = 1;
  EXPECT_EQ(CUDA_SUCCESS, reinterpret_cast<decltype(&cuMemAllocAsync)>(faa)(&d, 0, reinterpret_cast<CUstream>(s)));
  EXPECT_EQ(0u, d);
  void* p = reinterpret_cast<void*>(1);
  CUDA_OK(cudaMallocAsync(&p, 0, s));
  EXPECT_EQ(nullptr, p);
  p = reinterpret_cast<void*>(1);
  CUDA_OK(cudaMalloc(&p, 0));
  EXPECT_EQ(nullptr, p);
  cudaMemPool_t pool = nullptr;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, 0));
  p = reinterpret_cast<void*>(1);
  CUDA_OK(cudaMallocFromPoolAsync(&p, 0, pool, s));
  EXPECT_EQ(nullptr, p);
  EXPECT_EQ(passed + 6, stats().passthrough_allocs) << "glake answered a zero-byte request itself";
  CUDA_OK(cudaStreamDestroy(s));
}

// A program of the driver API that frees on a stream and destroys it: the pool forgets the stream, so
// what was freed on it settles once its work is done (and a new stream with that handle starts afresh).
TEST_F(Driver, StreamDestroyedThroughTheDriverLetsWhatWasFreedOnItGo) {
  CUDA_OK(cudaDeviceSynchronize());
  (void)api().trim(0, 0);
  const std::size_t before = stats(0).physical;
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, 64 * MiB, s));
  ASSERT_TRUE(owns(reinterpret_cast<void*>(p)));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_EQ(0, api().trim(0, 0));
  EXPECT_LE(stats(0).physical, before) << "what was freed on the destroyed stream stays cached";
}

// Peer access enabled through the driver, as a program linked with the static runtime (NCCL's) or XLA
// enables it: glake's existing and later mappings of the peer's memory grant the current device, as
// after cudaDeviceEnablePeerAccess; the current context is left as it was.
TEST_F(Driver, PeerAccessEnabledThroughTheDriverReachesGlakesMappings) {
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  const auto enable = reinterpret_cast<decltype(&cuCtxEnablePeerAccess)>(proc(get, "cuCtxEnablePeerAccess", 12000));
  ASSERT_NE(nullptr, enable);
  CUDA_OK(cudaSetDevice(2));
  void* before = nullptr;
  CUDA_OK(cudaMalloc(&before, 4 * MiB));
  ASSERT_TRUE(owns(before));
  EXPECT_EQ(0, standin::mapping_access(before, 1));
  CUdevice d2 = 0;
  CUcontext c2 = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGet(&d2, 2));
  ASSERT_EQ(CUDA_SUCCESS, cuDevicePrimaryCtxRetain(&c2, d2));
  CUDA_OK(cudaSetDevice(1));
  CUDA_OK(cudaFree(nullptr));
  CUcontext current = nullptr, after_call = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuCtxGetCurrent(&current));
  ASSERT_EQ(CUDA_SUCCESS, enable(c2, 0));  // device 1 may now reach device 2's memory
  ASSERT_EQ(CUDA_SUCCESS, cuCtxGetCurrent(&after_call));
  EXPECT_EQ(current, after_call);
  EXPECT_EQ(1, standin::mapping_access(before, 1)) << "an existing mapping";
  EXPECT_EQ(0, standin::mapping_access(before, 0));
  EXPECT_EQ(CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, cuCtxEnablePeerAccess(c2, 0)) << "the driver's answer, through";
  CUDA_OK(cudaSetDevice(2));
  void* later = nullptr;
  CUDA_OK(cudaMalloc(&later, 200 * MiB));  // new pages
  EXPECT_EQ(1, standin::mapping_access(later, 1)) << "a later mapping";
  CUDA_OK(cudaFree(later));
  CUDA_OK(cudaFree(before));
  EXPECT_EQ("", validate(2));
  ASSERT_EQ(CUDA_SUCCESS, cuDevicePrimaryCtxRelease(d2));
  CUDA_OK(cudaSetDevice(0));
}

// cuMemAllocAsync on a stream of device 1 while device 0's context is current: device 1's memory, and
// its stream-ordered free settles (an event of device 0's pool could not record that stream).
TEST_F(Driver, AsyncAllocationComesFromTheStreamsDevice) {
  CUDA_OK(cudaSetDevice(1));
  CUstream s1 = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
  CUDA_OK(cudaSetDevice(0));
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, 16 * MiB, s1));
  EXPECT_EQ(1, api().device_of(reinterpret_cast<void*>(p)));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s1));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s1));
  CUdeviceptr q = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&q, 16 * MiB, s1));
  EXPECT_EQ(p, q) << "the block freed on its stream was not reused there";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(q, s1));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s1));
  EXPECT_EQ("", validate(1));
}

// CUDA: cuMemAllocAsync allocates from the device's current pool. A program (driver API, or the
// static runtime) that makes a pool of its own current with cuDeviceSetMemPool gets its allocations
// from that pool, not from glake's, until it makes the default pool current again.
TEST_F(Driver, APoolMadeCurrentThroughTheDriverTakesAsyncAllocations) {
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine = nullptr, def = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&mine, &props));
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetDefaultMemPool(&def, 0));
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceSetMemPool(0, mine));
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "served by glake while another pool is current";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  void* q = nullptr;
  CUDA_OK(cudaMallocAsync(&q, MiB, reinterpret_cast<cudaStream_t>(s)));
  EXPECT_FALSE(owns(q)) << "the runtime's call, served by glake while another pool is current";
  CUDA_OK(cudaFreeAsync(q, reinterpret_cast<cudaStream_t>(s)));
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceSetMemPool(0, def));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "the default pool is current again";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  // Through cuGetProcAddress (the static runtime's cudaDeviceSetMemPool), and chosen through the
  // runtime, undone through the driver.
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  const auto set_pool = reinterpret_cast<decltype(&cuDeviceSetMemPool)>(proc(get, "cuDeviceSetMemPool", 13000));
  ASSERT_NE(nullptr, set_pool);
  ASSERT_EQ(CUDA_SUCCESS, set_pool(0, mine));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "served by glake while another pool is current";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  CUDA_OK(cudaDeviceSetMemPool(0, reinterpret_cast<cudaMemPool_t>(mine)));
  ASSERT_EQ(CUDA_SUCCESS, set_pool(0, def));
  CUDA_OK(cudaMallocAsync(&q, MiB, reinterpret_cast<cudaStream_t>(s)));
  EXPECT_TRUE(owns(q)) << "the default pool is current again: glake serves";
  CUDA_OK(cudaFreeAsync(q, reinterpret_cast<cudaStream_t>(s)));
  // CUDA 13's cuMemSetMemPool for a device and pinned memory is cuDeviceSetMemPool, through every door.
  const auto set_mem_pool = reinterpret_cast<decltype(&cuMemSetMemPool)>(proc(get, "cuMemSetMemPool", 13000));
  ASSERT_NE(nullptr, set_mem_pool);
  EXPECT_TRUE(is_glake(reinterpret_cast<void*>(set_mem_pool)));
  CUmemLocation loc{};
  loc.type = CU_MEM_LOCATION_TYPE_DEVICE;
  loc.id = 0;
  ASSERT_EQ(CUDA_SUCCESS, set_mem_pool(&loc, CU_MEM_ALLOCATION_TYPE_PINNED, mine));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "served by glake while cuMemSetMemPool made another pool current";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuMemSetMemPool(&loc, CU_MEM_ALLOCATION_TYPE_PINNED, def));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "cuMemSetMemPool made the default pool current again";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  // Destroying the current pool makes the default one current again (CUDA): glake serves again,
  // also when the destroy comes through cuGetProcAddress (a statically linked runtime).
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceSetMemPool(0, mine));
  const auto destroy = reinterpret_cast<decltype(&cuMemPoolDestroy)>(proc(get, "cuMemPoolDestroy", 11020));
  ASSERT_NE(nullptr, destroy);
  ASSERT_EQ(CUDA_SUCCESS, destroy(mine));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "the current pool was destroyed: glake serves";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// A statically linked runtime's cudaMemPool* calls and cudaMallocFromPoolAsync reach the driver's
// through cuGetProcAddress: on the device's default pool they report, reset, trim and allocate
// glake's memory, as the runtime's do; another pool's stay the driver's. And the runtime's own calls,
// which reach the driver's inside glake's runtime hooks, count glake's figures once.
TEST_F(Driver, TheDefaultPoolThroughTheDriverIsGlakes) {
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  auto fn = [&](const char* name, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* p = proc(get, name, 12000, flags);
    EXPECT_TRUE(is_glake(p)) << name << " came from " << object_of(p);
    return p;
  };
  const auto get_attr = reinterpret_cast<decltype(&cuMemPoolGetAttribute)>(fn("cuMemPoolGetAttribute"));
  const auto set_attr = reinterpret_cast<decltype(&cuMemPoolSetAttribute)>(fn("cuMemPoolSetAttribute"));
  const auto trim_to = reinterpret_cast<decltype(&cuMemPoolTrimTo)>(fn("cuMemPoolTrimTo"));
  const auto alloc_from = reinterpret_cast<decltype(&cuMemAllocFromPoolAsync)>(fn("cuMemAllocFromPoolAsync"));
  ASSERT_TRUE(get_attr && set_attr && trim_to && alloc_from);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "cuMemAllocFromPoolAsync_ptsz"),
            fn("cuMemAllocFromPoolAsync", CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM));
  EXPECT_TRUE(is_glake(fn("cuMemPoolSetAccess")));
  CUmemoryPool def = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetDefaultMemPool(&def, 0));
  auto attr = [&](CUmemPool_attribute a) {
    cuuint64_t v = 0;
    EXPECT_EQ(CUDA_SUCCESS, get_attr(def, a, &v));
    return v;
  };
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, alloc_from(&p, 40 * MiB + 3, def, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "the default pool's allocation";
  EXPECT_EQ(stats().physical, attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT));
  EXPECT_EQ(stats().requested, attr(CU_MEMPOOL_ATTR_USED_MEM_CURRENT));
  EXPECT_GE(attr(CU_MEMPOOL_ATTR_USED_MEM_HIGH), 40 * MiB + 3);
  cuuint64_t runtime_used = 0;
  CUDA_OK(cudaMemPoolGetAttribute(reinterpret_cast<cudaMemPool_t>(def), cudaMemPoolAttrUsedMemCurrent, &runtime_used));
  EXPECT_EQ(stats().requested, runtime_used) << "the runtime's call counts glake's figures once";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  cuuint64_t zero = 0;
  ASSERT_EQ(CUDA_SUCCESS, set_attr(def, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &zero));
  EXPECT_EQ(attr(CU_MEMPOOL_ATTR_USED_MEM_CURRENT), attr(CU_MEMPOOL_ATTR_USED_MEM_HIGH)) << "the peak was reset";
  ASSERT_GE(stats().cached, 40 * MiB);
  ASSERT_EQ(CUDA_SUCCESS, trim_to(def, 0));
  EXPECT_EQ(0u, stats().cached) << "the trim gave glake's cache back";
  EXPECT_EQ(stats().physical, attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT));

  // Another pool: the driver's, untouched.
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&mine, &props));
  ASSERT_EQ(CUDA_SUCCESS, alloc_from(&p, MiB, mine, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p)));
  cuuint64_t used = 0;
  ASSERT_EQ(CUDA_SUCCESS, get_attr(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
  EXPECT_EQ(MiB, used) << "another pool reports its own figures only";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolDestroy(mine));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// The pool API came with CUDA 11.2: asked for at an older version, the driver has none of it, and
// neither has glake (a caller must not get glake's function where CUDA answers NOT_FOUND).
TEST_F(Driver, PoolCallsAskedForBeforeCuda112AreNotFound) {
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  for (const char* name : {"cuMemPoolDestroy", "cuMemPoolGetAttribute", "cuMemPoolSetAttribute", "cuMemPoolTrimTo",
                           "cuMemPoolSetAccess", "cuMemAllocFromPoolAsync", "cuDeviceSetMemPool"}) {
    for (cuuint64_t flags : {CU_GET_PROC_ADDRESS_DEFAULT, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM}) {
      void* p = reinterpret_cast<void*>(1);
      CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SUCCESS;
      EXPECT_EQ(CUDA_ERROR_NOT_FOUND, get(name, &p, 11010, flags, &st)) << name;
      EXPECT_EQ(nullptr, p) << name;
      EXPECT_EQ(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT, st) << name;
      EXPECT_TRUE(is_glake(proc(get, name, 11020, flags))) << name;
    }
  }
}

// A user pool's calls through the driver (a statically linked runtime's cudaMallocFromPoolAsync on a
// pool of its own) are the hot path of such a program: once glake knows every device's default pool,
// telling that a pool is none of them must not ask the driver for them again, call after call.
TEST_F(Driver, AUserPoolsCallsDoNotAskTheDriverForTheDefaultPoolsEachTime) {
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&mine, &props));
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr p = 0;
  cuuint64_t used = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocFromPoolAsync(&p, MiB, mine, s));  // glake learns the default pools
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  const auto asked = standin::default_pool_queries();
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(CUDA_SUCCESS, cuMemAllocFromPoolAsync(&p, MiB, mine, s));
    EXPECT_FALSE(owns(reinterpret_cast<void*>(p)));
    ASSERT_EQ(CUDA_SUCCESS, cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
    ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  }
  EXPECT_EQ(asked, standin::default_pool_queries()) << "each call on a user pool asked the driver for every device's default pool";
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  CUmemoryPool def = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetDefaultMemPool(&def, 0));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocFromPoolAsync(&p, MiB, def, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "the default pool is still glake's";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolDestroy(mine));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// A destroy's recheck looks at the device's current pool, then clears glake's flag: a pool made current
// by another thread in between (its cuDeviceSetMemPool done, its flag set) must stay in charge of
// cuMemAllocAsync, not be forgotten by the late clear.
TEST_F(Driver, APoolMadeCurrentWhileADestroyRechecksStaysCurrent) {
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool first = nullptr, second = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&first, &props));
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&second, &props));
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceSetMemPool(0, first));
  // The destroy makes the default pool current; as glake's recheck sees that, "another thread" makes
  // `second` current.
  standin::after_next_get_mem_pool([](void* pool) { (void)cuDeviceSetMemPool(0, static_cast<CUmemoryPool>(pool)); },
                          second);
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolDestroy(first));
  CUmemoryPool now = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetMemPool(&now, 0));
  ASSERT_EQ(second, now);
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "served by glake while another pool is current";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuMemPoolDestroy(second));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << "the default pool is current again";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// The other order: a pool made current and, before the setter's glake has noted that, destroyed by
// another thread (whose recheck finds nothing noted yet). CUDA leaves the default pool current, so
// glake must serve cuMemAllocAsync and cudaMallocAsync again, not pass them through for good.
TEST_F(Driver, APoolDestroyedAsAnotherThreadMakesItCurrentLeavesTheDefaultPoolGlakes) {
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool def = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetDefaultMemPool(&def, 0));
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  auto destroy_elsewhere = [](void* pool) {
    std::thread([pool] { (void)cudaMemPoolDestroy(static_cast<cudaMemPool_t>(pool)); }).join();
  };
  for (bool runtime : {false, true}) {
    CUmemoryPool mine = nullptr;
    ASSERT_EQ(CUDA_SUCCESS, cuMemPoolCreate(&mine, &props));
    standin::after_next_set_mem_pool(destroy_elsewhere, mine);
    if (runtime) {
      CUDA_OK(cudaDeviceSetMemPool(0, reinterpret_cast<cudaMemPool_t>(mine)));
    } else {
      ASSERT_EQ(CUDA_SUCCESS, cuDeviceSetMemPool(0, mine));
    }
    CUmemoryPool now = nullptr;
    ASSERT_EQ(CUDA_SUCCESS, cuDeviceGetMemPool(&now, 0));
    ASSERT_EQ(def, now) << "the destroy made the default pool current";
    CUdeviceptr p = 0;
    ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, MiB, s));
    EXPECT_TRUE(owns(reinterpret_cast<void*>(p))) << (runtime ? "runtime" : "driver")
                                                  << ": the default pool is current, yet glake passes through";
    ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
    ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  }
  ASSERT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

TEST_F(Driver, DirectlyLinkedDriverCallsReachGlake) {
  // This program links libcuda.so.1: these calls go through the dynamic linker to the preload.
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&d, 2 * MiB));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(d)));
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree(d));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(d)));
}

TEST_F(Driver, OtherCallersVmmCallsAreUntouched) {
  // What NCCL or expandable segments do: their own reservation and chunks, through the entry points.
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  auto reserve = reinterpret_cast<decltype(&cuMemAddressReserve)>(proc(get, "cuMemAddressReserve", 13000));
  auto create = reinterpret_cast<decltype(&cuMemCreate)>(proc(get, "cuMemCreate", 13000));
  auto map = reinterpret_cast<decltype(&cuMemMap)>(proc(get, "cuMemMap", 13000));
  auto access = reinterpret_cast<decltype(&cuMemSetAccess)>(proc(get, "cuMemSetAccess", 13000));
  auto unmap = reinterpret_cast<decltype(&cuMemUnmap)>(proc(get, "cuMemUnmap", 13000));
  auto release = reinterpret_cast<decltype(&cuMemRelease)>(proc(get, "cuMemRelease", 13000));
  auto address_free = reinterpret_cast<decltype(&cuMemAddressFree)>(proc(get, "cuMemAddressFree", 13000));
  ASSERT_TRUE(reserve && create && map && access && unmap && release && address_free);
  const glake_stats_t before = stats();
  CUdeviceptr va = 0;
  ASSERT_EQ(CUDA_SUCCESS, reserve(&va, 4 * MiB, 0, 0, 0));
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(CUDA_SUCCESS, create(&h, 4 * MiB, &prop, 0));
  ASSERT_EQ(CUDA_SUCCESS, map(va, 4 * MiB, 0, h, 0));
  CUmemAccessDesc desc{};
  desc.location = prop.location;
  desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  ASSERT_EQ(CUDA_SUCCESS, access(va, 4 * MiB, &desc, 1));
  std::memset(reinterpret_cast<void*>(va), 7, 4 * MiB);
  EXPECT_FALSE(owns(reinterpret_cast<void*>(va)));
  ASSERT_EQ(CUDA_SUCCESS, unmap(va, 4 * MiB));
  ASSERT_EQ(CUDA_SUCCESS, release(h));
  ASSERT_EQ(CUDA_SUCCESS, address_free(va, 4 * MiB));
  const glake_stats_t after = stats();
  EXPECT_EQ(before.allocs, after.allocs);
  EXPECT_EQ(before.physical, after.physical);
  EXPECT_EQ(before.creates, after.creates);
}

// A capture begun through the driver (a driver-API program, or a statically linked runtime, whose
// cudaStreamBeginCapture reaches cuStreamBeginCapture through cuGetProcAddress) is one glake sees:
// allocations on the capturing stream are the graph's (the driver's), a free captured into the graph
// is not done at capture time, and glake serves again once the capture has ended.
TEST_F(Driver, ACaptureBegunThroughTheDriverRoutesAsTheRuntimesDoes) {
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr eager = 0, in_graph = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&eager, 4 * MiB));
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&in_graph, 4 * MiB, s));
  ASSERT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  ASSERT_TRUE(owns(reinterpret_cast<void*>(eager)));
  const auto held = stats().capture_frees_held;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED));
  CUdeviceptr p = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&p, 4 * MiB, s));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "glake served an allocation on a capturing stream";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(p, s));
  CUdeviceptr sync = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&sync, 4 * MiB));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(sync))) << "a synchronous allocation during a capture";
  // cuMemFree cannot synchronize the device now: the block is freed when the capture ends.
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree(eager));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(eager)));
  // A free captured into the graph would happen at every replay: the block is kept for good.
  ASSERT_EQ(CUDA_SUCCESS, cuMemFreeAsync(in_graph, s));
  EXPECT_EQ(held + 1, stats().capture_frees_held);
  CUgraph g = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamEndCapture(s, &g));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(eager))) << "the held free was not done when the capture ended";
  EXPECT_TRUE(owns(reinterpret_cast<void*>(in_graph)));
  CUdeviceptr q = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAllocAsync(&q, 4 * MiB, s));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(q))) << "capture over: glake serves the stream again";
  EXPECT_NE(p, q) << "the graph's memory was handed out again while the graph still uses it";
  EXPECT_EQ(CUDA_SUCCESS, cuMemFreeAsync(q, s));
  EXPECT_EQ(CUDA_SUCCESS, cuMemFree(sync));
  EXPECT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  EXPECT_EQ(CUDA_SUCCESS, cuGraphDestroy(g));
  EXPECT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// The same through the driver's per-thread-default-stream variants, as a program built with
// --default-stream per-thread and linked with the static runtime reaches them (cuGetProcAddress with
// CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM): on a stream of its own, and on the thread's stream.
TEST_F(Driver, ACaptureBegunThroughTheDriversPerThreadVariantsIsCounted) {
  auto get = reinterpret_cast<GetProcV2>(dlsym(libcuda(), "cuGetProcAddress_v2"));
  constexpr cuuint64_t ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  using Begin = CUresult (*)(CUstream, CUstreamCaptureMode);
  using BeginToGraph = CUresult (*)(CUstream, CUgraph, const CUgraphNode*, const CUgraphEdgeData*, size_t,
                                    CUstreamCaptureMode);
  using End = CUresult (*)(CUstream, CUgraph*);
  using AllocAsync = CUresult (*)(CUdeviceptr*, size_t, CUstream);
  using FreeAsync = CUresult (*)(CUdeviceptr, CUstream);
  auto begin = reinterpret_cast<Begin>(proc(get, "cuStreamBeginCapture", 13000, ptds));
  auto begin_to_graph = reinterpret_cast<BeginToGraph>(proc(get, "cuStreamBeginCaptureToGraph", 13000, ptds));
  auto end = reinterpret_cast<End>(proc(get, "cuStreamEndCapture", 13000, ptds));
  auto alloc_async = reinterpret_cast<AllocAsync>(proc(get, "cuMemAllocAsync", 13000, ptds));
  auto free_async = reinterpret_cast<FreeAsync>(proc(get, "cuMemFreeAsync", 13000, ptds));
  ASSERT_TRUE(begin != nullptr && begin_to_graph != nullptr && end != nullptr && alloc_async != nullptr &&
              free_async != nullptr);
  CUstream s = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr eager = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&eager, 4 * MiB));
  ASSERT_TRUE(owns(reinterpret_cast<void*>(eager)));
  CUgraph g = nullptr;  // the first round's graph; the second captures into it
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "cuStreamBeginCapture_v2_ptsz" : "cuStreamBeginCaptureToGraph_ptsz");
    if (round == 0)
      ASSERT_EQ(CUDA_SUCCESS, begin(s, CU_STREAM_CAPTURE_MODE_RELAXED));
    else
      ASSERT_EQ(CUDA_SUCCESS, begin_to_graph(s, g, nullptr, nullptr, 0, CU_STREAM_CAPTURE_MODE_RELAXED));
    CUdeviceptr p = 0;
    ASSERT_EQ(CUDA_SUCCESS, alloc_async(&p, 4 * MiB, s));
    EXPECT_FALSE(owns(reinterpret_cast<void*>(p))) << "glake served an allocation on a capturing stream";
    ASSERT_EQ(CUDA_SUCCESS, free_async(p, s));
    ASSERT_EQ(CUDA_SUCCESS, end(s, &g));
    CUdeviceptr q = 0;
    ASSERT_EQ(CUDA_SUCCESS, alloc_async(&q, 4 * MiB, s));
    EXPECT_TRUE(owns(reinterpret_cast<void*>(q))) << "capture over: glake serves the stream again";
    ASSERT_EQ(CUDA_SUCCESS, free_async(q, s));
  }
  EXPECT_EQ(CUDA_SUCCESS, cuGraphDestroy(g));
  // The thread's own stream: a cuMemFree during its capture is held (a device synchronize would break
  // the capture) and done when the capture ends.
  ASSERT_EQ(CUDA_SUCCESS, begin(nullptr, CU_STREAM_CAPTURE_MODE_RELAXED));
  CUdeviceptr sync = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&sync, 4 * MiB));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(sync))) << "a synchronous allocation during a capture";
  ASSERT_EQ(CUDA_SUCCESS, cuMemFree(eager));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(eager))) << "the free was not held";
  ASSERT_EQ(CUDA_SUCCESS, end(nullptr, &g));
  EXPECT_FALSE(owns(reinterpret_cast<void*>(eager))) << "the held free was not done when the capture ended";
  EXPECT_EQ(CUDA_SUCCESS, cuMemFree(sync));
  EXPECT_EQ(CUDA_SUCCESS, cuGraphDestroy(g));
  EXPECT_EQ(CUDA_SUCCESS, cuStreamSynchronize(s));
  EXPECT_EQ(CUDA_SUCCESS, cuStreamDestroy(s));
}

// The runtime reaches the driver's capture calls through glake's hooks: a capture is counted once,
// whichever API begins and ends it (begun through the runtime and ended through the driver here).
TEST_F(Driver, ACaptureIsCountedOnceWhicheverApiBeginsAndEndsIt) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUgraph g = nullptr;
  ASSERT_EQ(CUDA_SUCCESS, cuStreamEndCapture(reinterpret_cast<CUstream>(s), &g));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 4 * MiB));
  EXPECT_TRUE(owns(p)) << "glake still counts a capture that has ended";
  CUDA_OK(cudaFree(p));
  EXPECT_EQ(CUDA_SUCCESS, cuGraphDestroy(g));
  CUDA_OK(cudaStreamDestroy(s));
}

// An end of capture that fails yet ends the capture (a fork never joined back): glake asks the stream
// and counts the capture as over, through either API; otherwise it would pass every allocation
// through and hold every free for good.
TEST_F(Driver, ACaptureWhoseEndFailsIsOverOnceTheStreamSaysSo) {
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  standin::fail_next_end_capture(CUDA_ERROR_STREAM_CAPTURE_UNJOINED);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaErrorStreamCaptureUnjoined, cudaStreamEndCapture(s, &graph));
  (void)cudaGetLastError();
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, 4 * MiB));
  EXPECT_TRUE(owns(p)) << "the runtime's failed end left glake counting a capture that is over";
  CUDA_OK(cudaFree(p));
  EXPECT_FALSE(owns(p)) << "the free was held for a capture that is over";

  ASSERT_EQ(CUDA_SUCCESS, cuStreamBeginCapture(reinterpret_cast<CUstream>(s), CU_STREAM_CAPTURE_MODE_RELAXED));
  standin::fail_next_end_capture(CUDA_ERROR_STREAM_CAPTURE_UNJOINED);
  CUgraph g = nullptr;
  EXPECT_EQ(CUDA_ERROR_STREAM_CAPTURE_UNJOINED, cuStreamEndCapture(reinterpret_cast<CUstream>(s), &g));
  CUdeviceptr d = 0;
  ASSERT_EQ(CUDA_SUCCESS, cuMemAlloc(&d, 4 * MiB));
  EXPECT_TRUE(owns(reinterpret_cast<void*>(d))) << "the driver's failed end left glake counting a capture that is over";
  EXPECT_EQ(CUDA_SUCCESS, cuMemFree(d));
  CUDA_OK(cudaStreamDestroy(s));
}

// Another thread's cudaFree/cuMemFree of a glake block just after a capture got under way, before
// its begin returned: glake counts the capture before it begins, so the free is held (a device
// synchronization then would break the capture) and done when the capture ends. Through the runtime
// and the driver.
TEST_F(Driver, AFreeAsACaptureBeginsDoesNotSynchronizeTheDevice) {
  struct Race {
    void* block = nullptr;
    unsigned long long syncs = 0;  // device synchronizations the free made
    static void free_elsewhere(void* arg) {
      auto* r = static_cast<Race*>(arg);
      std::thread t([r] {
        const unsigned long long before = standin::device_syncs();
        EXPECT_EQ(cudaSuccess, cudaSetDevice(0));
        EXPECT_EQ(cudaSuccess, cudaFree(r->block));
        r->syncs = standin::device_syncs() - before;
      });
      t.join();
    }
  };
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (bool driver : {false, true}) {
    Race race;
    CUDA_OK(cudaMalloc(&race.block, 4 * MiB));
    ASSERT_TRUE(owns(race.block));
    standin::after_next_begin_capture(&Race::free_elsewhere, &race);
    if (driver)
      ASSERT_EQ(CUDA_SUCCESS, cuStreamBeginCapture(reinterpret_cast<CUstream>(s), CU_STREAM_CAPTURE_MODE_RELAXED));
    else
      CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    EXPECT_EQ(0u, race.syncs) << (driver ? "driver: " : "runtime: ") << "the free synchronized the device during the capture";
    EXPECT_TRUE(owns(race.block)) << "the free was not held";
    cudaGraph_t g = nullptr;
    CUDA_OK(cudaStreamEndCapture(s, &g));
    EXPECT_FALSE(owns(race.block)) << "the held free was not done when the capture ended";
    CUDA_OK(cudaGraphDestroy(g));
  }
  // A capture that fails to begin is not counted, through either API.
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  EXPECT_EQ(cudaErrorIllegalState, cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  (void)cudaGetLastError();
  EXPECT_EQ(CUDA_ERROR_ILLEGAL_STATE, cuStreamBeginCapture(reinterpret_cast<CUstream>(s), CU_STREAM_CAPTURE_MODE_RELAXED));
  EXPECT_EQ(CUDA_ERROR_INVALID_VALUE,  // no graph
            cuStreamBeginCaptureToGraph(reinterpret_cast<CUstream>(s), nullptr, nullptr, nullptr, 0, CU_STREAM_CAPTURE_MODE_RELAXED));
  cudaGraph_t g = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &g));
  CUDA_OK(cudaGraphDestroy(g));
  void* p = nullptr;
  CUDA_OK(cudaMalloc(&p, MiB));
  EXPECT_TRUE(owns(p)) << "a begin that failed left a capture counted";
  CUDA_OK(cudaFree(p));
  CUDA_OK(cudaStreamDestroy(s));
}

}  // namespace
