// tracer/export_chrome.h: `glake-trace export --chrome`: a trace as Chrome trace-event JSON, which
// Perfetto (ui.perfetto.dev, "Open trace file") and chrome://tracing open.
//
// Output: {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}} with, per device, a
// process "glake device N" holding
//   - a counter track "memory" with the series live, physical (when known) and fragmented
//     (physical - live), in MiB, sampled at every event (--max-samples thins them keeping extremes);
//   - with --replay, a counter "glake replay" (glake's physical bytes and its fragmentation);
//   - instant events "stitch" (address, size, pages moved) and "out of memory" (request) on the
//     recording thread's track, and "reclaim";
//   - with --blocks BYTES, one complete event ("X") per allocation of at least BYTES on a "blocks"
//     thread, from allocation to free.
// Timestamps are the trace's microseconds.
#pragma once

#include <string>
#include <vector>

#include "tracer/trace.h"

namespace glake::tracer {

struct ChromeOptions {
  std::size_t max_samples = 200000;  // counter samples per series and device (0: all)
  std::uint64_t blocks_min = 0;      // 0: no block events
  bool replay = false;
};

std::string chrome_trace_json(const Trace& t, const ChromeOptions& o);

int export_command(const std::vector<std::string>& args);

}  // namespace glake::tracer
