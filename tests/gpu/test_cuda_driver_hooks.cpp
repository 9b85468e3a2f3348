// tests/gpu/test_cuda_driver_hooks.cpp: CudaDriver never reaches entry points that shadow the driver's.
//
// libglake.so will define cuGetProcAddress, cuMemCreate, ... and dlsym itself, in the global namespace.
// This executable does the same with decoys (exported: the target links with export_dynamic) that
// count every call and fail: the decoy dlsym answers the cuGetProcAddress look-ups with decoys and
// forwards every other name to glibc. CudaDriver must work through a whole round trip with zero decoy
// calls, i.e. resolve only through the real libcuda.so.1 and glibc's own dlsym.
// Its own executable: the decoys shadow symbols for everything linked into it.
#include <cuda.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "pool/cuda_driver.h"

namespace {

std::atomic<int> g_decoy_calls{0};

using DlsymFn = void* (*)(void*, const char*);

DlsymFn glibc_dlsym() {
  static DlsymFn real = [] {
    DlsymFn fn = nullptr;
    for (const char* v : {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"}) {
      if (void* p = dlvsym(RTLD_NEXT, "dlsym", v)) {
        std::memcpy(&fn, &p, sizeof fn);
        break;
      }
    }
    if (fn == nullptr) std::abort();  // cannot forward: nothing would work
    return fn;
  }();
  return real;
}

}  // namespace

#undef cuGetProcAddress
extern "C" {

CUresult cuGetProcAddress_v2(const char*, void** pfn, int, cuuint64_t, CUdriverProcAddressQueryResult* status) {
  g_decoy_calls.fetch_add(1);
  if (pfn != nullptr) *pfn = nullptr;
  if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_ERROR_NOT_FOUND;
}
CUresult cuGetProcAddress(const char*, void** pfn, int, cuuint64_t) {
  g_decoy_calls.fetch_add(1);
  if (pfn != nullptr) *pfn = nullptr;
  return CUDA_ERROR_NOT_FOUND;
}
CUresult cuInit(unsigned int) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}
CUresult cuMemCreate(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*, unsigned long long) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}
CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}
CUresult cuMemAddressReserve(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}
CUresult cuMemSetAccess(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}
CUresult cuEventCreate(CUevent*, unsigned int) {
  g_decoy_calls.fetch_add(1);
  return CUDA_ERROR_UNKNOWN;
}

void* dlsym(void* __restrict handle, const char* __restrict name) noexcept {
  if (std::strncmp(name, "cuGetProcAddress", 16) == 0) {
    g_decoy_calls.fetch_add(1);
    void* decoy = nullptr;
    if (std::strcmp(name, "cuGetProcAddress_v2") == 0) {
      auto fn = &cuGetProcAddress_v2;
      std::memcpy(&decoy, &fn, sizeof decoy);
    } else {
      auto fn = &cuGetProcAddress;
      std::memcpy(&decoy, &fn, sizeof decoy);
    }
    return decoy;
  }
  return glibc_dlsym()(handle, name);
}

}  // extern "C"

namespace glake::pool {
namespace {

int test_device() {
  const char* v = std::getenv("GLAKE_TEST_DEVICE");
  return v != nullptr && *v != '\0' ? std::atoi(v) : 0;
}

TEST(CudaDriverHooks, DecoysShadowTheGlobalNamespace) {
  // The setup works: a global look-up finds the decoys.
  void* found = dlsym(RTLD_DEFAULT, "cuMemCreate");
  auto fn = &cuMemCreate;
  void* decoy = nullptr;
  std::memcpy(&decoy, &fn, sizeof decoy);
  EXPECT_EQ(found, decoy) << "cuMemCreate is not exported from the test executable (export_dynamic?)";
  const int before = g_decoy_calls.load();
  (void)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2");
  EXPECT_EQ(g_decoy_calls.load(), before + 1) << "the decoy dlsym is not the one dlsym calls reach";
}

TEST(CudaDriverHooks, DriverNeverReachesDecoys) {
  g_decoy_calls.store(0);
  std::unique_ptr<CudaDriver> d;
  const Status s = CudaDriver::open(test_device(), &d);
  ASSERT_EQ(s, Status::ok) << status_name(s) << " (" << static_cast<int>(s) << ")";
  const std::size_t g = d->granularity();
  DevPtr va = 0;
  PhysHandle h = 0;
  EventHandle e = 0;
  int fd = -1;
  std::size_t free = 0, total = 0;
  ASSERT_EQ(d->mem_info(&free, &total), Status::ok);
  ASSERT_EQ(d->reserve(2 * g, &va), Status::ok);
  ASSERT_EQ(d->create(2 * g, &h), Status::ok);
  ASSERT_EQ(d->map(va, 2 * g, h, 0), Status::ok);
  ASSERT_EQ(d->set_access(va, 2 * g), Status::ok);
  if (d->fd_exportable()) {
    ASSERT_EQ(d->export_fd(h, &fd), Status::ok);
    close(fd);
  }
  ASSERT_EQ(d->event_create(&e), Status::ok);
  ASSERT_EQ(d->event_record(e, 0), Status::ok);
  ASSERT_EQ(d->event_synchronize(e), Status::ok);
  ASSERT_EQ(d->event_destroy(e), Status::ok);
  EXPECT_EQ(d->unmap(va, 2 * g), Status::ok);
  EXPECT_EQ(d->release(h), Status::ok);
  EXPECT_EQ(d->free_reserve(va, 2 * g), Status::ok);
  EXPECT_EQ(g_decoy_calls.load(), 0) << "CudaDriver reached a symbol of the global namespace";
}

}  // namespace
}  // namespace glake::pool
