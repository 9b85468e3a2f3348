// tests/shim/ctor_cuda.cpp: a library whose constructor makes the process's first CUDA call while
// another thread makes one too (shim_helper's mode dlopen-ctor). The constructor runs inside dlopen,
// holding the dynamic loader's lock; the other thread's call, meanwhile, is in glake's lookup of the
// real entry points, which itself calls dlopen. If that lookup held glake's own lock across its dlopen,
// the constructor's call would wait for that lock and the process would hang.
#include <cuda_runtime.h>
#include <pthread.h>
#include <unistd.h>

namespace {

void* other_thread(void*) {
  void* p = nullptr;
  (void)cudaMalloc(&p, 0);  // zero bytes: straight to the real runtime, found by the lookup
  return nullptr;
}

__attribute__((constructor)) void first_cuda_call_in_a_constructor() {
  pthread_t t;
  if (pthread_create(&t, nullptr, other_thread, nullptr) != 0) return;
  usleep(200 * 1000);  // the other thread is in the lookup by now, waiting for the loader's lock
  void* p = nullptr;
  (void)cudaMalloc(&p, 0);
  pthread_detach(t);
}

}  // namespace
