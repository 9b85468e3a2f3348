// tests/shim/ctor_cuda.cpp: a library whose constructor makes a CUDA call while another thread makes
// one too (shim_helper's modes dlopen-ctor and dlopen-ctor-pool). The constructor runs inside dlopen,
// holding the dynamic loader's lock. If the other thread holds a lock of glake's while it waits for the
// loader's lock (a dlopen of its own), and the constructor's call waits for glake's lock, the process
// hangs.
//   GLAKE_TEST_CTOR_POOL unset: the constructor starts the other thread, whose call is the process's
//     first: glake's lookup of the real entry points (dlopen, dlsym) must hold no lock of glake's.
//   GLAKE_TEST_CTOR_POOL set: the other thread (shim_helper's) is making the device's first pool when
//     the constructor's allocation comes: pool creation must not hold its lock across a dlopen.
#include <cuda_runtime.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdlib>

namespace {

void* other_thread(void*) {
  void* p = nullptr;
  (void)cudaMalloc(&p, 0);  // zero bytes: straight to the real runtime, found by the lookup
  return nullptr;
}

__attribute__((constructor)) void cuda_call_in_a_constructor() {
  void* p = nullptr;
  if (std::getenv("GLAKE_TEST_CTOR_POOL") != nullptr) {
    usleep(300 * 1000);  // shim_helper's thread is making the pool by now
    (void)cudaMalloc(&p, 1 << 20);
    return;
  }
  pthread_t t;
  if (pthread_create(&t, nullptr, other_thread, nullptr) != 0) return;
  usleep(200 * 1000);  // the other thread is in the lookup by now, waiting for the loader's lock
  (void)cudaMalloc(&p, 0);
  pthread_detach(t);
}

}  // namespace
