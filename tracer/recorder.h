// tracer/recorder.h: records what an allocator does, cheaply, from any thread, in bounded memory.
//
// The recorder knows nothing of the pool: callers hand it RecordEvents (tracer/pool_trace.h maps
// pool::PoolEvent to them). record() is the hot path: no lock, no allocation, no system call; one
// atomic increment takes a ticket, the event is written to slot ticket % capacity of a ring and
// published by a sequence word, so collect() may run while other threads record (recorder.cpp: the
// slot protocol).
// Cost: a few ns per event (bench_trace_overhead); with stacks, one unw_backtrace and a lookup in a
// lock-free hash table of stacks (a short lock only for a stack never seen).
//
// Time (RecorderOptions::time): reading the clock is the dearest part of an event (rdtsc costs 8 ns
// on some CPUs, clock_gettime 25 ns), so by default ("sampled") events carry no time of their own:
// every 64th event, and a ticker thread every tick_us (1 ms) while events come, write a checkpoint
// (ticket, clock), and collect() gives each event the time interpolated between the checkpoints around
// its ticket. An event's time is then off by at most the span between checkpoints: 64 events or one
// tick, whichever is shorter. After 100 ticks without an event the ticker sleeps (no wake-ups while
// the program allocates nothing); the next event writes its own checkpoint and wakes it. "exact"
// reads the clock at every event instead.
//
// Bounded: the ring holds `capacity` events (56 bytes each, reserved with MAP_NORESERVE: pages are
// committed as they are first written). When it is full, keep=newest overwrites the oldest events
// (what led to the end or to an out-of-memory is kept), keep=oldest refuses new ones. Every event lost
// is counted (RecorderCounters::dropped, meta.events_dropped of the trace), never silently lost. With
// keep=newest a dump still starts from the right totals when the caller tells collect() the live and
// physical bytes of now (CollectOptions::totals; the pool's stats): the window's own events are
// subtracted to give meta.physical_at_start_bytes and a live_at_start block of meta.unseen_live_bytes
// (at address 1) for the blocks allocated before the window that no event in it names.
//
// Stacks (RecorderOptions::stacks, needs libunwind at build time): raw return addresses of alloc and
// oom events are interned on the hot path; they are symbolised (function, file:line, object+offset)
// at collect(), glake's own frames trimmed (symbolize.h).
//
// Order: collect() returns events in ticket order. Events of one pool's allocs and frees are recorded
// under the pool's lock, so their order is the pool's; times come from the recording threads and are
// made monotonic (a time earlier than its predecessor's is raised to it).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tracer/clock.h"
#include "tracer/trace.h"

namespace glake::tracer {

struct RecordEvent {
  Op op = Op::alloc;
  std::uint32_t device = 0;
  std::uint64_t stream = 0;
  std::uint64_t addr = 0;
  std::uint64_t size = 0;
  std::uint64_t aux = 0;
};

struct RecorderOptions {
  std::size_t capacity = std::size_t{1} << 20;  // events in the ring (rounded up to a power of two, >= 16)
  enum class Keep { newest, oldest } keep = Keep::newest;
  bool stacks = false;                 // capture the stacks of alloc and oom events (needs libunwind)
  int stack_depth = 16;                // frames kept per stack, glake's own frames not counted (1..48)
  std::size_t max_stacks = 1 << 16;    // distinct stacks; beyond, events get stack 0 (counted)
  std::string clock = "auto";          // auto | tsc | monotonic (clock.h)
  enum class Time { sampled, exact } time = Time::sampled;
  int tick_us = 1000;                  // sampled: the ticker's period (0: no ticker)
  std::string symbolizer = "auto";     // auto | addr2line | dladdr | none (symbolize.h)
};

struct RecorderCounters {
  std::uint64_t recorded = 0;        // record() calls
  std::uint64_t dropped = 0;         // events lost: overwritten (keep newest) or refused (keep oldest)
  std::uint64_t stacks = 0;          // distinct stacks interned
  std::uint64_t stacks_dropped = 0;  // stack captures that found the table full
};

// Live (requested) and physical bytes now, over every device recorded (the pools' stats).
struct Totals {
  std::uint64_t live_bytes = 0;
  std::uint64_t physical_bytes = 0;
};

// What collect() adds to the trace besides the ring.
struct CollectOptions {
  std::string name;                    // meta.name
  std::optional<Totals> totals;        // read just before collecting; see the class comment
  nlohmann::json extra_meta = nlohmann::json::object();  // merged into meta (keys win over the recorder's)
  std::vector<TraceSnapshot> snapshots;
};

class StackTable;
class Symbolizer;

namespace detail {
// The recording thread's id (Linux tid), cached; 0 until the thread's first event. initial-exec: no
// __tls_get_addr call on the hot path when the tracer is in a shared library (the shim is preloaded,
// so its TLS is static; four bytes fit the surplus if it is dlopen'ed).
extern thread_local constinit std::uint32_t t_trace_tid __attribute__((tls_model("initial-exec")));
std::uint32_t fetch_thread_id() noexcept;
inline std::uint32_t thread_id() noexcept {
  std::uint32_t t = t_trace_tid;
  return t != 0 ? t : fetch_thread_id();
}
}  // namespace detail

class Recorder {
 public:
  // Reserves the ring (and the stack table): throws std::bad_alloc if the address space is not there.
  explicit Recorder(RecorderOptions options);
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // The hot path, inline (see the class comment); stacks go out of line.
  void record(const RecordEvent& e) noexcept { record(e.op, e.device, e.stream, e.addr, e.size, e.aux); }
  // The same from scalars: callers that hold another struct read its fields one by one (a block copy
  // of a struct just written field by field stalls on store forwarding).
  [[gnu::always_inline]] void record(Op op, std::uint32_t device, std::uint64_t stream, std::uint64_t addr,
                                     std::uint64_t size, std::uint64_t aux) noexcept {
    // seq_cst on head_ and slow_ (free on x86: the increment is a locked instruction anyway): a writer
    // increments head_ and then reads slow_, the ticker sets kSlowIdle and then reads head_; one of them
    // sees the other, so no event slips past a falling-asleep ticker.
    const std::uint64_t ticket = head_.fetch_add(1, std::memory_order_seq_cst);
    std::uint32_t stack = 0;
    std::uint64_t ticks = 0;
    // Stacks, keep oldest, exact time, or the first event after a pause: out of line.
    if (__builtin_expect(slow_.load(std::memory_order_seq_cst) != 0, 0)) {
      if (!record_slow(op, ticket, &stack, &ticks)) return;
    } else if ((ticket & (kCheckpointEvery - 1)) == 0) {
      checkpoint(ticket, clock_.ticks());
    }
    Slot& s = ring_[ticket & mask_];
    s.addr.store(addr, std::memory_order_release);
    s.size.store(size, std::memory_order_release);
    s.stream.store(stream, std::memory_order_release);
    s.aux.store(aux, std::memory_order_release);
    if (exact_time_) s.ticks.store(ticks, std::memory_order_release);
    s.thread_stack.store(static_cast<std::uint64_t>(detail::thread_id()) << 32 | stack, std::memory_order_release);
    s.seq.store(slot_seq(ticket, op, device), std::memory_order_release);
  }

  // Pins the time of everything recorded so far (sampled time): the events before now are placed
  // before now. For moments that matter (an out-of-memory snapshot). Not for the hot path.
  void mark() noexcept;

  RecorderCounters counters() const noexcept;
  const RecorderOptions& options() const { return options_; }
  std::size_t capacity() const { return mask_ + 1; }
  // Now on the trace's clock (microseconds since the recorder started).
  std::uint64_t now_us() const noexcept { return clock_.now_us(); }
  const TraceClock& clock() const { return clock_; }

  // True if this build can capture stacks (libunwind).
  static bool stacks_supported();
  // meta.stacks: "on", "off" or "unavailable: ...".
  std::string stacks_note() const;

  // The events recorded so far as a glake trace (see the class comment), checked (check_trace) and
  // ready for write_trace(). Safe while other threads record; collects are serialised. Throws
  // TraceError only if the recorder's own output breaks a trace invariant (a bug).
  Trace collect(const CollectOptions& options = {});

 private:
  // Six words per event (seven with exact time): what an event costs is its stores, so op and device
  // ride in the sequence word and sampled time writes no time at all.
  struct Slot {
    std::atomic<std::uint64_t> addr, size, stream, aux;
    std::atomic<std::uint64_t> thread_stack;  // thread << 32 | stack
    std::atomic<std::uint64_t> seq;           // (ticket + 1) << 16 | device << 8 | op, once written
    std::atomic<std::uint64_t> ticks;         // exact time only
  };
  static_assert(sizeof(Slot) == 56);
  static std::uint64_t slot_seq(std::uint64_t ticket, Op op, std::uint32_t device) noexcept {
    return (ticket + 1) << 16 | static_cast<std::uint64_t>(device & 0xff) << 8 | static_cast<std::uint64_t>(op);
  }
  struct Checkpoint {
    std::atomic<std::uint64_t> ticket, ticks;
    std::atomic<std::uint64_t> seq;  // index + 1 once written; 0 while being written
  };

  static constexpr std::uint64_t kCheckpointEvery = 64;  // events (a power of two)

  void checkpoint(std::uint64_t ticket, std::uint64_t ticks) noexcept;
  std::uint32_t capture_stack() noexcept;  // the current stack's id in the table (0: none)
  // record()'s first half when stacks, keep oldest or exact time are on; false: the event is dropped.
  bool record_slow(Op op, std::uint64_t ticket, std::uint32_t* stack, std::uint64_t* ticks) noexcept;
  void tick_loop();

  RecorderOptions options_;
  TraceClock clock_;
  Slot* ring_ = nullptr;
  std::size_t ring_bytes_ = 0;
  std::uint64_t mask_ = 0;
  bool keep_oldest_ = false;
  bool stacks_ = false;
  bool exact_time_ = false;
  // Nonzero when record() must take the slow path: kSlowConfig (stacks_ || keep_oldest_ || exact_time_)
  // and/or kSlowIdle (the ticker is asleep after a pause: the next event wakes it and writes its own
  // checkpoint).
  static constexpr std::uint8_t kSlowConfig = 1, kSlowIdle = 2;
  std::atomic<std::uint8_t> slow_{0};
  Checkpoint* checkpoints_ = nullptr;
  std::size_t checkpoints_bytes_ = 0;
  std::uint64_t checkpoint_mask_ = 0;
  alignas(64) std::atomic<std::uint64_t> checkpoint_head_{0};
  std::mutex tick_mu_;
  std::condition_variable tick_cv_;
  bool stop_ = false;  // under tick_mu_
  bool woken_ = false;  // under tick_mu_: an event came while the ticker slept
  std::thread ticker_;
  alignas(64) std::atomic<std::uint64_t> head_{0};
  std::unique_ptr<StackTable> stack_table_;
  std::mutex collect_mu_;
  std::unique_ptr<Symbolizer> symbolizer_;  // under collect_mu_; caches across collects
};

}  // namespace glake::tracer
