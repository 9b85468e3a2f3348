// tracer/replay.cpp: the replay of a trace through the pool, its report, and `glake-trace replay`.
//
// The trace is first compiled into a program of steps over slots: every block (live_at_start, then
// each alloc event) gets a slot, and a free names the slot of its block. The trace-address -> slot map
// (an unordered_map) exists only while compiling; the replay and the timed loops index a flat array of
// pointers by slot. Invariant of a compiled program: a free's slot was allocated by an earlier step or
// by the set-up, and is freed once.
#include "tracer/replay.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pool/allocator.h"
#include "pool/host_driver.h"
#include "tracer/format_util.h"
#include "tracer/trace_cut.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::uint64_t kProgressEvents = 1 << 15;

struct Step {
  std::uint64_t size;
  std::uint64_t stream;
  std::uint32_t slot;
  bool alloc;
  bool trim_after;  // the recording trimmed its pool after this step (ReplayOptions::trims)
};

struct Program {
  std::vector<Step> steps;                 // one per alloc or free event, same order
  std::vector<std::uint32_t> step_event;   // the index in trace.events of each step
  std::vector<std::uint32_t> left_live;    // event-allocated slots live after the last event
  std::vector<std::uint32_t> start_live;   // live_at_start slots live after the last event
  std::uint32_t slots = 0;
  std::uint64_t setup_stream = 0;
};

std::string name_of(const Trace& t) { return t.path.empty() ? t.meta.name : t.path; }

// Throws ReplayError, naming the trace, when the trace is inconsistent.
Program compile(const Trace& t) {
  const std::string name = name_of(t);
  Program p;
  if (t.live_at_start.size() + t.events.size() >= std::numeric_limits<std::uint32_t>::max() ||
      t.events.size() >= std::numeric_limits<std::uint32_t>::max())
    throw ReplayError(fmt::format("{}: trace too large (2^32 blocks)", name));
  std::unordered_map<std::uint64_t, std::uint32_t> slot_of;
  slot_of.reserve(t.live_at_start.size() + 4096);
  std::uint32_t next = 0;
  for (const LiveBlock& b : t.live_at_start) {
    if (!slot_of.emplace(b.addr, next++).second)
      throw ReplayError(fmt::format("{}: live_at_start names address {} twice", name, b.addr));
  }
  p.setup_stream = 0;
  for (const TraceEvent& e : t.events)
    if (is_alloc_or_free(e.op)) {
      p.setup_stream = e.stream;
      break;
    }
  p.steps.reserve(t.events.size());
  p.step_event.reserve(t.events.size());
  // Releases between two steps are a trim unless an oom or reclaim lies between those steps too (then
  // they are the recording pool's answer to memory pressure).
  bool released = false, pressure = false;
  auto end_gap = [&] {
    if (released && !pressure && !p.steps.empty()) p.steps.back().trim_after = true;
    released = pressure = false;
  };
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    if (e.op == Op::oom || e.op == Op::reclaim) pressure = true;
    if (e.op == Op::release) released = true;
    if (!is_alloc_or_free(e.op)) continue;  // the replay places blocks itself: only a/f matter
    end_gap();
    p.step_event.push_back(static_cast<std::uint32_t>(i));
    if (e.op == Op::alloc) {
      if (!slot_of.emplace(e.addr, next).second)
        throw ReplayError(
            fmt::format("{}: events[{}]: allocation of address {}, which is live already", name, i, e.addr));
      p.steps.push_back({e.size, e.stream, next++, true, false});
    } else {
      auto it = slot_of.find(e.addr);
      if (it == slot_of.end())
        throw ReplayError(
            fmt::format("{}: events[{}]: free of unknown address {} (malformed trace)", name, i, e.addr));
      p.steps.push_back({e.size, e.stream, it->second, false, false});
      slot_of.erase(it);
    }
  }
  end_gap();
  p.slots = next;
  auto start_slots = static_cast<std::uint32_t>(t.live_at_start.size());
  for (const auto& [addr, slot] : slot_of) (slot < start_slots ? p.start_live : p.left_live).push_back(slot);
  std::sort(p.left_live.begin(), p.left_live.end());
  std::sort(p.start_live.begin(), p.start_live.end());
  return p;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string fmt_ratio(double f) { return std::isnan(f) ? std::string("n/a") : fmt::format("{:.3f}", f); }
std::string fmt_ns(double ns) { return std::isnan(ns) ? std::string("n/a") : fmt::format("{:.1f} ns", ns); }

// The replay proper, with the pool and driver alive for the caller's frees and timing.
class Replayer {
 public:
  Replayer(const Trace& t, const ReplayOptions& o)
      : trace_(t), options_(o), program_(compile(t)), driver_(driver_options(o)), pool_(driver_, o.config),
        ptr_(program_.slots, 0) {}

  ReplayReport run() {
    ReplayReport r;
    r.trace = name_of(trace_);
    r.name = trace_.meta.name;
    r.other_events = trace_.events.size() - program_.steps.size();
    r.events = program_.steps.size();
    r.live_at_start = trace_.live_at_start.size();
    r.granularity = options_.granularity;
    r.capacity = options_.capacity;
    r.stitch = options_.config.stitch;
    r.small_limit = pool_.config().small_limit;
    r.limit = options_.config.limit;
    for (const Step& s : program_.steps) (s.alloc ? r.allocs : r.frees)++;

    const pool::DriverStats& ds = driver_.stats();
    setup();
    if (options_.after_setup) options_.after_setup(pool_);
    follow_trims(nullptr);
    follow_peak(kAfterSetup);
    if (options_.observer != nullptr) pool_.set_observer(options_.observer);
    std::uint64_t base_ns = ds.total_ns();
    r.modeled_driver_s_setup = static_cast<double>(base_ns) * 1e-9;
    std::array<std::uint64_t, pool::kCallKinds> base_calls{}, base_call_ns{};
    for (int c = 0; c < pool::kCallKinds; ++c) {
      base_calls[c] = ds.calls(static_cast<pool::Call>(c));
      base_call_ns[c] = ds.ns(static_cast<pool::Call>(c));
    }

    // The second half starts at the first event with t_us >= the midpoint (alloc and free events).
    const auto& ev = trace_.events;
    const auto& step_event = program_.step_event;
    double first = step_event.empty() ? 0 : static_cast<double>(ev[step_event.front()].t_us);
    double last = step_event.empty() ? 0 : static_cast<double>(ev[step_event.back()].t_us);
    double mid = (first + last) / 2;
    r.wall_s = (last - first) * 1e-6;
    r.wall_s_second_half = (last - mid) * 1e-6;
    std::uint64_t mid_ns = 0;
    bool mid_taken = false;

    auto t0 = std::chrono::steady_clock::now();
    std::uint64_t live = 0, peak_live = 0;
    for (const LiveBlock& b : trace_.live_at_start) live += b.size;
    peak_live = live;
    for (std::size_t i = 0; i < program_.steps.size(); ++i) {
      if (!mid_taken && static_cast<double>(ev[step_event[i]].t_us) >= mid) {
        mid_ns = ds.total_ns();
        mid_taken = true;
      }
      const Step& s = program_.steps[i];
      if (s.alloc) {
        allocate(s, step_event[i]);
        live += s.size;
        peak_live = std::max(peak_live, live);
      } else {
        release(s, step_event[i]);
        live -= s.size;
      }
      follow_trims(&s);
      follow_peak(i);
      if (options_.after_step) options_.after_step(step_event[i], pool_);
      if (options_.progress && (i + 1) % kProgressEvents == 0) options_.progress(i + 1, program_.steps.size());
    }
    r.replay_host_s = seconds_since(t0);
    if (options_.observer != nullptr) pool_.set_observer(nullptr);
    if (options_.progress) options_.progress(program_.steps.size(), program_.steps.size());
    std::uint64_t end_ns = ds.total_ns();
    if (!mid_taken) mid_ns = end_ns;
    r.modeled_driver_s = static_cast<double>(end_ns - base_ns) * 1e-9;
    r.modeled_driver_s_second_half = static_cast<double>(end_ns - mid_ns) * 1e-9;
    for (int c = 0; c < pool::kCallKinds; ++c) {
      r.driver_calls[c] = ds.calls(static_cast<pool::Call>(c)) - base_calls[c];
      r.driver_ns[c] = ds.ns(static_cast<pool::Call>(c)) - base_call_ns[c];
    }
    r.pool_stats = pool_.stats();
    r.peak_live_bytes = peak_live;
    r.peak_physical_bytes = r.pool_stats.physical.peak;
    r.ratio = peak_live > 0 ? static_cast<double>(r.peak_physical_bytes) / static_cast<double>(peak_live) : kNaN;
    r.native_peak_bytes = trace_.meta.peak_reserved_native;
    if (r.native_peak_bytes && *r.native_peak_bytes > 0)
      r.native_ratio = static_cast<double>(r.peak_physical_bytes) / static_cast<double>(*r.native_peak_bytes);

    for (int pass = 2; pass <= options_.passes; ++pass) {
      r.passes.push_back(repeat_pass(r));
      check_valid(fmt::format("after pass {}", pass));
    }
    r.at_peak = breakdown_after(peak_step_);
    r.replayed_trims = options_.trims;
    r.trims = trims_;
    r.peak_live_since_trim = since_live_;
    r.peak_physical_since_trim = since_physical_;
    r.ratio_since_trim = since_live_ > 0 ? static_cast<double>(since_physical_) / static_cast<double>(since_live_) : kNaN;
    check_valid("after the last event");
    free_left_live();
    check_valid("after freeing every block");

    r.reps = options_.reps;
    r.pair_ns = r.glibc_pair_ns = kNaN;
    if (options_.reps > 0) time_pairs(r);
    return r;
  }

 private:
  static pool::HostDriver::Options driver_options(const ReplayOptions& o) {
    pool::HostDriver::Options d;
    d.capacity = o.capacity;
    d.granularity = o.granularity;
    d.device = 0;
    d.cost_model = true;
    d.backed = false;  // the replay never touches the memory: traces larger than this host replay too
    return d;
  }

  [[noreturn]] void pool_fail(std::string_view what, pool::Status st) const {
    pool::Stats s = pool_.stats();
    throw ReplayError(fmt::format("{}: {} ({}; the pool holds {} physical, {} in live blocks)", trace_name(), what,
                                  pool::status_name(st), fmt_bytes(s.physical.current),
                                  fmt_bytes(s.blocks.current)));
  }
  std::string trace_name() const { return name_of(trace_); }
  std::string where(std::size_t i) const {
    if (i < trace_.event_offsets.size()) return fmt::format("events[{}] (byte {})", i, trace_.event_offsets[i]);
    return fmt::format("events[{}]", i);
  }

  void setup() {
    for (std::size_t i = 0; i < trace_.live_at_start.size(); ++i) {
      std::uint64_t size = trace_.live_at_start[i].size;
      // The shared format has no stream per block: the first event's stream stands in.
      std::uint64_t stream = trace_.format == "glake-trace" ? trace_.live_at_start[i].stream : program_.setup_stream;
      pool::Status st = pool_.allocate(size, stream, &ptr_[i]);
      if (st != pool::Status::ok)
        pool_fail(fmt::format("live_at_start[{}]: allocation of {} bytes failed", i, size), st);
    }
  }
  void allocate(const Step& s, std::size_t i) {
    pool::Status st = pool_.allocate(s.size, s.stream, &ptr_[s.slot]);
    if (st != pool::Status::ok)
      pool_fail(fmt::format("{}: allocation of {} bytes on stream {} failed", where(i), s.size, s.stream), st);
  }
  // ReplayOptions::trims, after step s (null: after the set-up): trims where the recording did, and
  // follows the peaks from the last trim on.
  void follow_trims(const Step* s) {
    if (!options_.trims) return;
    if (s != nullptr && s->trim_after) {
      pool_.trim(0);
      ++trims_;
      since_live_ = since_physical_ = 0;
    }
    const pool::Stats st = pool_.stats();
    since_live_ = std::max(since_live_, st.requested.current);
    since_physical_ = std::max(since_physical_, st.physical.current);
  }
  // In the first pass: the step after which physical memory first reached its peak (from the last trim
  // on, with trims); kAfterSetup: the set-up's.
  static constexpr std::size_t kAfterSetup = static_cast<std::size_t>(-1);
  void follow_peak(std::size_t step) {
    const std::uint64_t physical = pool_.stats().physical.current;
    if (trims_ != peak_trims_ || physical > peak_physical_) {  // a trim since restarts the peak
      peak_trims_ = trims_;
      peak_physical_ = physical;
      peak_step_ = step;
    }
  }
  // What the pool's memory holds after `step` of the first pass: replayed again up to there in a fresh
  // pool (the replay is deterministic), so that the replay itself walks the pool only once.
  PeakBreakdown breakdown_after(std::size_t step) const {
    ReplayOptions o = options_;
    o.progress = nullptr;
    o.after_step = nullptr;
    o.after_setup = nullptr;
    o.observer = nullptr;
    Replayer probe(trace_, o);
    probe.setup();
    probe.follow_trims(nullptr);
    for (std::size_t i = 0; step != kAfterSetup && i <= step; ++i) {
      const Step& s = probe.program_.steps[i];
      if (s.alloc)
        probe.allocate(s, probe.program_.step_event[i]);
      else
        probe.release(s, probe.program_.step_event[i]);
      probe.follow_trims(&s);
    }
    const pool::Snapshot snap = probe.pool_.snapshot();
    PeakBreakdown b;
    b.physical = snap.stats.physical.current;
    b.requested = snap.stats.requested.current;
    b.spare = snap.spare_pages * snap.page_size;
    std::uint64_t allocated = 0;
    for (const pool::Region& g : snap.regions) {
      if (g.state == pool::Region::State::allocated) allocated += g.size;
      if (g.state != pool::Region::State::free) continue;
      b.free_large += g.size;
      ++b.free_large_blocks;
      if (g.size < snap.page_size) ++b.free_large_below_page;
    }
    for (const pool::Region& g : snap.small_blocks)
      if (g.state != pool::Region::State::allocated) b.free_in_chunks += g.size;
    // Chunks are allocated large blocks: their free pieces are counted apart, their live ones as blocks.
    const std::uint64_t live_blocks = allocated - b.free_in_chunks;
    b.rounding = live_blocks > b.requested ? live_blocks - b.requested : 0;
    return b;
  }
  void release(const Step& s, std::size_t i) {
    pool::DevPtr p = ptr_[s.slot];
    ptr_[s.slot] = 0;
    if (p == 0) return;  // a size-0 allocation got no pointer
    pool::Status st = pool_.free(p, s.stream);
    if (st != pool::Status::ok) pool_fail(fmt::format("{}: free of {} bytes failed", where(i), s.size), st);
  }
  // Another pass (ReplayOptions::passes): the steps of the blocks the trace frees, in order; the blocks
  // it leaves live stay live from the first pass, so their steps are skipped, as are the frees of
  // live_at_start blocks (freed in the first pass).
  PassReport repeat_pass(const ReplayReport& first) {
    if (long_lived_.empty()) {
      long_lived_.assign(program_.slots, false);
      for (std::uint32_t s : program_.left_live) long_lived_[s] = true;
      for (std::size_t i = 0; i < trace_.live_at_start.size(); ++i) long_lived_[i] = true;
    }
    const pool::DriverStats& ds = driver_.stats();
    const pool::Stats before = pool_.stats();
    const std::uint64_t ns0 = ds.total_ns();
    std::uint64_t live = before.requested.current, peak = live;
    for (std::size_t i = 0; i < program_.steps.size(); ++i) {
      const Step& s = program_.steps[i];
      if (long_lived_[s.slot]) {  // not replayed; a trim after it still is
        if (s.trim_after) follow_trims(&s);
        continue;
      }
      if (s.alloc) {
        allocate(s, program_.step_event[i]);
        live += s.size;
        peak = std::max(peak, live);
      } else {
        release(s, program_.step_event[i]);
        live -= s.size;
      }
      follow_trims(&s);
      if (options_.after_step) options_.after_step(program_.step_event[i], pool_);
    }
    const pool::Stats after = pool_.stats();
    PassReport p;
    p.peak_live_bytes = peak;
    peak_live_so_far_ = std::max({peak_live_so_far_, first.peak_live_bytes, peak});
    p.peak_physical_bytes = after.physical.peak;
    p.ratio = static_cast<double>(p.peak_physical_bytes) / static_cast<double>(std::max<std::uint64_t>(peak_live_so_far_, 1));
    p.stitches = after.stitches - before.stitches;
    p.creates = after.creates - before.creates;
    p.maps = after.maps - before.maps;
    p.unmaps = after.unmaps - before.unmaps;
    p.modeled_driver_s = static_cast<double>(ds.total_ns() - ns0) * 1e-9;
    p.wall_s = first.wall_s;
    return p;
  }

  void free_slot(std::uint32_t slot) {
    pool::DevPtr p = ptr_[slot];
    ptr_[slot] = 0;
    if (p == 0) return;
    pool::Status st = pool_.free(p);
    if (st != pool::Status::ok) pool_fail("freeing the blocks left live at the end failed", st);
  }
  void free_left_live() {
    for (std::uint32_t s : program_.left_live) free_slot(s);
    for (std::uint32_t s : program_.start_live) free_slot(s);
  }
  void check_valid(std::string_view when) const {
    std::string v = pool_.validate();
    if (!v.empty()) throw ReplayError(fmt::format("{}: pool validate() {}: {}", trace_name(), when, v));
  }

  // One timed run of the sequence through the pool; returns ns per alloc+free pair.
  double pool_run() {
    for (std::size_t i = 0; i < trace_.live_at_start.size(); ++i) {
      pool::Status st = pool_.allocate(trace_.live_at_start[i].size, program_.setup_stream, &ptr_[i]);
      if (st != pool::Status::ok) pool_fail("timed loop: set-up allocation failed", st);
    }
    auto t0 = std::chrono::steady_clock::now();
    for (const Step& s : program_.steps) {
      pool::Status st;
      if (s.alloc) {
        st = pool_.allocate(s.size, s.stream, &ptr_[s.slot]);
      } else {
        st = ptr_[s.slot] == 0 ? pool::Status::ok : pool_.free(ptr_[s.slot], s.stream);
        ptr_[s.slot] = 0;
      }
      if (st != pool::Status::ok) pool_fail("timed loop: a pool call failed", st);
    }
    for (std::uint32_t slot : program_.left_live) free_slot(slot);
    double s = seconds_since(t0);
    for (std::uint32_t slot : program_.start_live) free_slot(slot);
    return pair_ns(s);
  }

  // The same through glibc; NaN (and a note) if malloc fails.
  double glibc_run(std::string* note) {
    std::vector<void*> p(program_.slots, nullptr);
    bool failed = false;
    for (std::size_t i = 0; i < trace_.live_at_start.size(); ++i) {
      p[i] = std::malloc(trace_.live_at_start[i].size);
      failed |= p[i] == nullptr && trace_.live_at_start[i].size > 0;
    }
    auto t0 = std::chrono::steady_clock::now();
    for (const Step& s : program_.steps) {
      if (s.alloc) {
        void* q = std::malloc(s.size);
        failed |= q == nullptr && s.size > 0;
        p[s.slot] = q;
      } else {
        std::free(p[s.slot]);
      }
    }
    for (std::uint32_t slot : program_.left_live) std::free(p[slot]);
    double s = seconds_since(t0);
    for (std::uint32_t slot : program_.start_live) std::free(p[slot]);
    if (failed) {
      *note = "malloc returned NULL (host memory or overcommit limit)";
      return kNaN;
    }
    return pair_ns(s);
  }

  double pair_ns(double seconds) const {
    double ops = static_cast<double>(program_.steps.size() + program_.left_live.size());
    return ops > 0 ? seconds * 1e9 / (ops / 2) : kNaN;
  }

  void time_pairs(ReplayReport& r) {
    // MALLOC_PERTURB_ (which meson test sets) makes glibc fill every block: it would time memset over
    // gigabytes, not malloc/free, and commit them.
    if (const char* p = std::getenv("MALLOC_PERTURB_"); p != nullptr && std::atoi(p) != 0) mallopt(M_PERTURB, 0);
    std::vector<double> pool_ns, glibc_ns;
    for (int rep = 0; rep < options_.reps; ++rep) {
      pool_ns.push_back(pool_run());
      glibc_ns.push_back(glibc_run(&r.glibc_note));
    }
    check_valid("after the timed loops");
    r.pair_ns = median(pool_ns);
    r.glibc_pair_ns = median(glibc_ns);
  }

  const Trace& trace_;
  const ReplayOptions& options_;
  Program program_;
  pool::HostDriver driver_;
  pool::Allocator pool_;
  std::vector<pool::DevPtr> ptr_;  // slot -> pool pointer (0: not live)
  std::vector<bool> long_lived_;   // repeat passes: slots not replayed (left live, or live at start)
  std::uint64_t peak_live_so_far_ = 0;
  std::uint64_t trims_ = 0, since_live_ = 0, since_physical_ = 0;  // follow_trims()
  std::uint64_t peak_trims_ = 0, peak_physical_ = 0;  // follow_peak(): since the last trim
  std::size_t peak_step_ = kAfterSetup;
};

}  // namespace

double PassReport::driver_fraction() const { return wall_s > 0 ? modeled_driver_s / wall_s : kNaN; }
double ReplayReport::driver_fraction() const { return wall_s > 0 ? modeled_driver_s / wall_s : kNaN; }
double ReplayReport::driver_fraction_second_half() const {
  return wall_s_second_half > 0 ? modeled_driver_s_second_half / wall_s_second_half : kNaN;
}

ReplayReport replay_trace(const Trace& trace, const ReplayOptions& options) {
  Replayer replayer(trace, options);
  return replayer.run();
}

std::string format_report_text(const ReplayReport& r) {
  std::string out = fmt::format("{} ({}): {} events ({} allocs, {} frees), {} blocks live at start\n", r.name,
                                r.trace, r.events, r.allocs, r.frees, r.live_at_start);
  out += fmt::format("  peak live       {:>10}\n", fmt_bytes(r.peak_live_bytes));
  out += fmt::format("  peak physical   {:>10}  {} x peak live", fmt_bytes(r.peak_physical_bytes), fmt_ratio(r.ratio));
  if (r.native_ratio)
    out += fmt::format(", {:.3f} x PyTorch native peak reserved ({}, {:.3f} x peak live)", *r.native_ratio,
                       fmt_bytes(*r.native_peak_bytes),
                       static_cast<double>(*r.native_peak_bytes) / static_cast<double>(r.peak_live_bytes));
  out += "\n  driver calls   ";
  bool any = false;
  for (int c = 0; c < pool::kCallKinds; ++c) {
    if (r.driver_calls[c] == 0) continue;
    out += fmt::format(" {} {}", pool::call_name(static_cast<pool::Call>(c)), r.driver_calls[c]);
    any = true;
  }
  out += any ? "\n" : " none\n";
  out += fmt::format("  modeled driver  {:.4f} s = {} of {:.3f} s wall; second half {:.4f} s = {} of {:.3f} s"
                     " (set-up of live_at_start: {:.4f} s)\n",
                     r.modeled_driver_s, fmt_pct(r.driver_fraction()), r.wall_s, r.modeled_driver_s_second_half,
                     fmt_pct(r.driver_fraction_second_half()), r.wall_s_second_half, r.modeled_driver_s_setup);
  const pool::Stats& s = r.pool_stats;
  out += fmt::format("  pool            stitches {} creates {} releases {} maps {} unmaps {} reclaims {} ooms {};"
                     " peak mapped {}\n",
                     s.stitches, s.creates, s.releases, s.maps, s.unmaps, s.reclaims, s.ooms, fmt_bytes(s.mapped.peak));
  out += fmt::format("  at the peak     {}{}\n", format_breakdown(r.at_peak),
                     r.replayed_trims ? " (pass 1, from its last trim on)" : "");
  for (std::size_t i = 0; i < r.passes.size(); ++i) {
    const PassReport& p = r.passes[i];
    out += fmt::format("  pass {:<3}        peak physical so far {} = {} x peak live; stitches {} creates {} maps {};"
                       " modeled driver {:.4f} s = {} of a pass\n",
                       i + 2, fmt_bytes(p.peak_physical_bytes), fmt_ratio(p.ratio), p.stitches, p.creates, p.maps,
                       p.modeled_driver_s, fmt_pct(p.driver_fraction()));
  }
  if (r.replayed_trims)
    out += fmt::format("  trims           {} replayed; from the last on (of the last pass): peak live {}, peak physical"
                       " {} = {} x peak live\n",
                       r.trims, fmt_bytes(r.peak_live_since_trim), fmt_bytes(r.peak_physical_since_trim),
                       fmt_ratio(r.ratio_since_trim));
  if (r.reps > 0) {
    std::string glibc = fmt_ns(r.glibc_pair_ns);
    if (!r.glibc_note.empty()) glibc += " (" + r.glibc_note + ")";
    out += fmt::format("  alloc+free pair pool {}, glibc malloc/free {} (median of {})\n", fmt_ns(r.pair_ns), glibc,
                       r.reps);
  }
  out += fmt::format("  host time       read {:.3f} s, replay {:.3f} s\n", r.read_s, r.replay_host_s);
  out += fmt::format("  settings        granularity {}, capacity {}, stitching {}, small limit {}, limit {}\n",
                     fmt_bytes(r.granularity), fmt_bytes(r.capacity), r.stitch ? "on" : "off",
                     fmt_bytes(r.small_limit), r.limit == 0 ? std::string("none") : fmt_bytes(r.limit));
  if (r.other_events > 0)
    out += fmt::format("  not replayed    {} events of other ops (create, map, stitch, ...: the recording pool's own)\n",
                       r.other_events);
  return out;
}

std::string format_breakdown(const PeakBreakdown& b) {
  return fmt::format("{} physical = requests {} + rounding {} + free in small chunks {} + free large blocks {} ({}, {}"
                     " shorter than a page){}",
                     fmt_bytes(b.physical), fmt_bytes(b.requested), fmt_bytes(b.rounding), fmt_bytes(b.free_in_chunks),
                     fmt_bytes(b.free_large), b.free_large_blocks, b.free_large_below_page,
                     b.spare > 0 ? " + spare pages " + fmt_bytes(b.spare) : std::string());
}

nlohmann::ordered_json breakdown_json(const PeakBreakdown& b) {
  return {{"physical_bytes", b.physical},
          {"requested_bytes", b.requested},
          {"rounding_bytes", b.rounding},
          {"free_in_chunks_bytes", b.free_in_chunks},
          {"free_large_bytes", b.free_large},
          {"free_large_blocks", b.free_large_blocks},
          {"free_large_blocks_below_page", b.free_large_below_page},
          {"spare_bytes", b.spare}};
}

std::string format_report_json(const ReplayReport& r) {
  using json = nlohmann::ordered_json;  // keys in the order written here, "trace" first
  auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  json calls = json::object(), call_s = json::object();
  for (int c = 0; c < pool::kCallKinds; ++c) {
    const char* n = pool::call_name(static_cast<pool::Call>(c));
    calls[n] = r.driver_calls[c];
    call_s[n] = static_cast<double>(r.driver_ns[c]) * 1e-9;
  }
  const pool::Stats& s = r.pool_stats;
  json j = {
      {"trace", r.trace},
      {"name", r.name},
      {"events", r.events},
      {"allocs", r.allocs},
      {"frees", r.frees},
      {"live_at_start", r.live_at_start},
      {"peak_live_bytes", r.peak_live_bytes},
      {"peak_physical_bytes", r.peak_physical_bytes},
      {"ratio", num(r.ratio)},
      {"native_peak_bytes", r.native_peak_bytes ? json(*r.native_peak_bytes) : json(nullptr)},
      {"native_ratio", r.native_ratio ? num(*r.native_ratio) : json(nullptr)},
      {"driver_calls", calls},
      {"driver_s_by_call", call_s},
      {"modeled_driver_s", r.modeled_driver_s},
      {"modeled_driver_s_second_half", r.modeled_driver_s_second_half},
      {"modeled_driver_s_setup", r.modeled_driver_s_setup},
      {"wall_s", r.wall_s},
      {"wall_s_second_half", r.wall_s_second_half},
      {"driver_fraction", num(r.driver_fraction())},
      {"driver_fraction_second_half", num(r.driver_fraction_second_half())},
      {"stitches", s.stitches},
      {"creates", s.creates},
      {"releases", s.releases},
      {"maps", s.maps},
      {"unmaps", s.unmaps},
      {"reclaims", s.reclaims},
      {"ooms", s.ooms},
      {"peak_mapped_bytes", s.mapped.peak},
      {"peak_block_bytes", s.blocks.peak},
      {"pair_ns", num(r.pair_ns)},
      {"glibc_pair_ns", num(r.glibc_pair_ns)},
      {"reps", r.reps},
      {"replay_host_s", r.replay_host_s},
      {"read_s", r.read_s},
      {"granularity", r.granularity},
      {"capacity", r.capacity},
      {"stitch", r.stitch},
      {"small_limit", r.small_limit},
      {"limit", r.limit},
      {"other_events", r.other_events},
  };
  j["at_peak"] = breakdown_json(r.at_peak);
  if (r.replayed_trims) {
    j["trims"] = r.trims;
    j["peak_live_since_trim_bytes"] = r.peak_live_since_trim;
    j["peak_physical_since_trim_bytes"] = r.peak_physical_since_trim;
    j["ratio_since_trim"] = num(r.ratio_since_trim);
  }
  json passes = json::array();
  for (std::size_t i = 0; i < r.passes.size(); ++i) {
    const PassReport& p = r.passes[i];
    passes.push_back({{"pass", i + 2},
                      {"peak_live_bytes", p.peak_live_bytes},
                      {"peak_physical_bytes", p.peak_physical_bytes},
                      {"ratio", num(p.ratio)},
                      {"stitches", p.stitches},
                      {"creates", p.creates},
                      {"maps", p.maps},
                      {"unmaps", p.unmaps},
                      {"modeled_driver_s", p.modeled_driver_s},
                      {"driver_fraction", num(p.driver_fraction())}});
  }
  j["passes"] = passes;
  // The path and meta.name may hold bytes that are not UTF-8 (a file name): replaced, not thrown.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

constexpr const char* kReplayUsage =
    "usage: glake-trace replay [options] TRACE...\n"
    "\n"
    "Replays each trace (gzip or plain JSON, the format of the shared traces) through the glake pool on the\n"
    "host driver with the H100 cost model, and reports per trace: peak live and peak physical bytes and\n"
    "their ratio, what the physical memory held at its peak (live requests, their rounding, free pieces\n"
    "of small requests' chunks, free large blocks: those shorter than a page share their pages with live\n"
    "blocks), the ratio to PyTorch's native peak, driver calls by kind, modeled driver time over the\n"
    "trace and its second half as fractions of the trace's wall time, the pool's counters, and the host\n"
    "cost of an alloc+free pair beside glibc malloc/free on the same sequence.\n"
    "\n"
    "options:\n"
    "  --json               one JSON object per line per trace\n"
    "  --granularity BYTES  the driver's granularity (default 2M; a power of two >= the page size)\n"
    "  --capacity BYTES     the driver's physical capacity (default 1T): the device's memory in a what-if\n"
    "  --no-stitch          turn stitching off (GLAKE_STITCH=0): the pool grows where it would stitch\n"
    "  --stitch             turn stitching on (the default, overrides GLAKE_STITCH=0)\n"
    "  --small-limit BYTES  requests up to this size share one-page chunks (GLAKE_SMALL_LIMIT, default 1M;\n"
    "                       at most half the granularity: larger values are lowered to it; 0: none do,\n"
    "                       every request is placed among the large blocks)\n"
    "  --limit BYTES        most physical bytes the pool may hold (GLAKE_LIMIT; default 0: the capacity)\n"
    "  --reps N             repetitions of the timed alloc+free loops (default 5; 0 skips them)\n"
    "  --passes N           run the events N times (default 1): after the first pass, the blocks the trace\n"
    "                       frees are allocated and freed again while those it leaves live stay live, as\n"
    "                       in a job that repeats its steps; reports each later pass (peak physical so\n"
    "                       far and its ratio, stitches, creates, maps, modeled driver time)\n"
    "  --from SECONDS       replay only the events from SECONDS after the trace's first event on; the\n"
    "                       blocks live then are set up first (as live_at_start), e.g. to leave out the\n"
    "                       loading of a model\n"
    "  --trims              replay the recording's trims: where the trace released physical memory with\n"
    "                       no oom or reclaim between the same two allocations or frees (PyTorch's\n"
    "                       empty_cache()), the pool trims to 0 too (every pass); reports the peaks from\n"
    "                       the last trim on (what reset_peak_memory_stats() after empty_cache() measures\n"
    "                       on the GPU). Traces converted from PyTorch snapshots may show its frees of\n"
    "                       cached segments under memory pressure as such releases too\n"
    "  -h, --help           this text\n"
    "BYTES take K, M, G, T suffixes (binary). The pool's other settings come from GLAKE_* variables;\n"
    "options override them. What-if: run the same trace with different options, e.g.\n"
    "  glake-trace replay --granularity 32M --no-stitch --small-limit 256K TRACE\n"
    "and compare peak physical. A what-if that runs out of memory (--capacity, --limit) is reported as an\n"
    "error naming the event that failed and what the pool held.\n"
    "Traces in glake's format (tracer/FORMAT.md) replay their \"a\"/\"f\" events only.\n"
    "\n"
    "A trace that is malformed, truncated or fails to replay gets a message on stderr naming the file\n"
    "and the position (byte offset in the decompressed JSON, event index, what was expected); the other\n"
    "traces are still replayed and reported. Exit status: 0 all replayed, 1 some failed, 2 bad usage.\n";

bool parse_size(const std::string& text, std::size_t* out) { return pool::parse_bytes(text.c_str(), out); }

// A progress line on stderr, only when stderr is a terminal; at most 10 updates a second unless forced
// (a new stage); cleared when done.
class ProgressLine {
 public:
  ProgressLine() : on_(::isatty(STDERR_FILENO) == 1) {}
  bool on() const { return on_; }
  void show(const std::string& text, bool force = false) {
    if (!on_) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && shown_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void clear() {
    if (!shown_) return;
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    shown_ = false;
  }

 private:
  bool on_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace

int replay_command(const std::vector<std::string>& args) {
  bool json_out = false;
  std::optional<double> from_s;  // --from
  ReplayOptions options;
  std::vector<std::string> config_errors;
  options.config = pool::config_from_env(&config_errors);
  for (const std::string& e : config_errors) fmt::print(stderr, "glake-trace: warning: {}\n", e);
  std::vector<std::string> traces;

  auto usage_error = [](const std::string& what) {
    fmt::print(stderr, "glake-trace replay: {}\n(see glake-trace replay --help)\n", what);
    return 2;
  };
  bool options_done = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (options_done || a.empty() || a[0] != '-' || a == "-") {
      traces.push_back(a);
      continue;
    }
    if (a == "--") {
      options_done = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    auto take_value = [&]() -> bool {
      if (has_value) return true;
      if (i + 1 >= args.size()) return false;
      value = args[++i];
      return true;
    };
    if (a == "-h" || a == "--help") {
      fmt::print("{}", kReplayUsage);
      return 0;
    } else if (a == "--json" && !has_value) {
      json_out = true;
    } else if (a == "--trims" && !has_value) {
      options.trims = true;
    } else if (a == "--no-stitch" && !has_value) {
      options.config.stitch = false;
    } else if (a == "--stitch" && !has_value) {
      options.config.stitch = true;
    } else if (a == "--small-limit" || a == "--limit") {
      if (!take_value()) return usage_error(a + " needs a value");
      std::size_t v = 0;
      if (!parse_size(value, &v))
        return usage_error(fmt::format("{}: '{}' is not a byte count (e.g. 0, 256K, 1M, 64G)", a, value));
      (a == "--limit" ? options.config.limit : options.config.small_limit) = v;
    } else if (a == "--granularity" || a == "--capacity") {
      if (!take_value()) return usage_error(a + " needs a value");
      std::size_t v = 0;
      if (!parse_size(value, &v) || v == 0)
        return usage_error(fmt::format("{}: '{}' is not a byte count (e.g. 2M, 64G, 1T)", a, value));
      if (a == "--granularity") {
        auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        if ((v & (v - 1)) != 0 || v < page)
          return usage_error(fmt::format("--granularity: {} is not a power of two >= the page size ({})", v, page));
        options.granularity = v;
      } else {
        options.capacity = v;
      }
    } else if (a == "--from") {
      if (!take_value()) return usage_error(a + " needs a value");
      char* end = nullptr;
      double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !std::isfinite(v) || v < 0 || v > 1e9)
        return usage_error(fmt::format("--from: '{}' is not a number of seconds (e.g. 0.5)", value));
      from_s = v;
    } else if (a == "--reps" || a == "--passes") {
      if (!take_value()) return usage_error(a + " needs a value");
      char* end = nullptr;
      long n = std::strtol(value.c_str(), &end, 10);
      const long lo = a == "--reps" ? 0 : 1;
      if (value.empty() || *end != '\0' || n < lo || n > 1000)
        return usage_error(fmt::format("{}: '{}' is not a number from {} to 1000", a, value, lo));
      (a == "--reps" ? options.reps : options.passes) = static_cast<int>(n);
    } else {
      return usage_error(fmt::format("unknown option '{}'", args[i]));
    }
  }
  if (traces.empty()) return usage_error("no trace given");

  ProgressLine line;
  int status = 0;
  for (const std::string& path : traces) {
    try {
      ReadProgress read_progress;
      if (line.on()) {
        read_progress = [&](const char* stage, std::uint64_t done, std::uint64_t total) {
          line.show(fmt::format("{}: {} {:.0f}%", path, stage, 100.0 * static_cast<double>(done) /
                                                                 static_cast<double>(std::max<std::uint64_t>(total, 1))));
        };
        options.progress = [&](std::uint64_t done, std::uint64_t total) {
          line.show(fmt::format("{}: replay event {}/{}", path, done, total));
        };
      }
      auto read_t0 = std::chrono::steady_clock::now();
      Trace trace = read_trace(path, read_progress);
      if (from_s) {
        const std::uint64_t t0 = trace.events.empty() ? 0 : trace.events.front().t_us;
        // Saturated: t_us near 2^64 would wrap the sum to the trace's start and replay it all.
        const auto after_us = static_cast<std::uint64_t>(std::llround(*from_s * 1e6));
        const std::uint64_t from_us = after_us > UINT64_MAX - t0 ? UINT64_MAX : t0 + after_us;
        if (trace.events.empty() || from_us > trace.events.back().t_us)
          throw std::runtime_error(fmt::format(
              "{}: --from {} s is after its last event ({:.3f} s after the first)", path, *from_s,
              trace.events.empty() ? 0.0 : static_cast<double>(trace.events.back().t_us - t0) * 1e-6));
        trace = trace_from(trace, from_us);
      }
      double read_s = seconds_since(read_t0);
      if (trace.meta.peak_live_bytes && *trace.meta.peak_live_bytes != trace.peak_live_bytes) {
        line.clear();
        fmt::print(stderr, "glake-trace: warning: {}: meta.peak_live_bytes is {}, the events give {}\n", path,
                   *trace.meta.peak_live_bytes, trace.peak_live_bytes);
      }
      if (line.on() && options.reps > 0) options.progress = [&, inner = options.progress](std::uint64_t d, std::uint64_t t) {
        inner(d, t);
        if (d == t)
          line.show(fmt::format("{}: timing alloc+free pairs ({} x pool, {} x glibc)", path, options.reps,
                                options.reps), true);
      };
      ReplayReport r = replay_trace(trace, options);
      r.read_s = read_s;
      line.clear();
      std::string text = json_out ? format_report_json(r) + "\n" : format_report_text(r);
      std::fputs(text.c_str(), stdout);
      std::fflush(stdout);
    } catch (const std::bad_alloc&) {
      // The emulated pool keeps one entry per page of its reservations (twice the capacity).
      line.clear();
      std::fflush(stdout);
      fmt::print(stderr, "glake-trace: error: {}: out of host memory (the replay's pool keeps one entry per "
                 "page of twice --capacity: lower --capacity or raise --granularity)\n", path);
      status = 1;
    } catch (const std::exception& e) {
      line.clear();
      std::fflush(stdout);
      fmt::print(stderr, "glake-trace: error: {}\n", e.what());
      status = 1;
    }
  }
  return status;
}

}  // namespace glake::tracer
