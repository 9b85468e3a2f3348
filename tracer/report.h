// tracer/report.h: `glake-trace report TRACE -o report.html`: one self-contained HTML page (inline CSS,
// inline SVG, a little inline JS for tooltips; nothing fetched from the network) that answers "where did
// my memory go and what would glake save":
//   - the key numbers: peak live, the recording allocator's peak physical (glake's pool, or PyTorch's
//     reserved memory for imported snapshots), PyTorch's native peak (meta), glake's peak in a replay
//     through the pool (what-if options as for `replay`), and the saving;
//   - memory over time: live, recorded physical, glake's physical (replay); out-of-memory marks;
//   - fragmentation (physical - live) over time, and the bucket table of `summary`;
//   - block maps: glake's pool at the peak of live bytes (replay), and the trace's own snapshots (the
//     pool at an out-of-memory, PyTorch's segments at the snapshot), one cell per page;
//   - the allocation sites holding the most bytes at the peak, and every out-of-memory explained.
#pragma once

#include <string>
#include <vector>

#include "tracer/replay.h"
#include "tracer/trace.h"

namespace glake::tracer {

struct ReportOptions {
  bool replay = true;
  ReplayOptions replay_options;
  std::size_t max_points = 1500;  // per series in the plots
  int top_sites = 12;
  int buckets = 12;
};

std::string report_html(const Trace& t, const ReportOptions& o);

int report_command(const std::vector<std::string>& args);

}  // namespace glake::tracer
