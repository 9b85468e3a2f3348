// shim/router.cpp: the routing decisions of router.h.
#include "shim/router.h"

#include <libgen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "shim/ipc.h"
#include "shim/lookup.h"
#include "shim/pytorch.h"
#include "shim/real.h"
#include "tracer/pool_trace.h"
#include "tracer/session.h"

namespace glake::shim {

namespace {

constinit Router g_router;

// Errors glake itself returned on this thread, merged into cudaGetLastError/cudaPeekAtLastError.
__thread cudaError_t tl_last_error __attribute__((tls_model("initial-exec"))) = cudaSuccess;
// The device of this thread's last allocation: where its frees look first (no cudaGetDevice on the
// free path; a wrong guess only costs a look at the other pools).
__thread int tl_device_hint __attribute__((tls_model("initial-exec"))) = -1;
// Streams whose device this thread asked the driver (Router::stream_device), each valid while no
// stream has been destroyed since (a new stream may get a destroyed one's handle). A few slots, by
// handle: a thread may alternate between a compute stream and copy or communication streams.
struct StreamSlot {
  std::uintptr_t stream;
  int device;
  std::uint64_t epoch;
};
constexpr int kStreamSlots = 4;
__thread StreamSlot tl_streams[kStreamSlots] __attribute__((tls_model("initial-exec"))) = {};
inline StreamSlot& stream_slot(std::uintptr_t s) { return tl_streams[(s ^ (s >> 7) ^ (s >> 13)) & (kStreamSlots - 1)]; }

constexpr pool::StreamHandle kLegacy = 0;
// cudaStreamPerThread / CU_STREAM_PER_THREAD: one handle, but each host thread's own stream, so the
// pool cannot key it (nor record on it from another thread). Allocations on it go to the real API;
// a glake block freed on it is freed as cudaFree frees (after the device's work).
constexpr pool::StreamHandle kPerThread = 2;

// Stream handles as the pool keys them: 0 and cudaStreamLegacy are the same stream; 0 under the
// per-thread default stream API is the thread's stream.
pool::StreamHandle normalize(const void* stream, bool ptds) {
  auto s = reinterpret_cast<pool::StreamHandle>(stream);
  if (s == 0 && ptds) return kPerThread;
  if (s == 1) return kLegacy;
  return s;
}

// The keys of captures of the thread's own stream (cudaStreamPerThread), one per device (the last:
// device unknown): Router::capture_key.
__thread char tl_own_streams[kMaxDevices + 1] __attribute__((tls_model("initial-exec")));

bool valid_device(int d) { return d >= 0 && d < kMaxDevices; }

// GLAKE_* switches of the shim itself, with the pool's wording for bad values.
bool read_switch(const char* name, bool fallback, std::vector<std::string>* errors) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  std::string s(v);
  if (s == "1" || s == "true" || s == "on" || s == "yes") return true;
  if (s == "0" || s == "false" || s == "off" || s == "no") return false;
  errors->push_back(std::string(name) + "='" + s + "' is not a switch (accepted: 0, 1, on, off, true, false, yes, no)");
  return fallback;
}

// Every GLAKE_* setting, as init() acts on it; errors gets one line per bad value.
pool::Config read_settings(std::vector<std::string>* errors, bool* disable, bool* verbose, bool* pytorch,
                           tracer::SessionOptions* trace, bool* tracing) {
  pool::Config config = pool::config_from_env(errors);
  *disable = read_switch("GLAKE_DISABLE", false, errors);
  *verbose = read_switch("GLAKE_VERBOSE", false, errors);
  *pytorch = read_switch("GLAKE_PYTORCH", true, errors);  // acted on at load (pytorch.cpp)
  *tracing = tracer::SessionOptions::from_env(trace, errors);
  if (*tracing) {
    // The trace is written at exit: a path that cannot be written is a bad value now, not a lost trace then.
    std::string dir = trace->path;
    dir = ::dirname(dir.data());
    struct stat st {};
    if (::access(dir.c_str(), W_OK) != 0)
      errors->push_back("GLAKE_TRACE='" + std::string(std::getenv("GLAKE_TRACE")) + "' cannot be written (" +
                        std::strerror(errno) + " in " + dir + ")");
    else if (::stat(trace->path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
      // The rename at exit would fail (a file cannot replace a directory): the trace would be lost then.
      errors->push_back("GLAKE_TRACE='" + std::string(std::getenv("GLAKE_TRACE")) + "' cannot be written (" +
                        trace->path + " is a directory)");
  }
  return config;
}

// The pool says "...; using the default": the shim turns glake off instead, so drop that ending.
std::string without_default_note(std::string e) {
  const std::string tail = "; using the default";
  if (e.size() >= tail.size() && e.compare(e.size() - tail.size(), tail.size(), tail) == 0)
    e.resize(e.size() - tail.size());
  return e;
}

void fork_prepare() { g_router.prepare_fork(); }
void fork_parent() { g_router.parent_after_fork(); }
void fork_child() { g_router.child_after_fork(); }
void exit_handler() { g_router.on_exit(); }

// Registered at load: costs one call, and makes fork() safe from then on.
__attribute__((constructor)) void register_fork_handlers() { pthread_atfork(fork_prepare, fork_parent, fork_child); }

class Locked {
 public:
  explicit Locked(pthread_mutex_t* m) : m_(m) { pthread_mutex_lock(m_); }
  ~Locked() { pthread_mutex_unlock(m_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  pthread_mutex_t* m_;
};

pool::Status driver_status(CUresult r) { return static_cast<pool::Status>(static_cast<int>(r)); }

// Room for one more item in a realloc'ed array of `count` items (grown to `first`, then doubled).
// false: out of host memory, the array as it was.
template <class T>
bool room_for_one(T*& items, std::size_t count, std::size_t* capacity, std::size_t first) {
  if (count < *capacity) return true;
  const std::size_t cap = *capacity == 0 ? first : *capacity * 2;
  auto* grown = static_cast<T*>(std::realloc(items, cap * sizeof(T)));
  if (grown == nullptr) return false;
  items = grown;
  *capacity = cap;
  return true;
}

}  // namespace

Router& router() { return g_router; }

bool settings_serve_pytorch() {
  std::vector<std::string> errors;
  tracer::SessionOptions trace;
  bool disable = false, verbose = false, pytorch = true, tracing = false;
  (void)read_settings(&errors, &disable, &verbose, &pytorch, &trace, &tracing);
  return errors.empty() && !disable && pytorch;
}

void say(const char* fmt, ...) {
  char line[2048];
  int n = std::snprintf(line, sizeof line, "glake: ");
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - static_cast<std::size_t>(n) - 1, fmt, ap);
  va_end(ap);
  if (m < 0) return;
  std::size_t len = std::min(sizeof line - 2, static_cast<std::size_t>(n + m));
  line[len++] = '\n';
  ssize_t w = ::write(2, line, len);
  (void)w;
}

cudaError_t to_runtime_error(pool::Status s) {
  switch (s) {
    case pool::Status::ok: return cudaSuccess;
    case pool::Status::invalid_value: return cudaErrorInvalidValue;
    case pool::Status::out_of_memory: return cudaErrorMemoryAllocation;
    case pool::Status::not_initialized: return cudaErrorInitializationError;
    case pool::Status::deinitialized: return cudaErrorCudartUnloading;
    case pool::Status::invalid_context: return cudaErrorDeviceUninitialized;
    case pool::Status::invalid_handle: return cudaErrorInvalidResourceHandle;
    case pool::Status::not_found: return cudaErrorSymbolNotFound;
    case pool::Status::not_ready: return cudaErrorNotReady;
    case pool::Status::not_permitted: return cudaErrorNotPermitted;
    case pool::Status::not_supported: return cudaErrorNotSupported;
    default: break;
  }
  // Driver codes without a name in Status: most runtime codes share the driver's number.
  int v = static_cast<int>(s);
  return v > 0 && v < 1000 ? static_cast<cudaError_t>(v) : cudaErrorUnknown;
}

// ------------------------------------------------------------------------------------------------
// State

Mode Router::mode() {
  int m = mode_.load(std::memory_order_acquire);
  if (m != static_cast<int>(Mode::not_started)) [[likely]]
    return static_cast<Mode>(m);
  return init();
}

Mode Router::init() {
  Locked lock(&mutex_);
  if (mode_.load(std::memory_order_relaxed) != static_cast<int>(Mode::not_started))
    return static_cast<Mode>(mode_.load(std::memory_order_relaxed));
  Mode m = Mode::on;
  try {
    std::vector<std::string> errors;
    tracer::SessionOptions trace;
    bool disable = false, pytorch = true, tracing = false;  // pytorch: checked here, acted on at load
    config_ = read_settings(&errors, &disable, &verbose_, &pytorch, &trace, &tracing);
    if (!errors.empty()) {
      std::string line;
      for (const std::string& e : errors) line += (line.empty() ? "" : "; ") + without_default_note(e);
      say("off, CUDA calls pass through untouched: %s", line.c_str());
      m = Mode::off;
    } else if (disable) {
      m = Mode::off;
    } else {
      if (const char* note = pytorch_note()) say("%s", note);
      if (tracing) {
        std::vector<std::string> trace_errors;
        session_.store(tracer::TraceSession::start_from_env(&trace_errors), std::memory_order_release);
        for (const std::string& e : trace_errors) say("%s", e.c_str());  // tracing off, glake on
      }
    }
  } catch (...) {
    m = Mode::off;  // out of host memory while reading the settings: stay out of the way
  }
  mode_.store(static_cast<int>(m), std::memory_order_release);
  return m;
}

bool Router::serving() {
  return mode() == Mode::on && !inside_real_call() && !exiting_.load(std::memory_order_relaxed);
}

bool Router::runtime_device(int* device) {
  const auto f = real_runtime().get_device;
  if (f == nullptr) return false;
  RealCall g;
  return f(device) == cudaSuccess && valid_device(*device);
}

bool Router::driver_device(int* device) {
  const auto f = real_driver().ctx_get_device;
  CUdevice d = 0;
  if (f == nullptr || f(&d) != CUDA_SUCCESS) return false;
  *device = static_cast<int>(d);
  return valid_device(*device);
}

bool Router::stream_device(pool::StreamHandle stream, bool driver_api, int* device) {
  if (stream == kLegacy) return driver_api ? driver_device(device) : runtime_device(device);
  const std::uint64_t epoch = stream_epoch_.load(std::memory_order_acquire);
  StreamSlot& slot = stream_slot(stream);
  if (slot.stream == stream && slot.epoch == epoch) {
    *device = slot.device;
    return true;
  }
  const DriverApi& d = real_driver();
  CUdevice dev = 0;
  if (d.stream_get_device != nullptr) {
    if (d.stream_get_device(reinterpret_cast<CUstream>(stream), &dev) != CUDA_SUCCESS) return false;
  } else if (d.stream_get_ctx != nullptr && d.ctx_push_current != nullptr && d.ctx_pop_current != nullptr &&
             d.ctx_get_device != nullptr) {
    // A driver older than CUDA 12.8 (no cuStreamGetDevice): the device of the stream's context.
    CUcontext ctx = nullptr;
    if (d.stream_get_ctx(reinterpret_cast<CUstream>(stream), &ctx) != CUDA_SUCCESS) return false;
    if (d.ctx_push_current(ctx) != CUDA_SUCCESS) return false;
    const CUresult r = d.ctx_get_device(&dev);
    CUcontext popped = nullptr;
    (void)d.ctx_pop_current(&popped);
    if (r != CUDA_SUCCESS) return false;
  } else {
    return driver_api ? driver_device(device) : runtime_device(device);
  }
  if (!valid_device(static_cast<int>(dev))) return false;
  slot = StreamSlot{stream, static_cast<int>(dev), epoch};
  *device = static_cast<int>(dev);
  return true;
}

DevicePool* Router::existing_pool(int device) const {
  if (!valid_device(device)) return nullptr;
  DevicePool* p = pools_[device].load(std::memory_order_acquire);
  return p != nullptr && p->usable ? p : nullptr;
}

DevicePool* Router::pool_for(int device, bool from_runtime) {
  if (!valid_device(device)) return nullptr;
  DevicePool* p = pools_[device].load(std::memory_order_acquire);
  if (p == nullptr) [[unlikely]]
    p = create_pool(device, from_runtime);
  return p != nullptr && p->usable ? p : nullptr;
}

DevicePool* Router::create_pool(int device, bool from_runtime) {
  // The driver's dlopen before the lock: a library constructor (inside dlopen, holding the loader's
  // lock) that allocates would wait for create_mutex_ while its holder waits for the loader (tests:
  // dlopen-ctor-pool).
  (void)pool::CudaDriver::look_up();
  Locked lock(&create_mutex_);
  if (DevicePool* p = pools_[device].load(std::memory_order_acquire)) return p;
  auto* p = new (std::nothrow) DevicePool;
  if (p == nullptr) return nullptr;
  p->device = device;
  // A fork from here to the end (not kept out: fork's handler does not take create_mutex_) leaves a
  // child that must turn glake off, as for a made pool (child_after_fork).
  creating_.store(true);
  struct Done {
    std::atomic<bool>& creating;
    ~Done() { creating.store(false); }  // every way out, an exception caught by the hook's guard included
  } done{creating_};
  auto publish = [&] {
    pools_[device].store(p, std::memory_order_release);
    int seen = pool_count_.load(std::memory_order_relaxed);
    while (seen < device + 1 && !pool_count_.compare_exchange_weak(seen, device + 1)) {
    }
    return p;
  };

  std::unique_ptr<pool::CudaDriver> drv;
  const pool::Status s = pool::CudaDriver::open(device, &drv);
  if (s != pool::Status::ok) {
    say("device %d: the CUDA driver cannot serve glake here (%s); this device's allocations pass through",
        device, pool::status_name(s));
    return publish();
  }
  if (!exit_hook_.exchange(true)) std::atexit(exit_handler);  // after cuInit: runs before the driver's teardown

  // The private stream of synchronous allocations, in the device's primary context.
  const DriverApi& d = real_driver();
  CUstream stream = nullptr;
  CUdevice cu = 0;
  CUcontext ctx = nullptr;
  bool made = false;
  if (d.device_get != nullptr && d.primary_ctx_retain != nullptr && d.ctx_push_current != nullptr &&
      d.stream_create != nullptr && d.device_get(&cu, device) == CUDA_SUCCESS &&
      d.primary_ctx_retain(&ctx, cu) == CUDA_SUCCESS) {
    if (d.ctx_push_current(ctx) == CUDA_SUCCESS) {
      made = d.stream_create(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS;
      CUcontext popped = nullptr;
      (void)d.ctx_pop_current(&popped);
    }
    (void)d.primary_ctx_release(cu);
  }
  if (!made) {
    say("device %d: cannot create glake's stream; this device's allocations pass through", device);
    return publish();
  }

  try {
    p->alloc = new pool::Allocator(*drv, config_);
  } catch (...) {
    say("device %d: out of host memory making glake's pool; this device's allocations pass through", device);
    return publish();
  }
  p->driver = drv.release();
  p->sync_stream = reinterpret_cast<pool::StreamHandle>(stream);
  const std::uint64_t peers = peers_[device].load(std::memory_order_relaxed);
  for (int a = 0; a < kMaxDevices; ++a)
    if ((peers >> a) & 1) p->driver->add_peer(a);
  if (trace_restart_.load(std::memory_order_acquire)) [[unlikely]]
    start_child_trace();
  if (tracer::TraceSession* session = session_.load(std::memory_order_acquire)) {
    if (auto* observer = new (std::nothrow) tracer::PoolTraceObserver(&session->recorder())) {
      p->alloc->set_observer(observer);           // never deleted, as the pool
      tracer::register_pool(*session, p->alloc);  // live/physical totals for the trace
    }
  }
  p->usable = true;

  // The runtime initialises its own state lazily; make it see this device as used, as a real
  // cudaMalloc would have (a context is current on this thread afterwards). Not when the pool is made
  // from a driver call: that may come from inside the runtime itself.
  if (from_runtime) {
    if (const auto f = real_runtime().free) {
      RealCall g;
      pool::RelaxedCapture relaxed;  // refused during another thread's global capture, which it then breaks
      (void)f(nullptr);
    }
  }
  if (verbose_) {
    say("device %d: pool on (page %zu KiB, stitch %s, small limit %zu, max create %zu, limit %zu)", device,
        p->driver->granularity() >> 10, config_.stitch ? "on" : "off", p->alloc->config().small_limit,
        config_.max_create, config_.limit);
  }
  return publish();
}

DevicePool* Router::owner(pool::DevPtr ptr, int hint) {
  if (DevicePool* p = existing_pool(hint); p != nullptr && p->alloc->owns(ptr)) return p;
  const int n = pool_count_.load(std::memory_order_acquire);
  for (int d = 0; d < n; ++d) {
    if (d == hint) continue;
    if (DevicePool* p = existing_pool(d); p != nullptr && p->alloc->owns(ptr)) return p;
  }
  return nullptr;
}

void Router::count_passthrough(int device, bool driver_api) {
  // Counted once, where the program's call came in (not again inside glake's own real call).
  if (mode_.load(std::memory_order_relaxed) != static_cast<int>(Mode::on) || inside_real_call()) return;
  if (!valid_device(device) && !(driver_api ? driver_device(&device) : runtime_device(&device))) device = kMaxDevices;
  passthrough_[device].fetch_add(1, std::memory_order_relaxed);
}

cudaError_t Router::fail(cudaError_t e) {
  // cudaGetLastError returns the latest error: an older one of the runtime's is dropped (a sticky one
  // stays: the runtime keeps returning it).
  if (const auto f = real_runtime().get_last_error; f != nullptr) {
    RealCall g;
    (void)f();
  }
  tl_last_error = e;
  return e;
}

pool::Status Router::allocate(DevicePool* p, std::size_t size, pool::StreamHandle stream, pool::DevPtr* out) {
  const pool::Status s = p->alloc->allocate(size, stream, out);
  tracer::TraceSession* session = nullptr;
  if (s == pool::Status::out_of_memory && (session = session_.load(std::memory_order_acquire)) != nullptr) [[unlikely]] {
    // The pool's layout when it said no, for the trace (no pool lock is held here).
    tracer::SnapshotContext c;
    c.device = static_cast<std::uint32_t>(p->device);
    c.request = size;
    c.stream = stream;
    c.limit = config_.limit;
    std::size_t free = 0, total = 0;
    if (p->driver->mem_info(&free, &total) == pool::Status::ok) {
      c.device_free = free;
      c.device_total = total;
    }
    (void)tracer::on_out_of_memory(*session, *p->alloc, c);
  }
  return s;
}

int Router::trace_dump(const char* path) {
  tracer::TraceSession* s = session_.load(std::memory_order_acquire);
  if (s == nullptr || forked_.load(std::memory_order_relaxed)) return -1;
  return s->dump(path != nullptr ? path : "").empty() ? 0 : -1;
}

Ipc* Router::ipc() {
  Ipc* i = ipc_.load(std::memory_order_acquire);
  if (i != nullptr) return i;
  Locked lock(&mutex_);
  i = ipc_.load(std::memory_order_relaxed);
  if (i == nullptr) {
    i = new (std::nothrow) Ipc;
    ipc_.store(i, std::memory_order_release);
  }
  return i;
}

// ------------------------------------------------------------------------------------------------
// Freeing

bool Router::device_context_active(int device) {
  const DriverApi& d = real_driver();
  CUdevice cu = 0;
  unsigned int flags = 0;
  int active = 0;
  return d.primary_ctx_get_state != nullptr && d.device_get(&cu, device) == CUDA_SUCCESS &&
         d.primary_ctx_get_state(cu, &flags, &active) == CUDA_SUCCESS && active != 0;
}

pool::Status Router::synchronize_device(int device) {
  const DriverApi& d = real_driver();
  if (d.ctx_synchronize == nullptr) return pool::Status::not_initialized;
  int current = -1;
  if (driver_device(&current) && current == device) return driver_status(d.ctx_synchronize());
  CUdevice cu = 0;
  CUcontext ctx = nullptr;
  CUresult r = d.device_get(&cu, device);
  if (r == CUDA_SUCCESS) r = d.primary_ctx_retain(&ctx, cu);
  if (r != CUDA_SUCCESS) return driver_status(r);
  r = d.ctx_push_current(ctx);
  if (r == CUDA_SUCCESS) {
    r = d.ctx_synchronize();
    CUcontext popped = nullptr;
    (void)d.ctx_pop_current(&popped);
  }
  (void)d.primary_ctx_release(cu);
  return driver_status(r);
}

// A free that must wait for the device (or a stream) first: while a capture is under way the wait
// would break it, so the block is held instead (freed when the last capture ends); else the free
// counts as waiting until end_free_wait(), and no capture begins meanwhile (capture_started waits for
// it). A held block is still live in its pool: a second free of it is refused here, as CUDA refuses
// one, or at the flush it could free the block of whoever got the address next. So is a second free of
// a block whose free waits (listed in freeing_ until the pool frees it).
std::optional<pool::Status> Router::begin_free_wait(DevicePool* p, pool::DevPtr ptr, int stream_dev) {
  Locked lock(&mutex_);
  if (held_index(ptr) != held_count_ || is_kept(ptr) || is_freeing(ptr)) return pool::Status::invalid_value;
  if (captures_.load(std::memory_order_acquire) == 0) {
    ++waiting_frees_;
    // Out of host memory: not listed, and a second free meanwhile goes unnoticed.
    if (room_for_one(freeing_, freeing_count_, &freeing_capacity_, 16)) {
      freeing_[freeing_count_++] = ptr;
      any_freeing_.store(true, std::memory_order_release);
    }
    return std::nullopt;
  }
  // Out of host memory: the block stays allocated (leaked, never reused).
  if (!room_for_one(held_frees_, held_count_, &held_capacity_, 64)) return pool::Status::ok;
  held_frees_[held_count_++] = HeldFree{p, ptr, stream_dev};
  any_held_.store(true, std::memory_order_release);
  return pool::Status::ok;
}

std::size_t Router::held_index(pool::DevPtr ptr) const {
  std::size_t i = 0;
  while (i < held_count_ && held_frees_[i].ptr != ptr) ++i;
  return i;
}

bool Router::is_held(pool::DevPtr ptr) {
  if (!any_held_.load(std::memory_order_acquire) && !any_freeing_.load(std::memory_order_acquire) &&
      (ptr < kept_lo_.load(std::memory_order_acquire) || ptr > kept_hi_.load(std::memory_order_acquire)))
    return false;
  Locked lock(&mutex_);
  return held_index(ptr) != held_count_ || is_kept(ptr) || is_freeing(ptr);
}

bool Router::is_kept(pool::DevPtr ptr) const {
  return std::binary_search(kept_, kept_ + kept_count_, ptr);
}

bool Router::is_freeing(pool::DevPtr ptr) const {
  return std::find(freeing_, freeing_ + freeing_count_, ptr) != freeing_ + freeing_count_;
}

void Router::unlist_freeing(pool::DevPtr ptr) {
  pool::DevPtr* at = std::find(freeing_, freeing_ + freeing_count_, ptr);
  if (at == freeing_ + freeing_count_) return;  // not listed (out of host memory)
  *at = freeing_[--freeing_count_];
  any_freeing_.store(freeing_count_ != 0, std::memory_order_release);
}

pool::Status Router::keep_for_graph(DevicePool* p, pool::DevPtr ptr) {
  Locked lock(&mutex_);
  if (held_index(ptr) != held_count_ || is_kept(ptr) || is_freeing(ptr)) return pool::Status::invalid_value;
  held_[p->device].fetch_add(1, std::memory_order_relaxed);
  // Out of host memory: kept, but a second free goes unnoticed.
  if (!room_for_one(kept_, kept_count_, &kept_capacity_, 64)) return pool::Status::ok;
  pool::DevPtr* at = std::lower_bound(kept_, kept_ + kept_count_, ptr);
  std::memmove(at + 1, at, static_cast<std::size_t>(kept_ + kept_count_ - at) * sizeof(pool::DevPtr));
  *at = ptr;
  ++kept_count_;
  kept_lo_.store(kept_[0], std::memory_order_release);
  kept_hi_.store(kept_[kept_count_ - 1], std::memory_order_release);
  return pool::Status::ok;
}

void Router::end_free_wait() {
  Locked lock(&mutex_);
  if (--waiting_frees_ == 0) pthread_cond_broadcast(&frees_waited_);
}

void Router::trim_pool(DevicePool* p, std::size_t keep) {
  bool may_wait = false;
  {
    Locked lock(&mutex_);
    if (captures_.load(std::memory_order_acquire) == 0) {
      ++waiting_frees_;
      may_wait = true;
    }
  }
  struct Waited {  // ends the wait even if the trim throws (out of host memory): captures wait for it
    Router* r;
    ~Waited() {
      if (r != nullptr) r->end_free_wait();
    }
  } waited{may_wait ? this : nullptr};
  p->alloc->trim(keep, may_wait);
}

// A free that begin_free_wait let wait: the pool's free takes it off freeing_ in the same step (as
// flush_held does): before, a second free would be one; right after, the address may be handed out
// again and freed by its new owner. Any other way out (an exception) takes it off too.
struct Router::Freeing {
  Router* router;
  pool::DevPtr ptr;
  bool listed = true;
  pool::Status free(DevicePool* p, bool waited) {
    Locked lock(&router->mutex_);
    const pool::Status s = router->free_waited(p, ptr, waited);
    router->unlist_freeing(ptr);
    listed = false;
    return s;
  }
  ~Freeing() {
    if (!listed) return;
    Locked lock(&router->mutex_);
    router->unlist_freeing(ptr);
  }
};

pool::Status Router::free_sync(DevicePool* p, pool::DevPtr ptr, int stream_dev) {
  if (const auto answer = begin_free_wait(p, ptr, stream_dev)) return *answer;
  Freeing freeing{this, ptr};
  const pool::Status sync = wait_for_device(p, stream_dev);
  if (Ipc* i = ipc_.load(std::memory_order_acquire); i != nullptr && i->has_exports()) i->forget(ptr);
  const pool::Status s = freeing.free(p, sync == pool::Status::ok);
  return sync != pool::Status::ok ? sync : s;
}

pool::Status Router::wait_for_device(DevicePool* p, int stream_dev) {
  // The stream it was freed on, of another device: its work may still touch the block.
  if (valid_device(stream_dev) && stream_dev != p->device) (void)synchronize_device(stream_dev);
  const pool::Status sync = synchronize_device(p->device);
  // Devices granted access to this pool may have kernels on the block too: each one whose context is
  // alive (none runs work on a device without one, and retaining it would create one). Their errors
  // are theirs, not this free's.
  const std::uint64_t peers = peers_[p->device].load(std::memory_order_relaxed);
  for (int a = 0; a < kMaxDevices && (peers >> a) != 0; ++a)
    if (((peers >> a) & 1) != 0 && device_context_active(a)) (void)synchronize_device(a);
  end_free_wait();
  return sync;
}

pool::Status Router::free_waited(DevicePool* p, pool::DevPtr ptr, bool waited) {
  return waited ? p->alloc->free(ptr, p->sync_stream) : p->alloc->free(ptr);
}

bool Router::free_on_stream(pool::DevPtr ptr, pool::StreamHandle stream, int dev, cudaError_t* runtime_sync,
                            pool::Status* st) {
  if (dev < 0 && !stream_device(stream, runtime_sync == nullptr, &dev)) return false;  // an invalid stream
  if (is_held(ptr)) {  // freed already, held for a capture
    *st = pool::Status::invalid_value;
    return true;
  }
  // Before the free, as in free_sync: once freed, the block may be handed out and exported again by
  // another thread (the same base and pages), and a forget after that would drop the new export.
  if (Ipc* i = ipc_.load(std::memory_order_acquire); i != nullptr && i->has_exports()) i->forget(ptr);
  DevicePool* p = existing_pool(dev);
  pool::Status s = p != nullptr ? p->alloc->free(ptr, stream) : pool::Status::invalid_value;
  if (s == pool::Status::invalid_value) {  // not a block of the stream's device
    p = owner(ptr, -1);
    if (p == nullptr) return false;
    s = free_after_stream(p, ptr, stream, dev, runtime_sync);
  }
  *st = s;
  return true;
}

pool::Status Router::free_after_stream(DevicePool* p, pool::DevPtr ptr, pool::StreamHandle stream, int stream_dev,
                                       cudaError_t* runtime_sync) {
  if (const auto answer = begin_free_wait(p, ptr, stream_dev)) return *answer;
  Freeing freeing{this, ptr};
  pool::Status sync = pool::Status::ok;
  if (runtime_sync != nullptr) {  // the runtime's: it makes the current device's context current first
    if (const auto f = real_runtime().stream_synchronize; f != nullptr) {
      RealCall g;
      *runtime_sync = f(reinterpret_cast<cudaStream_t>(stream));
    }
  } else if (const auto f = real_driver().stream_synchronize; f != nullptr) {
    sync = driver_status(f(reinterpret_cast<CUstream>(stream)));
  }
  end_free_wait();
  // Freed even if the wait failed (a sticky error of earlier work, which the caller gets): kept, the
  // block would be lost for good. Once `stream`'s work is done, which is all a stream-ordered free
  // promises, on the router's own stream (free_waited).
  const bool waited = runtime_sync != nullptr ? *runtime_sync == cudaSuccess : sync == pool::Status::ok;
  const pool::Status s = freeing.free(p, waited);
  return sync != pool::Status::ok ? sync : s;
}

bool Router::runtime_stream_capturing(cudaStream_t stream) {
  const auto f = real_runtime().stream_is_capturing;
  if (f == nullptr) return true;
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  RealCall g;
  // An error (e.g. the legacy stream while another stream captures in global mode) means the real
  // API must answer: it will give the caller that same error.
  if (f(stream, &st) != cudaSuccess) return true;
  return st != cudaStreamCaptureStatusNone;
}

bool Router::driver_stream_capturing(CUstream stream) {
  const auto f = real_driver().stream_is_capturing;
  if (f == nullptr) return true;
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  if (f(stream, &st) != CUDA_SUCCESS) return true;
  return st != CU_STREAM_CAPTURE_STATUS_NONE;
}

// The per-thread default stream is the calling thread's own on the current device: its captures are
// keyed by both (a capture begins and ends on the thread whose stream it is).
cudaStream_t Router::capture_key(pool::StreamHandle stream, bool driver_api) {
  if (stream != kPerThread) return reinterpret_cast<cudaStream_t>(stream);
  int dev = -1;
  if (!(driver_api ? driver_device(&dev) : runtime_device(&dev))) dev = kMaxDevices;
  return reinterpret_cast<cudaStream_t>(&tl_own_streams[dev]);
}

void Router::capture_started(cudaStream_t key) {
  Locked lock(&mutex_);
  // Out of host memory: the capture is counted but cannot be matched at its end, so captures_ stays
  // above zero: every allocation then asks the real API whether its stream captures, and frees of
  // glake blocks are held (never reused).
  if (room_for_one(capturing_, capturing_count_, &capturing_capacity_, 16)) capturing_[capturing_count_++] = key;
  captures_.fetch_add(1, std::memory_order_acq_rel);
  // Frees that began to wait before the capture was counted finish first (begin_free_wait).
  while (waiting_frees_ != 0) pthread_cond_wait(&frees_waited_, &mutex_);
}

namespace {
pthread_key_t g_own_captures_key;
// pthread_key_create failed (the process's keys all taken): g_own_captures_key names no key of glake's
// (0 is another library's), so it is never set. Written once inside pthread_once, read after it.
bool g_own_captures_key_made = false;
pthread_once_t g_own_captures_once = PTHREAD_ONCE_INIT;
}  // namespace

void Router::end_own_captures_at_exit() {
  pthread_once(&g_own_captures_once,
               [] { g_own_captures_key_made = pthread_key_create(&g_own_captures_key, own_captures_over) == 0; });
  // Without a key, a thread that exits mid-capture of its stream leaves the capture counted (frees held,
  // allocations passed through): setting another library's key would hand its destructor our value.
  if (g_own_captures_key_made) (void)pthread_setspecific(g_own_captures_key, reinterpret_cast<void*>(1));
}

void Router::own_captures_over(void*) {
  Router& r = router();
  // Not at exit, and not in a forked child (a thread there that began a capture in the parent): the
  // child leaves the parent's pools alone, and a flush would call the driver and take their locks.
  if (r.exiting_.load(std::memory_order_relaxed) || r.forked_.load(std::memory_order_relaxed)) return;
  for (char& key : tl_own_streams) r.capture_ended(reinterpret_cast<cudaStream_t>(&key));
}

void Router::capture_ended(cudaStream_t key) {
  {
    Locked lock(&mutex_);
    std::size_t i = 0;
    while (i < capturing_count_ && capturing_[i] != key) ++i;
    if (i == capturing_count_) return;
    capturing_[i] = capturing_[--capturing_count_];
    if (captures_.fetch_sub(1, std::memory_order_acq_rel) != 1 || held_count_ == 0 || flushing_) return;
    flushing_ = true;
  }
  flush_held();
}

void Router::flush_held() {
  for (;;) {
    HeldFree h{};
    {
      Locked lock(&mutex_);
      if (captures_.load(std::memory_order_acquire) != 0 || held_count_ == 0) {
        flushing_ = false;
        return;
      }
      h = held_frees_[held_count_ - 1];
      ++waiting_frees_;  // as begin_free_wait: a capture that begins now waits for this wait
    }
    const pool::Status sync = wait_for_device(h.pool, h.stream_dev);
    if (Ipc* i = ipc_.load(std::memory_order_acquire); i != nullptr && i->has_exports()) i->forget(h.ptr);
    // Freed and taken off the list in one step: a free of the block before it would be a second one,
    // and the block may be handed out again (and freed by its new owner) right after.
    Locked lock(&mutex_);
    (void)free_waited(h.pool, h.ptr, sync == pool::Status::ok);
    held_frees_[held_index(h.ptr)] = held_frees_[held_count_ - 1];  // listed until now: only this thread removes
    --held_count_;
    any_held_.store(held_count_ != 0, std::memory_order_release);
  }
}

// ------------------------------------------------------------------------------------------------
// Runtime API

cudaError_t Router::malloc(void** ptr, std::size_t size) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving() && captures_.load(std::memory_order_acquire) == 0 && runtime_device(&dev)) {
    if (DevicePool* p = pool_for(dev)) {
      pool::DevPtr v = 0;
      const pool::Status s = allocate(p, size, p->sync_stream, &v);
      if (s != pool::Status::ok) return fail(to_runtime_error(s));
      *ptr = reinterpret_cast<void*>(v);
      return cudaSuccess;
    }
  }
  count_passthrough(dev);
  const auto f = real_runtime().malloc;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr, size);
}

cudaError_t Router::free(void* ptr) {
  if (ptr != nullptr && mode() == Mode::on && !inside_real_call()) {
    int hint = -1;
    (void)runtime_device(&hint);
    if (DevicePool* p = owner(reinterpret_cast<pool::DevPtr>(ptr), hint)) {
      if (exiting_.load(std::memory_order_relaxed)) return cudaSuccess;  // leak: the driver may be gone
      const pool::Status s = free_sync(p, reinterpret_cast<pool::DevPtr>(ptr));
      return s == pool::Status::ok ? cudaSuccess : fail(to_runtime_error(s));
    }
  }
  const auto f = real_runtime().free;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr);
}

cudaError_t Router::malloc_async(void** ptr, std::size_t size, cudaStream_t stream, bool ptds) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving()) {
    const pool::StreamHandle s = normalize(stream, ptds);
    const bool capturing =
        captures_.load(std::memory_order_acquire) != 0 && runtime_stream_capturing(reinterpret_cast<cudaStream_t>(s));
    if (!capturing && s != kPerThread && stream_device(s, false, &dev) && !custom_pool(dev)) {
      if (DevicePool* p = pool_for(dev)) {
        tl_device_hint = dev;
        pool::DevPtr v = 0;
        const pool::Status st = allocate(p, size, s, &v);
        if (st != pool::Status::ok) return fail(to_runtime_error(st));
        *ptr = reinterpret_cast<void*>(v);
        return cudaSuccess;
      }
    }
    // Counted for the stream's device (the per-thread stream's is the current one).
    if (capturing && s != kPerThread && !stream_device(s, false, &dev)) dev = -1;
  }
  count_passthrough(dev);
  const auto f = ptds ? real_runtime().malloc_async_ptsz : real_runtime().malloc_async;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr, size, stream);
}

cudaError_t Router::free_async(void* ptr, cudaStream_t stream, bool ptds, int stream_dev) {
  if (ptr != nullptr && mode() == Mode::on && !inside_real_call()) {
    const auto v = reinterpret_cast<pool::DevPtr>(ptr);
    const pool::StreamHandle s = normalize(stream, ptds);
    const int hint = tl_device_hint;
    if (exiting_.load(std::memory_order_relaxed)) {
      if (owner(v, hint) != nullptr) return cudaSuccess;  // leak: the driver may be gone
    } else if (captures_.load(std::memory_order_acquire) != 0 &&
               runtime_stream_capturing(reinterpret_cast<cudaStream_t>(s))) {
      // A free inside a capture would happen at each replay; the graph may touch the block before it.
      // The block is kept: never reused, never freed.
      if (DevicePool* p = owner(v, hint)) {
        // Freed already: held for the capture, or kept for a graph.
        if (keep_for_graph(p, v) != pool::Status::ok) return fail(cudaErrorInvalidValue);
        return cudaSuccess;
      }
    } else if (s == kPerThread) {
      if (DevicePool* p = owner(v, hint)) {
        int cur = -1;  // the per-thread stream's device
        (void)runtime_device(&cur);
        const pool::Status st = free_sync(p, v, cur);
        return st == pool::Status::ok ? cudaSuccess : fail(to_runtime_error(st));
      }
    } else {
      pool::Status st = pool::Status::ok;
      cudaError_t sync = cudaSuccess;
      if (free_on_stream(v, s, stream_dev, &sync, &st)) {
        if (sync != cudaSuccess) return sync;  // the real runtime's own error, already its last error
        return st == pool::Status::ok ? cudaSuccess : fail(to_runtime_error(st));
      }
    }
  }
  const auto f = ptds ? real_runtime().free_async_ptsz : real_runtime().free_async;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr, stream);
}

// The pool that serves an allocation from device dev's default pool on stream s, or null: the real
// API serves a capturing stream, the per-thread stream, and a stream of another device (the pool keeps
// only its own device's streams).
DevicePool* Router::default_pool_server(int dev, pool::StreamHandle s, bool driver_api) {
  if (s == kPerThread) return nullptr;
  if (captures_.load(std::memory_order_acquire) != 0 &&
      (driver_api ? driver_stream_capturing(reinterpret_cast<CUstream>(s))
                  : runtime_stream_capturing(reinterpret_cast<cudaStream_t>(s))))
    return nullptr;
  int stream_dev = -1;
  if (!stream_device(s, driver_api, &stream_dev) || stream_dev != dev) return nullptr;
  return pool_for(dev, !driver_api);
}

cudaError_t Router::malloc_from_pool_async(void** ptr, std::size_t size, cudaMemPool_t mem_pool,
                                           cudaStream_t stream, bool ptds) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving() && (dev = default_pool_device(mem_pool)) >= 0) {
    const pool::StreamHandle s = normalize(stream, ptds);
    if (DevicePool* p = default_pool_server(dev, s, false)) {
      pool::DevPtr v = 0;
      const pool::Status st = allocate(p, size, s, &v);
      if (st != pool::Status::ok) return fail(to_runtime_error(st));
      *ptr = reinterpret_cast<void*>(v);
      return cudaSuccess;
    }
  }
  count_passthrough(dev);
  const auto f = ptds ? real_runtime().malloc_from_pool_async_ptsz : real_runtime().malloc_from_pool_async;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr, size, mem_pool, stream);
}

// free as glake reports it: the driver's, plus what glake caches, within GLAKE_LIMIT. p null: the
// device has no pool yet, and will get one of at most GLAKE_LIMIT bytes.
static std::size_t reported_free(const pool::Config& config, DevicePool* p, std::size_t driver_free) {
  if (p == nullptr) return config.limit != 0 ? std::min(driver_free, config.limit) : driver_free;
  const std::size_t cached = p->alloc->cached_bytes();
  if (config.limit == 0) return driver_free + cached;
  const std::size_t physical = p->alloc->stats().physical.current;
  const std::size_t headroom = config.limit > physical ? config.limit - physical : 0;
  return std::min(driver_free, headroom) + cached;
}

cudaError_t Router::mem_get_info(std::size_t* free, std::size_t* total) {
  const auto f = real_runtime().mem_get_info;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(free, total);
  }
  int dev = -1;
  if (r == cudaSuccess && free != nullptr && serving() && runtime_device(&dev))
    *free = reported_free(config_, existing_pool(dev), *free);
  return r;
}

int Router::known_default_pool_device(std::uintptr_t v) const {
  for (int d = 0; d < kMaxDevices; ++d)
    if (default_pools_[d].load(std::memory_order_relaxed) == v) return d;
  return -1;
}

int Router::driver_default_pool_device(CUmemoryPool mem_pool) {
  const auto v = reinterpret_cast<std::uintptr_t>(mem_pool);
  if (v == 0) return -1;
  if (const int d = known_default_pool_device(v); d >= 0) return d;
  // Every device's default pool known: another pool (a user pool's calls are a hot path: no driver
  // calls for them, call after call).
  if (driver_pools_known_.load(std::memory_order_acquire)) return -1;
  // Not known yet: ask the driver for every device's default pool (no context needed).
  const DriverApi& dr = real_driver();
  int count = 0;
  if (dr.device_get_default_mem_pool == nullptr || dr.device_get_count == nullptr ||
      dr.device_get_count(&count) != CUDA_SUCCESS)
    return -1;
  int found = -1;
  bool all = true;
  for (int d = 0; d < std::min(count, kMaxDevices); ++d) {
    CUmemoryPool p = nullptr;
    if (const CUresult e = dr.device_get_default_mem_pool(&p, d); e != CUDA_SUCCESS) {
      // A device without memory pools (CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED 0) has no default
      // pool to learn: known. Any other failure: asked again next time.
      if (e != CUDA_ERROR_NOT_SUPPORTED) all = false;
      continue;
    }
    default_pools_[d].store(reinterpret_cast<std::uintptr_t>(p), std::memory_order_relaxed);
    if (p == mem_pool) found = d;
  }
  if (all) driver_pools_known_.store(true, std::memory_order_release);
  return found;
}

int Router::default_pool_device(cudaMemPool_t mem_pool) {
  // The runtime's pool handle is the driver's, and its device ordinals are the driver's (glake.h); the
  // driver's look-up asks no runtime call, so it leaves the runtime's last error alone.
  return driver_default_pool_device(reinterpret_cast<CUmemoryPool>(mem_pool));
}

cudaError_t Router::device_get_default_mem_pool(cudaMemPool_t* mem_pool, int device) {
  const auto f = real_runtime().device_get_default_mem_pool;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool, device);
  }
  if (r == cudaSuccess && mem_pool != nullptr && valid_device(device))
    default_pools_[device].store(reinterpret_cast<std::uintptr_t>(*mem_pool), std::memory_order_relaxed);
  return r;
}

cudaError_t Router::device_set_mem_pool(int device, cudaMemPool_t mem_pool) {
  const auto f = real_runtime().device_set_mem_pool;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(device, mem_pool);
  }
  if (r == cudaSuccess && valid_device(device))
    set_custom_pool(device, default_pool_device(mem_pool) != device);
  return r;
}

cudaError_t Router::mem_set_mem_pool(cudaMemLocation* location, cudaMemAllocationType type, cudaMemPool_t mem_pool) {
  const auto f = real_runtime().mem_set_mem_pool;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(location, type, mem_pool);
  }
  if (r == cudaSuccess && location != nullptr && location->type == cudaMemLocationTypeDevice &&
      type == cudaMemAllocationTypePinned && valid_device(location->id))
    set_custom_pool(location->id, default_pool_device(mem_pool) != location->id);
  return r;
}

cudaError_t Router::mem_pool_destroy(cudaMemPool_t mem_pool) {
  const auto f = real_runtime().mem_pool_destroy;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool);
  }
  if (r == cudaSuccess) recheck_custom_pools();
  return r;
}

cudaError_t Router::mem_pool_get_attribute(cudaMemPool_t mem_pool, cudaMemPoolAttr attr, void* value) {
  const auto f = real_runtime().mem_pool_get_attribute;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool, attr, value);
  }
  if (r != cudaSuccess || value == nullptr || mode() != Mode::on || inside_real_call()) return r;
  add_pool_figures(default_pool_device(mem_pool), static_cast<CUmemPool_attribute>(attr), value);
  return r;
}

// The runtime's and the driver's pool attributes are the same values (cudaMemPoolAttr mirrors
// CUmemPool_attribute).
void Router::add_pool_figures(int dev, CUmemPool_attribute attr, void* value) {
  DevicePool* p = existing_pool(dev);
  if (p == nullptr) return;
  const pool::Stats st = p->alloc->stats();
  auto* v = static_cast<cuuint64_t*>(value);
  switch (attr) {
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *v += st.physical.current; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *v += st.physical.peak; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *v += st.requested.current; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *v += st.requested.peak; break;
    default: break;
  }
}

void Router::reset_pool_peak(int dev, CUmemPool_attribute attr) {
  if (attr != CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH && attr != CU_MEMPOOL_ATTR_USED_MEM_HIGH) return;
  // Each high-water mark resets only itself, as CUDA's do.
  if (DevicePool* p = existing_pool(dev))
    p->alloc->reset_peaks(attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH ? pool::Allocator::Peaks::used
                                                                : pool::Allocator::Peaks::reserved);
}

void Router::trim_default_pool(int dev, std::size_t keep) {
  DevicePool* p = existing_pool(dev);
  if (p == nullptr) return;
  // CUDA keeps at least `keep` bytes reserved (all of it in use, if more is); glake's trim counts
  // the free bytes it keeps.
  const std::size_t cached = p->alloc->cached_bytes();
  const std::size_t physical = p->alloc->stats().physical.current;
  const std::size_t in_use = physical > cached ? physical - cached : 0;
  trim_pool(p, keep > in_use ? keep - in_use : 0);
}

void Router::grant_pool_peers(int dev, const CUmemAccessDesc* desc, std::size_t count) {
  if (dev < 0) return;
  for (std::size_t i = 0; i < count; ++i) {
    if (desc[i].location.type == CU_MEM_LOCATION_TYPE_DEVICE && desc[i].location.id != dev &&
        (desc[i].flags & CU_MEM_ACCESS_FLAGS_PROT_READWRITE) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
      grant_peer(dev, desc[i].location.id);
  }
}

cudaError_t Router::mem_pool_set_attribute(cudaMemPool_t mem_pool, cudaMemPoolAttr attr, void* value) {
  const auto f = real_runtime().mem_pool_set_attribute;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool, attr, value);
  }
  if (r != cudaSuccess || mode() != Mode::on || inside_real_call()) return r;
  reset_pool_peak(default_pool_device(mem_pool), static_cast<CUmemPool_attribute>(attr));
  return r;
}

cudaError_t Router::mem_pool_trim_to(cudaMemPool_t mem_pool, std::size_t keep) {
  const auto f = real_runtime().mem_pool_trim_to;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool, keep);
  }
  if (r != cudaSuccess || !serving()) return r;
  trim_default_pool(default_pool_device(mem_pool), keep);
  return r;
}

cudaError_t Router::mem_pool_set_access(cudaMemPool_t mem_pool, const cudaMemAccessDesc* desc, std::size_t count) {
  const auto f = real_runtime().mem_pool_set_access;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(mem_pool, desc, count);
  }
  if (r != cudaSuccess || desc == nullptr || !serving()) return r;
  // cudaMemAccessDesc mirrors CUmemAccessDesc.
  static_assert(sizeof(cudaMemAccessDesc) == sizeof(CUmemAccessDesc));
  grant_pool_peers(default_pool_device(mem_pool), reinterpret_cast<const CUmemAccessDesc*>(desc), count);
  return r;
}

void Router::grant_peer(int owner_device, int accessor) {
  if (!valid_device(owner_device) || !valid_device(accessor) || owner_device == accessor) return;
  DevicePool* p = nullptr;
  {
    Locked lock(&create_mutex_);
    peers_[owner_device].fetch_or(std::uint64_t{1} << accessor, std::memory_order_relaxed);
    p = existing_pool(owner_device);
  }
  if (p == nullptr) return;  // create_pool registers the peer when the pool is made
  p->driver->add_peer(accessor);
  refresh_access(p);
}

void Router::refresh_access(DevicePool* p) {
  // Later mappings get the peer from add_peer; the existing ones get it here.
  (void)p->alloc->refresh_access();
}

cudaError_t Router::device_enable_peer_access(int peer, unsigned int flags) {
  const auto f = real_runtime().device_enable_peer_access;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(peer, flags);
  }
  int cur = -1;
  if ((r == cudaSuccess || r == cudaErrorPeerAccessAlreadyEnabled) && serving() && runtime_device(&cur))
    grant_peer(peer, cur);
  return r;
}

bool Router::ipc_export(pool::DevPtr ptr, int hint, cudaIpcMemHandle_t* handle, cudaError_t* result) {
  pool::BlockInfo info;
  auto try_pool = [&](DevicePool* p) { return p != nullptr && p->alloc->describe(ptr, &info) == pool::Status::ok; };
  DevicePool* found = try_pool(existing_pool(hint)) ? existing_pool(hint) : nullptr;
  for (int d = 0, n = pool_count_.load(std::memory_order_acquire); found == nullptr && d < n; ++d)
    if (d != hint && try_pool(existing_pool(d))) found = existing_pool(d);
  if (found == nullptr) return false;
  Ipc* i = ipc();
  *result = i == nullptr ? cudaErrorMemoryAllocation
                         : i->export_block(found->device, *found->alloc, info, handle);
  return true;
}

cudaError_t Router::ipc_get_mem_handle(cudaIpcMemHandle_t* handle, void* ptr) {
  if (handle != nullptr && ptr != nullptr && serving()) {
    int hint = -1;
    (void)runtime_device(&hint);
    cudaError_t e = cudaSuccess;
    if (ipc_export(reinterpret_cast<pool::DevPtr>(ptr), hint, handle, &e)) return e == cudaSuccess ? e : fail(e);
  }
  const auto f = real_runtime().ipc_get_mem_handle;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(handle, ptr);
}

cudaError_t Router::ipc_open_mem_handle(void** ptr, cudaIpcMemHandle_t handle, unsigned int flags) {
  if (ptr != nullptr && Ipc::is_glake_handle(handle) && !forked_.load(std::memory_order_relaxed)) {
    Ipc* i = ipc();
    if (i == nullptr) return fail(cudaErrorMemoryAllocation);
    // The importer's device, with the runtime initialised on it (as the real call would).
    int device = 0;
    if (const RuntimeApi& rt = real_runtime(); rt.get_device != nullptr) {
      RealCall g;
      if (rt.get_device(&device) != cudaSuccess) device = 0;
      if (rt.free != nullptr) (void)rt.free(nullptr);
    }
    const cudaError_t e = i->open(handle, flags, device, ptr);
    return e == cudaSuccess ? e : fail(e);
  }
  const auto f = real_runtime().ipc_open_mem_handle;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr, handle, flags);
}

cudaError_t Router::ipc_close_mem_handle(void* ptr) {
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) {
    cudaError_t e = cudaSuccess;
    if (i->close(ptr, &e)) return e == cudaSuccess ? e : fail(e);
  }
  const auto f = real_runtime().ipc_close_mem_handle;
  if (f == nullptr) return cudaErrorNotSupported;
  RealCall g;
  return f(ptr);
}

template <class Begin>
auto Router::counted_begin(pool::StreamHandle stream, bool driver_api, Begin begin) {
  const cudaStream_t key = capture_key(stream, driver_api);
  capture_started(key);
  const auto r = begin();
  if (r != decltype(r){})  // cudaSuccess and CUDA_SUCCESS are 0
    capture_ended(key);
  else if (stream == kPerThread)
    end_own_captures_at_exit();
  return r;
}

cudaError_t Router::stream_begin_capture(cudaStream_t stream, cudaStreamCaptureMode capture_mode, bool ptds) {
  const auto f = ptds ? real_runtime().stream_begin_capture_ptsz : real_runtime().stream_begin_capture;
  if (f == nullptr) return cudaErrorNotSupported;
  return counted_begin(normalize(stream, ptds), false, [&] {
    RealCall g;
    return f(stream, capture_mode);
  });
}

cudaError_t Router::stream_begin_capture_to_graph(cudaStream_t stream, cudaGraph_t graph,
                                                  const cudaGraphNode_t* dependencies,
                                                  const cudaGraphEdgeData* edge_data, std::size_t count,
                                                  cudaStreamCaptureMode capture_mode, bool ptds) {
  const auto f =
      ptds ? real_runtime().stream_begin_capture_to_graph_ptsz : real_runtime().stream_begin_capture_to_graph;
  if (f == nullptr) return cudaErrorNotSupported;
  return counted_begin(normalize(stream, ptds), false, [&] {
    RealCall g;
    return f(stream, graph, dependencies, edge_data, count, capture_mode);
  });
}

cudaError_t Router::stream_end_capture(cudaStream_t stream, cudaGraph_t* graph, bool ptds) {
  const auto f = ptds ? real_runtime().stream_end_capture_ptsz : real_runtime().stream_end_capture;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(stream, graph);
  }
  // The capture is over when it ended (invalidated or not) or was never under way; after another
  // error (e.g. the wrong thread, or work not joined back) the stream says whether it still captures.
  if (r == cudaSuccess || r == cudaErrorStreamCaptureInvalidated || r == cudaErrorIllegalState ||
      !runtime_stream_capturing(reinterpret_cast<cudaStream_t>(normalize(stream, ptds))))
    capture_ended(capture_key(normalize(stream, ptds), false));
  return r;
}

// A destroyed stream's handle may come back for a new stream: each pool forgets it first (what was
// freed on it settles once its work is done, and the new stream starts afresh).
void Router::forget_stream(const void* stream) {
  if (reinterpret_cast<std::uintptr_t>(stream) <= 2 || mode() != Mode::on || inside_real_call() ||
      exiting_.load(std::memory_order_relaxed))
    return;
  const int n = pool_count_.load(std::memory_order_acquire);
  for (int d = 0; d < n; ++d)
    if (DevicePool* p = existing_pool(d)) p->alloc->forget_stream(reinterpret_cast<pool::StreamHandle>(stream));
}

template <class Destroy>
auto Router::destroy_stream(const void* stream, Destroy destroy) {
  forget_stream(stream);
  // Its handle may name a new stream once destroyed: the threads' cached stream devices are dropped
  // before and after (stream_device).
  stream_epoch_.fetch_add(1, std::memory_order_acq_rel);
  const auto r = destroy();
  stream_epoch_.fetch_add(1, std::memory_order_acq_rel);
  // A capture of the stream is over with it: no graph comes of it. (Inside the runtime's destroy, the
  // runtime's hook does this once the runtime is done.)
  if (r == decltype(r){} && reinterpret_cast<std::uintptr_t>(stream) > 2 && !inside_real_call())
    capture_ended(reinterpret_cast<cudaStream_t>(const_cast<void*>(stream)));
  return r;
}

cudaError_t Router::stream_destroy(cudaStream_t stream) {
  const auto f = real_runtime().stream_destroy;
  if (f == nullptr) return cudaErrorNotSupported;
  return destroy_stream(stream, [&] {
    RealCall g;
    return f(stream);
  });
}

cudaError_t Router::get_last_error() {
  const auto f = real_runtime().get_last_error;
  cudaError_t r = cudaSuccess;
  if (f != nullptr) {
    RealCall g;
    r = f();
  }
  const cudaError_t mine = tl_last_error;
  tl_last_error = cudaSuccess;
  return r != cudaSuccess ? r : mine;
}

cudaError_t Router::peek_at_last_error() {
  const auto f = real_runtime().peek_at_last_error;
  cudaError_t r = cudaSuccess;
  if (f != nullptr) {
    RealCall g;
    r = f();
  }
  return r != cudaSuccess ? r : tl_last_error;
}

cudaError_t Router::get_driver_entry_point(const char* symbol, void** fn, unsigned long long flags,
                                           cudaDriverEntryPointQueryResult* status, bool ptds) {
  const auto f = ptds ? real_runtime().get_driver_entry_point_ptsz : real_runtime().get_driver_entry_point;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(symbol, fn, flags, status);
  }
  if (r == cudaSuccess && fn != nullptr) *fn = substitute_proc(symbol, CUDART_VERSION, flags, *fn);
  return r;
}

cudaError_t Router::get_driver_entry_point_by_version(const char* symbol, void** fn, unsigned int version,
                                                      unsigned long long flags,
                                                      cudaDriverEntryPointQueryResult* status, bool ptds) {
  const auto f =
      ptds ? real_runtime().get_driver_entry_point_by_version_ptsz : real_runtime().get_driver_entry_point_by_version;
  if (f == nullptr) return cudaErrorNotSupported;
  cudaError_t r;
  {
    RealCall g;
    r = f(symbol, fn, version, flags, status);
  }
  if (r == cudaSuccess && fn != nullptr) *fn = substitute_proc(symbol, static_cast<int>(version), flags, *fn);
  return r;
}

// ------------------------------------------------------------------------------------------------
// Driver API

CUresult Router::cu_mem_alloc(CUdeviceptr* ptr, std::size_t size) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving() && captures_.load(std::memory_order_acquire) == 0 && driver_device(&dev)) {
    if (DevicePool* p = pool_for(dev, false)) {
      pool::DevPtr v = 0;
      const pool::Status s = allocate(p, size, p->sync_stream, &v);
      if (s == pool::Status::ok) *ptr = static_cast<CUdeviceptr>(v);
      return to_driver_error(s);
    }
  }
  count_passthrough(dev, true);
  const auto f = real_driver().mem_alloc;
  return f != nullptr ? f(ptr, size) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_mem_free(CUdeviceptr ptr) {
  if (ptr != 0 && mode() == Mode::on && !inside_real_call()) {
    int hint = -1;
    (void)driver_device(&hint);
    if (DevicePool* p = owner(static_cast<pool::DevPtr>(ptr), hint)) {
      if (exiting_.load(std::memory_order_relaxed)) return CUDA_SUCCESS;
      return to_driver_error(free_sync(p, static_cast<pool::DevPtr>(ptr)));
    }
  }
  const auto f = real_driver().mem_free;
  return f != nullptr ? f(ptr) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_mem_alloc_async(CUdeviceptr* ptr, std::size_t size, CUstream stream, bool ptds) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving()) {
    const pool::StreamHandle s = normalize(stream, ptds);
    const bool capturing =
        captures_.load(std::memory_order_acquire) != 0 && driver_stream_capturing(reinterpret_cast<CUstream>(s));
    if (!capturing && s != kPerThread && stream_device(s, true, &dev) && !custom_pool(dev)) {
      if (DevicePool* p = pool_for(dev, false)) {
        tl_device_hint = dev;
        pool::DevPtr v = 0;
        const pool::Status st = allocate(p, size, s, &v);
        if (st == pool::Status::ok) *ptr = static_cast<CUdeviceptr>(v);
        return to_driver_error(st);
      }
    }
    if (capturing && s != kPerThread && !stream_device(s, true, &dev)) dev = -1;  // as in malloc_async
  }
  count_passthrough(dev, true);
  const auto f = ptds ? real_driver().mem_alloc_async_ptsz : real_driver().mem_alloc_async;
  return f != nullptr ? f(ptr, size, stream) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_mem_free_async(CUdeviceptr ptr, CUstream stream, bool ptds) {
  if (ptr != 0 && mode() == Mode::on && !inside_real_call()) {
    const auto v = static_cast<pool::DevPtr>(ptr);
    const pool::StreamHandle s = normalize(stream, ptds);
    const int hint = tl_device_hint;
    if (exiting_.load(std::memory_order_relaxed)) {
      if (owner(v, hint) != nullptr) return CUDA_SUCCESS;
    } else if (captures_.load(std::memory_order_acquire) != 0 &&
               driver_stream_capturing(reinterpret_cast<CUstream>(s))) {
      if (DevicePool* p = owner(v, hint)) return to_driver_error(keep_for_graph(p, v));
    } else if (s == kPerThread) {
      if (DevicePool* p = owner(v, hint)) {
        int cur = -1;  // the per-thread stream's device
        (void)driver_device(&cur);
        return to_driver_error(free_sync(p, v, cur));
      }
    } else {
      pool::Status st = pool::Status::ok;
      if (free_on_stream(v, s, -1, nullptr, &st)) return to_driver_error(st);
    }
  }
  const auto f = ptds ? real_driver().mem_free_async_ptsz : real_driver().mem_free_async;
  return f != nullptr ? f(ptr, stream) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_mem_get_info(std::size_t* free, std::size_t* total) {
  const auto f = real_driver().mem_get_info;
  if (f == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult r = f(free, total);
  int dev = -1;
  if (r == CUDA_SUCCESS && free != nullptr && serving() && driver_device(&dev))
    *free = reported_free(config_, existing_pool(dev), *free);
  return r;
}

CUresult Router::cu_device_set_mem_pool(CUdevice device, CUmemoryPool mem_pool) {
  const DriverApi& d = real_driver();
  if (d.device_set_mem_pool == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = d.device_set_mem_pool(device, mem_pool);
  if (r != CUDA_SUCCESS || !valid_device(device) || inside_real_call()) return r;
  CUmemoryPool def = nullptr;
  const bool is_default = d.device_get_default_mem_pool != nullptr &&
                          d.device_get_default_mem_pool(&def, device) == CUDA_SUCCESS && def == mem_pool;
  set_custom_pool(device, !is_default);
  return r;
}

CUresult Router::cu_mem_set_mem_pool(CUmemLocation* location, CUmemAllocationType type, CUmemoryPool mem_pool) {
  const DriverApi& d = real_driver();
  if (d.mem_set_mem_pool == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = d.mem_set_mem_pool(location, type, mem_pool);
  if (r != CUDA_SUCCESS || location == nullptr || location->type != CU_MEM_LOCATION_TYPE_DEVICE ||
      type != CU_MEM_ALLOCATION_TYPE_PINNED || !valid_device(location->id) || inside_real_call())
    return r;
  set_custom_pool(location->id, driver_default_pool_device(mem_pool) != location->id);
  return r;
}

CUresult Router::cu_mem_pool_destroy(CUmemoryPool mem_pool) {
  const DriverApi& d = real_driver();
  if (d.mem_pool_destroy == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = d.mem_pool_destroy(mem_pool);
  if (r == CUDA_SUCCESS && !inside_real_call()) recheck_custom_pools();
  return r;
}

CUresult Router::cu_mem_pool_get_attribute(CUmemoryPool mem_pool, CUmemPool_attribute attr, void* value) {
  const auto f = real_driver().mem_pool_get_attribute;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = f(mem_pool, attr, value);
  if (r == CUDA_SUCCESS && value != nullptr && mode() == Mode::on && !inside_real_call())
    add_pool_figures(driver_default_pool_device(mem_pool), attr, value);
  return r;
}

CUresult Router::cu_mem_pool_set_attribute(CUmemoryPool mem_pool, CUmemPool_attribute attr, void* value) {
  const auto f = real_driver().mem_pool_set_attribute;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = f(mem_pool, attr, value);
  if (r == CUDA_SUCCESS && mode() == Mode::on && !inside_real_call()) reset_pool_peak(driver_default_pool_device(mem_pool), attr);
  return r;
}

CUresult Router::cu_mem_pool_trim_to(CUmemoryPool mem_pool, std::size_t keep) {
  const auto f = real_driver().mem_pool_trim_to;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = f(mem_pool, keep);
  if (r == CUDA_SUCCESS && serving()) trim_default_pool(driver_default_pool_device(mem_pool), keep);
  return r;
}

CUresult Router::cu_mem_pool_set_access(CUmemoryPool mem_pool, const CUmemAccessDesc* desc, std::size_t count) {
  const auto f = real_driver().mem_pool_set_access;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = f(mem_pool, desc, count);
  if (r == CUDA_SUCCESS && desc != nullptr && serving()) grant_pool_peers(driver_default_pool_device(mem_pool), desc, count);
  return r;
}

CUresult Router::cu_mem_alloc_from_pool_async(CUdeviceptr* ptr, std::size_t size, CUmemoryPool mem_pool,
                                              CUstream stream, bool ptds) {
  int dev = -1;
  if (ptr != nullptr && size != 0 && serving() && (dev = driver_default_pool_device(mem_pool)) >= 0) {
    const pool::StreamHandle s = normalize(stream, ptds);
    if (DevicePool* p = default_pool_server(dev, s, true)) {
      tl_device_hint = dev;
      pool::DevPtr v = 0;
      const pool::Status st = allocate(p, size, s, &v);
      if (st == pool::Status::ok) *ptr = static_cast<CUdeviceptr>(v);
      return to_driver_error(st);
    }
  }
  count_passthrough(dev, true);
  const auto f = ptds ? real_driver().mem_alloc_from_pool_async_ptsz : real_driver().mem_alloc_from_pool_async;
  return f != nullptr ? f(ptr, size, mem_pool, stream) : CUDA_ERROR_NOT_FOUND;
}

void Router::set_custom_pool(int device, bool custom) {
  std::uint32_t v = custom_pool_[device].load(std::memory_order_relaxed);
  while (!custom_pool_[device].compare_exchange_weak(v, (((v >> 1) + 1) << 1) | (custom ? 1u : 0u),
                                                     std::memory_order_acq_rel)) {
  }
  // The pool may have been destroyed by another thread between the driver's call and the flag (its
  // recheck found no flag to clear): the default pool is current again then, so look once more.
  if (custom) recheck_custom_pool(device);
}

// A destroyed pool that was a device's current one leaves the default pool current (CUDA): the
// driver says which pool each device that had another one current now has.
void Router::recheck_custom_pools() {
  for (int dev = 0; dev < kMaxDevices; ++dev) recheck_custom_pool(dev);
}

void Router::recheck_custom_pool(int dev) {
  const DriverApi& d = real_driver();
  if (d.device_get_mem_pool == nullptr || d.device_get_default_mem_pool == nullptr) return;
  // Seen before the look: a pool chosen since (another thread's cudaDeviceSetMemPool, which sets the
  // flag after the driver's call) changes the word, and the clear below then leaves its choice be.
  std::uint32_t seen = custom_pool_[dev].load(std::memory_order_acquire);
  if ((seen & 1) == 0) return;
  CUmemoryPool cur = nullptr, def = nullptr;
  if (d.device_get_mem_pool(&cur, dev) == CUDA_SUCCESS && d.device_get_default_mem_pool(&def, dev) == CUDA_SUCCESS &&
      cur == def)
    (void)custom_pool_[dev].compare_exchange_strong(seen, seen & ~1u, std::memory_order_acq_rel);
}

// The driver's IPC calls, for programs that reach the driver without glake's runtime hooks (the
// static runtime, driver-API programs): glake's blocks and handles as in ipc_*_mem_handle, with Ipc's
// runtime codes turned into the driver's.
namespace {
CUresult ipc_driver_error(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return CUDA_SUCCESS;
    case cudaErrorInvalidValue: return CUDA_ERROR_INVALID_VALUE;
    case cudaErrorMemoryAllocation: return CUDA_ERROR_OUT_OF_MEMORY;
    case cudaErrorInvalidDevice: return CUDA_ERROR_INVALID_DEVICE;
    case cudaErrorMapBufferObjectFailed: return CUDA_ERROR_MAP_FAILED;
    case cudaErrorOperatingSystem: return CUDA_ERROR_OPERATING_SYSTEM;
    case cudaErrorNotSupported: return CUDA_ERROR_NOT_SUPPORTED;
    case cudaErrorDeviceUninitialized: return CUDA_ERROR_INVALID_CONTEXT;  // a handle of this process
    default: return CUDA_ERROR_INVALID_HANDLE;  // what the exporter could not serve
  }
}
static_assert(sizeof(CUipcMemHandle) == sizeof(cudaIpcMemHandle_t));
}  // namespace

CUresult Router::cu_ipc_get_mem_handle(CUipcMemHandle* handle, CUdeviceptr ptr) {
  if (handle != nullptr && ptr != 0 && serving()) {
    int hint = -1;
    (void)driver_device(&hint);
    cudaIpcMemHandle_t h;
    cudaError_t e = cudaSuccess;
    if (ipc_export(static_cast<pool::DevPtr>(ptr), hint, &h, &e)) {
      if (e == cudaSuccess) std::memcpy(handle, &h, sizeof h);
      return ipc_driver_error(e);
    }
  }
  const auto f = real_driver().ipc_get_mem_handle;
  return f != nullptr ? f(handle, ptr) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_ipc_open_mem_handle(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, &handle, sizeof h);
  if (ptr != nullptr && Ipc::is_glake_handle(h) && !forked_.load(std::memory_order_relaxed)) {
    // The current context's device, or what the real call would say without one.
    const auto ctx_device = real_driver().ctx_get_device;
    CUdevice device = 0;
    if (ctx_device == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
    if (const CUresult c = ctx_device(&device); c != CUDA_SUCCESS) return c;
    Ipc* i = ipc();
    if (i == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = nullptr;
    const cudaError_t e = i->open(h, flags, static_cast<int>(device), &p);
    if (e == cudaSuccess) *ptr = reinterpret_cast<CUdeviceptr>(p);
    return ipc_driver_error(e);
  }
  const auto f = real_driver().ipc_open_mem_handle;
  return f != nullptr ? f(ptr, handle, flags) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_ipc_close_mem_handle(CUdeviceptr ptr) {
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) {
    cudaError_t e = cudaSuccess;
    if (i->close(reinterpret_cast<void*>(ptr), &e)) return ipc_driver_error(e);
  }
  const auto f = real_driver().ipc_close_mem_handle;
  return f != nullptr ? f(ptr) : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult Router::cu_stream_destroy(CUstream stream) {
  const auto f = real_driver().stream_destroy;
  if (f == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  return destroy_stream(stream, [&] { return f(stream); });
}

CUresult Router::cu_ctx_enable_peer_access(CUcontext peer, unsigned int flags) {
  const DriverApi& d = real_driver();
  if (d.ctx_enable_peer_access == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = d.ctx_enable_peer_access(peer, flags);
  if ((r != CUDA_SUCCESS && r != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) || !serving()) return r;  // not inside a runtime hook
  // The current context's device may now reach the memory of the peer context's device.
  int accessor = -1, owner = -1;
  if (!driver_device(&accessor) || d.ctx_push_current == nullptr || d.ctx_pop_current == nullptr ||
      d.ctx_push_current(peer) != CUDA_SUCCESS)
    return r;
  const bool known = driver_device(&owner);
  CUcontext popped = nullptr;
  (void)d.ctx_pop_current(&popped);
  if (known) grant_peer(owner, accessor);
  return r;
}

// Inside a runtime hook (RealCall) the runtime is calling: that hook counts the capture. Counted
// before it begins, as in stream_begin_capture.
CUresult Router::cu_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode, bool ptds) {
  const auto f = ptds ? real_driver().stream_begin_capture_ptsz : real_driver().stream_begin_capture;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  if (inside_real_call()) return f(stream, mode);
  return counted_begin(normalize(stream, ptds), true, [&] { return f(stream, mode); });
}

CUresult Router::cu_stream_begin_capture_to_graph(CUstream stream, CUgraph graph, const CUgraphNode* dependencies,
                                                  const CUgraphEdgeData* edge_data, std::size_t count,
                                                  CUstreamCaptureMode mode, bool ptds) {
  const auto f =
      ptds ? real_driver().stream_begin_capture_to_graph_ptsz : real_driver().stream_begin_capture_to_graph;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  if (inside_real_call()) return f(stream, graph, dependencies, edge_data, count, mode);
  return counted_begin(normalize(stream, ptds), true,
                       [&] { return f(stream, graph, dependencies, edge_data, count, mode); });
}

CUresult Router::cu_stream_end_capture(CUstream stream, CUgraph* graph, bool ptds) {
  const auto f = ptds ? real_driver().stream_end_capture_ptsz : real_driver().stream_end_capture;
  if (f == nullptr) return CUDA_ERROR_NOT_FOUND;
  const CUresult r = f(stream, graph);
  // As in stream_end_capture.
  const pool::StreamHandle s = normalize(stream, ptds);
  if (!inside_real_call() && (r == CUDA_SUCCESS || r == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED ||
                              r == CUDA_ERROR_ILLEGAL_STATE || !driver_stream_capturing(reinterpret_cast<CUstream>(s))))
    capture_ended(capture_key(s, true));
  return r;
}

CUresult Router::cu_get_proc_address(const char* symbol, void** fn, int version, cuuint64_t flags) {
  const DriverApi& d = real_driver();
  CUresult r;
  if (d.get_proc_address != nullptr) {
    r = d.get_proc_address(symbol, fn, version, flags);
  } else if (d.get_proc_address_v2 != nullptr) {
    r = d.get_proc_address_v2(symbol, fn, version, flags, nullptr);
  } else {
    return CUDA_ERROR_NOT_INITIALIZED;
  }
  if (r == CUDA_SUCCESS && fn != nullptr) *fn = substitute_proc(symbol, version, flags, *fn);
  return r;
}

CUresult Router::cu_get_proc_address_v2(const char* symbol, void** fn, int version, cuuint64_t flags,
                                        CUdriverProcAddressQueryResult* status) {
  const auto f = real_driver().get_proc_address_v2;
  if (f == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult r = f(symbol, fn, version, flags, status);
  if (r == CUDA_SUCCESS && fn != nullptr) *fn = substitute_proc(symbol, version, flags, *fn);
  return r;
}

// ------------------------------------------------------------------------------------------------
// PyTorch's pluggable allocator

void* Router::pluggable_malloc(std::size_t size, int device, cudaStream_t stream) {
  if (size == 0) return nullptr;
  void* out = nullptr;
  // A device that does not exist gets no memory (CUDA's cudaErrorInvalidDevice), not a pool that
  // cannot be made (and a line on stderr blaming the driver) followed by the real cudaMallocAsync,
  // which would allocate on the stream's device instead. Asked only until the device has a pool.
  if (!valid_device(device) || pools_[device].load(std::memory_order_acquire) == nullptr) {
    int count = 0;
    const auto f = real_runtime().get_device_count;
    if (f != nullptr) {
      RealCall g;
      if (f(&count) != cudaSuccess) count = 0;
    }
    if (device < 0 || (f != nullptr && device >= count)) {
      (void)fail(cudaErrorInvalidDevice);
      return nullptr;
    }
  }
  if (serving()) {
    const pool::StreamHandle s = normalize(stream, false);
    const bool capturing =
        captures_.load(std::memory_order_acquire) != 0 && runtime_stream_capturing(reinterpret_cast<cudaStream_t>(s));
    if (!capturing && s != kPerThread) {
      if (DevicePool* p = pool_for(device)) {
        tl_device_hint = device;
        pool::DevPtr v = 0;
        return allocate(p, size, s, &v) == pool::Status::ok ? reinterpret_cast<void*>(v) : nullptr;
      }
    }
  }
  count_passthrough(device);
  const auto f = real_runtime().malloc_async;
  if (f == nullptr) return nullptr;
  RealCall g;
  return f(&out, size, stream) == cudaSuccess ? out : nullptr;
}

void Router::pluggable_free(void* ptr, int device, cudaStream_t stream) {
  // PyTorch frees what glake_malloc gave it, NULL for a 0-byte tensor included: that is nothing to
  // free, and the real cudaFreeAsync(NULL) would leave cudaErrorInvalidValue as the last error, which
  // PyTorch's next kernel-launch check would report as its own.
  if (ptr == nullptr) return;
  (void)free_async(ptr, stream, false, device);  // PyTorch's stream of that device (its legacy stream for 0)
}

// ------------------------------------------------------------------------------------------------
// glake.h

int Router::status() {
  if (forked_.load(std::memory_order_relaxed) || exiting_.load(std::memory_order_relaxed)) return GLAKE_STATUS_OFF;
  return mode_.load(std::memory_order_acquire);
}

int Router::stats(int device, glake_stats_t* out, std::size_t out_size) {
  if (out == nullptr) return -1;
  glake_stats_t s;
  std::memset(&s, 0, sizeof s);
  const std::size_t n = std::min(out_size, sizeof s);
  // All of the caller's struct: one built against a newer glake.h (larger) gets the fields this
  // library does not know as zeros, not as whatever its memory held.
  std::memset(out, 0, out_size);
  if (device == -1) {
    s.passthrough_allocs = passthrough_[kMaxDevices].load(std::memory_order_relaxed);
    std::memcpy(out, &s, n);
    return 0;
  }
  DevicePool* p = forked_.load(std::memory_order_relaxed) ? nullptr : existing_pool(device);
  if (valid_device(device)) {
    s.passthrough_allocs = passthrough_[device].load(std::memory_order_relaxed);
    s.capture_frees_held = held_[device].load(std::memory_order_relaxed);
  }
  if (p != nullptr) {
    const pool::Stats st = p->alloc->stats();
    s.requested = st.requested.current;
    s.requested_peak = st.requested.peak;
    s.blocks = st.blocks.current;
    s.blocks_peak = st.blocks.peak;
    s.physical = st.physical.current;
    s.physical_peak = st.physical.peak;
    s.mapped = st.mapped.current;
    s.mapped_peak = st.mapped.peak;
    s.cached = p->alloc->cached_bytes();
    s.allocs = st.allocs;
    s.frees = st.frees;
    s.creates = st.creates;
    s.releases = st.releases;
    s.maps = st.maps;
    s.unmaps = st.unmaps;
    s.stitches = st.stitches;
    s.reclaims = st.reclaims;
    s.ooms = st.ooms;
    s.driver_ns = st.driver_ns;
    s.slow_allocs = st.slow_allocs;
    s.slow_ns = st.slow_ns;
  }
  std::memcpy(out, &s, n);
  return p != nullptr ? 0 : -1;
}

int Router::trim(int device, std::size_t keep) {
  DevicePool* p = forked_.load(std::memory_order_relaxed) ? nullptr : existing_pool(device);
  if (p == nullptr) return -1;
  if (!exiting_.load(std::memory_order_relaxed)) trim_pool(p, keep);
  return 0;
}

int Router::reset_peaks(int device) {
  DevicePool* p = forked_.load(std::memory_order_relaxed) ? nullptr : existing_pool(device);
  if (p == nullptr) return -1;
  p->alloc->reset_peaks();
  return 0;
}

int Router::validate(int device, char* msg, std::size_t msg_size) {
  DevicePool* p = forked_.load(std::memory_order_relaxed) ? nullptr : existing_pool(device);
  if (msg != nullptr && msg_size > 0) msg[0] = '\0';
  if (p == nullptr) return -1;
  try {
    const std::string v = p->alloc->validate();
    if (v.empty()) return 0;
    if (msg != nullptr && msg_size > 0) {
      const std::size_t n = std::min(v.size(), msg_size - 1);
      std::memcpy(msg, v.data(), n);
      msg[n] = '\0';
    }
    return 1;
  } catch (...) {
    return 1;
  }
}

int Router::device_of(const void* ptr) {
  if (ptr == nullptr || forked_.load(std::memory_order_relaxed)) return -1;
  DevicePool* p = owner(reinterpret_cast<pool::DevPtr>(ptr), -1);
  return p != nullptr ? p->device : -1;
}

// ------------------------------------------------------------------------------------------------
// Process life

void Router::prepare_fork() {
  pthread_mutex_lock(&mutex_);
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) i->lock_for_fork();
  real_lock_for_fork();
}

void Router::parent_after_fork() {
  real_unlock_after_fork();
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) i->unlock_after_fork();
  pthread_mutex_unlock(&mutex_);
}

void Router::child_after_fork() {
  real_unlock_after_fork();
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) i->after_fork_child();
  pthread_mutex_init(&mutex_, nullptr);
  pthread_mutex_init(&create_mutex_, nullptr);  // a pool may have been in the making on another thread
  pthread_cond_init(&frees_waited_, nullptr);
  waiting_frees_ = 0;  // the threads that were waiting do not exist here
  const bool was_creating = creating_.exchange(false);  // the creating thread does not exist here
  if (pool_count_.load(std::memory_order_relaxed) > 0 || was_creating) {
    // The parent's CUDA state is unusable here (as CUDA itself says on the child's first call), and
    // its pools may be mid-operation on threads that do not exist here: leave them untouched.
    forked_.store(true, std::memory_order_relaxed);
    mode_.store(static_cast<int>(Mode::off), std::memory_order_release);
  } else if (session_.load(std::memory_order_relaxed) != nullptr) {
    // Glake stays on here (the parent had no pool yet), so this child may make pools of its own: the
    // parent's trace session writes only in the parent, and their events would be lost. The child gets
    // a session of its own with its first pool, as a child forked before glake started does.
    session_.store(nullptr, std::memory_order_relaxed);
    tracer::TraceSession::forget_after_fork();
    trace_restart_.store(true, std::memory_order_relaxed);
  }
}

void Router::start_child_trace() {
  if (!trace_restart_.exchange(false, std::memory_order_acq_rel)) return;
  tracer::TraceSession* s = nullptr;
  try {
    std::vector<std::string> errors;
    s = tracer::TraceSession::start_from_env(&errors);
    for (const std::string& e : errors) say("%s", e.c_str());  // tracing off, glake on
  } catch (...) {
    say("a forked child: out of host memory starting its trace; not tracing");
  }
  if (s != nullptr && verbose_)
    say("a forked child: its trace is its own, written to %s at its exit", s->options().path.c_str());
  session_.store(s, std::memory_order_release);
}

void Router::on_exit() {
  exiting_.store(true, std::memory_order_release);
  if (Ipc* i = ipc_.load(std::memory_order_acquire)) i->stop_answering();
}

}  // namespace glake::shim
