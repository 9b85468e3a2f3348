// tracer/recorder.h: records what an allocator does, cheaply, from any thread, in bounded memory.
//
// The recorder knows nothing of the pool: callers hand it events (tracer/pool_trace.h maps
// pool::PoolEvent to them). Two ways in, neither with a lock, an allocation or a system call:
//   - record(): the shared ring, for any thread at any time. One atomic increment takes a ticket, the
//     event is written to slot ticket % capacity and published by a sequence word, so collect() may
//     run while other threads record (recorder.cpp: the slot protocol).
//   - a lane (add_lane()): a ring of its own with one writer at a time: its caller serialises its
//     record() calls (e.g. under one mutex: a pool's events, emitted under the pool's lock, one lane
//     per pool). The ticket is then a plain load and store of the lane's head, no atomic
//     read-modify-write (which costs more than the rest of the event's bookkeeping).
// Cost: a few ns per event (bench_trace_overhead); with stacks, one unw_backtrace and a lookup in a
// lock-free hash table of stacks (a short lock only for a stack never seen).
//
// Order: each ring keeps its ticket order (a lane: its caller's order). collect() merges the rings by
// time (below), ties in ring order (the shared ring, then the lanes as they were made); times are
// then made monotonic (one earlier than its predecessor's is raised to it). So events of one ring, e.g.
// one pool's, come exactly in their order; events of different rings are ordered by time, as precisely
// as their times are.
//
// Time (RecorderOptions::time): reading the clock is the dearest part of an event (rdtsc costs 8 ns
// on some CPUs, clock_gettime 25 ns), so by default ("sampled") events carry no time of their own:
// per ring, every 64th event, and a ticker thread every tick_us (1 ms) while events come, write a
// checkpoint (ticket, clock), and collect() gives each event the time interpolated between its ring's
// checkpoints around its ticket: off by at most the span between checkpoints, 64 events of its ring
// or one tick, whichever is shorter. After 100 ticks without an event on any ring the ticker goes
// idle: it ticks only every 50 ms and sets a flag that sends the next event to the slow path, which
// pins every ring's time (mark()) and wakes it. A shared-ring event cannot miss the flag (its
// increment and the ticker's are ordered). A lane's event can: its plain head store and its load of
// the flag are not fenced (a fence costs what the lane saves), so an event racing with the ticker
// going idle may take the fast path unseen. The idle ticks bound the damage: such an event is placed
// at most 50 ms early (plus any delay of the ticker's wake-up), and its moved head ends the idle time
// at the next one. "exact" reads the clock at every event instead.
//
// Bounded: every ring (the shared one and each lane) holds `capacity` events (64 bytes each, reserved
// with MAP_NORESERVE: pages are committed as they are first written). When a ring is full, keep=newest
// overwrites its oldest events (what led to the end or to an out-of-memory is kept), keep=oldest
// refuses new ones. Every event lost is counted (RecorderCounters::dropped, meta.events_dropped of the
// trace), never silently lost. With keep=newest a dump still starts from the right totals when the
// caller tells collect() the live and physical bytes of now (CollectOptions::totals; the pool's
// stats): the window's own events are subtracted to give meta.physical_at_start_bytes and a
// live_at_start block of meta.unseen_live_bytes (at address 1) for the blocks allocated before the
// window that no event in it names.
//
// Stacks (RecorderOptions::stacks, needs libunwind at build time): raw return addresses of alloc and
// oom events are interned on the hot path; they are symbolised (function, file:line, object+offset)
// at collect(), glake's own frames trimmed (symbolize.h). Stacks, keep=oldest and exact time take a
// slower path out of line, on lanes as on the shared ring.
#pragma once

#include <array>
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
  std::size_t capacity = std::size_t{1} << 20;  // events per ring (rounded up to a power of two, >= 16)
  enum class Keep { newest, oldest } keep = Keep::newest;
  bool stacks = false;                 // capture the stacks of alloc and oom events (needs libunwind)
  int stack_depth = 16;                // frames kept per stack, glake's own frames not counted (1..48)
  std::size_t max_stacks = 1 << 16;    // distinct stacks; beyond, events get stack 0 (counted)
  std::string clock = "auto";          // auto | tsc | monotonic (clock.h)
  enum class Time { sampled, exact } time = Time::sampled;
  int tick_us = 1000;                  // sampled: the ticker's period (0: no ticker)
  std::string symbolizer = "auto";     // auto | addr2line | dladdr | none (symbolize.h)
};

// Over every ring (the shared one and the lanes).
struct RecorderCounters {
  std::uint64_t recorded = 0;        // record() calls, shared ring and lanes
  std::uint64_t dropped = 0;         // events lost: overwritten (keep newest) or refused (keep oldest)
  std::uint64_t lanes = 0;           // lanes made (add_lane())
  std::uint64_t stacks = 0;          // distinct stacks interned
  std::uint64_t stacks_dropped = 0;  // stack captures that found the table full
};

// Live (requested) and physical bytes now, over every device recorded (the pools' stats).
struct Totals {
  std::uint64_t live_bytes = 0;
  std::uint64_t physical_bytes = 0;
};

// What collect() adds to the trace besides the rings.
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
struct RingEvent;   // collect(): an event read from a ring (recorder.cpp)
struct RingWindow;  // collect(): what was read of a ring
}  // namespace detail

class Recorder {
 public:
  class Lane;
  static constexpr std::uint32_t kMaxLanes = 64;  // lanes per recorder

  // Reserves the shared ring (and the stack table): throws std::bad_alloc if the address space is not
  // there. Lanes are reserved by add_lane().
  explicit Recorder(RecorderOptions options);
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // The shared ring's hot path, inline (see the class comment); stacks go out of line.
  void record(const RecordEvent& e) noexcept { record(e.op, e.device, e.stream, e.addr, e.size, e.aux); }
  // The same from scalars: callers that hold another struct read its fields one by one (a block copy
  // of a struct just written field by field stalls on store forwarding).
  void record(Op op, std::uint32_t device, std::uint64_t stream, std::uint64_t addr, std::uint64_t size,
              std::uint64_t aux) noexcept;

  // A new lane (thread-safe), owned by the recorder: for one writer at a time (see the class comment).
  // Null past kMaxLanes lanes or if its ring cannot be reserved: record() those events instead.
  Lane* add_lane() noexcept;

  // Pins the time of everything recorded so far on every ring (sampled time): the events before now
  // are placed before now. For moments that matter (an out-of-memory snapshot). Not for the hot path.
  void mark() noexcept;

  RecorderCounters counters() const noexcept;
  const RecorderOptions& options() const { return options_; }
  std::size_t capacity() const { return shared_.mask + 1; }  // of each ring
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
  friend struct RecorderTestPeer;  // tests/tracer: forces a lane event to miss the idle flag
  // Six words per event (seven with exact time): what an event costs is its stores, so op and device
  // ride in the sequence word and sampled time writes no time at all. One cache line per slot (the
  // rings are page-aligned): 56-byte slots, most of which straddle two lines, cost the pool's alloc+free
  // pair 2 to 3 ns more in bench_trace_overhead, though they stream faster in record() alone.
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> addr, size, stream, aux;
    std::atomic<std::uint64_t> thread_stack;  // thread << 32 | stack
    std::atomic<std::uint64_t> seq;           // (ticket + 1) << 16 | device << 8 | op, once written
    std::atomic<std::uint64_t> ticks;         // exact time only
  };
  static_assert(sizeof(Slot) == 64);
  static std::uint64_t slot_seq(std::uint64_t ticket, Op op, std::uint32_t device) noexcept {
    return (ticket + 1) << 16 | static_cast<std::uint64_t>(device & 0xff) << 8 | static_cast<std::uint64_t>(op);
  }
  struct Checkpoint {
    std::atomic<std::uint64_t> ticket, ticks;
    std::atomic<std::uint64_t> seq;  // index + 1 once written; 0 while being written
  };
  // Slots and checkpoints: the shared ring and every lane have one.
  struct Ring {
    Ring(std::uint64_t capacity, bool sampled);  // capacity: a power of two; throws std::bad_alloc
    ~Ring();
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    Slot* slots = nullptr;
    std::uint64_t mask = 0;
    Checkpoint* checkpoints = nullptr;  // sampled time only
    std::uint64_t checkpoint_mask = 0;
    std::size_t slots_bytes = 0, checkpoints_bytes = 0;
    alignas(64) std::atomic<std::uint64_t> checkpoint_head{0};
    alignas(64) std::atomic<std::uint64_t> head{0};  // the next ticket
  };

  static constexpr std::uint64_t kCheckpointEvery = 64;  // events (a power of two)

  // The payload, then the seq store that publishes it.
  [[gnu::always_inline]] static void write_slot(Slot& s, std::uint64_t seq, std::uint64_t stream,
                                                std::uint64_t addr, std::uint64_t size, std::uint64_t aux,
                                                std::uint64_t thread_stack) noexcept {
    s.addr.store(addr, std::memory_order_release);
    s.size.store(size, std::memory_order_release);
    s.stream.store(stream, std::memory_order_release);
    s.aux.store(aux, std::memory_order_release);
    s.thread_stack.store(thread_stack, std::memory_order_release);
    s.seq.store(seq, std::memory_order_release);
  }
  // Asks for the slot kPrefetchAhead events on in exclusive state. A ring larger than the caches is
  // written once around per wrap, so each event's store would otherwise wait for its line to be read
  // from memory first: bench_trace_overhead measured a lane's record() at 8.5 ns per event without
  // this and 2.7-3.2 ns with it on the 2-core CI-like machine, 4.6 and 3.0 ns on the H100 host (ring
  // of 1M events, 2026-12-06), as fast as a ring that stays in cache. A prefetch never faults: the
  // first pass over fresh pages still commits them.
  static constexpr std::uint64_t kPrefetchAhead = 64;  // events: 4 KiB ahead
  [[gnu::always_inline]] static void prefetch_ahead(const Ring& r, std::uint64_t ticket) noexcept {
    __builtin_prefetch(&r.slots[(ticket + kPrefetchAhead) & r.mask], 1, 3);
  }
  void checkpoint(Ring& r, std::uint64_t ticket, std::uint64_t ticks) noexcept;
  std::uint32_t capture_stack() noexcept;  // the current stack's id in the table (0: none)
  // The rest of an event, after its ticket, when it cannot take the fast path (stacks, keep oldest,
  // exact time, the first event after a pause) or writes a checkpoint (every 64th). Out of line, so
  // that the fast path keeps nothing but the event in registers.
  [[gnu::noinline]] void record_slow(Ring& r, std::uint64_t ticket, Op op, std::uint32_t device, std::uint64_t stream,
                                     std::uint64_t addr, std::uint64_t size, std::uint64_t aux) noexcept;
  void tick_loop();
  // The lanes made so far: lanes_[0 .. lane_count()).
  std::uint32_t lane_count() const noexcept { return lane_count_.load(std::memory_order_acquire); }
  // The ring's events as read now, in ticket order, with their ticks (recorder.cpp).
  void read_ring(const Ring& r, std::vector<detail::RingEvent>* out, detail::RingWindow* w);

  RecorderOptions options_;
  TraceClock clock_;
  // What every event reads, on one cache line that events do not write.
  // slow_ is nonzero when record() must take the slow path: kSlowConfig (stacks_ || keep_oldest_ ||
  // exact_time_) and/or kSlowIdle (the ticker is asleep after a pause: the next event pins the time and
  // wakes it).
  static constexpr std::uint8_t kSlowConfig = 1, kSlowIdle = 2;
  alignas(64) std::atomic<std::uint8_t> slow_{0};
  bool keep_oldest_ = false;
  bool stacks_ = false;
  bool exact_time_ = false;
  Ring shared_;
  std::array<Lane*, kMaxLanes> lanes_{};         // written once, under lanes_mu_, before lane_count_ counts it
  std::atomic<std::uint32_t> lane_count_{0};
  std::mutex lanes_mu_;                          // making lanes
  std::mutex tick_mu_;
  std::condition_variable tick_cv_;
  bool stop_ = false;  // under tick_mu_
  bool woken_ = false;  // under tick_mu_: an event came while the ticker slept
  std::thread ticker_;
  std::unique_ptr<StackTable> stack_table_;
  std::mutex collect_mu_;
  std::unique_ptr<Symbolizer> symbolizer_;  // under collect_mu_; caches across collects
};

// A lane (see the class comment): made by Recorder::add_lane(), owned by the recorder.
class Recorder::Lane {
 public:
  // The hot path, inline. The caller serialises every call on one lane (each happens after the one
  // before, e.g. under one mutex): the head is read and written back, not incremented atomically.
  void record(Op op, std::uint32_t device, std::uint64_t stream, std::uint64_t addr, std::uint64_t size,
              std::uint64_t aux) noexcept;

 private:
  friend class Recorder;
  friend struct RecorderTestPeer;
  explicit Lane(Recorder* recorder) : recorder_(recorder), ring_(recorder->shared_.mask + 1, !recorder->exact_time_) {}
  Recorder* recorder_;
  Ring ring_;
};

[[gnu::always_inline]] inline void Recorder::record(Op op, std::uint32_t device, std::uint64_t stream,
                                                   std::uint64_t addr, std::uint64_t size,
                                                   std::uint64_t aux) noexcept {
  // seq_cst on head and slow_ (free on x86: the increment is a locked instruction anyway): a writer
  // increments the head and then reads slow_, the ticker sets kSlowIdle and then reads the head; one of
  // them sees the other, so no shared-ring event slips past a ticker going idle.
  const std::uint64_t ticket = shared_.head.fetch_add(1, std::memory_order_seq_cst);
  if (__builtin_expect(slow_.load(std::memory_order_seq_cst) != 0 || (ticket & (kCheckpointEvery - 1)) == 0, 0)) {
    record_slow(shared_, ticket, op, device, stream, addr, size, aux);
    return;
  }
  prefetch_ahead(shared_, ticket);
  write_slot(shared_.slots[ticket & shared_.mask], slot_seq(ticket, op, device), stream, addr, size, aux,
             std::uint64_t{detail::thread_id()} << 32);
}

[[gnu::always_inline]] inline void Recorder::Lane::record(Op op, std::uint32_t device, std::uint64_t stream,
                                                         std::uint64_t addr, std::uint64_t size,
                                                         std::uint64_t aux) noexcept {
  Recorder& r = *recorder_;
  // One writer at a time, so a plain load and store take the ticket. The head goes up before the slot
  // is written, as the shared ring's increment does: a reader that sees any of this event's payload
  // (release stores) sees the new head too, which is how it tells an overwritten slot (recorder.cpp).
  // No fence before slow_ is read: this event may miss the ticker going idle (class comment, Time).
  const std::uint64_t ticket = ring_.head.load(std::memory_order_relaxed);
  ring_.head.store(ticket + 1, std::memory_order_relaxed);
  if (__builtin_expect(r.slow_.load(std::memory_order_relaxed) != 0 || (ticket & (kCheckpointEvery - 1)) == 0, 0)) {
    r.record_slow(ring_, ticket, op, device, stream, addr, size, aux);
    return;
  }
  prefetch_ahead(ring_, ticket);
  write_slot(ring_.slots[ticket & ring_.mask], slot_seq(ticket, op, device), stream, addr, size, aux,
             std::uint64_t{detail::thread_id()} << 32);
}

}  // namespace glake::tracer
