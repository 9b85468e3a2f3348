// tests/shim/fail_malloc.cpp: a preload, before libglake.so, whose malloc fails while switched on
// (glake_test_fail_malloc): host memory exhausted inside a hook, for shim_helper's mode hook-oom.
// libglake.so's operator new (its own libstdc++, linked in statically) calls malloc through the
// dynamic linker, so it gets this one.
#include <atomic>
#include <cstddef>

extern "C" void* __libc_malloc(std::size_t n);

namespace {
std::atomic<int> g_fail{0};
}

extern "C" __attribute__((visibility("default"))) void glake_test_fail_malloc(int on) { g_fail.store(on); }

extern "C" __attribute__((visibility("default"))) void* malloc(std::size_t n) {
  if (g_fail.load(std::memory_order_relaxed) != 0) return nullptr;
  return __libc_malloc(n);
}
