// tracer/replay.h: replays an allocation trace through the pool on the host driver, and the
// `glake-trace replay` subcommand that reports it.
//
// Only the alloc ("a") and free ("f") events are replayed; the other ops of glake traces (create, map,
// stitch, ...) describe what the recording allocator did and are ignored here.
//
// One replay: a HostDriver (cost model on, large capacity: memfd pages are committed only when touched
// and a replay touches none) under a pool::Allocator. Blocks of live_at_start are allocated first, on
// the stream of the trace's first event; that set-up is outside the measured part, as it was outside
// the recording. Then every event runs in order (trace addresses are mapped to pool pointers; a free
// goes to the pool with the event's stream). Measured over the events: peak physical bytes, driver
// calls by kind and modeled driver time, over the whole trace and over its second half by time (the
// events with t_us >= the midpoint of the first and last t_us). At the end validate() must be clean,
// with the trace's last blocks live and again once everything is freed. With passes > 1 the events run
// again (ReplayOptions::passes) before that check; the report's figures other than `passes` are the
// first pass's.
//
// Then the host-side cost: the same alloc/free sequence runs `reps` times through the (warm) pool and
// through glibc malloc/free in the same order, alternating; each run times the events plus the frees of
// what the events left live, and reports ns per alloc+free pair (2 x time / operations); the medians
// are reported. The pointer bookkeeping of the timed loops is a flat array indexed by slot, precomputed
// from the trace, so that the loops time the allocators and not a hash map.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pool/allocator.h"
#include "pool/config.h"
#include "pool/driver.h"
#include "pool/stats.h"
#include "tracer/trace.h"

namespace glake::tracer {

// A replay that could not complete: the pool failed a call, validate() found a violation, or the
// trace is inconsistent (only for traces that did not come from read_trace()).
class ReplayError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ReplayOptions {
  std::size_t capacity = std::size_t{1} << 40;     // the host driver's physical capacity
  std::size_t granularity = std::size_t{2} << 20;  // the host driver's granularity
  pool::Config config;                             // the pool's settings (stitch, small_limit, ...)
  int reps = 5;  // repetitions of each timed loop (pool, glibc); 0 skips the host-cost measurement
  // Passes over the events (>= 1). Each pass after the first replays the blocks that the trace frees
  // again (a training job's next steps), while those it never frees (weights, optimizer state) stay
  // live from the first: the steady state of a job that repeats what the trace recorded.
  int passes = 1;
  // Replay the recording's trims: where the trace released physical memory with no oom or reclaim
  // between the same two allocations or frees (a trim: PyTorch's empty_cache(), cudaMemPoolTrimTo), the
  // pool trims to 0 there too, in every pass; the report then also gives the peaks from the last trim
  // on (what torch.cuda.reset_peak_memory_stats() after empty_cache() measures).
  bool trims = false;
  // Called now and then during the replay with alloc/free events done and in all.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  // Called after each alloc or free event (of every pass) with its index in trace.events and the pool
  // (for tools that follow the pool's state over the replay: physical bytes, a snapshot at the peak, ...).
  std::function<void(std::size_t event_index, const pool::Allocator& pool)> after_step;
  // Called once after the set-up of live_at_start, before the first event.
  std::function<void(const pool::Allocator& pool)> after_setup;
  // Watches the pool's events (create, map, stitch, ...) from the first event on (the set-up of
  // live_at_start excluded); removed before the replay returns.
  pool::Observer* observer = nullptr;
};

// What the pool's physical memory held when it first reached its peak in the first pass (with
// ReplayOptions::trims, the peak from the first pass's last trim on): physical = requested + rounding +
// free_in_chunks + free_large + spare.
struct PeakBreakdown {
  std::uint64_t physical = 0;
  std::uint64_t requested = 0;       // live requests, as asked
  std::uint64_t rounding = 0;        // live blocks beyond their requests (units, whole pages)
  std::uint64_t free_in_chunks = 0;  // free pieces of the shared one-page chunks of small requests
  std::uint64_t free_large = 0;      // free large blocks (cached; on pages they may share with live ones)
  std::uint64_t free_large_blocks = 0;
  std::uint64_t free_large_below_page = 0;  // of free_large_blocks, those shorter than a page
  std::uint64_t spare = 0;           // pages held but mapped nowhere
};

// One pass after the first (ReplayOptions::passes).
struct PassReport {
  std::uint64_t peak_live_bytes = 0;      // over this pass
  std::uint64_t peak_physical_bytes = 0;  // the pool's peak so far (every pass up to this one)
  double ratio = 0;                       // peak_physical_bytes / the largest peak live so far
  std::uint64_t stitches = 0, creates = 0, maps = 0, unmaps = 0;  // in this pass
  double modeled_driver_s = 0;            // in this pass
  double driver_fraction() const;         // modeled_driver_s / the trace's wall time (NaN if 0)
  double wall_s = 0;                      // the trace's wall time (one pass)
};

struct ReplayReport {
  std::string trace;  // the trace's path (or name for in-memory traces)
  std::string name;   // meta.name
  std::uint64_t events = 0, allocs = 0, frees = 0, live_at_start = 0;  // events: alloc + free events
  std::uint64_t other_events = 0;  // events of other ops (glake traces): not replayed

  std::uint64_t peak_live_bytes = 0;      // computed from the trace, live_at_start included
  std::uint64_t peak_physical_bytes = 0;  // the pool's peak of physical memory held
  double ratio = 0;                       // peak_physical / peak_live
  std::optional<std::uint64_t> native_peak_bytes;  // meta.peak_reserved_pytorch_native
  std::optional<double> native_ratio;              // peak_physical / native_peak

  // Over the events (set-up of live_at_start excluded).
  std::array<std::uint64_t, pool::kCallKinds> driver_calls{};
  std::array<std::uint64_t, pool::kCallKinds> driver_ns{};
  double modeled_driver_s = 0;
  double modeled_driver_s_second_half = 0;
  double modeled_driver_s_setup = 0;  // the live_at_start set-up
  double wall_s = 0;                  // last t_us - first t_us
  double wall_s_second_half = 0;      // last t_us - midpoint
  double driver_fraction() const;     // modeled_driver_s / wall_s (NaN if wall_s is 0)
  double driver_fraction_second_half() const;

  pool::Stats pool_stats;  // allocator.stats() after the last event of the first pass
  PeakBreakdown at_peak;

  std::vector<PassReport> passes;  // the passes after the first

  // ReplayOptions::trims: trims replayed (every pass), and the peaks from the last one to the end of
  // the last pass (the whole replay when there was none).
  std::uint64_t trims = 0;
  std::uint64_t peak_live_since_trim = 0, peak_physical_since_trim = 0;
  double ratio_since_trim = 0;

  int reps = 0;
  double pair_ns = 0;        // median ns per alloc+free pair through the pool (NaN if not measured)
  double glibc_pair_ns = 0;  // the same through glibc malloc/free (NaN if not measured)
  std::string glibc_note;    // why glibc_pair_ns is NaN, if it is

  double replay_host_s = 0;  // host time of the replay itself (events only)
  double read_s = 0;         // host time to read, inflate, parse and check the trace (set by the caller)
  std::size_t granularity = 0, capacity = 0;
  bool stitch = true;
  std::size_t small_limit = 0;  // the pool's effective small limit (lowered to half a page if larger)
  std::size_t limit = 0;        // the pool's physical limit (0: none but the capacity)
  bool replayed_trims = false;  // ReplayOptions::trims
};

ReplayReport replay_trace(const Trace& trace, const ReplayOptions& options);

// A PeakBreakdown for people ("608 MiB physical = requests ... + ..."), and as a JSON object.
std::string format_breakdown(const PeakBreakdown& b);
nlohmann::ordered_json breakdown_json(const PeakBreakdown& b);

// The report for people (several lines, ends with a newline) and as one JSON object on one line.
std::string format_report_text(const ReplayReport& r);
std::string format_report_json(const ReplayReport& r);

// `glake-trace replay [options] TRACE...`; args are what follows the subcommand's name.
// Returns the exit status: 0 all traces replayed; 1 some trace failed (each failure is reported on
// stderr, naming the file and the position; the other traces are still replayed and reported);
// 2 bad usage.
int replay_command(const std::vector<std::string>& args);

}  // namespace glake::tracer
