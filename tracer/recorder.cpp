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
// The ticker falling asleep (tick_loop): it sets kSlowIdle in slow_, then reads every ring's head; a
// writer stores its head, then reads slow_. Either the ticker sees the new head (and stays awake) or
// the writer sees the flag (and wakes it). The shared ring's increment and load are seq_cst, which
// gives that; a lane's writer has no fence between its plain store and its load (that fence would cost
// what the lane saves), so the ticker puts one into every thread of the process with
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) between its store and its reads: a running thread takes
// a full barrier by interrupt, a sleeping one has passed one at its context switch, and the writer's
// std::atomic_signal_fence keeps the compiler from swapping its two accesses. Without membarrier the
// ticker ticks every 50 ms instead of sleeping: a missed flag then costs at most that much precision.
//
// Stack table: open addressing over 2 x max_stacks buckets, never shrinking. A bucket is published by
// storing its hash (release) after its frames; lookups run without a lock and take one only to insert.
#include "tracer/recorder.h"

#include <linux/membarrier.h>
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
#include <unordered_map>

#include <fmt/format.h>

#if defined(GLAKE_HAVE_LIBUNWIND)
#define UNW_LOCAL_ONLY
#include <libunwind.h>
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
  TraceEvent e;                   // t_us not yet set
  std::uint64_t ticket = 0;
  std::uint64_t ticks = 0;        // exact time: the slot's; sampled: interpolated from its ring's checkpoints
  std::uint64_t lane_ticket = 0;  // shared ring: the head of e.device's lane when it was recorded
  std::uint32_t stack = 0;        // the stack table's id
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

// A full memory barrier on every running thread of the process (see the file's comment); false if
// the kernel refuses. Registered on first use, by the ticker: registering may wait for the scheduler.
bool fence_all_threads() noexcept {
  static const bool registered = ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  return registered && ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
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

bool Recorder::stacks_supported() {
#if defined(GLAKE_HAVE_LIBUNWIND)
  return true;
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
  for (auto& l : lanes_) delete l.load(std::memory_order_acquire);
}

Recorder::Lane* Recorder::make_lane(std::uint32_t device) noexcept {
  const std::uint64_t bit = std::uint64_t{1} << device;
  if ((lanes_refused_.load(std::memory_order_relaxed) & bit) != 0) return nullptr;
  std::lock_guard lock(lanes_mu_);
  if (Lane* l = lanes_[device].load(std::memory_order_acquire)) return l;  // made meanwhile
  Lane* l = nullptr;
  try {
    l = new Lane(this, device);
  } catch (const std::bad_alloc&) {
    lanes_refused_.fetch_or(bit, std::memory_order_relaxed);  // its events go to the shared ring
    return nullptr;
  }
  lanes_[device].store(l, std::memory_order_release);
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
  // After kIdleTicks ticks without an event on any ring it sleeps (no wake-ups while the program
  // allocates nothing); the next event pins every ring's time and wakes it (record_slow).
  constexpr int kIdleTicks = 100;
  constexpr auto kUnfencedIdleTick = std::chrono::milliseconds(50);
  struct RingTick {
    std::uint64_t head = 0;             // at the last tick
    std::uint64_t moving = UINT64_MAX;  // the checkpoint moved forward since (UINT64_MAX: none yet)
  };
  RingTick shared{shared_.head.load(std::memory_order_acquire), UINT64_MAX};
  std::array<RingTick, kMaxLanes> lanes{};
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
    for (std::uint32_t d = 0; d < kMaxLanes; ++d)
      if (const Lane* l = lanes_[d].load(std::memory_order_acquire))
        if (l->ring_.head.load(std::memory_order_relaxed) != lanes[d].head) return true;
    return false;
  };
  int idle = 0;
  std::unique_lock lock(tick_mu_);
  for (;;) {
    if (idle >= kIdleTicks) {
      // Fall asleep (see the file's comment): the flag, the barrier, one more look at the heads.
      slow_.fetch_or(kSlowIdle, std::memory_order_seq_cst);
      const bool fenced = options_.membarrier && fence_all_threads();
      if (!heads_moved()) {
        auto woken = [this] { return stop_ || woken_; };
        // Unfenced, a lane's event may have missed the flag: tick now and then, while still idle.
        if (fenced) tick_cv_.wait(lock, woken);
        else tick_cv_.wait_for(lock, kUnfencedIdleTick, woken);
      }
      slow_.fetch_and(static_cast<std::uint8_t>(~kSlowIdle), std::memory_order_acq_rel);
      woken_ = false;
      if (stop_) return;
    } else if (tick_cv_.wait_for(lock, std::chrono::microseconds(options_.tick_us), [this] { return stop_; })) {
      return;
    }
    bool moved = tick(shared_, shared);
    for (std::uint32_t d = 0; d < kMaxLanes; ++d)
      if (Lane* l = lanes_[d].load(std::memory_order_acquire)) moved |= tick(l->ring_, lanes[d]);
    // Still idle after a wake-up without events: back to sleep at once.
    idle = moved ? 0 : std::min(idle + 1, kIdleTicks);
  }
}

std::string Recorder::stacks_note() const {
  if (stacks_) return "on";
  if (options_.stacks) return "unavailable: glake was built without libunwind (meson -Dlibunwind=enabled)";
  return "off (GLAKE_TRACE_STACKS=1 records them)";
}

void Recorder::record_slow(Ring& r, std::uint64_t ticket, Op op, std::uint32_t device, std::uint64_t stream,
                           std::uint64_t addr, std::uint64_t size, std::uint64_t aux, std::uint64_t lane_ticket) noexcept {
  if (keep_oldest_ && ticket > r.mask) return;  // refused; counted at collect: head - capacity
  Slot& s = r.slots[ticket & r.mask];
  std::uint32_t stack = 0;
  if (stacks_ && (op == Op::alloc || op == Op::oom)) stack = capture_stack();
  if (exact_time_) {
    s.ticks.store(clock_.ticks(), std::memory_order_release);
  } else if ((slow_.load(std::memory_order_relaxed) & kSlowIdle) != 0) {
    // The first event after a pause. The ticker's checkpoints stopped moving when it fell asleep: pin
    // every ring's time now (not only this one's: another lane's events before the ticker's next tick
    // would be placed back at the pause's start), this event at now, and wake the ticker.
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
  s.lane_ticket.store(lane_ticket, std::memory_order_release);
  write_slot(s, slot_seq(ticket, op, device), stream, addr, size, aux,
             std::uint64_t{detail::thread_id()} << 32 | stack);
}

std::uint32_t Recorder::capture_stack() noexcept {
#if defined(GLAKE_HAVE_LIBUNWIND)
  void* raw[kMaxDepth + kRawExtra];
  int n = unw_backtrace(raw, stack_table_->max_depth());
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
  for (auto& l : lanes_)
    if (Lane* lane = l.load(std::memory_order_acquire)) pin(lane->ring_);
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
  for (const auto& l : lanes_)
    if (const Lane* lane = l.load(std::memory_order_acquire)) {
      add(lane->ring_);
      ++c.lanes;
    }
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
    x.lane_ticket = s.lane_ticket.load(std::memory_order_acquire);
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

// One lane's events, in ticket order, and how many the merge has taken.
struct LaneEvents {
  std::uint32_t device = 0;
  std::vector<detail::RingEvent> events;
  std::size_t taken = 0;
};

// The rings' events as one sequence (recorder.h, "Order"). Each ring keeps its ticket order; a shared
// event of device d goes after lane d's events below its lane_ticket and before the rest of them;
// otherwise the earlier time first (ties: the shared ring, then the lanes in device order). A choice
// always exists: a lane's next event waits only for a shared event of its device whose lane_ticket is
// at most its ticket, and that shared event (or one before it in the shared ring, with a lane_ticket
// no larger once raised below) waits for nothing on that lane.
std::vector<detail::RingEvent> merge_rings(std::vector<detail::RingEvent>& shared, std::vector<LaneEvents>& lanes) {
  constexpr std::size_t kNone = SIZE_MAX;
  std::array<std::size_t, 256> lane_of;  // device (8 bits in a slot) -> index in lanes
  lane_of.fill(kNone);
  for (std::size_t k = 0; k < lanes.size(); ++k) lane_of[lanes[k].device] = k;
  // A shared event also goes after what an earlier shared event of its device goes after (the shared
  // ring keeps its order): raise each lane_ticket to the largest before it. Two threads may load a
  // lane's head and then take their tickets in the other order; they were concurrent then, and the
  // raise is right (record() loads the head before taking the ticket: see there).
  std::vector<std::uint64_t> raised(lanes.size(), 0);
  for (detail::RingEvent& s : shared)
    if (std::size_t k = lane_of[s.e.device]; k != kNone) s.lane_ticket = raised[k] = std::max(raised[k], s.lane_ticket);
  // waiting[k]: lane k's first shared event not yet taken; next_of[i]: the one after shared[i].
  std::vector<std::size_t> waiting(lanes.size(), kNone), next_of(shared.size(), kNone);
  for (std::size_t i = shared.size(); i-- > 0;)
    if (std::size_t k = lane_of[shared[i].e.device]; k != kNone) {
      next_of[i] = waiting[k];
      waiting[k] = i;
    }
  std::size_t total = shared.size();
  for (const LaneEvents& l : lanes) total += l.events.size();
  std::vector<detail::RingEvent> out;
  out.reserve(total);
  std::size_t si = 0;  // shared events taken
  for (;;) {
    const detail::RingEvent* best = nullptr;
    std::size_t from = kNone;  // kNone: the shared ring
    if (si < shared.size()) {
      const detail::RingEvent& s = shared[si];
      const std::size_t k = lane_of[s.e.device];
      if (k == kNone || lanes[k].taken == lanes[k].events.size() || lanes[k].events[lanes[k].taken].ticket >= s.lane_ticket)
        best = &s;
    }
    for (std::size_t k = 0; k < lanes.size(); ++k) {
      const LaneEvents& l = lanes[k];
      if (l.taken == l.events.size()) continue;
      const detail::RingEvent& x = l.events[l.taken];
      if (waiting[k] != kNone && shared[waiting[k]].lane_ticket <= x.ticket) continue;  // that shared event first
      if (best == nullptr || x.ticks < best->ticks) {
        best = &x;
        from = k;
      }
    }
    if (best == nullptr) break;
    out.push_back(*best);
    if (from != kNone) {
      ++lanes[from].taken;
    } else {
      if (std::size_t k = lane_of[shared[si].e.device]; k != kNone) waiting[k] = next_of[si];
      ++si;
    }
  }
  if (out.size() != total) throw TraceError(fmt::format("the recorder's merge stalled after {} of {} events (a bug)",
                                                        out.size(), total), {});
  return out;
}

}  // namespace

Trace Recorder::collect(const CollectOptions& co) {
  std::lock_guard lock(collect_mu_);
  clock_.calibrate();
  // The shared ring, then the lanes (either order would do: a shared event whose lane head is beyond
  // what was read of its lane goes after all of that, which is right).
  std::vector<detail::RingEvent> shared_events;
  detail::RingWindow w;
  read_ring(shared_, &shared_events, &w);
  std::uint64_t recorded = w.head, dropped = w.dropped, lost_in_flight = w.in_flight;
  bool window_cut = w.begin > 0;  // some ring overwrote events: the trace starts after the recorder did
  std::vector<LaneEvents> lanes;
  for (std::uint32_t d = 0; d < kMaxLanes; ++d)
    if (const Lane* l = lanes_[d].load(std::memory_order_acquire)) {
      LaneEvents& le = lanes.emplace_back();
      le.device = d;
      read_ring(l->ring_, &le.events, &w);
      recorded += w.head;
      dropped += w.dropped;
      lost_in_flight += w.in_flight;
      window_cut = window_cut || w.begin > 0;
    }
  const std::size_t lane_count = lanes.size();
  std::vector<detail::RingEvent> merged = merge_rings(shared_events, lanes);
  lanes.clear();
  shared_events.clear();
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
  m["lanes"] = lane_count;
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
  t.meta.json = m.dump();
  t.snapshots = co.snapshots;
  return t;
}

}  // namespace glake::tracer
