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
//   nothing is changed (but for glake's own values inherited from a parent, taken back: below).
// - Neither variable set: both are set to backend:cudaMallocAsync (the old name for PyTorch < 2.9;
//   2.9+ reads the new one and so prints no deprecation warning).
// - Either variable names a backend other than cudaMallocAsync: both kept (backend:native: glake serves
//   PyTorch's segments only). backend:cudaMallocAsync in one is no choice against glake: the other, if
//   set, gets it too unless it asks for the native allocator, as below (a version that reads the other
//   one first would otherwise run the native allocator).
// - Either asks for expandable_segments, or for options of the native allocator (max_split_size_mb,
//   roundup_power2_divisions, garbage_collection_threshold, ...): the user chose the native allocator;
//   kept, and one line on the first CUDA call says what glake can and cannot do then.
// - Other options only: ",backend:cudaMallocAsync" is appended to each variable that is set, and
//   one set but empty gets "backend:cudaMallocAsync".
// The variables as the user left them decide: children inherit the environment, so glake's values in
// it are recorded (GLAKE_PYTORCH_SET), and a child process (a script's python) takes back a value of
// glake's that is still unchanged before deciding, and restores it when it decides otherwise
// (GLAKE_PYTORCH=0, or a choice of its own in the other variable).
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

constexpr const char* kNames[2] = {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"};
constexpr const char* kBackend = "backend:cudaMallocAsync";
// What this library wrote into the two variables, for its copies in child processes: "<A>\n<B>", each
// empty (not written) or 'u' (the variable was unset) or 's' (set) followed by the value written.
constexpr const char* kWritten = "GLAKE_PYTORCH_SET";

struct Var {
  bool set = false;
  std::string value;
  bool operator==(const Var&) const = default;
};

// The two variables as the user left them. The environment is inherited: a shell or launcher run under
// the preload got glake's values at its start, and a value of glake's still unchanged here is taken
// back to what the user had (a script's own `export PYTORCH_CUDA_ALLOC_CONF=backend:native`, or
// GLAKE_PYTORCH=0, must not lose to glake's value in the other variable, which some PyTorch reads first).
void user_view(Var vars[2]) {
  std::string written[2];
  if (const char* m = std::getenv(kWritten)) {
    const std::string s(m);
    const std::size_t nl = s.find('\n');
    if (nl != std::string::npos) {
      written[0] = s.substr(0, nl);
      written[1] = s.substr(nl + 1);
    }
  }
  const std::string suffix = std::string(",") + kBackend;
  for (int i = 0; i < 2; ++i) {
    const char* v = std::getenv(kNames[i]);
    vars[i] = Var{v != nullptr, v != nullptr ? v : ""};
    const std::string& w = written[i];
    if (v == nullptr || w.size() < 2 || w.compare(1, std::string::npos, v) != 0) continue;  // the user's
    if (w[0] == 'u') {
      vars[i] = Var{};
    } else if (w[0] == 's') {
      const std::string mine = w.substr(1);
      if (mine == kBackend) vars[i].value.clear();
      else if (mine.size() > suffix.size() && mine.compare(mine.size() - suffix.size(), suffix.size(), suffix) == 0)
        vars[i].value = mine.substr(0, mine.size() - suffix.size());
    }
  }
}

// Sets the variables to `want`, and records what differs from the user's (`user`) for child processes.
void apply(const Var user[2], const Var want[2]) {
  std::string written[2];
  for (int i = 0; i < 2; ++i) {
    const char* v = std::getenv(kNames[i]);
    if (want[i] != Var{v != nullptr, v != nullptr ? v : ""}) {
      if (want[i].set) setenv(kNames[i], want[i].value.c_str(), 1);
      else unsetenv(kNames[i]);
    }
    if (want[i] != user[i] && want[i].set && want[i].value.find('\n') == std::string::npos)
      written[i] = (user[i].set ? "s" : "u") + want[i].value;
  }
  if (written[0].empty() && written[1].empty()) unsetenv(kWritten);
  else setenv(kWritten, (written[0] + "\n" + written[1]).c_str(), 1);
}

// What the variables should hold, given the user's: `want` starts as `user`.
void decide(const Var user[2], Var want[2]) {
  // PyTorch versions differ in which of the two they read first (2.9: PYTORCH_ALLOC_CONF; later:
  // PYTORCH_CUDA_ALLOC_CONF) and older ones read only PYTORCH_CUDA_ALLOC_CONF: a choice in either is
  // the user's, and the backend goes into each one that is set.
  const std::string confs[2] = {user[0].value, user[1].value};
  if (confs[0].empty() && confs[1].empty()) {
    want[0] = want[1] = Var{true, kBackend};
    return;
  }
  // backend:cudaMallocAsync in one variable is no choice against glake's: the other one, if set, is
  // still what a version that reads it first goes by, so it gets the backend below as well.
  bool async[2] = {false, false};
  for (int i = 0; i < 2; ++i) {
    const std::string backend = option(confs[i], "backend");
    if (backend == "cudaMallocAsync") {
      async[i] = true;
    } else if (!backend.empty()) {
      g_note = Note::native_backend;
      return;
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (async[i]) continue;  // native options beside backend:cudaMallocAsync have no effect
    const bool chosen = async[1 - i];  // the user's choices disagree: both stay as they are, unexplained
    if (option(confs[i], "expandable_segments") == "True") {
      if (!chosen) g_note = Note::expandable;
      return;
    }
    for (const char* native_only : {"max_split_size_mb", "max_non_split_rounding_mb", "roundup_power2_divisions",
                                    "garbage_collection_threshold", "expandable_segments",
                                    "release_lock_on_cudamalloc"}) {
      if (has_key(confs[i], native_only)) {
        if (!chosen) g_note = Note::native_options;
        return;
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    // Set but empty counts as set for PyTorch (a version that reads this one first stops here, and
    // gets the native allocator): it gets the backend too. Unset stays unset.
    if (async[i] || !user[i].set) continue;
    // PyTorch skips spaces and accepts one trailing comma; a comma before ours would then begin a key
    // of its own (",": "Unrecognized key"), so drop them first.
    std::string base = confs[i];
    while (!base.empty() && (base.back() == ',' || base.back() == ' ')) base.pop_back();
    want[i] = Var{true, base.empty() ? std::string(kBackend) : base + "," + kBackend};
  }
}

void choose_backend() {
  // PyTorch already loaded: its allocator was chosen when it loaded; changing the variable now would
  // only mislead child processes.
  if (void* h = dlopen("libc10_cuda.so", RTLD_LAZY | RTLD_NOLOAD)) {
    dlclose(h);
    return;
  }
  Var user[2];
  user_view(user);
  Var want[2] = {user[0], user[1]};
  // Opted out here (a parent under the preload may not have been): the user's values, as they were.
  if (settings_serve_pytorch() && std::getenv("PYTORCH_NO_CUDA_MEMORY_CACHING") == nullptr) decide(user, want);
  apply(user, want);
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
