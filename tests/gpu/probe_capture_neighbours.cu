// tests/gpu/probe_capture_neighbours.cu: what CUDA refuses to another thread while one thread captures
// a graph in the default (global) mode. A probe, not a test (run it by hand, without glake).
//
// For each call, thread A begins a global-mode capture on a non-blocking stream and launches a kernel
// into it; thread B makes the call on another non-blocking stream that is not capturing; A launches
// again and ends the capture. Prints B's answer and the capture's end. This is why the pool neither
// queries nor waits for a stream or event in a trim during a capture (shim/router.h, trim_pool).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <thread>

__global__ void touch(int* p) { atomicAdd(p, 1); }

int main() {
  if (cudaFree(nullptr) != cudaSuccess) return 1;
  cudaStream_t a, b;
  cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  int* d = nullptr;
  cudaMalloc(&d, sizeof(int));
  const char* names[] = {"cudaEventRecord(b)", "cudaEventQuery",     "cudaEventSynchronize",
                         "cudaStreamQuery(b)", "cudaStreamSynchronize(b)", "cudaMallocAsync(b)",
                         "nothing (control)",  "cuEventRecord + cuEventQuery"};
  for (int which = 0; which < 8; ++which) {
    cudaEvent_t e;
    cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    cudaEventRecord(e, b);  // recorded before the capture: complete, and no part of it
    cudaStreamSynchronize(b);
    cudaStreamBeginCapture(a, cudaStreamCaptureModeGlobal);
    touch<<<1, 1, 0, a>>>(d);
    cudaError_t r = cudaSuccess;
    std::thread t([&] {
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
      }
    });
    t.join();
    touch<<<1, 1, 0, a>>>(d);
    cudaGraph_t g = nullptr;
    const cudaError_t end = cudaStreamEndCapture(a, &g);
    std::printf("%-30s from another thread: %-36s the capture's end: %s\n", names[which], cudaGetErrorName(r),
                cudaGetErrorName(end));
    if (g != nullptr) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    cudaEventDestroy(e);
  }
  return 0;
}
