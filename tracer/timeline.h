// tracer/timeline.h: what the trace tools compute from a trace: live and physical bytes over time,
// peaks, fragmentation (physical - live) by time bucket, the allocation sites holding the most bytes
// at a moment, and glake's own physical bytes from a replay through the pool.
//
// Live bytes: the sum of the sizes of live blocks (live_at_start, then a/f events). Physical bytes:
// meta.physical_at_start_bytes plus create minus release events (what the recording allocator held:
// glake's pool, or PyTorch's segments for imported snapshots); absent when the trace has neither.
// Fragmentation = physical - live (memory held that no live allocation uses).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "tracer/replay.h"
#include "tracer/trace.h"

namespace glake::tracer {

constexpr std::size_t kAtStart = std::numeric_limits<std::size_t>::max();  // "before the first event"

struct Sample {
  std::uint64_t t_us = 0;
  std::uint64_t live = 0;
  std::uint64_t physical = 0;  // 0 when the timeline has no physical series
};

struct Timeline {
  bool has_physical = false;
  std::string physical_source;   // "trace" (create/release events) or "glake replay"
  std::vector<Sample> samples;   // samples[0]: at the start; samples[i + 1]: after events[i]
  std::uint64_t peak_live = 0;
  std::size_t peak_live_event = kAtStart;  // the event after which live peaked (first such)
  std::uint64_t peak_physical = 0;
  std::size_t peak_physical_event = kAtStart;
  std::uint64_t peak_frag = 0;             // max(physical - live)
  std::size_t peak_frag_event = kAtStart;
  std::uint64_t t_first = 0, t_last = 0;   // first and last event times
  std::uint64_t ops[kOps] = {};            // events by op
  std::size_t devices = 0, streams = 0, threads = 0;
  const Sample& after(std::size_t event) const { return samples[event == kAtStart ? 0 : event + 1]; }
};

Timeline build_timeline(const Trace& t);
// Replaces the physical series by `physical_after_event` (one value per event) from `start`.
void set_physical(Timeline& tl, std::uint64_t start, const std::vector<std::uint64_t>& physical_after_event,
                  const std::string& source);

struct Bucket {
  std::uint64_t t0 = 0, t1 = 0;
  std::uint64_t max_live = 0, max_physical = 0, max_frag = 0;
  std::uint64_t end_live = 0, end_physical = 0;
  std::uint64_t events = 0, allocs = 0, frees = 0, stitches = 0, ooms = 0;
};
// n buckets of equal time over [first event, last event] (fewer if the trace is shorter).
std::vector<Bucket> bucketize(const Trace& t, const Timeline& tl, int n);

// At most max_points samples that keep each stretch's highest and lowest live and physical values.
std::vector<Sample> downsample(const std::vector<Sample>& s, std::size_t max_points);

struct Site {
  std::uint32_t stack = 0;  // 0: no stack
  bool at_start = false;    // blocks of live_at_start without a stack
  std::uint64_t bytes = 0, blocks = 0;
};
// The live blocks after `event` (kAtStart: at the start), grouped by allocation stack, largest first.
std::vector<Site> sites_at(const Trace& t, std::size_t event, std::uint64_t* total_bytes = nullptr,
                           std::uint64_t* total_blocks = nullptr);

// The frames worth showing of a stack, innermost first, at most n: Python frames ("file.py:line") if
// the stack has any (PyTorch imports), else native frames without the interpreter's and the
// allocator's own.
std::vector<Frame> display_frames(const Trace& t, std::uint32_t stack, int n);
// "fn (file:line)" / "fn [obj+0x..]".
std::string frame_text(const Frame& f);

// The trace restricted to one device (events, blocks and snapshots of that device), checked. Throws
// std::runtime_error for a device the trace does not name (unless the trace is empty).
Trace filter_device(const Trace& t, std::uint32_t device);

// A replay through glake's pool that follows physical bytes after every event and snapshots the pool
// after `snapshot_event` (kAtStart: after the set-up of live_at_start; nullopt: no snapshot).
struct GlakeReplay {
  std::string error;  // "" when it completed
  std::vector<std::uint64_t> physical_after_event;
  std::uint64_t start_physical = 0;  // after the set-up of live_at_start
  std::optional<TraceSnapshot> snapshot;
  ReplayReport report;
};
GlakeReplay replay_for_timeline(const Trace& t, ReplayOptions options, std::optional<std::size_t> snapshot_event);

}  // namespace glake::tracer
