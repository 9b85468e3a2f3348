// tests/gpu/bench_chunk_bandwidth.cu: does the size of the physical chunks under a buffer change how
// fast the GPU streams through it?
//
// glake backs memory with physical chunks of the driver's granularity (2 MiB on the H100), so that
// any chunk can move into a stitched range. This benchmark copies 1 GiB device to device over buffers
// made of cudaMalloc memory, and of VMM chunks of 2 MiB to 1 GiB (cuMemCreate + cuMemMap per chunk,
// glake's properties: POSIX-fd handles, RDMA flag where supported; access set per mapping as the pool
// does), and prints the median time of each beside cudaMalloc's. Two copies: cudaMemcpyAsync (the
// runtime's device-to-device copy, near the memory's peak) and a plain grid-stride float4 kernel.
// A benchmark, not a test: it reports and exits 0 unless a CUDA call fails.
#include <cuda.h>
#include <cuda_runtime.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr size_t kBytes = size_t{1} << 30;
constexpr int kWarmup = 5, kRuns = 30;

// The driver API from libcuda.so.1, resolved at run time as the rest of glake does (never linked).
struct Driver {
  decltype(&::cuGetErrorString) get_error_string;
  decltype(&::cuDeviceGetAttribute) device_get_attribute;
  decltype(&::cuMemAddressReserve) address_reserve;
  decltype(&::cuMemAddressFree) address_free;
  decltype(&::cuMemCreate) create;
  decltype(&::cuMemRelease) release;
  decltype(&::cuMemMap) map;
  decltype(&::cuMemUnmap) unmap;
  decltype(&::cuMemSetAccess) set_access;
};
Driver cu;

template <class F>
void resolve(void* lib, const char* name, F* f) {
  *f = reinterpret_cast<F>(dlsym(lib, name));
  if (*f == nullptr) {
    std::fprintf(stderr, "libcuda.so.1 has no %s\n", name);
    std::exit(1);
  }
}
void load_driver() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "libcuda.so.1: %s\n", dlerror());
    std::exit(1);
  }
  resolve(lib, "cuGetErrorString", &cu.get_error_string);
  resolve(lib, "cuDeviceGetAttribute", &cu.device_get_attribute);
  resolve(lib, "cuMemAddressReserve", &cu.address_reserve);
  resolve(lib, "cuMemAddressFree", &cu.address_free);
  resolve(lib, "cuMemCreate", &cu.create);
  resolve(lib, "cuMemRelease", &cu.release);
  resolve(lib, "cuMemMap", &cu.map);
  resolve(lib, "cuMemUnmap", &cu.unmap);
  resolve(lib, "cuMemSetAccess", &cu.set_access);
}

void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* s = "?";
  cu.get_error_string(r, &s);
  std::fprintf(stderr, "%s: %s\n", what, s);
  std::exit(1);
}
void check(cudaError_t r, const char* what) {
  if (r == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(r));
  std::exit(1);
}

__global__ void copy4(const float4* __restrict__ a, float4* __restrict__ b, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    b[i] = a[i];
}

// Median milliseconds of one 1 GiB copy src -> dst.
float time_copy(CUdeviceptr src, CUdeviceptr dst, bool kernel, int sms) {
  cudaEvent_t s, e;
  check(cudaEventCreate(&s), "cudaEventCreate");
  check(cudaEventCreate(&e), "cudaEventCreate");
  std::vector<float> ms;
  for (int i = 0; i < kWarmup + kRuns; ++i) {
    check(cudaEventRecord(s), "cudaEventRecord");
    if (kernel) {
      copy4<<<sms * 8, 512>>>(reinterpret_cast<const float4*>(src), reinterpret_cast<float4*>(dst), kBytes / 16);
      check(cudaGetLastError(), "copy4");
    } else {
      check(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), kBytes,
                            cudaMemcpyDeviceToDevice),
            "cudaMemcpyAsync");
    }
    check(cudaEventRecord(e), "cudaEventRecord");
    check(cudaEventSynchronize(e), "cudaEventSynchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, s, e), "cudaEventElapsedTime");
    if (i >= kWarmup) ms.push_back(t);
  }
  cudaEventDestroy(s);
  cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

CUmemAllocationProp chunk_props() {
  int rdma = 0;
  check(cu.device_get_attribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, 0),
        "cuDeviceGetAttribute");
  CUmemAllocationProp p = {};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = 0;
  p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  p.allocFlags.gpuDirectRDMACapable = rdma != 0;
  return p;
}

// 1 GiB of VMM memory in chunks of `chunk` bytes, each created and mapped on its own, starting `skew`
// bytes into a reservation aligned to the chunk size (skew 0: every chunk at a multiple of its size);
// access is set per mapping as the pool does, or once over the whole buffer (`access_once`).
struct VmmBuffer {
  CUdeviceptr reserved = 0, va = 0;
  size_t chunk_;
  std::vector<CUmemGenericAllocationHandle> handles;

  explicit VmmBuffer(size_t chunk, size_t skew = 0, bool access_once = false) : chunk_(chunk) {
    const CUmemAllocationProp p = chunk_props();
    CUmemAccessDesc a = {};
    a.location = p.location;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    check(cu.address_reserve(&reserved, kBytes + chunk, chunk, 0, 0), "cuMemAddressReserve");
    va = reserved + skew;
    for (size_t off = 0; off < kBytes; off += chunk) {
      CUmemGenericAllocationHandle h;
      check(cu.create(&h, chunk, &p, 0), "cuMemCreate");
      handles.push_back(h);
      check(cu.map(va + off, chunk, 0, h, 0), "cuMemMap");
      if (!access_once) check(cu.set_access(va + off, chunk, &a, 1), "cuMemSetAccess");
    }
    if (access_once) check(cu.set_access(va, kBytes, &a, 1), "cuMemSetAccess");
  }
  ~VmmBuffer() {
    cu.unmap(va, kBytes);
    for (CUmemGenericAllocationHandle h : handles) cu.release(h);
    cu.address_free(reserved, kBytes + chunk_);
  }
};

// Whether the driver maps part of a chunk: the second half of a 4 MiB chunk (offset 2 MiB), and its
// first half (offset 0, size 2 MiB). glake's pool maps every chunk whole either way.
void print_partial_maps() {
  const CUmemAllocationProp p = chunk_props();
  CUmemGenericAllocationHandle h;
  check(cu.create(&h, 4 << 20, &p, 0), "cuMemCreate");
  CUdeviceptr va = 0;
  check(cu.address_reserve(&va, 4 << 20, 0, 0, 0), "cuMemAddressReserve");
  auto try_map = [&](const char* what, size_t offset) {
    CUresult r = cu.map(va, 2 << 20, offset, h, 0);
    const char* s = "?";
    cu.get_error_string(r, &s);
    std::printf("cuMemMap of 2 MiB of a 4 MiB chunk at offset %zu MiB (%s): %s\n", offset >> 20, what,
                r == CUDA_SUCCESS ? "mapped" : s);
    if (r == CUDA_SUCCESS) cu.unmap(va, 2 << 20);
  };
  try_map("its second half", 2 << 20);
  try_map("its first half", 0);
  cu.address_free(va, 4 << 20);
  cu.release(h);
}

}  // namespace

int main() {
  check(cudaSetDevice(0), "cudaSetDevice");
  check(cudaFree(nullptr), "cudaFree");  // the runtime initialises the driver and the primary context
  load_driver();
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const int sms = prop.multiProcessorCount;

  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, kBytes), "cudaMalloc");
  check(cudaMalloc(&b, kBytes), "cudaMalloc");
  check(cudaMemset(a, 1, kBytes), "cudaMemset");
  const auto src = reinterpret_cast<CUdeviceptr>(a), dst = reinterpret_cast<CUdeviceptr>(b);
  const float base_copy = time_copy(src, dst, false, sms), base_kernel = time_copy(src, dst, true, sms);

  std::printf("%s: 1 GiB device-to-device copy, median of %d (ms; x cudaMalloc's; GB/s read+written)\n",
              prop.name, kRuns);
  std::printf("%-22s %24s %24s\n", "buffers", "cudaMemcpyAsync", "float4 kernel");
  auto row = [&](const char* name, float copy, float kernel) {
    std::printf("%-22s %8.4f %6.3fx %6.0f %8.4f %6.3fx %6.0f\n", name, copy, copy / base_copy,
                2.0 * kBytes / copy / 1e6, kernel, kernel / base_kernel, 2.0 * kBytes / kernel / 1e6);
  };
  row("cudaMalloc", base_copy, base_kernel);
  for (size_t mib : {2, 4, 8, 16, 32, 64, 1024}) {
    VmmBuffer s(mib << 20), d(mib << 20);
    check(cudaMemset(reinterpret_cast<void*>(s.va), 1, kBytes), "cudaMemset");
    char name[64];
    std::snprintf(name, sizeof name, "VMM, %zu MiB chunks", mib);
    row(name, time_copy(s.va, d.va, false, sms), time_copy(s.va, d.va, true, sms));
  }
  {
    VmmBuffer s(2 << 20, 0, true), d(2 << 20, 0, true);
    check(cudaMemset(reinterpret_cast<void*>(s.va), 1, kBytes), "cudaMemset");
    row("VMM, 2 MiB, one access", time_copy(s.va, d.va, false, sms), time_copy(s.va, d.va, true, sms));
  }
  // The same chunks starting 2 MiB past a multiple of their size, as a pool's chunks may lie.
  for (size_t mib : {8, 32}) {
    VmmBuffer s(mib << 20, 2 << 20), d(mib << 20, 2 << 20);
    check(cudaMemset(reinterpret_cast<void*>(s.va), 1, kBytes), "cudaMemset");
    char name[64];
    std::snprintf(name, sizeof name, "VMM, %zu MiB, skewed", mib);
    row(name, time_copy(s.va, d.va, false, sms), time_copy(s.va, d.va, true, sms));
  }
  row("cudaMalloc again", time_copy(src, dst, false, sms), time_copy(src, dst, true, sms));
  cudaFree(a);
  cudaFree(b);
  print_partial_maps();
  return 0;
}
