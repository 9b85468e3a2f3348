// tests/shim/shim_test.h: what the shim's tests share.
//
// The tests are ordinary CUDA programs: they link the stand-in libcudart.so.13 (tests/shim/standin)
// as PyTorch links the real one, and meson runs them with LD_PRELOAD=libglake.so and the stand-in
// libcuda.so.1 first on LD_LIBRARY_PATH. They reach glake's own API the way a user would, through
// dlsym(RTLD_DEFAULT, ...), never by linking it. Paths come in through the environment:
// GLAKE_TEST_HELPER (the helper program), GLAKE_RUN (scripts/glake-run), GLAKE_LIB (libglake.so).
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "shim/glake.h"
#include "standin/standin.h"

// The stand-in driver's test API (standin.h), looked up at run time: the tests, like PyTorch, do not
// link libcuda.so.1; it is loaded by whoever reaches the driver first.
namespace standin {
template <class F>
F* driver_fn(const char* name) {
  static void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  void* p = lib != nullptr ? dlsym(lib, name) : nullptr;
  if (p == nullptr) {
    std::fprintf(stderr, "stand-in driver: %s not found\n", name);
    std::abort();
  }
  F* f;
  std::memcpy(&f, &p, sizeof f);
  return f;
}
inline int live_allocations() { return driver_fn<decltype(standin_live_allocations)>("standin_live_allocations")(); }
inline size_t memory_in_use(int d) { return driver_fn<decltype(standin_memory_in_use)>("standin_memory_in_use")(d); }
inline int mapping_access(const void* p, int d) {
  return driver_fn<decltype(standin_mapping_access)>("standin_mapping_access")(p, d);
}
inline CUresult raw_alloc(CUdeviceptr* p, size_t n) { return driver_fn<decltype(standin_raw_alloc)>("standin_raw_alloc")(p, n); }
inline unsigned long long device_syncs() { return driver_fn<decltype(standin_device_syncs)>("standin_device_syncs")(); }
inline int device_syncs_waiting() {
  return driver_fn<decltype(standin_device_syncs_waiting)>("standin_device_syncs_waiting")();
}
inline unsigned long long default_pool_queries() {
  return driver_fn<decltype(standin_default_pool_queries)>("standin_default_pool_queries")();
}
inline unsigned long long device_syncs_in_capture() {
  return driver_fn<decltype(standin_device_syncs_in_capture)>("standin_device_syncs_in_capture")();
}
inline unsigned long long stream_syncs_in_capture(cudaStream_t s) {
  return driver_fn<decltype(standin_stream_syncs_in_capture)>("standin_stream_syncs_in_capture")(
      reinterpret_cast<CUstream>(s));
}
inline int streams_capturing(int device) {
  return driver_fn<decltype(standin_streams_capturing)>("standin_streams_capturing")(device);
}
inline unsigned long long waits_in_capture() {
  return driver_fn<decltype(standin_waits_in_capture)>("standin_waits_in_capture")();
}
inline void fail_next_end_capture(CUresult e) {
  driver_fn<decltype(standin_fail_next_end_capture)>("standin_fail_next_end_capture")(e);
}
inline void after_next_get_mem_pool(void (*fn)(void*), void* arg) {
  driver_fn<decltype(standin_after_next_get_mem_pool)>("standin_after_next_get_mem_pool")(fn, arg);
}
inline void after_next_set_mem_pool(void (*fn)(void*), void* arg) {
  driver_fn<decltype(standin_after_next_set_mem_pool)>("standin_after_next_set_mem_pool")(fn, arg);
}
inline void after_next_begin_capture(void (*fn)(void*), void* arg) {
  driver_fn<decltype(standin_after_next_begin_capture)>("standin_after_next_begin_capture")(fn, arg);
}
inline void before_next_event_wait(void (*fn)(void*), void* arg) {
  driver_fn<decltype(standin_before_next_event_wait)>("standin_before_next_event_wait")(fn, arg);
}
inline void before_next_export(void (*fn)(void*), void* arg) {
  driver_fn<decltype(standin_before_next_export)>("standin_before_next_export")(fn, arg);
}
}  // namespace standin

namespace glake_test {

// glake.h through dlsym, as a program under the preload sees it.
struct Api {
  int (*status)() = nullptr;
  int (*stats)(int, glake_stats_t*, size_t) = nullptr;
  int (*trim)(int, size_t) = nullptr;
  int (*reset_peaks)(int) = nullptr;
  int (*validate)(int, char*, size_t) = nullptr;
  int (*device_of)(const void*) = nullptr;
  int (*owns)(const void*) = nullptr;
  void* (*malloc)(ssize_t, int, void*) = nullptr;
  void (*free)(void*, ssize_t, int, void*) = nullptr;

  static const Api& get() {
    static const Api api = [] {
      Api a;
      auto look = [](const char* name, auto* slot) {
        void* p = dlsym(RTLD_DEFAULT, name);
        std::memcpy(slot, &p, sizeof p);
      };
      look("glake_status", &a.status);
      look("glake_stats", &a.stats);
      look("glake_trim", &a.trim);
      look("glake_reset_peaks", &a.reset_peaks);
      look("glake_validate", &a.validate);
      look("glake_device_of", &a.device_of);
      look("glake_owns", &a.owns);
      look("glake_malloc", &a.malloc);
      look("glake_free", &a.free);
      return a;
    }();
    return api;
  }
  bool present() const { return status != nullptr; }
};

inline const Api& api() { return Api::get(); }

inline glake_stats_t stats(int device = 0) {
  glake_stats_t s{};
  api().stats(device, &s, sizeof s);
  return s;
}

inline bool owns(const void* p) { return api().owns(p) == 1; }

inline std::string validate(int device = 0) {
  char msg[512] = {};
  const int r = api().validate(device, msg, sizeof msg);
  return r <= 0 ? "" : msg;  // -1: no pool on that device, nothing to check
}

// Skips (fails) tests that did not get the preload: they would test nothing.
#define REQUIRE_GLAKE() ASSERT_TRUE(::glake_test::api().present()) << "not running under LD_PRELOAD=libglake.so"

#define CUDA_OK(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr

struct Outcome {
  int status = -1;  // exit code, or 128 + signal
  std::string out;
  std::string err;
};

// Runs argv with the environment changed by `env` (value "" with unset=true removes). Captures
// stdout and stderr.
inline Outcome run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
               const std::vector<std::string>& unset = {}) {
  Outcome r;
  char out_path[] = "/tmp/glake-test-out-XXXXXX";
  char err_path[] = "/tmp/glake-test-err-XXXXXX";
  const int out_fd = mkstemp(out_path);
  const int err_fd = mkstemp(err_path);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    for (const auto& k : unset) unsetenv(k.c_str());
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  auto slurp = [](int fd) {
    std::string s;
    char buf[4096];
    lseek(fd, 0, SEEK_SET);
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
    close(fd);
    return s;
  };
  r.out = slurp(out_fd);
  r.err = slurp(err_fd);
  unlink(out_path);
  unlink(err_path);
  return r;
}

inline std::string env_path(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

inline std::string helper() { return env_path("GLAKE_TEST_HELPER"); }

// Lines of `text` that start with "glake:".
inline std::vector<std::string> glake_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(at, end - at);
    if (line.rfind("glake:", 0) == 0) lines.push_back(line);
    at = end + 1;
  }
  return lines;
}

}  // namespace glake_test
