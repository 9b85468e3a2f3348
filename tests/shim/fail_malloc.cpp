// tests/shim/fail_malloc.cpp: a preload, before libglake.so, whose malloc fails once armed
// (glake_test_fail_malloc(k): after k more of glake's mallocs succeed; -1 disarms): host memory
// exhausted inside a hook, at any point of it, for shim_helper's mode hook-oom.
// libglake.so's operator new (its own libstdc++, linked in statically) calls malloc through the
// dynamic linker, so it gets this one. Only glake's own mallocs fail: the stand-in driver is C++ and
// would throw through its C functions, where a real driver answers CUDA_ERROR_OUT_OF_MEMORY.
#include <dlfcn.h>

#include <atomic>
#include <cstddef>
#include <cstring>

extern "C" void* __libc_malloc(std::size_t n);

namespace {
std::atomic<long> g_left{-1};  // glake's mallocs that still succeed; -1: all

bool from_glake(void* caller) {
  Dl_info info{};
  return dladdr(caller, &info) != 0 && info.dli_fname != nullptr && std::strstr(info.dli_fname, "libglake") != nullptr;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) void glake_test_fail_malloc(long k) { g_left.store(k); }

extern "C" __attribute__((visibility("default"))) void* malloc(std::size_t n) {
  long left = g_left.load(std::memory_order_relaxed);
  if (left >= 0 && from_glake(__builtin_return_address(0))) {
    while (left >= 0) {
      if (left == 0) return nullptr;
      if (g_left.compare_exchange_weak(left, left - 1)) break;
    }
  }
  return __libc_malloc(n);
}
