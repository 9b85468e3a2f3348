// tests/shim/standin/driver.cpp: the stand-in libcuda.so.1 (see standin.h for the model).
//
// All state lives in one heap object that is never destroyed (worker threads may still wait on its
// mutex at exit), guarded by one mutex; one condition variable wakes workers and waiters. Exported
// names are the driver's ABI names (cuMemAlloc_v2, ...); linked -Bsymbolic, so the addresses this
// library hands out from cuGetProcAddress are its own even when libglake.so interposes the same names.
#include "standin.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr std::size_t kGranularity = std::size_t{2} << 20;
constexpr int kMaxDevices = 16;

struct Stream;
struct Graph;

struct Op {
  std::function<void()> fn;
  std::vector<std::pair<Stream*, std::uint64_t>> waits;
  std::uint64_t seq = 0;
};

struct Stream {
  int device = 0;
  unsigned flags = 0;
  bool legacy = false;
  std::deque<Op> queue;
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;
  bool capturing = false;
  bool invalidated = false;  // the capture goes on, but its end fails (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
  CUstreamCaptureMode capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  const void* capture_thread = nullptr;  // the thread that began the capture (thread_id())
  Graph* graph = nullptr;
  bool own_graph = false;  // the capture made `graph` (not cuStreamBeginCaptureToGraph's caller)
  bool destroyed = false;
  bool worker_done = false;  // destroyed, and its worker has ended: the handle may come back
  const void* ctx = nullptr;  // the context it was made in (cuCtxCreate's, or null: its device's primary)
  std::uint64_t syncs_in_capture = 0;  // cuCtxSynchronize calls made on its device while it was capturing
  bool blocking() const { return !legacy && (flags & CU_STREAM_NON_BLOCKING) == 0; }
};

struct Graph {
  std::vector<std::function<void()>> ops;
  std::vector<CUdeviceptr> allocations;  // made during capture, freed with the graph
};

struct Event {
  int device = 0;  // its context's: it records only streams of that context (cuEventRecord)
  const void* ctx = nullptr;  // that context (cuCtxCreate's, or null: the device's primary)
  Stream* stream = nullptr;
  std::uint64_t seq = 0;
  bool captured = false;  // last recorded in a capture: not to be queried or waited for (CUDA_ERROR_CAPTURED_EVENT)
};

struct Context {
  int device = 0;
  bool created = false;  // made by cuCtxCreate: not the device's primary context
};

struct Phys {
  int fd = -1;
  std::size_t size = 0;
  int device = 0;
  int refs = 0;  // the handle (until released) + each mapping
  bool imported = false;
  bool exportable = false;
};

struct Mapping {
  std::size_t size = 0;
  Phys* phys = nullptr;
  std::uint64_t access = 0;  // devices with read-write access
};

struct Allocation {  // non-VMM device memory (cuMemAlloc & co.)
  std::size_t size = 0;
  std::size_t bytes = 0;  // mapped (page-rounded)
  int fd = -1;
  int device = 0;
  bool counted = true;  // counts against the device's memory (not for IPC imports)
  void* pool = nullptr;
};

struct MemPool {
  int device = 0;
  bool is_default = false;
  std::uint64_t reserved = 0, reserved_high = 0, used = 0, used_high = 0;
  std::uint64_t threshold = 0;
  int reuse[3] = {1, 1, 1};
};

struct Device {
  std::size_t capacity = 0;
  std::size_t used = 0;
  Context primary;
  int primary_refs = 0;
  Stream* legacy = nullptr;
  MemPool default_pool;
  MemPool* current_pool = nullptr;
  std::set<int> peers;
};

struct State {
  std::mutex mu;
  std::condition_variable cv;
  int devices = 2;
  std::size_t export_delay_us = 0;
  std::size_t stream_delay_us = 0;
  Device dev[kMaxDevices];
  std::set<Stream*> streams;
  std::map<CUdeviceptr, std::size_t> reservations;
  std::map<CUdeviceptr, Mapping> mappings;
  std::map<CUmemGenericAllocationHandle, Phys*> handles;
  std::map<CUdeviceptr, Allocation> allocations;
  std::map<CUdeviceptr, Allocation> ipc_imports;
  CUmemGenericAllocationHandle next_handle = 1;
  std::uint64_t syncs = 0;
  int syncs_waiting = 0;  // threads in sync_device now
  std::atomic<std::uint64_t> default_pool_queries{0};  // cuDeviceGetDefaultMemPool calls
  std::uint64_t syncs_in_capture = 0;  // cuCtxSynchronize calls made while a stream of the device was capturing
  std::uint64_t waits_in_capture = 0;  // event/stream queries and waits made while any stream was capturing
};

State* g = nullptr;

// A query of or wait for an event or stream while a capture is under way (g->mu held): counted for
// standin_waits_in_capture (whether CUDA refuses it is potentially_unsafe's business).
void note_wait_in_capture() {
  for (Stream* s : g->streams)
    if (s->capturing && !s->destroyed) {
      ++g->waits_in_capture;
      return;
    }
}

// This thread's stream capture interaction mode (cuThreadExchangeStreamCaptureMode), global at first.
thread_local CUstreamCaptureMode tl_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
thread_local char tl_thread_tag;
const void* thread_id() { return &tl_thread_tag; }

// A potentially unsafe call (a synchronization, a query, an allocation that no capture sees) made on
// this thread: as CUDA documents for the capture modes (cuThreadExchangeStreamCaptureMode), and as
// measured on an H100 (CUDA 13), it is refused with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and
// invalidates the captures that forbid it: this thread's own non-relaxed ones (unless the thread is
// relaxed) and, for a thread in global mode, every other thread's global one. mu held.
CUresult potentially_unsafe() {
  if (tl_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_SUCCESS;
  bool refused = false;
  for (Stream* s : g->streams) {
    if (!s->capturing || s->destroyed) continue;
    const bool own = s->capture_thread == thread_id();
    if ((own && s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
        (!own && tl_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && s->capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
      s->invalidated = true;
      refused = true;
    }
  }
  return refused ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

// A query of or wait for a stream that is capturing conflicts with the capture in any mode: refused, and
// the capture is invalidated. A use of the legacy stream while a blocking stream of its device captures
// would take that stream in (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT), and invalidates its capture. mu held.
CUresult wait_conflicts(Stream* s) {
  if (s->capturing) {
    s->invalidated = true;
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  if (!s->legacy) return CUDA_SUCCESS;
  bool implicit = false;
  for (Stream* t : g->streams)
    if (t->capturing && !t->destroyed && t->device == s->device && t->blocking()) {
      t->invalidated = true;
      implicit = true;
    }
  return implicit ? CUDA_ERROR_STREAM_CAPTURE_IMPLICIT : CUDA_SUCCESS;
}
std::atomic<bool> g_initialized{false};
std::atomic<bool> g_torn_down{false};
std::atomic<bool> g_poisoned{false};

// The context stack of this thread (trivially destructible: no TLS destructor to race with thread exit).
constexpr int kCtxDepth = 32;
thread_local Context* tl_ctx[kCtxDepth] = {};
thread_local int tl_ctx_n = 0;
thread_local Stream* tl_ptds[kMaxDevices] = {};

std::size_t env_bytes(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v, &end, 10);
  switch (*end) {
    case 'K': case 'k': n <<= 10; break;
    case 'M': case 'm': n <<= 20; break;
    case 'G': case 'g': n <<= 30; break;
    default: break;
  }
  return static_cast<std::size_t>(n);
}

void teardown() { g_torn_down.store(true); }

void fork_prepare() {
  if (g != nullptr) g->mu.lock();
}
void fork_parent() {
  if (g != nullptr) g->mu.unlock();
}
void fork_child() {
  if (g != nullptr) g->mu.unlock();
  // As with the real driver: a child of an initialised parent cannot use CUDA.
  if (g_initialized.load()) g_poisoned.store(true);
}

__attribute__((constructor)) void load() {
  g = new State;
  g->devices = static_cast<int>(env_bytes("GLAKE_STANDIN_DEVICES", 2));
  if (g->devices < 1) g->devices = 1;
  if (g->devices > kMaxDevices) g->devices = kMaxDevices;
  const std::size_t cap = env_bytes("GLAKE_STANDIN_MEMORY", std::size_t{1} << 30);
  g->export_delay_us = env_bytes("GLAKE_STANDIN_EXPORT_DELAY_US", 0);
  g->stream_delay_us = env_bytes("GLAKE_STANDIN_STREAM_DELAY_US", 0);
  for (int d = 0; d < g->devices; ++d) {
    g->dev[d].capacity = cap;
    g->dev[d].primary.device = d;
    g->dev[d].default_pool.device = d;
    g->dev[d].default_pool.is_default = true;
    g->dev[d].current_pool = &g->dev[d].default_pool;
  }
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

// Every entry point starts with this: the errors of a driver that is not (or no longer) usable.
#define CHECK_ALIVE()                                                 \
  do {                                                                \
    if (g_poisoned.load()) return CUDA_ERROR_NOT_INITIALIZED;         \
    if (g_torn_down.load()) return CUDA_ERROR_DEINITIALIZED;          \
    if (!g_initialized.load()) return CUDA_ERROR_NOT_INITIALIZED;     \
  } while (0)

bool valid_device(int d) { return d >= 0 && d < g->devices; }

int current_device() { return tl_ctx_n == 0 || tl_ctx[tl_ctx_n - 1] == nullptr ? -1 : tl_ctx[tl_ctx_n - 1]->device; }
// The current context if cuCtxCreate made it, else null (a primary context).
const void* current_created_ctx() {
  return tl_ctx_n == 0 || tl_ctx[tl_ctx_n - 1] == nullptr || !tl_ctx[tl_ctx_n - 1]->created ? nullptr
                                                                                           : tl_ctx[tl_ctx_n - 1];
}

// ---- streams ---------------------------------------------------------------------------------

void worker(Stream* s) {
  std::unique_lock lk(g->mu);
  for (;;) {
    g->cv.wait(lk, [&] {
      if (s->queue.empty()) return s->destroyed;
      for (auto& [t, seq] : s->queue.front().waits)
        if (t->completed < seq) return false;
      return true;
    });
    if (s->queue.empty()) {
      s->worker_done = true;
      return;
    }
    Op op = std::move(s->queue.front());
    s->queue.pop_front();
    lk.unlock();
    if (op.fn) op.fn();
    lk.lock();
    s->completed = op.seq;
    g->cv.notify_all();
  }
}

Stream* new_stream(int device, unsigned flags, bool legacy) {  // mu held
  // As the real driver's, a destroyed stream's handle comes back for a new stream (on any device) once
  // its work is done. Its sequence numbers go on, so events recorded on the old one stay complete.
  Stream* s = nullptr;
  for (Stream* old : g->streams)
    if (old->worker_done) {
      s = old;
      break;
    }
  if (s == nullptr) {
    s = new Stream;
    g->streams.insert(s);
  }
  s->device = device;
  s->flags = flags;
  s->legacy = legacy;
  s->capturing = s->invalidated = false;
  s->graph = nullptr;
  s->destroyed = s->worker_done = false;
  s->ctx = nullptr;
  s->syncs_in_capture = 0;
  std::thread(worker, s).detach();
  return s;
}

Stream* legacy_stream(int device) {  // mu held
  Device& d = g->dev[device];
  if (d.legacy == nullptr) d.legacy = new_stream(device, 0, true);
  return d.legacy;
}

// As the real driver's (measured on an H100, CUDA 13): a capture of a thread's own stream that is under
// way when the thread exits is over (another thread's cuCtxSynchronize then succeeds).
pthread_key_t g_own_streams_key;
bool g_own_streams_key_made = false;  // pthread_key_create failed: g_own_streams_key is another library's
pthread_once_t g_own_streams_once = PTHREAD_ONCE_INIT;
void own_streams_over(void*) {
  if (g_torn_down.load() || g == nullptr) return;
  std::lock_guard lk(g->mu);
  for (Stream* s : tl_ptds) {
    if (s == nullptr || !s->capturing) continue;
    s->capturing = s->invalidated = false;
    if (s->own_graph) delete s->graph;
    s->graph = nullptr;
  }
}
void end_own_captures_at_exit() {
  pthread_once(&g_own_streams_once,
               [] { g_own_streams_key_made = pthread_key_create(&g_own_streams_key, own_streams_over) == 0; });
  if (g_own_streams_key_made) (void)pthread_setspecific(g_own_streams_key, reinterpret_cast<void*>(1));
}

// The stream a handle names, for the current context's device; null if invalid. mu held.
Stream* resolve(CUstream h, bool ptds_api) {
  auto v = reinterpret_cast<std::uintptr_t>(h);
  if (v == 0 || v == 1 || v == 2) {
    const int dev = current_device();
    if (!valid_device(dev)) return nullptr;
    if (v == 2 || (v == 0 && ptds_api)) {
      if (tl_ptds[dev] == nullptr) {
        tl_ptds[dev] = new_stream(dev, 0, false);
        end_own_captures_at_exit();
      }
      return tl_ptds[dev];
    }
    return legacy_stream(dev);
  }
  auto* s = reinterpret_cast<Stream*>(h);
  return g->streams.count(s) != 0 && !s->destroyed ? s : nullptr;
}

// Submits fn on s with the legacy stream's implicit synchronization. mu held. Work for a capture whose
// capture was invalidated is refused (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED), as is work for the legacy
// stream while a blocking stream of its device captures (wait_conflicts).
CUresult enqueue(Stream* s, std::function<void()> fn, std::vector<std::pair<Stream*, std::uint64_t>> waits = {}) {
  if (s->capturing) {
    if (s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    if (fn) s->graph->ops.push_back(std::move(fn));
    return CUDA_SUCCESS;
  }
  if (const CUresult r = wait_conflicts(s)) return r;
  if (s->legacy) {
    for (Stream* t : g->streams)
      if (t != s && t->device == s->device && t->blocking() && !t->destroyed) waits.push_back({t, t->submitted});
  } else if (s->blocking()) {
    Stream* l = legacy_stream(s->device);
    waits.push_back({l, l->submitted});
  }
  Op op;
  op.fn = std::move(fn);
  op.waits = std::move(waits);
  op.seq = ++s->submitted;
  s->queue.push_back(std::move(op));
  g->cv.notify_all();
  return CUDA_SUCCESS;
}

void wait_stream(std::unique_lock<std::mutex>& lk, Stream* s) {
  const std::uint64_t target = s->submitted;
  g->cv.wait(lk, [&] { return s->completed >= target; });
}

void sync_device(std::unique_lock<std::mutex>& lk, int device) {
  std::vector<std::pair<Stream*, std::uint64_t>> targets;
  for (Stream* s : g->streams)
    if (s->device == device) targets.push_back({s, s->submitted});
  ++g->syncs_waiting;
  g->cv.wait(lk, [&] {
    for (auto& [s, t] : targets)
      if (s->completed < t) return false;
    return true;
  });
  --g->syncs_waiting;
  ++g->syncs;
}

// ---- memory ------------------------------------------------------------------------------------

std::size_t round_up(std::size_t n, std::size_t unit) { return (n + unit - 1) / unit * unit; }

int make_memfd(std::size_t size) {
  const int fd = memfd_create("standin-device-memory", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A non-VMM allocation on `device`: memfd-backed, read-write at once. mu held.
CUresult allocate(int device, std::size_t size, CUdeviceptr* out, void* pool) {
  if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (size == 0) {
    *out = 0;
    return CUDA_SUCCESS;
  }
  Device& d = g->dev[device];
  const std::size_t bytes = round_up(size, 4096);
  if (d.used + bytes > d.capacity) return CUDA_ERROR_OUT_OF_MEMORY;
  const int fd = make_memfd(bytes);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  d.used += bytes;
  const auto v = reinterpret_cast<CUdeviceptr>(p);
  g->allocations[v] = Allocation{size, bytes, fd, device, true, pool};
  if (auto* mp = static_cast<MemPool*>(pool)) {
    mp->used += bytes;
    mp->reserved += bytes;
    mp->used_high = std::max(mp->used_high, mp->used);
    mp->reserved_high = std::max(mp->reserved_high, mp->reserved);
  }
  *out = v;
  return CUDA_SUCCESS;
}

void release_allocation(CUdeviceptr v) {  // mu held; v is in allocations
  Allocation a = g->allocations[v];
  g->allocations.erase(v);
  munmap(reinterpret_cast<void*>(v), a.bytes);
  close(a.fd);
  if (a.counted) g->dev[a.device].used -= a.bytes;
  if (auto* mp = static_cast<MemPool*>(a.pool)) {
    mp->used -= a.bytes;
    mp->reserved -= a.bytes;
  }
}

void drop_phys(Phys* p) {  // mu held
  if (--p->refs > 0) return;
  close(p->fd);
  if (!p->imported) g->dev[p->device].used -= p->size;
  delete p;
}

const Mapping* mapping_at(CUdeviceptr p, CUdeviceptr* base) {  // mu held
  auto it = g->mappings.upper_bound(p);
  if (it == g->mappings.begin()) return nullptr;
  --it;
  if (p >= it->first + it->second.size) return nullptr;
  if (base != nullptr) *base = it->first;
  return &it->second;
}

MemPool* as_pool(CUmemoryPool p) {  // mu held
  auto* mp = reinterpret_cast<MemPool*>(p);
  for (int d = 0; d < g->devices; ++d)
    if (mp == &g->dev[d].default_pool) return mp;
  return mp;  // user pools are trusted handles in the stand-in
}

CUresult alloc_async(CUdeviceptr* out, std::size_t size, MemPool* pool, CUstream h, bool ptds) {
  std::unique_lock lk(g->mu);
  Stream* s = resolve(h, ptds);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (s->capturing && s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  // On a stream that is not capturing, no capture sees the allocation (measured on an H100: refused
  // during another thread's global capture, which it invalidates).
  if (!s->capturing)
    if (const CUresult e = potentially_unsafe()) return e;
  if (s->legacy)
    if (const CUresult e = wait_conflicts(s)) return e;
  if (pool == nullptr) pool = g->dev[s->device].current_pool;
  const CUresult r = allocate(pool->device, size, out, pool);  // the pool's memory, wherever the stream
  if (r == CUDA_SUCCESS && s->capturing && *out != 0) s->graph->allocations.push_back(*out);
  return r;
}

CUresult free_async(CUdeviceptr v, CUstream h, bool ptds) {
  std::unique_lock lk(g->mu);
  Stream* s = resolve(h, ptds);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (g->allocations.count(v) == 0) return CUDA_ERROR_INVALID_VALUE;
  if (s->capturing) {
    // A free node: memory made in the capture goes with the graph; older memory is freed at replay.
    Graph* gr = s->graph;
    if (s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    for (CUdeviceptr a : gr->allocations)
      if (a == v) return CUDA_SUCCESS;
  }
  return enqueue(s, [v] {
    std::lock_guard l(g->mu);
    if (g->allocations.count(v) != 0) release_allocation(v);
  });
}

}  // namespace

// =================================================================================================
// Initialisation, devices, contexts

EXPORT CUresult cuInit(unsigned int) {
  if (g_poisoned.load()) return CUDA_ERROR_NOT_INITIALIZED;
  if (g_torn_down.load()) return CUDA_ERROR_DEINITIALIZED;
  bool expected = false;
  if (g_initialized.compare_exchange_strong(expected, true)) std::atexit(teardown);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int* v) {
  if (v == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *v = 13000;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* n) {
  CHECK_ALIVE();
  if (n == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *n = g->devices;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  CHECK_ALIVE();
  if (d == nullptr || !valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  *d = ordinal;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
  CHECK_ALIVE();
  if (name == nullptr || len <= 0 || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  std::snprintf(name, static_cast<std::size_t>(len), "glake stand-in device %d", d);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(std::size_t* bytes, CUdevice d) {
  CHECK_ALIVE();
  if (bytes == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  *bytes = g->dev[d].capacity;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice d) {
  CHECK_ALIVE();
  if (v == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
      *v = 1;
      break;
    default:
      *v = 0;
      break;
  }
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceCanAccessPeer(int* can, CUdevice d, CUdevice peer) {
  CHECK_ALIVE();
  if (can == nullptr || !valid_device(d) || !valid_device(peer)) return CUDA_ERROR_INVALID_DEVICE;
  *can = d != peer ? 1 : 0;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
  CHECK_ALIVE();
  if (ctx == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  ++g->dev[d].primary_refs;
  *ctx = reinterpret_cast<CUcontext>(&g->dev[d].primary);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
  CHECK_ALIVE();
  if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(g->mu);
  if (g->dev[d].primary_refs > 0) --g->dev[d].primary_refs;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned int* flags, int* active) {
  CHECK_ALIVE();
  if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (!valid_device(d)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(g->mu);
  *flags = 0;
  *active = g->dev[d].primary_refs > 0 ? 1 : 0;
  return CUDA_SUCCESS;
}

// A context of its own on the device (not its primary one), made current; never destroyed here.
EXPORT CUresult cuCtxCreate_v4(CUcontext* ctx, CUctxCreateParams*, unsigned int, CUdevice d) {
  CHECK_ALIVE();
  if (ctx == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  if (tl_ctx_n == kCtxDepth) return CUDA_ERROR_INVALID_CONTEXT;
  auto* c = new Context;
  c->device = d;
  c->created = true;
  tl_ctx[tl_ctx_n++] = c;
  *ctx = reinterpret_cast<CUcontext>(c);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  CHECK_ALIVE();
  auto* c = reinterpret_cast<Context*>(ctx);
  if (tl_ctx_n == 0) tl_ctx_n = 1;
  tl_ctx[tl_ctx_n - 1] = c;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
  CHECK_ALIVE();
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *ctx = tl_ctx_n == 0 ? nullptr : reinterpret_cast<CUcontext>(tl_ctx[tl_ctx_n - 1]);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  CHECK_ALIVE();
  if (ctx == nullptr || tl_ctx_n == kCtxDepth) return CUDA_ERROR_INVALID_CONTEXT;
  tl_ctx[tl_ctx_n++] = reinterpret_cast<Context*>(ctx);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* ctx) {
  CHECK_ALIVE();
  if (tl_ctx_n == 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (ctx != nullptr) *ctx = reinterpret_cast<CUcontext>(tl_ctx[tl_ctx_n - 1]);
  --tl_ctx_n;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice* d) {
  CHECK_ALIVE();
  if (d == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  *d = cur;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize() {
  CHECK_ALIVE();
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  std::unique_lock lk(g->mu);
  bool in_capture = false;
  for (Stream* s : g->streams)
    if (s->device == cur && s->capturing && !s->destroyed) {
      ++s->syncs_in_capture;
      in_capture = true;
    }
  if (in_capture) ++g->syncs_in_capture;
  if (const CUresult e = potentially_unsafe()) return e;
  // It synchronizes the legacy stream too: a blocking stream of the device that captures conflicts.
  if (const CUresult e = wait_conflicts(legacy_stream(cur))) return e;
  sync_device(lk, cur);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int) {
  CHECK_ALIVE();
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  auto* p = reinterpret_cast<Context*>(peer);
  if (p == nullptr || p->device == cur) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(g->mu);
  if (!g->dev[cur].peers.insert(p->device).second) return CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
  return CUDA_SUCCESS;
}

// =================================================================================================
// Virtual memory management

EXPORT CUresult cuMemGetAllocationGranularity(std::size_t* g_out, const CUmemAllocationProp* prop,
                                              CUmemAllocationGranularity_flags) {
  CHECK_ALIVE();
  if (g_out == nullptr || prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *g_out = kGranularity;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, std::size_t size, std::size_t alignment, CUdeviceptr,
                                    unsigned long long) {
  CHECK_ALIVE();
  if (ptr == nullptr || size == 0 || size % kGranularity != 0) return CUDA_ERROR_INVALID_VALUE;
  if (alignment == 0) alignment = kGranularity;
  void* p = mmap(nullptr, size + alignment, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto raw = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t base = round_up(raw, alignment);
  if (base > raw) munmap(p, base - raw);
  const std::uintptr_t end = raw + size + alignment;
  if (end > base + size) munmap(reinterpret_cast<void*>(base + size), end - (base + size));
  std::lock_guard lk(g->mu);
  g->reservations[base] = size;
  *ptr = base;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, std::size_t size) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  auto it = g->reservations.find(ptr);
  if (it == g->reservations.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  auto m = g->mappings.lower_bound(ptr);
  if (m != g->mappings.end() && m->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;  // still mapped
  munmap(reinterpret_cast<void*>(ptr), size);
  g->reservations.erase(it);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, std::size_t size, const CUmemAllocationProp* prop,
                            unsigned long long) {
  CHECK_ALIVE();
  if (handle == nullptr || prop == nullptr || size == 0 || size % kGranularity != 0) return CUDA_ERROR_INVALID_VALUE;
  const int dev = prop->location.id;
  if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || !valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(g->mu);
  Device& d = g->dev[dev];
  if (d.used + size > d.capacity) return CUDA_ERROR_OUT_OF_MEMORY;
  const int fd = make_memfd(size);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  auto* p = new Phys;
  p->fd = fd;
  p->size = size;
  p->device = dev;
  p->refs = 1;
  p->exportable = (prop->requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0;
  d.used += size;
  *handle = g->next_handle++;
  g->handles[*handle] = p;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  auto it = g->handles.find(handle);
  if (it == g->handles.end()) return CUDA_ERROR_INVALID_VALUE;
  Phys* p = it->second;
  g->handles.erase(it);
  drop_phys(p);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, std::size_t size, std::size_t offset, CUmemGenericAllocationHandle handle,
                         unsigned long long) {
  CHECK_ALIVE();
  if (size == 0 || ptr % kGranularity != 0 || size % kGranularity != 0 || offset % kGranularity != 0)
    return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  auto h = g->handles.find(handle);
  if (h == g->handles.end() || offset + size > h->second->size) return CUDA_ERROR_INVALID_VALUE;
  // A physical allocation is mapped whole: part of one is refused, as on the H100 (CUDA 13).
  if (offset != 0 || size != h->second->size) return CUDA_ERROR_NOT_SUPPORTED;
  auto r = g->reservations.upper_bound(ptr);
  if (r == g->reservations.begin()) return CUDA_ERROR_INVALID_VALUE;
  --r;
  if (ptr + size > r->first + r->second) return CUDA_ERROR_INVALID_VALUE;
  auto m = g->mappings.lower_bound(ptr);
  if (m != g->mappings.end() && m->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  if (m != g->mappings.begin() && std::prev(m)->first + std::prev(m)->second.size > ptr) return CUDA_ERROR_INVALID_VALUE;
  void* p = mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED, h->second->fd,
                 static_cast<off_t>(offset));
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  ++h->second->refs;
  g->mappings[ptr] = Mapping{size, h->second, 0};
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, std::size_t size) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  // The range must consist of whole mappings.
  CUdeviceptr at = ptr;
  auto it = g->mappings.find(ptr);
  std::vector<CUdeviceptr> bases;
  while (at < ptr + size) {
    if (it == g->mappings.end() || it->first != at) return CUDA_ERROR_INVALID_VALUE;
    bases.push_back(at);
    at += it->second.size;
    ++it;
  }
  if (at != ptr + size) return CUDA_ERROR_INVALID_VALUE;
  for (CUdeviceptr b : bases) {
    Mapping m = g->mappings[b];
    g->mappings.erase(b);
    mmap(reinterpret_cast<void*>(b), m.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    drop_phys(m.phys);
  }
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, std::size_t size, const CUmemAccessDesc* desc, std::size_t count) {
  CHECK_ALIVE();
  if (desc == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  std::vector<Mapping*> covered;
  for (CUdeviceptr at = ptr; at < ptr + size;) {
    CUdeviceptr base = 0;
    const Mapping* m = mapping_at(at, &base);
    if (m == nullptr || base != at) return CUDA_ERROR_INVALID_VALUE;  // the range must be mapped, mapping by mapping
    covered.push_back(&g->mappings[base]);
    at = base + m->size;
  }
  std::uint64_t bits = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || !valid_device(desc[i].location.id))
      return CUDA_ERROR_INVALID_DEVICE;
    if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) bits |= std::uint64_t{1} << desc[i].location.id;
  }
  for (Mapping* m : covered) m->access |= bits;
  if (mprotect(reinterpret_cast<void*>(ptr), size, bits != 0 ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
    return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

std::atomic<void (*)(void*)> g_before_export{nullptr};  // standin_before_next_export
std::atomic<void*> g_before_export_arg{nullptr};

EXPORT CUresult cuMemExportToShareableHandle(void* out, CUmemGenericAllocationHandle handle, CUmemAllocationHandleType type,
                                             unsigned long long) {
  // GLAKE_STANDIN_EXPORT_DELAY_US: a slow export, checked after the wait (a process may begin to exit
  // meanwhile).
  if (const std::size_t us = g->export_delay_us) usleep(static_cast<useconds_t>(us));
  if (auto fn = g_before_export.exchange(nullptr)) fn(g_before_export_arg.load());
  CHECK_ALIVE();
  if (out == nullptr || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  auto it = g->handles.find(handle);
  if (it == g->handles.end() || !it->second->exportable) return CUDA_ERROR_INVALID_VALUE;
  const int fd = fcntl(it->second->fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(out) = fd;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle, void* os_handle,
                                               CUmemAllocationHandleType type) {
  CHECK_ALIVE();
  if (handle == nullptr || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_INVALID_VALUE;
  const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(os_handle));
  struct stat st{};
  if (fstat(fd, &st) != 0 || st.st_size <= 0) return CUDA_ERROR_INVALID_VALUE;
  const int mine = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (mine < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard lk(g->mu);
  auto* p = new Phys;
  p->fd = mine;
  p->size = static_cast<std::size_t>(st.st_size);
  p->refs = 1;
  p->imported = true;
  p->exportable = true;
  *handle = g->next_handle++;
  g->handles[*handle] = p;
  return CUDA_SUCCESS;
}

// =================================================================================================
// Other device memory

EXPORT CUresult cuMemGetInfo_v2(std::size_t* free, std::size_t* total) {
  CHECK_ALIVE();
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (free == nullptr || total == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  *total = g->dev[cur].capacity;
  *free = g->dev[cur].capacity - g->dev[cur].used;
  return CUDA_SUCCESS;
}

#undef cuMemGetInfo
EXPORT CUresult cuMemGetInfo(unsigned int* free, unsigned int* total) {
  std::size_t f = 0, t = 0;
  const CUresult r = cuMemGetInfo_v2(&f, &t);
  if (r == CUDA_SUCCESS) {
    *free = static_cast<unsigned int>(f);
    *total = static_cast<unsigned int>(t);
  }
  return r;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* ptr, std::size_t size) {
  CHECK_ALIVE();
  if (size == 0) return CUDA_ERROR_INVALID_VALUE;  // as the driver documents (and does: tests/gpu/shim)
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard lk(g->mu);
  // cudaMalloc is CUDA's own example of a potentially unsafe call during a capture (no capture sees it).
  if (const CUresult e = potentially_unsafe()) return e;
  return allocate(cur, size, ptr, nullptr);
}

#undef cuMemAlloc
EXPORT CUresult cuMemAlloc(unsigned int* ptr, unsigned int size) {
  (void)ptr;
  (void)size;
  return CUDA_ERROR_NOT_SUPPORTED;  // 32-bit addresses: the legacy entry point, here only to be looked up
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* ptr, std::size_t* pitch, std::size_t width, std::size_t height,
                                   unsigned int) {
  CHECK_ALIVE();
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (pitch == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pitch = round_up(width, 512);
  std::lock_guard lk(g->mu);
  return allocate(cur, *pitch * height, ptr, nullptr);
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr* ptr, std::size_t size, unsigned int) {
  CHECK_ALIVE();
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard lk(g->mu);
  return allocate(cur, size, ptr, nullptr);
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) {
  CHECK_ALIVE();
  std::unique_lock lk(g->mu);
  auto it = g->allocations.find(ptr);
  if (it == g->allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  if (const CUresult e = potentially_unsafe()) return e;  // it synchronizes the device, as a capture cannot
  sync_device(lk, it->second.device);  // as the real cuMemFree does
  if (g->allocations.count(ptr) != 0) release_allocation(ptr);
  return CUDA_SUCCESS;
}

#undef cuMemFree
EXPORT CUresult cuMemFree(unsigned int) { return CUDA_ERROR_NOT_SUPPORTED; }

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* ptr, std::size_t size, CUstream s) {
  CHECK_ALIVE();
  return alloc_async(ptr, size, nullptr, s, false);
}
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr* ptr, std::size_t size, CUstream s) {
  CHECK_ALIVE();
  return alloc_async(ptr, size, nullptr, s, true);
}
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr* ptr, std::size_t size, CUmemoryPool pool, CUstream s) {
  CHECK_ALIVE();
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  MemPool* mp;
  {
    std::lock_guard lk(g->mu);
    mp = as_pool(pool);
  }
  return alloc_async(ptr, size, mp, s, false);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* ptr, std::size_t size, CUmemoryPool pool, CUstream s) {
  CHECK_ALIVE();
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  MemPool* mp;
  {
    std::lock_guard lk(g->mu);
    mp = as_pool(pool);
  }
  return alloc_async(ptr, size, mp, s, true);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr ptr, CUstream s) {
  CHECK_ALIVE();
  return free_async(ptr, s, false);
}
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr ptr, CUstream s) {
  CHECK_ALIVE();
  return free_async(ptr, s, true);
}

EXPORT CUresult cuMemHostAlloc(void** p, std::size_t size, unsigned int) {
  CHECK_ALIVE();
  if (p == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *p = std::aligned_alloc(4096, round_up(size == 0 ? 1 : size, 4096));
  return *p != nullptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemAllocHost_v2(void** p, std::size_t size) { return cuMemHostAlloc(p, size, 0); }
EXPORT CUresult cuMemFreeHost(void* p) {
  CHECK_ALIVE();
  std::free(p);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, std::size_t* size, CUdeviceptr ptr) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  CUdeviceptr b = 0;
  if (const Mapping* m = mapping_at(ptr, &b)) {
    if (base) *base = b;
    if (size) *size = m->size;
    return CUDA_SUCCESS;
  }
  auto it = g->allocations.upper_bound(ptr);
  if (it != g->allocations.begin() && ptr < std::prev(it)->first + std::prev(it)->second.size) {
    --it;
    if (base) *base = it->first;
    if (size) *size = it->second.size;
    return CUDA_SUCCESS;
  }
  return CUDA_ERROR_NOT_FOUND;
}

// ---- memory pools --------------------------------------------------------------------------------

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice d) {
  CHECK_ALIVE();
  if (pool == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  g->default_pool_queries.fetch_add(1);
  *pool = reinterpret_cast<CUmemoryPool>(&g->dev[d].default_pool);
  return CUDA_SUCCESS;
}
std::atomic<void (*)(void*)> g_after_get_mem_pool{nullptr};  // standin_after_next_get_mem_pool
std::atomic<void*> g_after_get_mem_pool_arg{nullptr};
EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice d) {
  CHECK_ALIVE();
  if (pool == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  {
    std::lock_guard lk(g->mu);
    *pool = reinterpret_cast<CUmemoryPool>(g->dev[d].current_pool);
  }
  if (auto fn = g_after_get_mem_pool.exchange(nullptr)) fn(g_after_get_mem_pool_arg.load());
  return CUDA_SUCCESS;
}
std::atomic<void (*)(void*)> g_after_set_mem_pool{nullptr};  // standin_after_next_set_mem_pool
std::atomic<void*> g_after_set_mem_pool_arg{nullptr};
EXPORT CUresult cuDeviceSetMemPool(CUdevice d, CUmemoryPool pool) {
  CHECK_ALIVE();
  if (pool == nullptr || !valid_device(d)) return CUDA_ERROR_INVALID_VALUE;
  {
    std::lock_guard lk(g->mu);
    MemPool* mp = as_pool(pool);
    if (mp->device != d) return CUDA_ERROR_INVALID_VALUE;  // "The memory pool must be local to the specified device"
    g->dev[d].current_pool = mp;
  }
  if (auto fn = g_after_set_mem_pool.exchange(nullptr)) fn(g_after_set_mem_pool_arg.load());
  return CUDA_SUCCESS;
}
// CUDA 13: for a device location and pinned memory, cuDeviceSetMemPool's equivalent; the stand-in has
// no host or managed pools.
EXPORT CUresult cuMemSetMemPool(CUmemLocation* location, CUmemAllocationType type, CUmemoryPool pool) {
  CHECK_ALIVE();
  if (location == nullptr || location->type != CU_MEM_LOCATION_TYPE_DEVICE || type != CU_MEM_ALLOCATION_TYPE_PINNED)
    return CUDA_ERROR_INVALID_VALUE;
  return cuDeviceSetMemPool(location->id, pool);
}
EXPORT CUresult cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  CHECK_ALIVE();
  if (pool == nullptr || props == nullptr || !valid_device(props->location.id)) return CUDA_ERROR_INVALID_VALUE;
  auto* mp = new MemPool;
  mp->device = props->location.id;
  *pool = reinterpret_cast<CUmemoryPool>(mp);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  CHECK_ALIVE();
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  MemPool* mp = as_pool(pool);
  if (mp->is_default) return CUDA_ERROR_INVALID_VALUE;  // "A device's default memory pool cannot be destroyed"
  // "Destroying the current mempool of a device sets the default mempool of that device as the current".
  Device& d = g->dev[mp->device];
  if (d.current_pool == mp) d.current_pool = &d.default_pool;
  return CUDA_SUCCESS;  // kept: allocations may still name it
}
EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  CHECK_ALIVE();
  if (pool == nullptr || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  MemPool* mp = as_pool(pool);
  auto* v64 = static_cast<cuuint64_t*>(value);
  switch (attr) {
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *v64 = mp->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *v64 = mp->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *v64 = mp->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *v64 = mp->used_high; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *v64 = mp->threshold; break;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: *static_cast<int*>(value) = mp->reuse[0]; break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: *static_cast<int*>(value) = mp->reuse[1]; break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *static_cast<int*>(value) = mp->reuse[2]; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  CHECK_ALIVE();
  if (pool == nullptr || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  MemPool* mp = as_pool(pool);
  const cuuint64_t v64 = *static_cast<cuuint64_t*>(value);
  switch (attr) {
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
      if (v64 != 0) return CUDA_ERROR_INVALID_VALUE;
      mp->reserved_high = mp->reserved;
      break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
      if (v64 != 0) return CUDA_ERROR_INVALID_VALUE;
      mp->used_high = mp->used;
      break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: mp->threshold = v64; break;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: mp->reuse[0] = *static_cast<int*>(value); break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: mp->reuse[1] = *static_cast<int*>(value); break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: mp->reuse[2] = *static_cast<int*>(value); break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, std::size_t) {
  CHECK_ALIVE();
  return pool != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* desc, std::size_t count) {
  CHECK_ALIVE();
  if (pool == nullptr || (desc == nullptr && count != 0)) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

// ---- legacy IPC: works on cuMemAlloc memory, fails on VMM memory, as on the H100 -----------------

namespace {
struct IpcWire {
  char magic[8];
  int pid;
  int fd;
  std::uint64_t bytes;
  std::uint64_t size;
};
}  // namespace

EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle* handle, CUdeviceptr ptr) {
  CHECK_ALIVE();
  if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  auto it = g->allocations.find(ptr);
  if (it == g->allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  IpcWire w{};
  std::memcpy(w.magic, "STANDIN", 8);
  w.pid = getpid();
  w.fd = it->second.fd;
  w.bytes = it->second.bytes;
  w.size = it->second.size;
  std::memset(handle, 0, sizeof *handle);
  std::memcpy(handle, &w, sizeof w);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int) {
  CHECK_ALIVE();
  if (ptr == nullptr) return CUDA_ERROR_INVALID_VALUE;
  IpcWire w;
  std::memcpy(&w, &handle, sizeof w);
  if (std::memcmp(w.magic, "STANDIN", 8) != 0) return CUDA_ERROR_INVALID_HANDLE;
  // A handle of this process's own memory: refused, as on the H100 (CUDA 13).
  if (w.pid == getpid()) return CUDA_ERROR_INVALID_CONTEXT;
  const std::string path = "/proc/" + std::to_string(w.pid) + "/fd/" + std::to_string(w.fd);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_INVALID_HANDLE;
  void* p = mmap(nullptr, w.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard lk(g->mu);
  const auto v = reinterpret_cast<CUdeviceptr>(p);
  g->ipc_imports[v] = Allocation{w.size, w.bytes, fd, 0, false, nullptr};
  *ptr = v;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr ptr) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  auto it = g->ipc_imports.find(ptr);
  if (it == g->ipc_imports.end()) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(ptr), it->second.bytes);
  close(it->second.fd);
  g->ipc_imports.erase(it);
  return CUDA_SUCCESS;
}

// =================================================================================================
// Streams, events, copies, graphs

std::atomic<int> g_streams_being_created{0};  // standin_streams_being_created

EXPORT CUresult cuStreamCreate(CUstream* out, unsigned int flags) {
  CHECK_ALIVE();
  g_streams_being_created.fetch_add(1);
  if (const std::size_t us = g->stream_delay_us) usleep(static_cast<useconds_t>(us));  // GLAKE_STANDIN_STREAM_DELAY_US
  g_streams_being_created.fetch_sub(1);
  const int cur = current_device();
  if (cur < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  Stream* s = new_stream(cur, flags, false);
  s->ctx = current_created_ctx();
  *out = reinterpret_cast<CUstream>(s);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreateWithPriority(CUstream* out, unsigned int flags, int) { return cuStreamCreate(out, flags); }

EXPORT CUresult cuStreamDestroy_v2(CUstream h) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr || s->legacy || reinterpret_cast<std::uintptr_t>(h) <= 2) return CUDA_ERROR_INVALID_HANDLE;
  s->destroyed = true;  // its work still runs; the worker then ends
  g->cv.notify_all();
  return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamGetFlags(CUstream h, unsigned int* flags) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr || flags == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  *flags = s->flags;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamGetCtx(CUstream h, CUcontext* ctx) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *ctx = s->ctx != nullptr ? reinterpret_cast<CUcontext>(const_cast<void*>(s->ctx))
                          : reinterpret_cast<CUcontext>(&g->dev[s->device].primary);
  return CUDA_SUCCESS;
}

// STANDIN_BEFORE_12_8: a driver older than CUDA 12.8, without cuStreamGetDevice (before-12.8/).
#ifndef STANDIN_BEFORE_12_8
EXPORT CUresult cuStreamGetDevice(CUstream h, CUdevice* device) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *device = s->device;
  return CUDA_SUCCESS;
}
#endif

EXPORT CUresult cuStreamSynchronize(CUstream h) {
  CHECK_ALIVE();
  std::unique_lock lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  note_wait_in_capture();
  if (const CUresult e = wait_conflicts(s)) return e;
  if (const CUresult e = potentially_unsafe()) return e;
  wait_stream(lk, s);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamQuery(CUstream h) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  note_wait_in_capture();
  if (const CUresult e = wait_conflicts(s)) return e;
  if (const CUresult e = potentially_unsafe()) return e;
  return s->completed >= s->submitted ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuLaunchHostFunc(CUstream h, CUhostFn fn, void* data) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr || fn == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(s, [fn, data] { fn(data); });
}

EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, std::size_t n, CUstream h) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(s, [dst, src, n] { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n); });
}

EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, std::size_t n) {
  CHECK_ALIVE();
  std::unique_lock lk(g->mu);
  Stream* s = resolve(nullptr, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (const CUresult e = potentially_unsafe()) return e;  // synchronous
  if (const CUresult e =
          enqueue(s, [dst, src, n] { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n); }))
    return e;
  wait_stream(lk, s);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, std::size_t n, CUstream h) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(s, [dst, v, n] { std::memset(reinterpret_cast<void*>(dst), v, n); });
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, std::size_t n) {
  CHECK_ALIVE();
  std::unique_lock lk(g->mu);
  Stream* s = resolve(nullptr, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (const CUresult e = potentially_unsafe()) return e;  // synchronous
  if (const CUresult e = enqueue(s, [dst, v, n] { std::memset(reinterpret_cast<void*>(dst), v, n); })) return e;
  wait_stream(lk, s);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuEventCreate(CUevent* e, unsigned int) {
  CHECK_ALIVE();
  if (e == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const int dev = current_device();
  if (!valid_device(dev)) return CUDA_ERROR_INVALID_CONTEXT;
  auto* ev = new Event;
  ev->device = dev;
  ev->ctx = current_created_ctx();
  *e = reinterpret_cast<CUevent>(ev);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e) {
  CHECK_ALIVE();
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(g->mu);
  delete reinterpret_cast<Event*>(e);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent e, CUstream h) {
  CHECK_ALIVE();
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->device != s->device || ev->ctx != s->ctx) return CUDA_ERROR_INVALID_HANDLE;  // "must be from the same context"
  if (s->capturing) {
    if (s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    ev->stream = nullptr;  // a node of the graph
    ev->captured = true;
    return CUDA_SUCCESS;
  }
  if (const CUresult r = enqueue(s, {})) return r;
  ev->stream = s;
  ev->seq = s->submitted;
  ev->captured = false;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecordWithFlags(CUevent e, CUstream h, unsigned int) { return cuEventRecord(e, h); }

std::atomic<void (*)(void*)> g_before_event_wait{nullptr};  // standin_before_next_event_wait
std::atomic<void*> g_before_event_wait_arg{nullptr};
void before_event_wait() {
  if (auto fn = g_before_event_wait.exchange(nullptr)) fn(g_before_event_wait_arg.load());
}

EXPORT CUresult cuEventQuery(CUevent e) {
  CHECK_ALIVE();
  before_event_wait();
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(g->mu);
  note_wait_in_capture();
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->captured) return CUDA_ERROR_CAPTURED_EVENT;  // "last recorded in a capturing stream"
  if (const CUresult r = potentially_unsafe()) return r;
  return ev->stream == nullptr || ev->stream->completed >= ev->seq ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuEventSynchronize(CUevent e) {
  CHECK_ALIVE();
  before_event_wait();
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::unique_lock lk(g->mu);
  note_wait_in_capture();
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->captured) return CUDA_ERROR_CAPTURED_EVENT;
  if (const CUresult r = potentially_unsafe()) return r;
  if (ev->stream != nullptr) g->cv.wait(lk, [&] { return ev->stream->completed >= ev->seq; });
  return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamWaitEvent(CUstream h, CUevent e, unsigned int) {
  CHECK_ALIVE();
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  auto* ev = reinterpret_cast<Event*>(e);
  if (s->capturing) return s->invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
  // An event of a capture joins a stream into that capture: not modelled (the stand-in waits for nothing).
  std::vector<std::pair<Stream*, std::uint64_t>> waits;
  if (ev->stream != nullptr) waits.push_back({ev->stream, ev->seq});
  return enqueue(s, {}, std::move(waits));
}

std::atomic<void (*)(void*)> g_after_begin_capture{nullptr};  // standin_after_next_begin_capture
std::atomic<void*> g_after_begin_capture_arg{nullptr};

// Captures into `into` (ToGraph) or a new graph.
static CUresult begin_capture(CUstream h, bool ptds, Graph* into, CUstreamCaptureMode mode) {
  CHECK_ALIVE();
  if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      mode != CU_STREAM_CAPTURE_MODE_RELAXED)
    return CUDA_ERROR_INVALID_VALUE;
  {
    std::lock_guard lk(g->mu);
    Stream* s = resolve(h, ptds);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
    s->capturing = true;
    s->invalidated = false;
    s->capture_mode = mode;
    s->capture_thread = thread_id();
    s->own_graph = into == nullptr;
    s->graph = into != nullptr ? into : new Graph;
  }
  if (auto fn = g_after_begin_capture.exchange(nullptr)) fn(g_after_begin_capture_arg.load());
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamBeginCapture_v2(CUstream h, CUstreamCaptureMode mode) { return begin_capture(h, false, nullptr, mode); }
EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream h, CUstreamCaptureMode mode) {
  return begin_capture(h, true, nullptr, mode);
}
// CUDA 10.0's, which take no mode: global, as CUDA documents for them.
#undef cuStreamBeginCapture
EXPORT CUresult cuStreamBeginCapture(CUstream h) { return begin_capture(h, false, nullptr, CU_STREAM_CAPTURE_MODE_GLOBAL); }
EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream h) {
  return begin_capture(h, true, nullptr, CU_STREAM_CAPTURE_MODE_GLOBAL);
}
EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream h, CUgraph graph, const CUgraphNode*, const CUgraphEdgeData*,
                                            std::size_t, CUstreamCaptureMode mode) {
  if (graph == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return begin_capture(h, false, reinterpret_cast<Graph*>(graph), mode);
}
EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream h, CUgraph graph, const CUgraphNode*, const CUgraphEdgeData*,
                                                 std::size_t, CUstreamCaptureMode mode) {
  if (graph == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return begin_capture(h, true, reinterpret_cast<Graph*>(graph), mode);
}

EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
  CHECK_ALIVE();
  if (mode == nullptr || (*mode != CU_STREAM_CAPTURE_MODE_GLOBAL && *mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
                          *mode != CU_STREAM_CAPTURE_MODE_RELAXED))
    return CUDA_ERROR_INVALID_VALUE;
  std::swap(*mode, tl_capture_mode);
  return CUDA_SUCCESS;
}

std::atomic<CUresult> g_end_capture_error{CUDA_SUCCESS};  // standin_fail_next_end_capture

static CUresult end_capture(CUstream h, CUgraph* graph, bool ptds) {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, ptds);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (!s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
  // Outside relaxed mode a capture ends on the thread that began it; elsewhere the end is refused and
  // the capture goes on (cuStreamEndCapture: CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD).
  if (s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED && s->capture_thread != thread_id())
    return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
  s->capturing = false;
  if (s->invalidated) {  // over, and no graph comes of it
    s->invalidated = false;
    if (s->own_graph) delete s->graph;
    s->graph = nullptr;
    if (graph != nullptr) *graph = nullptr;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  if (const CUresult e = g_end_capture_error.exchange(CUDA_SUCCESS); e != CUDA_SUCCESS) {
    if (s->own_graph) delete s->graph;  // the capture is over, and no graph comes of it
    s->graph = nullptr;
    if (graph != nullptr) *graph = nullptr;
    return e;
  }
  if (graph != nullptr) *graph = reinterpret_cast<CUgraph>(s->graph);
  s->graph = nullptr;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamEndCapture(CUstream h, CUgraph* graph) { return end_capture(h, graph, false); }
EXPORT CUresult cuStreamEndCapture_ptsz(CUstream h, CUgraph* graph) { return end_capture(h, graph, true); }

EXPORT CUresult cuStreamIsCapturing(CUstream h, CUstreamCaptureStatus* status) {
  CHECK_ALIVE();
  if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  // The legacy stream while a blocking stream of its context captures: an error, which (unlike a use of
  // that stream) leaves the capture valid (cuStreamIsCapturing).
  if (s->legacy)
    for (Stream* t : g->streams)
      if (t->capturing && !t->destroyed && t->device == s->device && t->blocking()) return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  *status = !s->capturing     ? CU_STREAM_CAPTURE_STATUS_NONE
            : s->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                             : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long) {
  CHECK_ALIVE();
  if (exec == nullptr || graph == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *exec = reinterpret_cast<CUgraphExec>(graph);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream h) {
  CHECK_ALIVE();
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  Stream* s = resolve(h, false);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (s->capturing && s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  if (!s->capturing)
    if (const CUresult r = wait_conflicts(s)) return r;
  for (const auto& fn : reinterpret_cast<Graph*>(exec)->ops) (void)enqueue(s, fn);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec) {
  CHECK_ALIVE();
  return CUDA_SUCCESS;  // the exec is the graph; cuGraphDestroy frees it
}

EXPORT CUresult cuGraphDestroy(CUgraph graph) {
  CHECK_ALIVE();
  if (graph == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(g->mu);
  auto* gr = reinterpret_cast<Graph*>(graph);
  for (CUdeviceptr a : gr->allocations)
    if (g->allocations.count(a) != 0) release_allocation(a);
  delete gr;
  return CUDA_SUCCESS;
}

// =================================================================================================
// Errors and entry points

EXPORT CUresult cuGetErrorString(CUresult e, const char** s) {
  if (s == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *s = e == CUDA_SUCCESS ? "no error" : "stand-in driver error";
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
  if (s == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *s = e == CUDA_SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR";
  return CUDA_SUCCESS;
}

namespace {

struct Proc {
  const char* name;
  void* fn;          // the current version
  int since = 0;     // the version that introduced fn; older callers get `older`
  void* older = nullptr;
  void* ptsz = nullptr;  // per-thread default stream variant
};

template <class F>
void* fp(F* f) {
  void* p;
  std::memcpy(&p, &f, sizeof p);
  return p;
}

const std::vector<Proc>& procs();

CUresult get_proc(const char* symbol, void** pfn, int version, cuuint64_t flags, CUdriverProcAddressQueryResult* status) {
  if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  if (symbol == nullptr || pfn == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pfn = nullptr;
  for (const Proc& p : procs()) {
    if (std::strcmp(p.name, symbol) != 0) continue;
    void* f = p.fn;
    if (version < p.since) f = p.older;
    if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0 && p.ptsz != nullptr && version >= p.since)
      f = p.ptsz;
    if (f == nullptr) {
      if (status != nullptr) *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
      return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = f;
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  return CUDA_ERROR_NOT_FOUND;
}

}  // namespace

EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult* status) {
  return get_proc(symbol, pfn, version, flags, status);
}

#undef cuGetProcAddress
EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int version, cuuint64_t flags) {
  return get_proc(symbol, pfn, version, flags, nullptr);
}

namespace {
const std::vector<Proc>& procs() {
  static const std::vector<Proc> table = {
      {"cuInit", fp(&cuInit)},
      {"cuDriverGetVersion", fp(&cuDriverGetVersion)},
      {"cuGetProcAddress", fp(&cuGetProcAddress_v2), 12000, fp(&cuGetProcAddress)},
      {"cuDeviceGetCount", fp(&cuDeviceGetCount)},
      {"cuDeviceGet", fp(&cuDeviceGet)},
      {"cuDeviceGetName", fp(&cuDeviceGetName)},
      {"cuDeviceTotalMem", fp(&cuDeviceTotalMem_v2), 3020},
      {"cuDeviceGetAttribute", fp(&cuDeviceGetAttribute)},
      {"cuDeviceCanAccessPeer", fp(&cuDeviceCanAccessPeer)},
      {"cuDevicePrimaryCtxRetain", fp(&cuDevicePrimaryCtxRetain)},
      {"cuDevicePrimaryCtxRelease", fp(&cuDevicePrimaryCtxRelease_v2), 11000},
      {"cuDevicePrimaryCtxGetState", fp(&cuDevicePrimaryCtxGetState)},
      {"cuCtxCreate", fp(&cuCtxCreate_v4), 12050},
      {"cuCtxSetCurrent", fp(&cuCtxSetCurrent)},
      {"cuCtxGetCurrent", fp(&cuCtxGetCurrent)},
      {"cuCtxPushCurrent", fp(&cuCtxPushCurrent_v2), 4000},
      {"cuCtxPopCurrent", fp(&cuCtxPopCurrent_v2), 4000},
      {"cuCtxGetDevice", fp(&cuCtxGetDevice)},
      {"cuCtxSynchronize", fp(&cuCtxSynchronize)},
      {"cuCtxEnablePeerAccess", fp(&cuCtxEnablePeerAccess)},
      {"cuMemGetAllocationGranularity", fp(&cuMemGetAllocationGranularity)},
      {"cuMemAddressReserve", fp(&cuMemAddressReserve)},
      {"cuMemAddressFree", fp(&cuMemAddressFree)},
      {"cuMemCreate", fp(&cuMemCreate)},
      {"cuMemRelease", fp(&cuMemRelease)},
      {"cuMemMap", fp(&cuMemMap)},
      {"cuMemUnmap", fp(&cuMemUnmap)},
      {"cuMemSetAccess", fp(&cuMemSetAccess)},
      {"cuMemExportToShareableHandle", fp(&cuMemExportToShareableHandle)},
      {"cuMemImportFromShareableHandle", fp(&cuMemImportFromShareableHandle)},
      {"cuMemGetInfo", fp(&cuMemGetInfo_v2), 3020, fp(&cuMemGetInfo)},
      {"cuMemAlloc", fp(&cuMemAlloc_v2), 3020, fp(&cuMemAlloc)},
      {"cuMemAllocPitch", fp(&cuMemAllocPitch_v2), 3020},
      {"cuMemAllocManaged", fp(&cuMemAllocManaged)},
      {"cuMemFree", fp(&cuMemFree_v2), 3020, fp(&cuMemFree)},
      {"cuMemAllocAsync", fp(&cuMemAllocAsync), 11020, nullptr, fp(&cuMemAllocAsync_ptsz)},
      {"cuMemAllocFromPoolAsync", fp(&cuMemAllocFromPoolAsync), 11020, nullptr, fp(&cuMemAllocFromPoolAsync_ptsz)},
      {"cuMemFreeAsync", fp(&cuMemFreeAsync), 11020, nullptr, fp(&cuMemFreeAsync_ptsz)},
      {"cuMemHostAlloc", fp(&cuMemHostAlloc)},
      {"cuMemAllocHost", fp(&cuMemAllocHost_v2), 3020},
      {"cuMemFreeHost", fp(&cuMemFreeHost)},
      {"cuMemGetAddressRange", fp(&cuMemGetAddressRange_v2), 3020},
      {"cuDeviceGetDefaultMemPool", fp(&cuDeviceGetDefaultMemPool), 11020},
      {"cuDeviceGetMemPool", fp(&cuDeviceGetMemPool), 11020},
      {"cuDeviceSetMemPool", fp(&cuDeviceSetMemPool), 11020},
      {"cuMemSetMemPool", fp(&cuMemSetMemPool), 13000},
      {"cuMemPoolCreate", fp(&cuMemPoolCreate), 11020},
      {"cuMemPoolDestroy", fp(&cuMemPoolDestroy), 11020},
      {"cuMemPoolGetAttribute", fp(&cuMemPoolGetAttribute), 11020},
      {"cuMemPoolSetAttribute", fp(&cuMemPoolSetAttribute), 11020},
      {"cuMemPoolTrimTo", fp(&cuMemPoolTrimTo), 11020},
      {"cuMemPoolSetAccess", fp(&cuMemPoolSetAccess), 11020},
      {"cuIpcGetMemHandle", fp(&cuIpcGetMemHandle)},
      {"cuIpcOpenMemHandle", fp(&cuIpcOpenMemHandle_v2), 11000},
      {"cuIpcCloseMemHandle", fp(&cuIpcCloseMemHandle)},
      {"cuStreamCreate", fp(&cuStreamCreate)},
      {"cuStreamCreateWithPriority", fp(&cuStreamCreateWithPriority)},
      {"cuStreamDestroy", fp(&cuStreamDestroy_v2), 4000},
      {"cuStreamGetFlags", fp(&cuStreamGetFlags)},
#ifndef STANDIN_BEFORE_12_8
      {"cuStreamGetDevice", fp(&cuStreamGetDevice)},
#endif
      {"cuStreamGetCtx", fp(&cuStreamGetCtx)},
      {"cuStreamSynchronize", fp(&cuStreamSynchronize)},
      {"cuStreamQuery", fp(&cuStreamQuery)},
      {"cuStreamWaitEvent", fp(&cuStreamWaitEvent)},
      {"cuStreamBeginCapture", fp(&cuStreamBeginCapture_v2), 10010, fp(&cuStreamBeginCapture),
       fp(&cuStreamBeginCapture_v2_ptsz)},
      {"cuStreamBeginCaptureToGraph", fp(&cuStreamBeginCaptureToGraph), 12030, nullptr,
       fp(&cuStreamBeginCaptureToGraph_ptsz)},
      {"cuStreamEndCapture", fp(&cuStreamEndCapture), 0, nullptr, fp(&cuStreamEndCapture_ptsz)},
      {"cuStreamIsCapturing", fp(&cuStreamIsCapturing)},
      {"cuThreadExchangeStreamCaptureMode", fp(&cuThreadExchangeStreamCaptureMode)},
      {"cuLaunchHostFunc", fp(&cuLaunchHostFunc)},
      {"cuMemcpy", fp(&cuMemcpy)},
      {"cuMemcpyAsync", fp(&cuMemcpyAsync)},
      {"cuMemsetD8", fp(&cuMemsetD8_v2), 3020},
      {"cuMemsetD8Async", fp(&cuMemsetD8Async)},
      {"cuEventCreate", fp(&cuEventCreate)},
      {"cuEventDestroy", fp(&cuEventDestroy_v2), 4000},
      {"cuEventRecord", fp(&cuEventRecord)},
      {"cuEventRecordWithFlags", fp(&cuEventRecordWithFlags)},
      {"cuEventQuery", fp(&cuEventQuery)},
      {"cuEventSynchronize", fp(&cuEventSynchronize)},
      {"cuGraphInstantiateWithFlags", fp(&cuGraphInstantiateWithFlags)},
      {"cuGraphLaunch", fp(&cuGraphLaunch)},
      {"cuGraphExecDestroy", fp(&cuGraphExecDestroy)},
      {"cuGraphDestroy", fp(&cuGraphDestroy)},
      {"cuGetErrorString", fp(&cuGetErrorString)},
      {"cuGetErrorName", fp(&cuGetErrorName)},
  };
  return table;
}
}  // namespace

// =================================================================================================
// For tests (standin.h)

EXPORT int standin_live_allocations(void) {
  std::lock_guard lk(g->mu);
  return static_cast<int>(g->allocations.size());
}

EXPORT size_t standin_memory_in_use(int device) {
  if (!valid_device(device)) return 0;
  std::lock_guard lk(g->mu);
  return g->dev[device].used;
}

EXPORT int standin_mapping_access(const void* ptr, int device) {
  std::lock_guard lk(g->mu);
  const Mapping* m = mapping_at(reinterpret_cast<CUdeviceptr>(ptr), nullptr);
  if (m == nullptr) return -1;
  return (m->access >> device) & 1 ? 1 : 0;
}

EXPORT CUresult standin_raw_alloc(CUdeviceptr* ptr, size_t size) {
  CHECK_ALIVE();
  int dev = current_device();
  if (dev < 0) dev = 0;
  std::lock_guard lk(g->mu);
  return allocate(dev, size, ptr, nullptr);
}

EXPORT void standin_fail_next_end_capture(CUresult error) { g_end_capture_error.store(error); }
EXPORT void standin_after_next_get_mem_pool(void (*fn)(void*), void* arg) {
  g_after_get_mem_pool_arg.store(arg);
  g_after_get_mem_pool.store(fn);
}
// The capture rules (potentially_unsafe) for the stand-in runtime's calls that reach no driver call.
EXPORT CUresult standin_unsafe_call() {
  CHECK_ALIVE();
  std::lock_guard lk(g->mu);
  return potentially_unsafe();
}
EXPORT void standin_after_next_set_mem_pool(void (*fn)(void*), void* arg) {
  g_after_set_mem_pool_arg.store(arg);
  g_after_set_mem_pool.store(fn);
}
EXPORT void standin_after_next_begin_capture(void (*fn)(void*), void* arg) {
  g_after_begin_capture_arg.store(arg);
  g_after_begin_capture.store(fn);
}

EXPORT void standin_before_next_export(void (*fn)(void*), void* arg) {
  g_before_export_arg.store(arg);
  g_before_export.store(fn);
}

EXPORT int standin_streams_being_created(void) { return g_streams_being_created.load(); }

EXPORT unsigned long long standin_device_syncs(void) {
  std::lock_guard lk(g->mu);
  return g->syncs;
}
EXPORT int standin_device_syncs_waiting(void) {
  std::lock_guard lk(g->mu);
  return g->syncs_waiting;
}
EXPORT unsigned long long standin_default_pool_queries(void) { return g->default_pool_queries.load(); }
EXPORT unsigned long long standin_stream_syncs_in_capture(CUstream h) {
  std::lock_guard lk(g->mu);
  auto* s = reinterpret_cast<Stream*>(h);
  return g->streams.count(s) != 0 ? s->syncs_in_capture : 0;
}
EXPORT int standin_streams_capturing(int device) {
  std::lock_guard lk(g->mu);
  int n = 0;
  for (Stream* s : g->streams) n += s->device == device && s->capturing && !s->destroyed;
  return n;
}
EXPORT unsigned long long standin_device_syncs_in_capture(void) {
  std::lock_guard lk(g->mu);
  return g->syncs_in_capture;
}
EXPORT void standin_before_next_event_wait(void (*fn)(void*), void* arg) {
  g_before_event_wait_arg.store(arg);
  g_before_event_wait.store(fn);
}
EXPORT unsigned long long standin_waits_in_capture(void) {
  std::lock_guard lk(g->mu);
  return g->waits_in_capture;
}
