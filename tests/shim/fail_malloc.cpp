// tests/shim/fail_malloc.cpp: a preload, before libglake.so, whose malloc fails once armed
// (glake_test_fail_malloc(k): after k more mallocs succeed; -1 disarms): host memory exhausted inside
// a hook, at any point of it, for shim_helper's mode hook-oom.
// libglake.so's operator new (its own libstdc++, linked in statically) calls malloc through the
// dynamic linker, so it gets this one.
#include <atomic>
#include <cstddef>

extern "C" void* __libc_malloc(std::size_t n);

namespace {
std::atomic<long> g_left{-1};  // mallocs that still succeed; -1: all
}

extern "C" __attribute__((visibility("default"))) void glake_test_fail_malloc(long k) { g_left.store(k); }

extern "C" __attribute__((visibility("default"))) void* malloc(std::size_t n) {
  long left = g_left.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (left == 0) return nullptr;
    if (g_left.compare_exchange_weak(left, left - 1)) break;
  }
  return __libc_malloc(n);
}
