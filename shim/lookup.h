// shim/lookup.h: which glake function answers a symbol look-up.
//
// Three doors lead to CUDA functions without the dynamic linker: dlsym on a library handle,
// cuGetProcAddress (the runtime's own door to the driver) and cudaGetDriverEntryPoint[ByVersion]
// (frameworks'). Each first asks the real implementation; when the real answer is one of the entry
// points glake interposes, it is replaced by glake's function, else handed back unchanged. So the
// real answer decides whether the symbol exists at that version; glake only swaps the pointer.
#pragma once

#include <cuda.h>

namespace glake::shim {

// glake's function exported under exactly this name (cudaMalloc, cuMemAlloc_v2, cuGetProcAddress_v2,
// ...), or null. For dlsym on a handle.
void* glake_symbol(const char* name);

// The function to hand out for a cuGetProcAddress-style query of base name `symbol` (e.g.
// "cuMemAlloc") at `version` with `flags`, given the real answer `real`: glake's function when `real`
// is (or, for pointers the driver did not export, the version and flags select) an entry point glake
// interposes; else `real`.
void* substitute_proc(const char* symbol, int version, cuuint64_t flags, void* real);

}  // namespace glake::shim
