// tests/gpu/probe_capture_neighbours.cu: what CUDA refuses to another thread while one thread captures
// a graph in the default (global) mode. A probe, not a test (run it by hand, without glake).
//
// For each call, thread A begins a global-mode capture on a non-blocking stream and launches a kernel
// into it; thread B makes the call on another non-blocking stream that is not capturing; A launches
// again and ends the capture. Prints B's answer and the capture's end. This is why the pool neither
// queries nor waits for a stream or event in a trim during a capture (shim/router.h, trim_pool), and
// why its driver makes its calls in the relaxed mode (pool/cuda_driver.h, RelaxedCapture): the last
// rows are the calls a pool's slow path and its first use make (VMM calls, memory info, a stream, the
// runtime's cudaFree(nullptr)), each in the thread's own mode and then in the relaxed mode.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <thread>

__global__ void touch(int* p) { atomicAdd(p, 1); }

// One page made, mapped, granted and unmapped (the calls of a pool's slow path); the first error.
CUresult vmm_round_trip() {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  size_t g = 0;
  CUresult r = cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r != CUDA_SUCCESS) return r;
  CUmemGenericAllocationHandle h = 0;
  if ((r = cuMemCreate(&h, g, &prop, 0)) != CUDA_SUCCESS) return r;
  CUdeviceptr va = 0;
  if ((r = cuMemAddressReserve(&va, g, 0, 0, 0)) == CUDA_SUCCESS) {
    if ((r = cuMemMap(va, g, 0, h, 0)) == CUDA_SUCCESS) {
      CUmemAccessDesc desc{};
      desc.location = prop.location;
      desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      r = cuMemSetAccess(va, g, &desc, 1);
      const CUresult u = cuMemUnmap(va, g);
      if (r == CUDA_SUCCESS) r = u;
    }
    (void)cuMemAddressFree(va, g);
  }
  (void)cuMemRelease(h);
  return r;
}

int main() {
  if (cudaFree(nullptr) != cudaSuccess) return 1;
  CUcontext ctx = nullptr;  // made current on the other thread too, for its driver calls
  if (cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr) return 1;
  cudaStream_t a, b;
  cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  int* d = nullptr;
  cudaMalloc(&d, sizeof(int));
  const char* names[] = {"cudaEventRecord(b)", "cudaEventQuery",     "cudaEventSynchronize",
                         "cudaStreamQuery(b)", "cudaStreamSynchronize(b)", "cudaMallocAsync(b)",
                         "nothing (control)",  "cuEventRecord + cuEventQuery", "VMM create+map+access+unmap",
                         "cuMemGetInfo",       "cuStreamCreate",     "cudaFree(nullptr)"};
  constexpr int kRows = 12;
  for (int row = 0; row < kRows + 4; ++row) {
    const int which = row < kRows ? row : row - 4;  // the last four again, in the relaxed mode
    const bool relaxed = row >= kRows;
    cudaEvent_t e;
    cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    cudaEventRecord(e, b);  // recorded before the capture: complete, and no part of it
    cudaStreamSynchronize(b);
    cudaStreamBeginCapture(a, cudaStreamCaptureModeGlobal);
    touch<<<1, 1, 0, a>>>(d);
    cudaError_t r = cudaSuccess;
    std::thread t([&] {
      cuCtxSetCurrent(ctx);
      cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
      if (relaxed) cudaThreadExchangeStreamCaptureMode(&mode);
      switch (which) {
        case 0: r = cudaEventRecord(e, b); break;
        case 1: r = cudaEventQuery(e); break;
        case 2: r = cudaEventSynchronize(e); break;
        case 3: r = cudaStreamQuery(b); break;
        case 4: r = cudaStreamSynchronize(b); break;
        case 5: {
          void* p = nullptr;
          r = cudaMallocAsync(&p, 1 << 20, b);
          if (r == cudaSuccess) cudaFreeAsync(p, b);
          break;
        }
        case 6: break;
        case 7: {
          CUresult x = cuEventRecord(reinterpret_cast<CUevent>(e), reinterpret_cast<CUstream>(b));
          if (x == CUDA_SUCCESS) x = cuEventQuery(reinterpret_cast<CUevent>(e));
          r = x == CUDA_ERROR_NOT_READY ? cudaSuccess : static_cast<cudaError_t>(x);
          break;
        }
        case 8: r = static_cast<cudaError_t>(vmm_round_trip()); break;
        case 9: {
          size_t fr = 0, total = 0;
          r = static_cast<cudaError_t>(cuMemGetInfo(&fr, &total));
          break;
        }
        case 10: {
          CUstream s = nullptr;
          r = static_cast<cudaError_t>(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
          if (s != nullptr) cuStreamDestroy(s);
          break;
        }
        case 11: r = cudaFree(nullptr); break;
      }
      if (relaxed) cudaThreadExchangeStreamCaptureMode(&mode);
    });
    t.join();
    touch<<<1, 1, 0, a>>>(d);
    cudaGraph_t g = nullptr;
    const cudaError_t end = cudaStreamEndCapture(a, &g);
    std::printf("%-30s%-9s from another thread: %-36s the capture's end: %s\n", names[which],
                relaxed ? " relaxed" : "", cudaGetErrorName(r),
                cudaGetErrorName(end));
    if (g != nullptr) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    cudaEventDestroy(e);
  }
  return 0;
}
