// tests/tracer/recorder_test_util.h: helpers of the recorder tests: events made short, a pool on the
// host driver with the tracer attached, and an allocation site outside glake's namespaces (stack
// frames in glake:: are trimmed as glake's own).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "pool/allocator.h"
#include "pool/host_driver.h"
#include "tracer/pool_trace.h"
#include "tracer/recorder.h"

namespace glake::tracer::testing_util {

inline RecordEvent ev(Op op, std::uint64_t addr, std::uint64_t size, std::uint64_t stream = 0,
                      std::uint32_t device = 0, std::uint64_t aux = 0) {
  RecordEvent e;
  e.op = op;
  e.addr = addr;
  e.size = size;
  e.stream = stream;
  e.device = device;
  e.aux = aux;
  return e;
}

// A pool over a host driver, with a recorder watching it.
struct TracedPool {
  explicit TracedPool(RecorderOptions ro = {}, std::size_t capacity = std::size_t{1} << 36,
                      pool::Config config = {}, int device = 0)
      : driver(driver_options(capacity, device)), pool(driver, config), recorder(ro), observer(&recorder) {
    pool.set_observer(&observer);
  }
  ~TracedPool() { pool.set_observer(nullptr); }
  static pool::HostDriver::Options driver_options(std::size_t capacity, int device) {
    pool::HostDriver::Options o;
    o.capacity = capacity;
    o.cost_model = false;
    o.device = device;
    return o;
  }
  pool::HostDriver driver;
  pool::Allocator pool;
  Recorder recorder;
  PoolTraceObserver observer;
};

// A pool's events replayed in the trace's order: every free names a live block of that size, every
// alloc an address not live; physical bytes (creates - releases) never go negative; a map takes unmapped
// pages, an unmap mapped ones; every page under an alloc or a stitch is mapped then. The trace must be
// the whole story (no dropped events, nothing live at its start, no event repaired by collect()).
// Returns "" or the first inconsistency; counts the events by op and the physical bytes at the end.
struct PoolEventCounts {
  std::map<Op, std::uint64_t> ops;
  std::int64_t physical = 0;
  std::int64_t physical_peak = 0;
};
inline std::string check_pool_events(const Trace& t, std::uint64_t page, PoolEventCounts* out) {
  if (t.meta.events_dropped.value_or(0) != 0) return "events dropped";
  if (!t.live_at_start.empty()) return "blocks live at the start";
  if (nlohmann::json::parse(t.meta.json).contains("events_repaired")) return "events repaired by collect()";
  std::unordered_map<std::uint64_t, std::uint64_t> live;  // addr -> size
  std::unordered_map<std::uint64_t, bool> mapped;          // page address -> mapped
  PoolEventCounts c;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    const std::string at = "event " + std::to_string(i) + " (" + op_name(e.op) + " at " + std::to_string(e.addr) +
                           ", " + std::to_string(e.size) + " bytes): ";
    ++c.ops[e.op];
    switch (e.op) {
      case Op::alloc:
      case Op::stitch:
        if (e.op == Op::alloc && !live.emplace(e.addr, e.size).second) return at + "address already live";
        for (std::uint64_t a = e.addr / page * page; a < e.addr + e.size; a += page)
          if (!mapped[a]) return at + "page " + std::to_string(a) + " not mapped";
        break;
      case Op::free: {
        auto it = live.find(e.addr);
        if (it == live.end()) return at + "free of an unknown address";
        if (it->second != e.size) return at + "size differs from the alloc's " + std::to_string(it->second);
        live.erase(it);
        break;
      }
      case Op::create:
        c.physical += static_cast<std::int64_t>(e.size);
        c.physical_peak = std::max(c.physical_peak, c.physical);
        break;
      case Op::release:
        c.physical -= static_cast<std::int64_t>(e.size);
        if (c.physical < 0) return at + "physical bytes negative";
        break;
      case Op::map:
      case Op::unmap:
        if (e.addr % page != 0 || e.size % page != 0) return at + "not whole pages";
        for (std::uint64_t a = e.addr; a < e.addr + e.size; a += page) {
          if (mapped[a] == (e.op == Op::map)) return at + "page " + std::to_string(a) + (e.op == Op::map ? " already mapped" : " not mapped");
          mapped[a] = e.op == Op::map;
        }
        break;
      default:
        break;
    }
  }
  if (out != nullptr) *out = c;
  return "";
}

}  // namespace glake::tracer::testing_util

namespace glake::tracer {
// Reaches into the recorder for what a test cannot bring about on purpose (recorder.h).
struct RecorderTestPeer {
  static bool idle(const Recorder& r) { return (r.slow_.load() & Recorder::kSlowIdle) != 0; }
  // Waits (at most 10 s) until the ticker has looked at every ring since now: events recorded before
  // then are placed before the events after, however late the ticker runs. False if it did not.
  static bool wait_ticked(const Recorder& r) {
    const std::uint64_t t = r.clock().ticks();
    auto ticked = [t](const Recorder::Ring& ring) {
      const std::uint64_t n = ring.checkpoint_head.load(std::memory_order_acquire);
      for (std::uint64_t i = n > ring.checkpoint_mask ? n - ring.checkpoint_mask : 0; i < n; ++i)
        if (ring.checkpoints[i & ring.checkpoint_mask].ticks.load(std::memory_order_acquire) >= t) return true;
      return false;
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      bool all = ticked(r.shared_);
      for (std::uint32_t i = 0, n = r.lane_count(); all && i < n; ++i) all = ticked(r.lanes_[i]->ring_);
      if (all) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  // A lane event as if it raced with the ticker going idle: the fast path, the flag unseen.
  static void record_missing_the_flag(Recorder::Lane& l, Op op, std::uint64_t addr, std::uint64_t size) {
    Recorder::Ring& ring = l.ring_;
    const std::uint64_t ticket = ring.head.load(std::memory_order_relaxed);
    ring.head.store(ticket + 1, std::memory_order_relaxed);
    Recorder::write_slot(ring.slots[ticket & ring.mask], Recorder::slot_seq(ticket, op, 0), 0, addr, size, 0,
                         std::uint64_t{detail::thread_id()} << 32);
  }
};
}  // namespace glake::tracer

// Outside glake's namespaces, so that a stack keeps it (see symbolize.h).
extern "C" __attribute__((noinline)) inline void glake_test_alloc_site(glake::tracer::Recorder* r, std::uint64_t addr) {
  r->record(glake::tracer::testing_util::ev(glake::tracer::Op::alloc, addr, 4096));
  asm volatile("" ::: "memory");
}
extern "C" __attribute__((noinline)) inline void glake_test_lane_site(glake::tracer::Recorder::Lane* l, std::uint64_t addr) {
  l->record(glake::tracer::Op::alloc, 0, 0, addr, 4096, 0);
  asm volatile("" ::: "memory");
}
extern "C" __attribute__((noinline)) inline void glake_test_other_site(glake::tracer::Recorder* r, std::uint64_t addr) {
  r->record(glake::tracer::testing_util::ev(glake::tracer::Op::alloc, addr, 8192));
  asm volatile("" ::: "memory");
}
