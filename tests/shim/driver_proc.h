// tests/shim/driver_proc.h: a driver function found as a program linked with the static CUDA runtime
// finds it: cuGetProcAddress taken from libcuda.so.1 with dlsym (both answered by glake under the
// preload). Null if the look-up fails.
#pragma once

#include <cuda.h>
#include <dlfcn.h>

namespace glake_test {

template <class F>
F driver_proc(const char* name) {
  using GetProc = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  auto get = lib != nullptr ? reinterpret_cast<GetProc>(dlsym(lib, "cuGetProcAddress_v2")) : nullptr;
  void* fn = nullptr;
  CUdriverProcAddressQueryResult found{};
  if (get == nullptr || get(name, &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &found) != CUDA_SUCCESS) return nullptr;
  return reinterpret_cast<F>(fn);
}

}  // namespace glake_test
