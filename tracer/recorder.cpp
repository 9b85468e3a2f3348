// tracer/recorder.cpp: the rings, the lanes, the ticker, the stack table and collect() (see recorder.h).
//
// Slot protocol: a writer takes ticket i (shared ring: an atomic increment of its head, seq_cst; lane:
// the head loaded and i + 1 stored, the caller serialising the writers), stores the payload with
// release stores and then seq = (i + 1) << 16 | device << 8 | op (release). A reader loads seq
// (acquire), the payload with acquire loads, then seq and the ring's head again: the slot holds event i
// only if seq names i + 1 both times and head <= i + capacity, i.e. no writer has taken the slot's next
// ticket (keep oldest: none ever does). A payload word from such a writer carries (release/acquire)
// that writer's new head, stored before it, so the last check sees it: a torn slot is never taken. On
// x86 these orders are plain moves.
//
// The ticker going idle (tick_loop): it sets kSlowIdle in slow_, then reads every ring's head; a
// writer stores its head, then reads slow_. For the shared ring (seq_cst increment and load) either the
// ticker sees the new head (and stays awake) or the writer sees the flag (and wakes it). A lane's
// writer has no fence between its plain store and its load (the fence would cost what the lane saves),
// so both may miss each other; the idle ticker therefore still ticks every 50 ms, which bounds how far
// such an event's time can be off (recorder.h, Time).
//
// Stack table: open addressing over 2 x max_stacks buckets, never shrinking. A bucket is published by
// storing its hash (release) after its frames; lookups run without a lock and take one only to insert.
#include "tracer/recorder.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <new>
#include <queue>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#if defined(GLAKE_HAVE_LIBUNWIND)
#include <dlfcn.h>
#endif

#include "tracer/symbolize.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {

namespace detail {
thread_local constinit std::uint32_t t_trace_tid __attribute__((tls_model("initial-exec"))) = 0;
std::uint32_t fetch_thread_id() noexcept {
  t_trace_tid = static_cast<std::uint32_t>(::syscall(SYS_gettid));
  return t_trace_tid;
}

// An event read from a ring, before the merge.
struct RingEvent {
  TraceEvent e;              // t_us not yet set
  std::uint64_t ticket = 0;
  std::uint64_t ticks = 0;   // exact time: the slot's; sampled: interpolated from its ring's checkpoints
  std::uint32_t stack = 0;   // the stack table's id
};

struct RingWindow {
  std::uint64_t head = 0;       // events recorded
  std::uint64_t begin = 0;      // the oldest ticket still in the ring (keep newest; 0 for keep oldest)
  std::uint64_t dropped = 0;    // overwritten (keep newest) or refused (keep oldest)
  std::uint64_t in_flight = 0;  // in the window, but being written or overwritten while read
};
}  // namespace detail

namespace {

constexpr int kMaxDepth = 48;
constexpr int kRawExtra = 12;  // room for glake's own frames above the caller
constexpr std::uint64_t kUnseenAddr = 1;  // live_at_start address of the unseen live bytes (odd: never a block's)

std::once_flag g_atfork_once;

void* map_zeroed(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
}

std::uint64_t ring_capacity(std::size_t wanted) {
  std::uint64_t cap = 16;
  while (cap < wanted) cap <<= 1;
  return cap;
}

std::uint64_t mix(std::uint64_t h, std::uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}

}  // namespace

// ------------------------------------------------------------------------------------------------

class StackTable {
 public:
  StackTable(std::size_t max_stacks, int max_depth) : max_stacks_(max_stacks), max_depth_(max_depth) {
    std::size_t buckets = 16;
    while (buckets < 2 * max_stacks) buckets <<= 1;
    mask_ = buckets - 1;
    entries_bytes_ = buckets * sizeof(Entry);
    entries_ = static_cast<Entry*>(map_zeroed(entries_bytes_));
    frames_cap_ = max_stacks * static_cast<std::size_t>(max_depth);
    frames_bytes_ = frames_cap_ * sizeof(std::uintptr_t);
    frames_ = static_cast<std::uintptr_t*>(map_zeroed(frames_bytes_));
  }
  ~StackTable() {
    ::munmap(entries_, entries_bytes_);
    ::munmap(frames_, frames_bytes_);
  }

  // The id (bucket + 1) of this stack, inserting it if new; 0 if the table is full.
  std::uint32_t intern(const std::uintptr_t* ips, int n) noexcept {
    if (n <= 0) return 0;
    std::uint64_t h = static_cast<std::uint64_t>(n);
    for (int i = 0; i < n; ++i) h = mix(h, ips[i]);
    if (h == 0) h = 1;
    if (std::uint32_t id = find(h, ips, n)) return id;
    std::lock_guard lock(mu_);
    std::uint64_t b = h & mask_;
    for (;; b = (b + 1) & mask_) {
      Entry& e = entries_[b];
      std::uint64_t eh = e.hash.load(std::memory_order_acquire);
      if (eh == 0) break;
      if (eh == h && same(e, ips, n)) return static_cast<std::uint32_t>(b + 1);
    }
    if (used_ >= max_stacks_ || next_frame_ + static_cast<std::size_t>(n) > frames_cap_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return 0;
    }
    Entry& e = entries_[b];
    std::memcpy(frames_ + next_frame_, ips, static_cast<std::size_t>(n) * sizeof(std::uintptr_t));
    e.offset = static_cast<std::uint32_t>(next_frame_);
    e.depth = static_cast<std::uint32_t>(n);
    next_frame_ += static_cast<std::size_t>(n);
    ++used_;
    count_.fetch_add(1, std::memory_order_relaxed);
    e.hash.store(h, std::memory_order_release);
    return static_cast<std::uint32_t>(b + 1);
  }

  // The frames of a published id (the caller got the id from an event it read).
  std::pair<const std::uintptr_t*, int> get(std::uint32_t id) const {
    if (id == 0 || id > mask_ + 1) return {nullptr, 0};
    const Entry& e = entries_[id - 1];
    if (e.hash.load(std::memory_order_acquire) == 0) return {nullptr, 0};
    return {frames_ + e.offset, static_cast<int>(e.depth)};
  }
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  int max_depth() const { return max_depth_; }

 private:
  struct Entry {
    std::atomic<std::uint64_t> hash;  // 0: empty; set last
    std::uint32_t depth;
    std::uint32_t offset;
  };
  bool same(const Entry& e, const std::uintptr_t* ips, int n) const {
    return e.depth == static_cast<std::uint32_t>(n) &&
           std::memcmp(frames_ + e.offset, ips, static_cast<std::size_t>(n) * sizeof(std::uintptr_t)) == 0;
  }
  std::uint32_t find(std::uint64_t h, const std::uintptr_t* ips, int n) const noexcept {
    for (std::uint64_t b = h & mask_;; b = (b + 1) & mask_) {
      const Entry& e = entries_[b];
      std::uint64_t eh = e.hash.load(std::memory_order_acquire);
      if (eh == 0) return 0;
      if (eh == h && same(e, ips, n)) return static_cast<std::uint32_t>(b + 1);
    }
  }

  std::size_t max_stacks_;
  int max_depth_;
  std::uint64_t mask_ = 0;
  Entry* entries_ = nullptr;
  std::size_t entries_bytes_ = 0;
  std::uintptr_t* frames_ = nullptr;
  std::size_t frames_cap_ = 0, frames_bytes_ = 0;
  std::mutex mu_;
  std::size_t used_ = 0, next_frame_ = 0;  // under mu_
  std::atomic<std::uint64_t> count_{0}, dropped_{0};
};

// ------------------------------------------------------------------------------------------------

#if defined(GLAKE_HAVE_LIBUNWIND)
namespace {
// libunwind's unw_backtrace, from libunwind.so.8 loaded privately (RTLD_LOCAL) on first use; null if
// it is not installed. Not linked: a linked libunwind comes before libgcc_s in the symbol scope of a
// process that preloads libglake.so (python, say), and its _Unwind_RaiseException, _Unwind_Backtrace
// and backtrace() would then serve every C++ exception and backtrace of the host program.
using UnwBacktrace = int (*)(void**, int);
UnwBacktrace unw_backtrace_fn() {
  static const UnwBacktrace fn = [] {
    void* h = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
    return h != nullptr ? reinterpret_cast<UnwBacktrace>(dlsym(h, "unw_backtrace")) : UnwBacktrace{nullptr};
  }();
  return fn;
}
}  // namespace
#endif

bool Recorder::stacks_supported() {
#if defined(GLAKE_HAVE_LIBUNWIND)
  return unw_backtrace_fn() != nullptr;
#else
  return false;
#endif
}

Recorder::Ring::Ring(std::uint64_t capacity, bool sampled) : mask(capacity - 1) {
  slots_bytes = capacity * sizeof(Slot);
  slots = static_cast<Slot*>(map_zeroed(slots_bytes));
  if (sampled) {
    // Room for a checkpoint per 64 events and one per tick while events come: a quarter of the ring.
    std::uint64_t n = 16;
    while (n < capacity / 4) n <<= 1;
    checkpoint_mask = n - 1;
    checkpoints_bytes = n * sizeof(Checkpoint);
    try {
      checkpoints = static_cast<Checkpoint*>(map_zeroed(checkpoints_bytes));
    } catch (...) {
      ::munmap(slots, slots_bytes);
      throw;
    }
  }
}

Recorder::Ring::~Ring() {
  ::munmap(slots, slots_bytes);
  if (checkpoints != nullptr) ::munmap(checkpoints, checkpoints_bytes);
}

Recorder::Recorder(RecorderOptions options)
    : options_(std::move(options)),
      clock_(options_.clock),
      shared_(ring_capacity(options_.capacity), options_.time == RecorderOptions::Time::sampled) {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, [] { detail::t_trace_tid = 0; }); });
  keep_oldest_ = options_.keep == RecorderOptions::Keep::oldest;
  exact_time_ = options_.time == RecorderOptions::Time::exact;
  options_.stack_depth = std::clamp(options_.stack_depth, 1, kMaxDepth);
  stacks_ = options_.stacks && stacks_supported();
  slow_.store(stacks_ || keep_oldest_ || exact_time_ ? kSlowConfig : 0, std::memory_order_relaxed);
  if (stacks_) stack_table_ = std::make_unique<StackTable>(std::max<std::size_t>(options_.max_stacks, 1),
                                                           options_.stack_depth + kRawExtra);
  symbolizer_ = std::make_unique<Symbolizer>(options_.symbolizer);
  if (!exact_time_) {
    checkpoint(shared_, 0, clock_.ticks());
    if (options_.tick_us > 0) ticker_ = std::thread([this] { tick_loop(); });  // last: nothing throws after it
  }
}

Recorder::~Recorder() {
  {
    std::lock_guard lock(tick_mu_);
    stop_ = true;
  }
  tick_cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  for (std::uint32_t i = 0, n = lane_count(); i < n; ++i) delete lanes_[i];
}

Recorder::Lane* Recorder::add_lane() noexcept {
  std::lock_guard lock(lanes_mu_);
  const std::uint32_t n = lane_count_.load(std::memory_order_relaxed);
  if (n >= kMaxLanes) return nullptr;
  Lane* l = nullptr;
  try {
    l = new Lane(this);
  } catch (const std::bad_alloc&) {
    return nullptr;  // its caller records into the shared ring
  }
  lanes_[n] = l;
  lane_count_.store(n + 1, std::memory_order_release);
  return l;
}

void Recorder::checkpoint(Ring& r, std::uint64_t ticket, std::uint64_t ticks) noexcept {
  const std::uint64_t i = r.checkpoint_head.fetch_add(1, std::memory_order_relaxed);
  Checkpoint& c = r.checkpoints[i & r.checkpoint_mask];
  c.seq.store(0, std::memory_order_relaxed);
  c.ticket.store(ticket, std::memory_order_release);
  c.ticks.store(ticks, std::memory_order_release);
  c.seq.store(i + 1, std::memory_order_release);
}

void Recorder::tick_loop() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  // A checkpoint (h, t) here says: the events of its ring before ticket h happened before t, and event
  // h has not happened yet at t. A tick that finds a ring's head moved writes one. While the head then
  // stays, a second one, (h, now), is moved forward at every tick, so that the ring's next event after
  // a pause is placed within one tick of when it happened; the first stays where it is (moving it would
  // spread the events before it over the pause).
  // After kIdleTicks ticks without an event on any ring it goes idle (kSlowIdle): the next event pins
  // every ring's time and wakes it (record_slow). A lane's event may miss the flag (see the file's
  // comment), so while idle it still ticks every kIdleWake: the moving checkpoints stay at most that far
  // behind, which bounds how early such an event is placed, and the head it moved ends the idle time.
  constexpr int kIdleTicks = 100;
  constexpr auto kIdleWake = std::chrono::milliseconds(50);
  struct RingTick {
    std::uint64_t head = 0;             // at the last tick
    std::uint64_t moving = UINT64_MAX;  // the checkpoint moved forward since (UINT64_MAX: none yet)
  };
  RingTick shared{shared_.head.load(std::memory_order_acquire), UINT64_MAX};
  std::array<RingTick, kMaxLanes> lanes{};  // by lane index
  // One ring's tick; true if its head moved.
  auto tick = [this](Ring& r, RingTick& rt) {
    const std::uint64_t head = r.head.load(std::memory_order_acquire);
    const std::uint64_t now = clock_.ticks();
    if (head != rt.head) {
      checkpoint(r, head, now);
      rt.head = head;
      rt.moving = UINT64_MAX;
      return true;
    }
    if (rt.moving == UINT64_MAX || r.checkpoint_head.load(std::memory_order_relaxed) - rt.moving > r.checkpoint_mask)
      rt.moving = r.checkpoint_head.fetch_add(1, std::memory_order_relaxed);  // none yet, or its slot was reused
    Checkpoint& c = r.checkpoints[rt.moving & r.checkpoint_mask];
    c.seq.store(0, std::memory_order_relaxed);
    c.ticket.store(head, std::memory_order_release);
    c.ticks.store(now, std::memory_order_release);
    c.seq.store(rt.moving + 1, std::memory_order_release);
    return false;
  };
  auto heads_moved = [&] {
    if (shared_.head.load(std::memory_order_seq_cst) != shared.head) return true;
    for (std::uint32_t i = 0, n = lane_count(); i < n; ++i)
      if (lanes_[i]->ring_.head.load(std::memory_order_relaxed) != lanes[i].head) return true;
    return false;
  };
  int idle = 0;            // ticks in a row without an event
  bool flag_set = false;   // kSlowIdle set by this loop
  std::unique_lock lock(tick_mu_);
  for (;;) {
    if (idle >= kIdleTicks) {
      if (!flag_set) {
        slow_.fetch_or(kSlowIdle, std::memory_order_seq_cst);
        flag_set = true;
      }
      // One more look at the heads after the flag (a shared-ring event cannot miss both), then wait.
      if (!heads_moved()) tick_cv_.wait_for(lock, kIdleWake, [this] { return stop_ || woken_; });
    } else {
      tick_cv_.wait_for(lock, std::chrono::microseconds(options_.tick_us), [this] { return stop_; });
    }
    if (stop_) return;
    bool moved = woken_;
    woken_ = false;
    moved |= tick(shared_, shared);
    for (std::uint32_t i = 0, n = lane_count(); i < n; ++i) moved |= tick(lanes_[i]->ring_, lanes[i]);
    idle = moved ? 0 : std::min(idle + 1, kIdleTicks);
    if (moved && flag_set) {  // an event came: tick again (record_slow may have cleared the flag already)
      slow_.fetch_and(static_cast<std::uint8_t>(~kSlowIdle), std::memory_order_acq_rel);
      flag_set = false;
    }
  }
}

std::string Recorder::stacks_note() const {
  if (stacks_) return "on";
#if defined(GLAKE_HAVE_LIBUNWIND)
  if (options_.stacks) return "unavailable: libunwind.so.8 is not installed";
#else
  if (options_.stacks) return "unavailable: glake was built without libunwind (meson -Dlibunwind=enabled)";
#endif
  return "off (GLAKE_TRACE_STACKS=1 records them)";
}

void Recorder::record_slow(Ring& r, std::uint64_t ticket, Op op, std::uint32_t device, std::uint64_t stream,
                           std::uint64_t addr, std::uint64_t size, std::uint64_t aux) noexcept {
  if (keep_oldest_ && ticket > r.mask) return;  // refused; counted at collect: head - capacity
  Slot& s = r.slots[ticket & r.mask];
  std::uint32_t stack = 0;
  if (stacks_ && (op == Op::alloc || op == Op::oom)) stack = capture_stack();
  if (exact_time_) {
    s.ticks.store(clock_.ticks(), std::memory_order_release);
  } else if ((slow_.load(std::memory_order_relaxed) & kSlowIdle) != 0) {
    // The first event after a pause. The idle ticker moves its checkpoints only every 50 ms: pin
    // every ring's time now (not only this one's: another ring's events before the ticker's next tick
    // would be placed up to 50 ms early), this event at now, and wake the ticker.
    mark();
    checkpoint(r, ticket, clock_.ticks());
    if ((slow_.fetch_and(static_cast<std::uint8_t>(~kSlowIdle), std::memory_order_acq_rel) & kSlowIdle) != 0) {
      {
        std::lock_guard lock(tick_mu_);
        woken_ = true;
      }
      tick_cv_.notify_one();
    }
  } else if ((ticket & (kCheckpointEvery - 1)) == 0) {
    checkpoint(r, ticket, clock_.ticks());
  }
  write_slot(s, slot_seq(ticket, op, device), stream, addr, size, aux,
             std::uint64_t{detail::thread_id()} << 32 | stack);
}

std::uint32_t Recorder::capture_stack() noexcept {
#if defined(GLAKE_HAVE_LIBUNWIND)
  void* raw[kMaxDepth + kRawExtra];
  int n = unw_backtrace_fn()(raw, stack_table_->max_depth());
  return stack_table_->intern(reinterpret_cast<const std::uintptr_t*>(raw), n);
#else
  return 0;
#endif
}

void Recorder::mark() noexcept {
  if (exact_time_) return;
  auto pin = [this](Ring& r) {
    const std::uint64_t head = r.head.load(std::memory_order_acquire);
    checkpoint(r, head, clock_.ticks());
  };
  pin(shared_);
  for (std::uint32_t i = 0, n = lane_count(); i < n; ++i) pin(lanes_[i]->ring_);
}

RecorderCounters Recorder::counters() const noexcept {
  RecorderCounters c;
  const std::uint64_t cap = shared_.mask + 1;
  auto add = [&](const Ring& r) {
    const std::uint64_t head = r.head.load(std::memory_order_relaxed);
    c.recorded += head;
    c.dropped += head > cap ? head - cap : 0;
  };
  add(shared_);
  c.lanes = lane_count();
  for (std::uint32_t i = 0; i < c.lanes; ++i) add(lanes_[i]->ring_);
  if (stack_table_) {
    c.stacks = stack_table_->count();
    c.stacks_dropped = stack_table_->dropped();
  }
  return c;
}

void Recorder::read_ring(const Ring& r, std::vector<detail::RingEvent>* out, detail::RingWindow* w) {
  const std::uint64_t head = r.head.load(std::memory_order_acquire);
  // Sampled time: the ring's checkpoints, by ticket, with clocks made monotonic, ending with (head, now).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> cps;
  if (!exact_time_) {
    const std::uint64_t ch = r.checkpoint_head.load(std::memory_order_acquire);
    const std::uint64_t cn = r.checkpoint_mask + 1;
    for (std::uint64_t i = ch > cn ? ch - cn : 0; i < ch; ++i) {
      const Checkpoint& c = r.checkpoints[i & r.checkpoint_mask];
      std::uint64_t seq = c.seq.load(std::memory_order_acquire);
      std::uint64_t ticket = c.ticket.load(std::memory_order_acquire), ticks = c.ticks.load(std::memory_order_acquire);
      if (seq == i + 1 && c.seq.load(std::memory_order_relaxed) == seq && ticket <= head) cps.emplace_back(ticket, ticks);
    }
    cps.emplace_back(head, clock_.ticks());
    std::sort(cps.begin(), cps.end());
    for (std::size_t i = 1; i < cps.size(); ++i) cps[i].second = std::max(cps[i].second, cps[i - 1].second);
  }
  std::size_t cp_at = 0;
  auto sampled_ticks = [&](std::uint64_t ticket) -> std::uint64_t {
    while (cp_at + 1 < cps.size() && cps[cp_at + 1].first <= ticket) ++cp_at;
    const auto& lo = cps[cp_at];
    if (ticket <= lo.first || cp_at + 1 >= cps.size()) return lo.second;
    const auto& hi = cps[cp_at + 1];
    return lo.second + static_cast<std::uint64_t>(static_cast<double>(hi.second - lo.second) *
                                                  static_cast<double>(ticket - lo.first) /
                                                  static_cast<double>(hi.first - lo.first));
  };
  const std::uint64_t cap = r.mask + 1;
  const std::uint64_t begin = keep_oldest_ || head <= cap ? 0 : head - cap;
  const std::uint64_t end = keep_oldest_ ? std::min(head, cap) : head;
  w->head = head;
  w->begin = begin;
  w->dropped = keep_oldest_ ? (head > cap ? head - cap : 0) : begin;
  w->in_flight = 0;
  out->reserve(out->size() + static_cast<std::size_t>(end - begin));
  for (std::uint64_t i = begin; i < end; ++i) {
    const Slot& s = r.slots[i & r.mask];
    std::uint64_t seq = s.seq.load(std::memory_order_acquire);
    detail::RingEvent x;
    x.e.addr = s.addr.load(std::memory_order_acquire);
    x.e.size = s.size.load(std::memory_order_acquire);
    x.e.stream = s.stream.load(std::memory_order_acquire);
    x.e.aux = s.aux.load(std::memory_order_acquire);
    std::uint64_t ts = s.thread_stack.load(std::memory_order_acquire);
    x.ticks = exact_time_ ? s.ticks.load(std::memory_order_acquire) : 0;
    if (seq >> 16 != i + 1 || s.seq.load(std::memory_order_acquire) != seq ||
        (!keep_oldest_ && r.head.load(std::memory_order_acquire) > i + cap) || (seq & 0xff) >= kOps) {
      ++w->in_flight;  // being written, or overwritten since `head` was read
      continue;
    }
    x.e.op = static_cast<Op>(seq & 0xff);
    x.e.device = static_cast<std::uint32_t>(seq >> 8 & 0xff);
    x.e.thread = static_cast<std::uint32_t>(ts >> 32);
    x.stack = static_cast<std::uint32_t>(ts);
    x.ticket = i;
    if (!exact_time_) x.ticks = sampled_ticks(i);
    out->push_back(x);
  }
}

namespace {

// The rings' events as one sequence (recorder.h, "Order"): repeatedly the earliest of the rings' next
// events, ties to the lower ring index; each ring keeps its ticket order.
std::vector<detail::RingEvent> merge_rings(std::vector<std::vector<detail::RingEvent>>& rings) {
  std::size_t total = 0;
  for (const auto& r : rings) total += r.size();
  std::vector<detail::RingEvent> out;
  out.reserve(total);
  using Next = std::tuple<std::uint64_t, std::size_t, std::size_t>;  // ticks, ring, index in it
  std::priority_queue<Next, std::vector<Next>, std::greater<>> next;
  for (std::size_t k = 0; k < rings.size(); ++k)
    if (!rings[k].empty()) next.emplace(rings[k][0].ticks, k, 0);
  while (!next.empty()) {
    auto [ticks, k, i] = next.top();
    next.pop();
    out.push_back(rings[k][i]);
    if (i + 1 < rings[k].size()) next.emplace(rings[k][i + 1].ticks, k, i + 1);
  }
  return out;
}

}  // namespace

Trace Recorder::collect(const CollectOptions& co) {
  std::lock_guard lock(collect_mu_);
  clock_.calibrate();
  // Ring 0: the shared one; then the lanes, as they were made.
  const std::uint32_t lanes = lane_count();
  std::vector<std::vector<detail::RingEvent>> rings(1 + lanes);
  std::uint64_t recorded = 0, dropped = 0, lost_in_flight = 0;
  bool window_cut = false;  // some ring overwrote events: the trace starts after the recorder did
  for (std::uint32_t k = 0; k <= lanes; ++k) {
    detail::RingWindow w;
    read_ring(k == 0 ? shared_ : lanes_[k - 1]->ring_, &rings[k], &w);
    recorded += w.head;
    dropped += w.dropped;
    lost_in_flight += w.in_flight;
    window_cut = window_cut || w.begin > 0;
  }
  std::vector<detail::RingEvent> merged = merge_rings(rings);
  rings = {};
  dropped += lost_in_flight;

  Trace t;
  t.format = "glake-trace";
  t.version = 1;
  t.path = "";
  t.events.reserve(merged.size());
  std::vector<std::uint32_t> raw_stack_ids;  // per event
  raw_stack_ids.reserve(merged.size());
  std::uint64_t prev_us = 0;
  for (detail::RingEvent& x : merged) {
    x.e.t_us = std::max(prev_us, clock_.to_us(x.ticks));
    prev_us = x.e.t_us;
    t.events.push_back(x.e);
    raw_stack_ids.push_back(x.stack);
  }
  merged = {};

  // Stacks: symbolise, trim, and number the distinct results 1, 2, ... in order of first use.
  if (stack_table_) {
    std::vector<std::uintptr_t> ips;
    std::map<std::uint32_t, bool> seen;
    for (std::uint32_t id : raw_stack_ids)
      if (id != 0 && seen.emplace(id, true).second) {
        auto [p, n] = stack_table_->get(id);
        ips.insert(ips.end(), p, p + n);
      }
    symbolizer_->prefetch(ips);
    std::map<std::uint32_t, std::uint32_t> renumber;
    std::map<std::string, std::uint32_t> by_text;
    for (std::size_t k = 0; k < t.events.size(); ++k) {
      std::uint32_t raw = raw_stack_ids[k];
      if (raw == 0) continue;
      auto it = renumber.find(raw);
      if (it == renumber.end()) {
        auto [p, n] = stack_table_->get(raw);
        std::vector<Frame> frames = symbolizer_->frames(p, n, options_.stack_depth);
        std::string key;
        for (const Frame& f : frames) key += f.fn + '\x1f' + f.src + '\x1f' + f.obj + '\x1e';
        auto [bt, fresh] = by_text.emplace(key, static_cast<std::uint32_t>(t.stacks.size() + 1));
        if (fresh) t.stacks.emplace(bt->second, std::move(frames));
        it = renumber.emplace(raw, bt->second).first;
      }
      t.events[k].stack = it->second;
    }
  }

  // Blocks live at the window's start: those its frees name without an allocation before them.
  std::unordered_map<std::uint64_t, std::uint64_t> live;  // addr -> size
  std::uint64_t start_named = 0;
  std::int64_t physical = 0, physical_min = 0;
  std::uint64_t repaired = 0;
  std::vector<TraceEvent> repaired_events;
  repaired_events.reserve(t.events.size());
  for (TraceEvent& e : t.events) {
    if (e.op == Op::alloc) {
      auto [it, fresh] = live.emplace(e.addr, e.size);
      if (!fresh) {
        // Its free was lost (in flight while collecting): free it here, so the trace stays consistent.
        TraceEvent f = e;
        f.op = Op::free;
        f.size = it->second;
        f.stack = 0;
        f.aux = 0;
        repaired_events.push_back(f);
        it->second = e.size;
        ++repaired;
      }
    } else if (e.op == Op::free) {
      auto it = live.find(e.addr);
      if (it == live.end()) {
        LiveBlock b;
        b.addr = e.addr;
        b.size = e.size;
        b.stream = e.stream;
        b.device = e.device;
        t.live_at_start.push_back(b);
        start_named += e.size;
      } else {
        if (it->second != e.size) e.size = it->second;  // cannot happen with the pool; keep the trace valid
        live.erase(it);
      }
    } else if (e.op == Op::create) {
      physical += static_cast<std::int64_t>(e.size);
    } else if (e.op == Op::release) {
      physical -= static_cast<std::int64_t>(e.size);
      physical_min = std::min(physical_min, physical);
    }
    repaired_events.push_back(e);
  }
  t.events = std::move(repaired_events);
  // Live bytes at the window's start = now - the window's net; the part no free in the window names
  // is the unseen block. Only when events were dropped before the window (else the window starts at
  // the recorder's start, with nothing live before it).
  std::uint64_t unseen = 0;
  std::int64_t window_live_net = 0, window_physical_net = physical;
  for (const TraceEvent& e : t.events) {
    if (e.op == Op::alloc) window_live_net += static_cast<std::int64_t>(e.size);
    else if (e.op == Op::free) window_live_net -= static_cast<std::int64_t>(e.size);
  }
  if (window_cut && co.totals) {
    std::int64_t at_start = static_cast<std::int64_t>(co.totals->live_bytes) - window_live_net;
    if (at_start > static_cast<std::int64_t>(start_named)) unseen = static_cast<std::uint64_t>(at_start) - start_named;
  }
  if (unseen > 0) {
    std::uint64_t addr = kUnseenAddr;
    auto used = [&](std::uint64_t a) {
      for (const LiveBlock& b : t.live_at_start)
        if (b.addr == a) return true;
      return live.count(a) != 0 ||
             std::any_of(t.events.begin(), t.events.end(), [&](const TraceEvent& e) { return e.addr == a; });
    };
    while (used(addr)) addr += 2;
    LiveBlock b;
    b.addr = addr;
    b.size = unseen;
    t.live_at_start.insert(t.live_at_start.begin(), b);
  }
  std::uint64_t physical_at_start = 0;
  if (window_cut && co.totals && static_cast<std::int64_t>(co.totals->physical_bytes) > window_physical_net)
    physical_at_start = static_cast<std::uint64_t>(static_cast<std::int64_t>(co.totals->physical_bytes) - window_physical_net);
  if (static_cast<std::int64_t>(physical_at_start) < -physical_min)
    physical_at_start = static_cast<std::uint64_t>(-physical_min);

  RecorderCounters c = counters();
  t.meta.name = co.name;
  t.meta.physical_at_start_bytes = physical_at_start;
  t.meta.events_dropped = dropped;
  t.meta.stacks_note = stacks_note();
  check_trace(t, "the recorder's trace");

  nlohmann::ordered_json m;
  m["name"] = co.name;
  m["source"] = "glake tracer";
  m["clock"] = clock_.name();
  m["time"] = exact_time_ ? std::string("exact (the clock read at every event)")
                          : fmt::format("sampled (interpolated between checkpoints every {} events and every {} us)",
                                        kCheckpointEvery, options_.tick_us);
  m["start_unix_us"] = clock_.start_unix_us();
  m["events_recorded"] = recorded;
  m["events_written"] = t.events.size() - repaired;
  m["events_dropped"] = dropped;
  m["ring_capacity"] = capacity();
  m["lanes"] = lanes;
  m["keep"] = keep_oldest_ ? "oldest" : "newest";
  if (dropped > 0)
    m["dropped_note"] = keep_oldest_ ? fmt::format("a ring was full: the last {} events are missing "
                                                   "(GLAKE_TRACE_EVENTS raises the capacity of each ring)", dropped)
                                     : fmt::format("a ring was full: the first {} events are missing; live_at_start "
                                                   "and physical_at_start_bytes stand for them (GLAKE_TRACE_EVENTS "
                                                   "raises the capacity of each ring)", dropped);
  if (lost_in_flight > 0) m["events_in_flight"] = lost_in_flight;
  if (repaired > 0) m["events_repaired"] = repaired;
  m["stacks"] = stacks_note();
  if (stacks_) {
    m["stack_depth"] = options_.stack_depth;
    m["stacks_recorded"] = c.stacks;
    m["stacks_dropped"] = c.stacks_dropped;
    m["symbolizer"] = symbolizer_->mode();
  }
  m["physical_at_start_bytes"] = physical_at_start;
  m["unseen_live_bytes"] = unseen;
  m["peak_live_bytes"] = t.peak_live_bytes;
  if (t.peak_physical_bytes) m["peak_physical_bytes"] = *t.peak_physical_bytes;
  for (const auto& [k, v] : co.extra_meta.items()) m[k] = v;
  // The name and the command line (extra_meta) are the program's bytes, not always UTF-8: replaced,
  // not thrown (a throw here loses the whole trace).
  t.meta.json = m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  t.snapshots = co.snapshots;
  return t;
}

}  // namespace glake::tracer
