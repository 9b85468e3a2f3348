// pool/cuda_driver.cpp: the real CUDA driver behind Driver (see cuda_driver.h for the model).
//
// Resolution: libcuda.so.1 is opened RTLD_LOCAL (RTLD_NOLOAD first, so an already loaded driver is
// reused) and never closed. Its cuGetProcAddress_v2 is found with glibc's own dlsym, taken by version
// from that handle's dependency scope with dlvsym, because libglake.so may interpose plain dlsym. Every
// other entry point comes from cuGetProcAddress at the ABI of the cuda.h we compile against, with the
// legacy default stream (stream 0 is the legacy stream, driver.h). The table is filled with no lock held
// (api()), published once and read without locks afterwards; it holds only function pointers, is never
// freed, and has no static destructor to run at exit.
//
// Every public call validates its arguments first (a rejected call reaches no driver function and
// changes nothing), then makes the driver call, then records the call and its wall time in stats_.
#include "pool/cuda_driver.h"

#include <cuda.h>
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

namespace glake::pool {
namespace {

// The entry points glake uses, at the ABI of the cuda.h this file is compiled against. decltype of the
// cuda.h prototypes, after its macros (cuMemGetInfo -> cuMemGetInfo_v2, ...), names that ABI; the
// strings below are the base names cuGetProcAddress expects.
struct Api {
  bool ok = false;  // every entry point below was found
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuDeviceGetCount) device_get_count = nullptr;
  decltype(&::cuDeviceGet) device_get = nullptr;
  decltype(&::cuDeviceGetAttribute) device_get_attribute = nullptr;
  decltype(&::cuDeviceCanAccessPeer) device_can_access_peer = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) primary_ctx_retain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease) primary_ctx_release = nullptr;
  decltype(&::cuCtxGetCurrent) ctx_get_current = nullptr;
  decltype(&::cuCtxSetCurrent) ctx_set_current = nullptr;
  decltype(&::cuCtxGetDevice) ctx_get_device = nullptr;
  decltype(&::cuCtxPushCurrent) ctx_push_current = nullptr;
  decltype(&::cuCtxPopCurrent) ctx_pop_current = nullptr;
  decltype(&::cuMemGetInfo) mem_get_info = nullptr;
  decltype(&::cuMemGetAllocationGranularity) mem_get_allocation_granularity = nullptr;
  decltype(&::cuMemAddressReserve) mem_address_reserve = nullptr;
  decltype(&::cuMemAddressFree) mem_address_free = nullptr;
  decltype(&::cuMemCreate) mem_create = nullptr;
  decltype(&::cuMemRelease) mem_release = nullptr;
  decltype(&::cuMemMap) mem_map = nullptr;
  decltype(&::cuMemUnmap) mem_unmap = nullptr;
  decltype(&::cuMemSetAccess) mem_set_access = nullptr;
  decltype(&::cuMemExportToShareableHandle) mem_export_to_shareable_handle = nullptr;
  decltype(&::cuEventCreate) event_create = nullptr;
  decltype(&::cuEventDestroy) event_destroy = nullptr;
  decltype(&::cuEventRecord) event_record = nullptr;
  decltype(&::cuEventQuery) event_query = nullptr;
  decltype(&::cuEventSynchronize) event_synchronize = nullptr;
  decltype(&::cuStreamWaitEvent) stream_wait_event = nullptr;
  decltype(&::cuStreamIsCapturing) stream_is_capturing = nullptr;
  decltype(&::cuStreamSynchronize) stream_synchronize = nullptr;
  decltype(&::cuThreadExchangeStreamCaptureMode) thread_exchange_stream_capture_mode = nullptr;  // optional
  decltype(&::cuMemcpyAsync) memcpy_async = nullptr;
  decltype(&::cuMemHostAlloc) mem_host_alloc = nullptr;
  decltype(&::cuMemFreeHost) mem_free_host = nullptr;
};

using DlsymFn = void* (*)(void*, const char*);
using GetProcV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using GetProcV1 = CUresult (*)(const char*, void**, int, cuuint64_t);

template <class Fn>
Fn as_function(void* p) {
  static_assert(sizeof(Fn) == sizeof(void*));
  Fn fn;
  std::memcpy(&fn, &p, sizeof fn);
  return fn;
}

// glibc's dlsym, never an interposed one: looked up by symbol version in the dependency scope of
// `handle` (libcuda.so.1 depends on libc). Plain dlsym only if no known version is there.
DlsymFn real_dlsym(void* handle) {
  static constexpr const char* kVersions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
  for (const char* version : kVersions) {
    if (void* p = dlvsym(handle, "dlsym", version)) return as_function<DlsymFn>(p);
  }
  return &::dlsym;
}

void resolve(Api* api) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (lib == nullptr) lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return;
  const DlsymFn sym = real_dlsym(lib);
  GetProcV2 get_v2 = nullptr;
  GetProcV1 get_v1 = nullptr;
  if (void* p = sym(lib, "cuGetProcAddress_v2")) {
    get_v2 = as_function<GetProcV2>(p);
  } else if (void* q = sym(lib, "cuGetProcAddress")) {
    get_v1 = as_function<GetProcV1>(q);
  } else {
    return;
  }
  bool all = true;
  auto get = [&](const char* name, auto* slot) {
    void* p = nullptr;
    CUresult r = CUDA_ERROR_NOT_FOUND;
    if (get_v2 != nullptr) {
      CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
      r = get_v2(name, &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &found);
      if (found != CU_GET_PROC_ADDRESS_SUCCESS) p = nullptr;
    } else {
      r = get_v1(name, &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    }
    if (r != CUDA_SUCCESS || p == nullptr) {
      all = false;
      return;
    }
    *slot = as_function<std::remove_pointer_t<decltype(slot)>>(p);
  };
  get("cuInit", &api->init);
  get("cuDeviceGetCount", &api->device_get_count);
  get("cuDeviceGet", &api->device_get);
  get("cuDeviceGetAttribute", &api->device_get_attribute);
  get("cuDeviceCanAccessPeer", &api->device_can_access_peer);
  get("cuDevicePrimaryCtxRetain", &api->primary_ctx_retain);
  get("cuDevicePrimaryCtxRelease", &api->primary_ctx_release);
  get("cuCtxGetCurrent", &api->ctx_get_current);
  get("cuCtxSetCurrent", &api->ctx_set_current);
  get("cuCtxGetDevice", &api->ctx_get_device);
  get("cuCtxPushCurrent", &api->ctx_push_current);
  get("cuCtxPopCurrent", &api->ctx_pop_current);
  get("cuMemGetInfo", &api->mem_get_info);
  get("cuMemGetAllocationGranularity", &api->mem_get_allocation_granularity);
  get("cuMemAddressReserve", &api->mem_address_reserve);
  get("cuMemAddressFree", &api->mem_address_free);
  get("cuMemCreate", &api->mem_create);
  get("cuMemRelease", &api->mem_release);
  get("cuMemMap", &api->mem_map);
  get("cuMemUnmap", &api->mem_unmap);
  get("cuMemSetAccess", &api->mem_set_access);
  get("cuMemExportToShareableHandle", &api->mem_export_to_shareable_handle);
  get("cuEventCreate", &api->event_create);
  get("cuEventDestroy", &api->event_destroy);
  get("cuEventRecord", &api->event_record);
  get("cuEventQuery", &api->event_query);
  get("cuEventSynchronize", &api->event_synchronize);
  get("cuStreamWaitEvent", &api->stream_wait_event);
  get("cuStreamIsCapturing", &api->stream_is_capturing);
  get("cuStreamSynchronize", &api->stream_synchronize);
  get("cuMemcpyAsync", &api->memcpy_async);
  get("cuMemHostAlloc", &api->mem_host_alloc);
  get("cuMemFreeHost", &api->mem_free_host);
  api->ok = all;
  get("cuThreadExchangeStreamCaptureMode", &api->thread_exchange_stream_capture_mode);  // not required
}

// Resolved with no lock held (dlopen and dlsym take the dynamic loader's lock; a thread waiting in a
// call_once for one that waits for the loader hangs if it holds the loader's lock itself, as a library's
// constructor does). Threads that race each resolve a table; the first to publish wins, the others
// free theirs.
const Api& api() {
  static constinit const Api kNone{};
  static std::atomic<const Api*> published{nullptr};
  if (const Api* t = published.load(std::memory_order_acquire)) return *t;
  auto* fresh = new (std::nothrow) Api{};
  if (fresh == nullptr) return kNone;  // not published: a later call tries again
  resolve(fresh);
  const Api* expected = nullptr;
  if (published.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *expected;
}

// Set by an atexit handler registered right after the first successful cuInit, so it runs before the
// driver's own exit-time teardown (registered during cuInit or earlier) and before the destructors of
// objects built before it. A CudaDriver destroyed after that makes no driver call at all.
std::atomic<bool> g_exiting{false};
void mark_exiting() { g_exiting.store(true, std::memory_order_relaxed); }

// Statuses are CUresult values; codes Status does not name pass through by number.
Status to_status(CUresult r) { return static_cast<Status>(static_cast<int>(r)); }

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

bool add_overflows(std::uintptr_t a, std::size_t b) { return a > std::numeric_limits<std::uintptr_t>::max() - b; }

CUmemAllocationProp chunk_prop(int cu_device, bool rdma, bool fd_handles) {
  CUmemAllocationProp prop;
  std::memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.requestedHandleTypes = fd_handles ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = cu_device;
  prop.allocFlags.gpuDirectRDMACapable = rdma ? 1 : 0;
  return prop;
}

// Most devices set_access grants at once: this device and its peers.
constexpr std::size_t kMaxAccessors = 128;

}  // namespace

RelaxedCapture::RelaxedCapture() {
  const auto f = api().thread_exchange_stream_capture_mode;
  CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
  exchanged_ = f != nullptr && f(&m) == CUDA_SUCCESS;
  mode_ = static_cast<int>(m);
}

RelaxedCapture::~RelaxedCapture() {
  if (!exchanged_) return;
  CUstreamCaptureMode m = static_cast<CUstreamCaptureMode>(mode_);
  (void)api().thread_exchange_stream_capture_mode(&m);
}

// Makes a context of the driver's device current for one call (see cuda_driver.h, "Contexts").
class CudaDriver::ContextScope {
 public:
  explicit ContextScope(const CudaDriver& d) {
    const Api& a = api();
    CUcontext current = nullptr;
    result_ = a.ctx_get_current(&current);
    if (result_ != CUDA_SUCCESS || current == d.primary_) return;
    // None current: pushed for the call and popped after, as for another device's. Left current, it
    // would become the runtime's current device on this thread (the runtime uses a context it finds
    // current), e.g. device 1's after a free on one of its streams by a thread still on device 0.
    CUdevice dev = 0;
    if (current != nullptr && a.ctx_get_device(&dev) == CUDA_SUCCESS && dev == d.cu_device_) return;
    result_ = a.ctx_push_current(d.primary_);
    pushed_ = result_ == CUDA_SUCCESS;
  }
  ~ContextScope() {
    if (!pushed_) return;
    CUcontext popped = nullptr;
    (void)api().ctx_pop_current(&popped);
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

  bool ok() const { return result_ == CUDA_SUCCESS; }
  Status status() const { return to_status(result_); }

 private:
  CUresult result_ = CUDA_SUCCESS;
  bool pushed_ = false;
};

bool CudaDriver::look_up() { return api().ok; }

Status CudaDriver::open(int device, std::unique_ptr<CudaDriver>* out) {
  if (out == nullptr) return Status::invalid_value;
  const Api& a = api();
  if (!a.ok) return Status::not_initialized;
  CUresult r = a.init(0);
  if (r != CUDA_SUCCESS) return to_status(r);
  static std::once_flag exit_hook;
  std::call_once(exit_hook, [] { (void)std::atexit(mark_exiting); });

  int count = 0;
  r = a.device_get_count(&count);
  if (r != CUDA_SUCCESS) return to_status(r);
  if (device < 0 || device >= count) return to_status(CUDA_ERROR_INVALID_DEVICE);
  CUdevice dev = 0;
  r = a.device_get(&dev, device);
  if (r != CUDA_SUCCESS) return to_status(r);

  int vmm = 0;
  r = a.device_get_attribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
  if (r != CUDA_SUCCESS) return to_status(r);
  if (vmm == 0) return Status::not_supported;
  // Optional capabilities: an attribute the driver cannot answer counts as absent.
  int rdma = 0;
  if (a.device_get_attribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, dev) != CUDA_SUCCESS) {
    rdma = 0;
  }
  int fd = 0;
  if (a.device_get_attribute(&fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev) != CUDA_SUCCESS) {
    fd = 0;
  }

  const CUmemAllocationProp prop = chunk_prop(dev, rdma != 0, fd != 0);
  std::size_t granularity = 0;
  r = a.mem_get_allocation_granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r != CUDA_SUCCESS) return to_status(r);
  if (granularity == 0) return Status::unknown;

  CUcontext primary = nullptr;
  r = a.primary_ctx_retain(&primary, dev);
  if (r != CUDA_SUCCESS) return to_status(r);
  out->reset(new (std::nothrow) CudaDriver(device, dev, granularity, rdma != 0, fd != 0, primary));
  if (*out == nullptr) {
    (void)a.primary_ctx_release(dev);
    return Status::out_of_memory;
  }
  return Status::ok;
}

CudaDriver::CudaDriver(int device, int cu_device, std::size_t granularity, bool rdma, bool fd_handles,
                       CUctx_st* primary)
    : device_(device),
      cu_device_(cu_device),
      granularity_(granularity),
      rdma_(rdma),
      fd_handles_(fd_handles),
      primary_(primary) {}

CudaDriver::~CudaDriver() {
  if (g_exiting.load(std::memory_order_relaxed)) return;
  // CUDA_ERROR_DEINITIALIZED here means the driver is already gone: nothing left to release.
  (void)api().primary_ctx_release(cu_device_);
}

Status CudaDriver::finish(Call c, Status s, std::uint64_t start_ns) {
  stats_.record(c, now_ns() - start_ns, s == Status::ok);
  return s;
}

bool CudaDriver::process_exiting() { return g_exiting.load(std::memory_order_relaxed); }

int CudaDriver::device() const { return device_; }
std::size_t CudaDriver::granularity() const { return granularity_; }

Status CudaDriver::mem_info(std::size_t* free, std::size_t* total) {
  if (free == nullptr || total == nullptr) return Status::invalid_value;
  ContextScope scope(*this);
  if (!scope.ok()) return scope.status();
  RelaxedCapture relaxed;
  return to_status(api().mem_get_info(free, total));
}

// --- virtual ranges and physical memory: no context needed ------------------------------------------

Status CudaDriver::reserve(std::size_t size, DevPtr* va) {
  const std::uint64_t t0 = now_ns();
  if (va == nullptr || size == 0 || !aligned(size)) return finish(Call::reserve, Status::invalid_value, t0);
  CUdeviceptr p = 0;
  RelaxedCapture relaxed;
  const CUresult r = api().mem_address_reserve(&p, size, granularity_, 0, 0);
  if (r == CUDA_SUCCESS) *va = static_cast<DevPtr>(p);
  return finish(Call::reserve, to_status(r), t0);
}

Status CudaDriver::free_reserve(DevPtr va, std::size_t size) {
  const std::uint64_t t0 = now_ns();
  if (va == 0 || size == 0 || !aligned(va) || !aligned(size) || add_overflows(va, size)) {
    return finish(Call::free_reserve, Status::invalid_value, t0);
  }
  RelaxedCapture relaxed;
  return finish(Call::free_reserve, to_status(api().mem_address_free(va, size)), t0);
}

Status CudaDriver::create(std::size_t size, PhysHandle* handle) {
  const std::uint64_t t0 = now_ns();
  if (handle == nullptr || size == 0 || !aligned(size)) return finish(Call::create, Status::invalid_value, t0);
  const CUmemAllocationProp prop = chunk_prop(cu_device_, rdma_, fd_handles_);
  CUmemGenericAllocationHandle h = 0;
  RelaxedCapture relaxed;
  const CUresult r = api().mem_create(&h, size, &prop, 0);
  if (r == CUDA_SUCCESS) *handle = static_cast<PhysHandle>(h);
  return finish(Call::create, to_status(r), t0);
}

Status CudaDriver::release(PhysHandle handle) {
  const std::uint64_t t0 = now_ns();
  RelaxedCapture relaxed;
  return finish(Call::release, to_status(api().mem_release(handle)), t0);
}

Status CudaDriver::map(DevPtr va, std::size_t size, PhysHandle handle, std::size_t offset) {
  const std::uint64_t t0 = now_ns();
  if (va == 0 || size == 0 || !aligned(va) || !aligned(size) || !aligned(offset) || add_overflows(va, size) ||
      add_overflows(offset, size)) {
    return finish(Call::map, Status::invalid_value, t0);
  }
  RelaxedCapture relaxed;
  return finish(Call::map, to_status(api().mem_map(va, size, offset, handle, 0)), t0);
}

Status CudaDriver::unmap(DevPtr va, std::size_t size) {
  const std::uint64_t t0 = now_ns();
  if (va == 0 || size == 0 || !aligned(va) || !aligned(size) || add_overflows(va, size)) {
    return finish(Call::unmap, Status::invalid_value, t0);
  }
  RelaxedCapture relaxed;
  return finish(Call::unmap, to_status(api().mem_unmap(va, size)), t0);
}

Status CudaDriver::set_access(DevPtr va, std::size_t size) {
  const std::uint64_t t0 = now_ns();
  if (va == 0 || size == 0 || !aligned(va) || !aligned(size) || add_overflows(va, size)) {
    return finish(Call::set_access, Status::invalid_value, t0);
  }
  std::array<CUmemAccessDesc, kMaxAccessors> desc{};
  std::size_t n = 0;
  auto grant = [&](int cu_device) {
    desc[n].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc[n].location.id = cu_device;
    desc[n].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    ++n;
  };
  grant(cu_device_);
  {
    std::lock_guard lock(peers_mutex_);
    for (int p : cu_peers_) grant(p);  // add_peer keeps cu_peers_ below kMaxAccessors
  }
  RelaxedCapture relaxed;
  return finish(Call::set_access, to_status(api().mem_set_access(va, size, desc.data(), n)), t0);
}

Status CudaDriver::export_fd(PhysHandle handle, int* fd) {
  const std::uint64_t t0 = now_ns();
  if (fd == nullptr) return finish(Call::export_fd, Status::invalid_value, t0);
  if (!fd_handles_) return finish(Call::export_fd, Status::not_supported, t0);
  int out = -1;
  RelaxedCapture relaxed;
  const CUresult r = api().mem_export_to_shareable_handle(&out, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
  if (r == CUDA_SUCCESS) *fd = out;
  return finish(Call::export_fd, to_status(r), t0);
}

// --- events and streams: in a context of this device --------------------------------------------------

Status CudaDriver::event_create(EventHandle* event) {
  const std::uint64_t t0 = now_ns();
  if (event == nullptr) return finish(Call::event_create, Status::invalid_value, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::event_create, scope.status(), t0);
  CUevent e = nullptr;
  const CUresult r = api().event_create(&e, CU_EVENT_DISABLE_TIMING);
  if (r == CUDA_SUCCESS) *event = reinterpret_cast<EventHandle>(e);
  return finish(Call::event_create, to_status(r), t0);
}

Status CudaDriver::event_destroy(EventHandle event) {
  const std::uint64_t t0 = now_ns();
  if (event == 0) return finish(Call::event_destroy, Status::invalid_handle, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::event_destroy, scope.status(), t0);
  return finish(Call::event_destroy, to_status(api().event_destroy(reinterpret_cast<CUevent>(event))), t0);
}

Status CudaDriver::event_record(EventHandle event, StreamHandle stream) {
  const std::uint64_t t0 = now_ns();
  if (event == 0) return finish(Call::event_record, Status::invalid_handle, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::event_record, scope.status(), t0);
  const CUresult r = api().event_record(reinterpret_cast<CUevent>(event), reinterpret_cast<CUstream>(stream));
  return finish(Call::event_record, to_status(r), t0);
}

Status CudaDriver::event_query(EventHandle event) {
  const std::uint64_t t0 = now_ns();
  if (event == 0) return finish(Call::event_query, Status::invalid_handle, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::event_query, scope.status(), t0);
  RelaxedCapture relaxed;
  const Status s = to_status(api().event_query(reinterpret_cast<CUevent>(event)));
  // not_ready is an answer, not a failure.
  stats_.record(Call::event_query, now_ns() - t0, s == Status::ok || s == Status::not_ready);
  return s;
}

Status CudaDriver::event_synchronize(EventHandle event) {
  const std::uint64_t t0 = now_ns();
  if (event == 0) return finish(Call::event_synchronize, Status::invalid_handle, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::event_synchronize, scope.status(), t0);
  RelaxedCapture relaxed;
  return finish(Call::event_synchronize, to_status(api().event_synchronize(reinterpret_cast<CUevent>(event))), t0);
}

Status CudaDriver::stream_wait_event(StreamHandle stream, EventHandle event) {
  const std::uint64_t t0 = now_ns();
  if (event == 0) return finish(Call::stream_wait_event, Status::invalid_handle, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::stream_wait_event, scope.status(), t0);
  const CUresult r =
      api().stream_wait_event(reinterpret_cast<CUstream>(stream), reinterpret_cast<CUevent>(event), 0);
  return finish(Call::stream_wait_event, to_status(r), t0);
}

Status CudaDriver::stream_is_capturing(StreamHandle stream, bool* capturing) {
  const std::uint64_t t0 = now_ns();
  if (capturing == nullptr) return finish(Call::stream_is_capturing, Status::invalid_value, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::stream_is_capturing, scope.status(), t0);
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  const CUresult r = api().stream_is_capturing(reinterpret_cast<CUstream>(stream), &st);
  // An invalidated capture is still a capture until it is ended: the stream must not be served.
  if (r == CUDA_SUCCESS) *capturing = st != CU_STREAM_CAPTURE_STATUS_NONE;
  return finish(Call::stream_is_capturing, to_status(r), t0);
}

Status CudaDriver::stream_synchronize(StreamHandle stream) {
  const std::uint64_t t0 = now_ns();
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::stream_synchronize, scope.status(), t0);
  RelaxedCapture relaxed;
  return finish(Call::stream_synchronize, to_status(api().stream_synchronize(reinterpret_cast<CUstream>(stream))), t0);
}

// --- copies and pinned host memory ----------------------------------------------------------------

Status CudaDriver::memcpy_async(void* dst, const void* src, std::size_t size, StreamHandle stream) {
  const std::uint64_t t0 = now_ns();
  if (size == 0) return finish(Call::memcpy_async, Status::ok, t0);
  if (dst == nullptr || src == nullptr) return finish(Call::memcpy_async, Status::invalid_value, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::memcpy_async, scope.status(), t0);
  const CUresult r = api().memcpy_async(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src),
                                        size, reinterpret_cast<CUstream>(stream));
  return finish(Call::memcpy_async, to_status(r), t0);
}

Status CudaDriver::host_alloc(std::size_t size, void** ptr) {
  const std::uint64_t t0 = now_ns();
  if (ptr == nullptr || size == 0) return finish(Call::host_alloc, Status::invalid_value, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::host_alloc, scope.status(), t0);
  void* p = nullptr;
  // Portable: the copy engine of any context may use it (LayerKV moves KV between devices' pools).
  const CUresult r = api().mem_host_alloc(&p, size, CU_MEMHOSTALLOC_PORTABLE);
  if (r == CUDA_SUCCESS) *ptr = p;
  return finish(Call::host_alloc, to_status(r), t0);
}

Status CudaDriver::host_free(void* ptr) {
  const std::uint64_t t0 = now_ns();
  if (ptr == nullptr) return finish(Call::host_free, Status::invalid_value, t0);
  ContextScope scope(*this);
  if (!scope.ok()) return finish(Call::host_free, scope.status(), t0);
  return finish(Call::host_free, to_status(api().mem_free_host(ptr)), t0);
}

// --- peers ----------------------------------------------------------------------------------------

void CudaDriver::add_peer(int peer_device) {
  if (peer_device == device_ || peer_device < 0) return;
  const Api& a = api();
  CUdevice peer = 0;
  if (a.device_get(&peer, peer_device) != CUDA_SUCCESS) return;
  int can = 0;
  if (a.device_can_access_peer(&can, peer, cu_device_) != CUDA_SUCCESS || can == 0) return;
  std::lock_guard lock(peers_mutex_);
  for (int p : peers_) {
    if (p == peer_device) return;
  }
  if (cu_peers_.size() + 1 >= kMaxAccessors) return;
  try {
    peers_.reserve(peers_.size() + 1);
    cu_peers_.reserve(cu_peers_.size() + 1);
  } catch (...) {
    return;  // out of host memory: the peer stays unregistered, the two lists stay equal
  }
  peers_.push_back(peer_device);
  cu_peers_.push_back(peer);
}

std::vector<int> CudaDriver::peers() const {
  std::lock_guard lock(peers_mutex_);
  return peers_;
}

}  // namespace glake::pool
