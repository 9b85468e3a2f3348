// pool/host_driver.cpp: the memfd/mmap emulation of the device (see host_driver.h for the model).
//
// Every public call takes mutex_, counts itself against armed faults first (an injected failure has no
// side effect), validates everything before touching any state (a failed call changes nothing), and
// ends in finish(), which records it in stats_ with its modeled time.
#include "pool/host_driver.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>

namespace glake::pool {
namespace {

// Cost model. Measured on the lent H100 (DESIGN.md, "Facts measured on the lent GPU"):
//   cuMemCreate per chunk at 2 MiB / 32 MiB / 512 MiB: 21 / 14 / 25 us
//   cuMemRelease at 2 MiB / 32 MiB / 512 MiB: 17 / 39 / 343 us
//   cuMemMap: 1.5-2 us (we charge the middle, 1.75 us)
//   cuMemUnmap: 21-30 us (we charge 25 us per mapping; unmap takes exactly one mapping)
//   cuMemSetAccess: 35-62 us per mapping covered (we charge 48 us per mapping)
// Sizes between the measured points are interpolated linearly in log2(size); outside, clamped.
constexpr double kSizePointsLog2[3] = {21.0, 25.0, 29.0};  // 2 MiB, 32 MiB, 512 MiB
constexpr double kCreateNs[3] = {21'000, 14'000, 25'000};
constexpr double kReleaseNs[3] = {17'000, 39'000, 343'000};
constexpr std::uint64_t kMapNs = 1'750;
constexpr std::uint64_t kUnmapNs = 25'000;
constexpr std::uint64_t kSetAccessPerMappingNs = 48'000;
// Assumptions, not measured (DESIGN.md has no number for these):
// - cuMemAddressReserve / cuMemAddressFree: 5 us.
// - event record / query / synchronize and stream wait: 2 us for the call itself (a synchronize's wait
//   is GPU time, not driver time, and is not modeled).
// - everything else (event create/destroy, capture status, export, host alloc/free, and the launch of an
//   async copy, whose transfer is GPU time): 1 us.
// - a call that fails (validation, capacity or injected fault): 1 us.
constexpr std::uint64_t kReserveNs = 5'000;
constexpr std::uint64_t kEventNs = 2'000;
constexpr std::uint64_t kOtherNs = 1'000;
constexpr std::uint64_t kFailedCallNs = 1'000;

// Handles of different kinds come from disjoint ranges, so that passing one kind for another is caught.
constexpr PhysHandle kFirstChunk = PhysHandle{1} << 32;
constexpr EventHandle kFirstEvent = EventHandle{2} << 32;
constexpr std::size_t kHostAlignment = 4096;
// Unbacked reservations (Options::backed false) lie above any host address, so none is ever touched.
constexpr DevPtr kFirstUnbackedVa = DevPtr{1} << 48;
constexpr DevPtr kUnbackedVaEnd = DevPtr{1} << 62;

std::uint64_t by_size(std::size_t size, const double (&ns)[3]) {
  const double x = std::log2(static_cast<double>(std::max<std::size_t>(size, 1)));
  if (x <= kSizePointsLog2[0]) return static_cast<std::uint64_t>(ns[0]);
  if (x >= kSizePointsLog2[2]) return static_cast<std::uint64_t>(ns[2]);
  const int i = x < kSizePointsLog2[1] ? 0 : 1;
  const double t = (x - kSizePointsLog2[i]) / (kSizePointsLog2[i + 1] - kSizePointsLog2[i]);
  return static_cast<std::uint64_t>(std::llround(ns[i] + t * (ns[i + 1] - ns[i])));
}

// A granularity that is not a power of two at least the OS page is rounded up to one.
HostDriver::Options sanitize(HostDriver::Options o) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  o.granularity = std::bit_ceil(std::max(o.granularity, page));
  return o;
}

bool add_overflows(std::size_t a, std::size_t b) { return a + b < a; }

constexpr int kReleaseFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

}  // namespace

HostDriver::HostDriver() : HostDriver(Options{}) {}

HostDriver::HostDriver(Options options)
    : options_(sanitize(options)), next_chunk_(kFirstChunk), next_va_(kFirstUnbackedVa), next_event_(kFirstEvent) {}

HostDriver::~HostDriver() {
  // munmap of a reservation also removes every mapping inside it.
  if (options_.backed) {
    for (const auto& [base, size] : reservations_) munmap(reinterpret_cast<void*>(base), size);
    for (const auto& [handle, chunk] : chunks_) close(chunk.fd);
  }
  for (void* p : host_allocs_) std::free(p);
}

std::uint64_t HostDriver::modeled_ns(Call c, std::size_t size, std::size_t mappings) {
  switch (c) {
    case Call::reserve:
    case Call::free_reserve:
      return kReserveNs;
    case Call::create:
      return by_size(size, kCreateNs);
    case Call::release:
      return by_size(size, kReleaseNs);
    case Call::map:
      return kMapNs;
    case Call::unmap:
      return kUnmapNs;
    case Call::set_access:
      return kSetAccessPerMappingNs * mappings;
    case Call::event_record:
    case Call::event_query:
    case Call::event_synchronize:
    case Call::stream_wait_event:
    case Call::stream_synchronize:
      return kEventNs;
    default:
      return kOtherNs;
  }
}

std::optional<Status> HostDriver::take_fault(Call c) {
  auto i = static_cast<std::size_t>(c);
  const std::uint64_t seq = ++seen_[i];
  auto& armed = faults_[i];
  auto it = std::find_if(armed.begin(), armed.end(), [seq](const Fault& f) { return f.at == seq; });
  if (it == armed.end()) return std::nullopt;
  Status s = it->status;
  armed.erase(it);
  return s;
}

Status HostDriver::finish(Call c, Status s, std::uint64_t ns) {
  const bool ok = s == Status::ok;
  std::uint64_t charged = 0;
  if (options_.cost_model) charged = ok ? ns : kFailedCallNs;
  stats_.record(c, charged, ok);
  return s;
}

void HostDriver::fail_nth(Call c, std::uint64_t n, Status s) {
  if (n == 0 || c == Call::count_) return;
  std::lock_guard lock(mutex_);
  auto i = static_cast<std::size_t>(c);
  faults_[i].push_back(Fault{seen_[i] + n, s});
}

void HostDriver::clear_faults() {
  std::lock_guard lock(mutex_);
  for (auto& f : faults_) f.clear();
}

int HostDriver::device() const { return options_.device; }

std::size_t HostDriver::granularity() const { return options_.granularity; }

Status HostDriver::mem_info(std::size_t* free, std::size_t* total) {
  if (free == nullptr || total == nullptr) return Status::invalid_value;
  std::lock_guard lock(mutex_);
  *free = options_.capacity - in_use_;
  *total = options_.capacity;
  return Status::ok;
}

// --- virtual ranges -------------------------------------------------------------------------------

Status HostDriver::reserve(std::size_t size, DevPtr* va) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::reserve)) return finish(Call::reserve, *f, 0);
  if (va == nullptr || size == 0 || !aligned(size)) return finish(Call::reserve, Status::invalid_value, 0);
  const std::size_t g = options_.granularity;
  if (add_overflows(size, g)) return finish(Call::reserve, Status::out_of_memory, 0);
  if (!options_.backed) {  // a granule apart from the previous one, as separate mmaps would be
    const DevPtr base = (next_va_ + g - 1) & ~(DevPtr{g} - 1);
    if (add_overflows(base, size + g) || base + size + g > kUnbackedVaEnd)
      return finish(Call::reserve, Status::out_of_memory, 0);
    next_va_ = base + size + g;
    reservations_.emplace(base, size);
    reserved_ += size;
    *va = base;
    return finish(Call::reserve, Status::ok, modeled_ns(Call::reserve));
  }
  // mmap aligns to the OS page only: take one granule more and trim both ends.
  void* p = mmap(nullptr, size + g, PROT_NONE, kReleaseFlags, -1, 0);
  if (p == MAP_FAILED) return finish(Call::reserve, Status::out_of_memory, 0);
  const auto raw = reinterpret_cast<DevPtr>(p);
  const DevPtr base = (raw + g - 1) & ~(DevPtr{g} - 1);
  if (base > raw) munmap(p, base - raw);
  if (const std::size_t tail = raw + size + g - (base + size); tail > 0) {
    munmap(reinterpret_cast<void*>(base + size), tail);
  }
  reservations_.emplace(base, size);
  reserved_ += size;
  *va = base;
  return finish(Call::reserve, Status::ok, modeled_ns(Call::reserve));
}

Status HostDriver::free_reserve(DevPtr va, std::size_t size) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::free_reserve)) return finish(Call::free_reserve, *f, 0);
  auto it = reservations_.find(va);
  if (it == reservations_.end() || it->second != size) return finish(Call::free_reserve, Status::invalid_value, 0);
  // Stricter than needed, to catch callers that forget to unmap: a range with live mappings stays.
  if (overlaps_mapping(va, size)) return finish(Call::free_reserve, Status::invalid_value, 0);
  if (options_.backed) munmap(reinterpret_cast<void*>(va), size);
  reservations_.erase(it);
  reserved_ -= size;
  return finish(Call::free_reserve, Status::ok, modeled_ns(Call::free_reserve));
}

std::map<DevPtr, std::size_t>::const_iterator HostDriver::reservation_of(DevPtr va, std::size_t size) const {
  auto it = reservations_.upper_bound(va);
  if (it == reservations_.begin()) return reservations_.end();
  --it;
  const DevPtr end = it->first + it->second;
  if (va >= end || size > end - va) return reservations_.end();
  return it;
}

bool HostDriver::overlaps_mapping(DevPtr va, std::size_t size) const {
  auto it = mappings_.lower_bound(va);
  if (it != mappings_.end() && it->first - va < size) return true;
  if (it != mappings_.begin()) {
    --it;
    if (it->first + it->second.size > va) return true;
  }
  return false;
}

// --- physical memory ------------------------------------------------------------------------------

Status HostDriver::create(std::size_t size, PhysHandle* handle) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::create)) return finish(Call::create, *f, 0);
  if (handle == nullptr || size == 0 || !aligned(size)) return finish(Call::create, Status::invalid_value, 0);
  if (size > options_.capacity - in_use_) return finish(Call::create, Status::out_of_memory, 0);
  int fd = -1;
  if (options_.backed) {
    fd = memfd_create("glake-chunk", MFD_CLOEXEC);
    if (fd < 0) return finish(Call::create, Status::out_of_memory, 0);
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      close(fd);
      return finish(Call::create, Status::out_of_memory, 0);
    }
  }
  const PhysHandle h = next_chunk_++;
  chunks_.emplace(h, Chunk{fd, size, 0, false});
  in_use_ += size;
  *handle = h;
  return finish(Call::create, Status::ok, modeled_ns(Call::create, size));
}

Status HostDriver::release(PhysHandle handle) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::release)) return finish(Call::release, *f, 0);
  auto it = chunks_.find(handle);
  if (it == chunks_.end() || it->second.released) return finish(Call::release, Status::invalid_handle, 0);
  const std::size_t size = it->second.size;
  it->second.released = true;
  drop_if_dead(it);
  return finish(Call::release, Status::ok, modeled_ns(Call::release, size));
}

void HostDriver::drop_if_dead(std::unordered_map<PhysHandle, Chunk>::iterator it) {
  if (!it->second.released || it->second.maps > 0) return;
  if (it->second.fd >= 0) close(it->second.fd);
  in_use_ -= it->second.size;
  chunks_.erase(it);
}

Status HostDriver::map(DevPtr va, std::size_t size, PhysHandle handle, std::size_t offset) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::map)) return finish(Call::map, *f, 0);
  if (size == 0 || !aligned(va) || !aligned(size) || !aligned(offset)) {
    return finish(Call::map, Status::invalid_value, 0);
  }
  auto chunk = chunks_.find(handle);
  if (chunk == chunks_.end() || chunk->second.released) return finish(Call::map, Status::invalid_handle, 0);
  if (offset > chunk->second.size || size > chunk->second.size - offset) {
    return finish(Call::map, Status::invalid_value, 0);
  }
  if (reservation_of(va, size) == reservations_.end() || overlaps_mapping(va, size)) {
    return finish(Call::map, Status::invalid_value, 0);
  }
  // A fresh mapping has no access until set_access(), as on the device.
  void* p = !options_.backed ? reinterpret_cast<void*>(va)
                             : mmap(reinterpret_cast<void*>(va), size, PROT_NONE, MAP_FIXED | MAP_SHARED,
                                    chunk->second.fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    // The range may have been disturbed; put the reservation's placeholder back.
    mmap(reinterpret_cast<void*>(va), size, PROT_NONE, MAP_FIXED | kReleaseFlags, -1, 0);
    return finish(Call::map, Status::out_of_memory, 0);
  }
  mappings_.emplace(va, Mapping{size, handle});
  ++chunk->second.maps;
  return finish(Call::map, Status::ok, modeled_ns(Call::map));
}

Status HostDriver::unmap(DevPtr va, std::size_t size) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::unmap)) return finish(Call::unmap, *f, 0);
  if (size == 0 || !aligned(va) || !aligned(size)) return finish(Call::unmap, Status::invalid_value, 0);
  auto it = mappings_.find(va);
  if (it == mappings_.end() || it->second.size != size) return finish(Call::unmap, Status::invalid_value, 0);
  // Replacing the pages (rather than munmap) keeps the address range reserved.
  if (options_.backed &&
      mmap(reinterpret_cast<void*>(va), size, PROT_NONE, MAP_FIXED | kReleaseFlags, -1, 0) == MAP_FAILED) {
    return finish(Call::unmap, Status::unknown, 0);
  }
  auto chunk = chunks_.find(it->second.handle);
  mappings_.erase(it);
  --chunk->second.maps;
  drop_if_dead(chunk);
  return finish(Call::unmap, Status::ok, modeled_ns(Call::unmap));
}

Status HostDriver::set_access(DevPtr va, std::size_t size) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::set_access)) return finish(Call::set_access, *f, 0);
  if (size == 0 || !aligned(va) || !aligned(size) || add_overflows(va, size)) {
    return finish(Call::set_access, Status::invalid_value, 0);
  }
  // [va, va+size) must be covered by mappings without a gap; it may start or end inside one.
  auto it = mappings_.upper_bound(va);
  if (it == mappings_.begin()) return finish(Call::set_access, Status::invalid_value, 0);
  --it;
  const DevPtr end = va + size;
  DevPtr covered = va;
  std::size_t count = 0;
  for (; it != mappings_.end() && it->first <= covered && covered < end; ++it) {
    covered = std::max(covered, it->first + it->second.size);
    ++count;
  }
  if (covered < end) return finish(Call::set_access, Status::invalid_value, 0);
  if (options_.backed && mprotect(reinterpret_cast<void*>(va), size, PROT_READ | PROT_WRITE) != 0) {
    return finish(Call::set_access, Status::unknown, 0);
  }
  return finish(Call::set_access, Status::ok, modeled_ns(Call::set_access, 0, count));
}

Status HostDriver::export_fd(PhysHandle handle, int* fd) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::export_fd)) return finish(Call::export_fd, *f, 0);
  if (fd == nullptr) return finish(Call::export_fd, Status::invalid_value, 0);
  auto it = chunks_.find(handle);
  if (it == chunks_.end() || it->second.released) return finish(Call::export_fd, Status::invalid_handle, 0);
  if (it->second.fd < 0) return finish(Call::export_fd, Status::not_supported, 0);
  const int copy = fcntl(it->second.fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return finish(Call::export_fd, Status::unknown, 0);
  *fd = copy;
  return finish(Call::export_fd, Status::ok, modeled_ns(Call::export_fd));
}

// --- events and streams ---------------------------------------------------------------------------

Status HostDriver::event_create(EventHandle* event) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::event_create)) return finish(Call::event_create, *f, 0);
  if (event == nullptr) return finish(Call::event_create, Status::invalid_value, 0);
  const EventHandle e = next_event_++;
  events_.emplace(e, EventState{});
  *event = e;
  return finish(Call::event_create, Status::ok, modeled_ns(Call::event_create));
}

Status HostDriver::event_destroy(EventHandle event) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::event_destroy)) return finish(Call::event_destroy, *f, 0);
  if (events_.erase(event) == 0) return finish(Call::event_destroy, Status::invalid_handle, 0);
  return finish(Call::event_destroy, Status::ok, modeled_ns(Call::event_destroy));
}

Status HostDriver::event_record(EventHandle event, StreamHandle stream) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::event_record)) return finish(Call::event_record, *f, 0);
  auto it = events_.find(event);
  if (it == events_.end()) return finish(Call::event_record, Status::invalid_handle, 0);
  auto s = streams_.find(stream);
  const std::uint64_t submitted = s == streams_.end() ? 0 : s->second.submitted;
  it->second = EventState{true, stream, submitted};
  return finish(Call::event_record, Status::ok, modeled_ns(Call::event_record));
}

Status HostDriver::event_query(EventHandle event) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::event_query)) return finish(Call::event_query, *f, 0);
  auto it = events_.find(event);
  if (it == events_.end()) return finish(Call::event_query, Status::invalid_handle, 0);
  // An event never recorded counts as complete (as cuEventQuery).
  Status result = Status::ok;
  if (it->second.recorded) {
    auto s = streams_.find(it->second.stream);
    const std::uint64_t completed = s == streams_.end() ? 0 : s->second.completed;
    if (completed < it->second.target) result = Status::not_ready;
  }
  // not_ready is an answer, not a failure: it is counted as a successful call.
  const std::uint64_t ns = modeled_ns(Call::event_query);
  stats_.record(Call::event_query, options_.cost_model ? ns : 0, true);
  return result;
}

Status HostDriver::event_synchronize(EventHandle event) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::event_synchronize)) return finish(Call::event_synchronize, *f, 0);
  auto it = events_.find(event);
  if (it == events_.end()) return finish(Call::event_synchronize, Status::invalid_handle, 0);
  // Waiting is emulated by completing the stream's work up to the recorded point.
  if (it->second.recorded) {
    auto& s = streams_[it->second.stream];
    s.completed = std::max(s.completed, it->second.target);
  }
  return finish(Call::event_synchronize, Status::ok, modeled_ns(Call::event_synchronize));
}

Status HostDriver::stream_wait_event(StreamHandle stream, EventHandle event) {
  (void)stream;  // the emulation does not order streams against each other
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::stream_wait_event)) return finish(Call::stream_wait_event, *f, 0);
  if (events_.find(event) == events_.end()) return finish(Call::stream_wait_event, Status::invalid_handle, 0);
  return finish(Call::stream_wait_event, Status::ok, modeled_ns(Call::stream_wait_event));
}

Status HostDriver::stream_synchronize(StreamHandle stream) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::stream_synchronize)) return finish(Call::stream_synchronize, *f, 0);
  auto s = streams_.find(stream);
  if (s != streams_.end()) s->second.completed = s->second.submitted;
  return finish(Call::stream_synchronize, Status::ok, modeled_ns(Call::stream_synchronize));
}

Status HostDriver::stream_is_capturing(StreamHandle stream, bool* capturing) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::stream_is_capturing)) return finish(Call::stream_is_capturing, *f, 0);
  if (capturing == nullptr) return finish(Call::stream_is_capturing, Status::invalid_value, 0);
  auto s = streams_.find(stream);
  *capturing = s != streams_.end() && s->second.capturing;
  return finish(Call::stream_is_capturing, Status::ok, modeled_ns(Call::stream_is_capturing));
}

void HostDriver::enqueue_work(StreamHandle s) {
  std::lock_guard lock(mutex_);
  ++streams_[s].submitted;
}

void HostDriver::complete_work(StreamHandle s) {
  std::lock_guard lock(mutex_);
  auto& st = streams_[s];
  st.completed = st.submitted;
}

void HostDriver::set_capturing(StreamHandle s, bool capturing) {
  std::lock_guard lock(mutex_);
  streams_[s].capturing = capturing;
}

// --- copies and pinned host memory ----------------------------------------------------------------

Status HostDriver::memcpy_async(void* dst, const void* src, std::size_t size, StreamHandle stream) {
  (void)stream;  // the copy is done at once, so it never leaves work pending on the stream
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::memcpy_async)) return finish(Call::memcpy_async, *f, 0);
  if (size > 0 && (dst == nullptr || src == nullptr)) return finish(Call::memcpy_async, Status::invalid_value, 0);
  if (size > 0) std::memmove(dst, src, size);
  return finish(Call::memcpy_async, Status::ok, modeled_ns(Call::memcpy_async));
}

Status HostDriver::host_alloc(std::size_t size, void** ptr) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::host_alloc)) return finish(Call::host_alloc, *f, 0);
  if (ptr == nullptr || size == 0 || add_overflows(size, kHostAlignment)) {
    return finish(Call::host_alloc, Status::invalid_value, 0);
  }
  const std::size_t rounded = (size + kHostAlignment - 1) & ~(kHostAlignment - 1);
  void* p = std::aligned_alloc(kHostAlignment, rounded);
  if (p == nullptr) return finish(Call::host_alloc, Status::out_of_memory, 0);
  host_allocs_.insert(p);
  *ptr = p;
  return finish(Call::host_alloc, Status::ok, modeled_ns(Call::host_alloc));
}

Status HostDriver::host_free(void* ptr) {
  std::lock_guard lock(mutex_);
  if (auto f = take_fault(Call::host_free)) return finish(Call::host_free, *f, 0);
  if (host_allocs_.erase(ptr) == 0) return finish(Call::host_free, Status::invalid_value, 0);
  std::free(ptr);
  return finish(Call::host_free, Status::ok, modeled_ns(Call::host_free));
}

// --- state, for tests -----------------------------------------------------------------------------

std::size_t HostDriver::physical_in_use() const {
  std::lock_guard lock(mutex_);
  return in_use_;
}

std::size_t HostDriver::mappings() const {
  std::lock_guard lock(mutex_);
  return mappings_.size();
}

std::size_t HostDriver::reserved_bytes() const {
  std::lock_guard lock(mutex_);
  return reserved_;
}

std::size_t HostDriver::live_events() const {
  std::lock_guard lock(mutex_);
  return events_.size();
}

}  // namespace glake::pool
