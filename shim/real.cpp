// shim/real.cpp: resolution of the real CUDA entry points (see real.h).
//
// Tables are published once complete and never written again, so readers need no lock: a reader sees
// either the empty table (not resolved yet) or the final one.
#include "shim/real.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>

// glibc's dlsym, as the dlsym stub (dlsym_stub.cpp) finds it.
extern "C" {
extern void* glake_real_dlsym_ptr __attribute__((visibility("hidden")));
void* glake_resolve_real_dlsym() __attribute__((visibility("hidden")));
}

namespace glake::shim {

__thread int tl_real_depth __attribute__((tls_model("initial-exec"))) = 0;

namespace {

pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
constinit RuntimeApi g_runtime{};
constinit DriverApi g_driver{};
constinit const RuntimeApi g_no_runtime{};
std::atomic<bool> g_runtime_done{false};
std::atomic<bool> g_driver_done{false};
std::atomic<std::uintptr_t> g_text_lo{0};
std::atomic<std::uintptr_t> g_text_hi{0};

template <class Fn>
Fn as_function(void* p) {
  static_assert(sizeof(Fn) == sizeof(void*));
  Fn fn;
  std::memcpy(&fn, &p, sizeof fn);
  return fn;
}

struct Range {
  std::uintptr_t base;
  std::uintptr_t lo;
  std::uintptr_t hi;
};

int find_range(dl_phdr_info* info, std::size_t, void* data) {
  auto* r = static_cast<Range*>(data);
  if (info->dlpi_addr != r->base) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (r->lo == 0 || lo < r->lo) r->lo = lo;
    if (hi > r->hi) r->hi = hi;
  }
  return 1;
}

void compute_range() {
  Dl_info info{};
  void* self = reinterpret_cast<void*>(&compute_range);
  if (dladdr(self, &info) == 0 || info.dli_fbase == nullptr) return;
  Range r{reinterpret_cast<std::uintptr_t>(info.dli_fbase), 0, 0};
  dl_iterate_phdr(find_range, &r);
  if (r.hi == 0) return;
  g_text_lo.store(r.lo, std::memory_order_relaxed);
  g_text_hi.store(r.hi, std::memory_order_release);
}

}  // namespace

DlsymFn real_dlsym() {
  void* p = __atomic_load_n(&glake_real_dlsym_ptr, __ATOMIC_ACQUIRE);
  if (p == nullptr) p = glake_resolve_real_dlsym();
  return as_function<DlsymFn>(p);
}

bool in_glake(const void* address) {
  if (g_text_hi.load(std::memory_order_acquire) == 0) compute_range();
  auto a = reinterpret_cast<std::uintptr_t>(address);
  return a >= g_text_lo.load(std::memory_order_relaxed) && a < g_text_hi.load(std::memory_order_relaxed);
}

// The lookups run with no lock of glake's held: dlopen and dlsym take the dynamic loader's lock, which a
// thread running a library's constructor holds while that constructor's CUDA call comes here, and
// waiting for it while holding g_mutex hung such a call (tests: dlopen-ctor). Threads that race find
// the same table; the first publishes it, under g_mutex (a fork never copies half of one).
namespace {

RuntimeApi look_up_runtime() {
  void* handle = nullptr;
  for (const char* soname : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
    handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle != nullptr) break;
  }
  const DlsymFn sym = real_dlsym();
  auto look = [&](const char* name) -> void* {
    void* p = handle != nullptr ? sym(handle, name) : nullptr;
    if (p == nullptr) p = sym(RTLD_NEXT, name);
    return p != nullptr && !in_glake(p) ? p : nullptr;
  };
  RuntimeApi t;
#define GLAKE_LOOK(field, name, type) t.field = as_function<type>(look(name));
  GLAKE_REAL_RUNTIME(GLAKE_LOOK)
#undef GLAKE_LOOK
  return t;
}

DriverApi look_up_driver() {
  DriverApi t;
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (handle == nullptr) handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return t;  // a missing driver: the empty table
  const DlsymFn sym = real_dlsym();
  auto look = [&](const char* name) -> void* {
    void* p = sym(handle, name);
    return p != nullptr && !in_glake(p) ? p : nullptr;
  };
#define GLAKE_LOOK(field, name, type) t.field = as_function<type>(look(name));
  GLAKE_REAL_DRIVER(GLAKE_LOOK)
#undef GLAKE_LOOK
  return t;
}

}  // namespace

const RuntimeApi& real_runtime() {
  if (g_runtime_done.load(std::memory_order_acquire)) return g_runtime;
  const RuntimeApi t = look_up_runtime();
  // Without cudaGetDevice no runtime is loaded yet: publish nothing and look again next time.
  if (t.get_device == nullptr) return g_no_runtime;
  pthread_mutex_lock(&g_mutex);
  if (!g_runtime_done.load(std::memory_order_relaxed)) {
    g_runtime = t;
    g_runtime_done.store(true, std::memory_order_release);
  }
  pthread_mutex_unlock(&g_mutex);
  return g_runtime;
}

const DriverApi& real_driver() {
  if (g_driver_done.load(std::memory_order_acquire)) return g_driver;
  const DriverApi t = look_up_driver();
  pthread_mutex_lock(&g_mutex);
  // A missing driver stays missing: an empty table, published, so it is not searched for again.
  if (!g_driver_done.load(std::memory_order_relaxed)) {
    g_driver = t;
    g_driver_done.store(true, std::memory_order_release);
  }
  pthread_mutex_unlock(&g_mutex);
  return g_driver;
}

void real_lock_for_fork() { pthread_mutex_lock(&g_mutex); }
void real_unlock_after_fork() { pthread_mutex_unlock(&g_mutex); }

}  // namespace glake::shim
