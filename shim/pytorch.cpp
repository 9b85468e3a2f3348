// shim/pytorch.cpp: PyTorch, transparently.
//
// Under the preload alone PyTorch should hand every tensor to glake. PyTorch's backend:cudaMallocAsync
// does that: it calls cudaMallocAsync/cudaFreeAsync per tensor on the tensor's stream, reads
// torch.cuda.memory_stats() from the default memory pool's attributes and trims that pool in
// empty_cache(), all of which glake answers (router.h). PyTorch picks its backend from
// PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF (which first depends on its version; before 2.9 only the
// latter) when libc10_cuda.so is loaded, so a constructor of the preloaded library selects it first,
// at process start:
// - GLAKE_PYTORCH=0, GLAKE_DISABLE=1, a bad GLAKE_* value (glake will pass every call through),
//   PYTORCH_NO_CUDA_MEMORY_CACHING set, or PyTorch already loaded (libglake.so dlopen'ed late):
//   nothing is changed.
// - Neither variable set: both are set to backend:cudaMallocAsync (the old name for PyTorch < 2.9;
//   2.9+ reads the new one and so prints no deprecation warning).
// - Either variable names a backend: both kept (backend:native: glake serves PyTorch's segments only).
// - Either asks for expandable_segments, or for options of the native allocator (max_split_size_mb,
//   roundup_power2_divisions, garbage_collection_threshold, ...): the user chose the native allocator;
//   kept, and one line on the first CUDA call says what glake can and cannot do then.
// - Other options only: ",backend:cudaMallocAsync" is appended to each variable that is set, and
//   one set but empty gets "backend:cudaMallocAsync".
// Nothing is printed by a process that never makes a CUDA call.
//
// The same library exports glake_malloc / glake_free for torch.cuda.memory.CUDAPluggableAllocator.
#include "shim/pytorch.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

#include "shim/glake.h"
#include "shim/router.h"

namespace glake::shim {
namespace {

enum class Note { none, native_backend, expandable, native_options };
Note g_note = Note::none;

// The value of `key` in a PyTorch allocator configuration ("k:v,k:v"; spaces ignored), or "".
std::string option(const std::string& conf, const char* key) {
  std::string flat;
  for (char c : conf)
    if (c != ' ') flat += c;
  const std::string k = std::string(key) + ":";
  for (std::size_t at = 0; at <= flat.size();) {
    std::size_t end = flat.find(',', at);
    if (end == std::string::npos) end = flat.size();
    if (flat.compare(at, k.size(), k) == 0) return flat.substr(at + k.size(), end - at - k.size());
    at = end + 1;
  }
  return "";
}

bool has_key(const std::string& conf, const char* key) {
  std::string flat;
  for (char c : conf)
    if (c != ' ') flat += c;
  const std::string k = std::string(key) + ":";
  for (std::size_t at = 0; at < flat.size();) {
    std::size_t end = flat.find(',', at);
    if (end == std::string::npos) end = flat.size();
    if (flat.compare(at, k.size(), k) == 0) return true;
    at = end + 1;
  }
  return false;
}

void choose_backend() {
  if (!settings_serve_pytorch() || std::getenv("PYTORCH_NO_CUDA_MEMORY_CACHING") != nullptr) return;
  // PyTorch already loaded: its allocator was chosen when it loaded; changing the variable now would
  // only mislead child processes.
  if (void* h = dlopen("libc10_cuda.so", RTLD_LAZY | RTLD_NOLOAD)) {
    dlclose(h);
    return;
  }
  // PyTorch versions differ in which of the two they read first (2.9: PYTORCH_ALLOC_CONF; later:
  // PYTORCH_CUDA_ALLOC_CONF) and older ones read only PYTORCH_CUDA_ALLOC_CONF: a choice in either is
  // the user's, and the backend goes into each one that is set.
  const char* const names[] = {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"};
  std::string confs[2];
  bool any = false;
  for (int i = 0; i < 2; ++i) {
    const char* v = std::getenv(names[i]);
    if (v != nullptr && *v != '\0') {
      confs[i] = v;
      any = true;
    }
  }
  if (!any) {
    setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync", 1);
    setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync", 1);
    return;
  }
  for (const std::string& conf : confs) {
    const std::string backend = option(conf, "backend");
    if (backend == "cudaMallocAsync") return;
    if (!backend.empty()) {
      g_note = Note::native_backend;
      return;
    }
  }
  for (const std::string& conf : confs) {
    if (option(conf, "expandable_segments") == "True") {
      g_note = Note::expandable;
      return;
    }
    for (const char* native_only : {"max_split_size_mb", "max_non_split_rounding_mb", "roundup_power2_divisions",
                                    "garbage_collection_threshold", "expandable_segments",
                                    "release_lock_on_cudamalloc"}) {
      if (has_key(conf, native_only)) {
        g_note = Note::native_options;
        return;
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    // Set but empty counts as set for PyTorch (a version that reads this one first stops here, and
    // gets the native allocator): it gets the backend too. Unset stays unset.
    if (confs[i].empty() && std::getenv(names[i]) == nullptr) continue;
    // PyTorch skips spaces and accepts one trailing comma; a comma before ours would then begin a key
    // of its own (",": "Unrecognized key"), so drop them first.
    std::string base = confs[i];
    while (!base.empty() && (base.back() == ',' || base.back() == ' ')) base.pop_back();
    setenv(names[i], (base.empty() ? std::string("backend:cudaMallocAsync") : base + ",backend:cudaMallocAsync").c_str(), 1);
  }
}

__attribute__((constructor)) void select_pytorch_backend() {
  try {
    choose_backend();
  } catch (...) {
    // Out of host memory at process start: leave PyTorch's settings as they are.
  }
}

}  // namespace

const char* pytorch_note() {
  switch (g_note) {
    case Note::native_backend:
      return "PyTorch's allocator configuration selects backend:native, so PyTorch caches memory itself and "
             "hands glake whole segments only (glake still serves them and every other cudaMalloc); remove that "
             "setting, or set backend:cudaMallocAsync, to let glake serve each tensor";
    case Note::expandable:
      return "PyTorch's allocator configuration asks for expandable_segments: PyTorch then maps its own memory "
             "with cuMem* calls, which glake leaves alone, so glake cannot pool or stitch PyTorch's tensors; it "
             "still serves every cudaMalloc/cudaMallocAsync (cuBLAS workspaces, NCCL, other libraries). Remove "
             "expandable_segments to let glake serve each tensor";
    case Note::native_options:
      return "PyTorch's allocator configuration uses options of its native caching allocator, so PyTorch caches "
             "memory itself and hands glake whole segments only; add backend:cudaMallocAsync (those options "
             "then have no effect) to let glake serve each tensor";
    case Note::none:
      break;
  }
  return nullptr;
}

}  // namespace glake::shim

extern "C" __attribute__((visibility("default"))) void* glake_malloc(ssize_t size, int device, void* stream) {
  try {
    return size <= 0 ? nullptr
                     : glake::shim::router().pluggable_malloc(static_cast<std::size_t>(size), device,
                                                              static_cast<cudaStream_t>(stream));
  } catch (...) {
    return nullptr;
  }
}

extern "C" __attribute__((visibility("default"))) void glake_free(void* ptr, ssize_t, int device, void* stream) {
  try {
    glake::shim::router().pluggable_free(ptr, device, static_cast<cudaStream_t>(stream));
  } catch (...) {
  }
}
