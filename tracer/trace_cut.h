// tracer/trace_cut.h: the part of a trace from one moment on, e.g. a job's steps without the loading
// of its model (`glake-trace replay --from SECONDS`).
#pragma once

#include <cstdint>

#include "tracer/trace.h"

namespace glake::tracer {

// The events of `t` at or after from_us (its own clock, TraceEvent::t_us), as a trace of its own: the
// blocks live just before from_us (live_at_start and the allocations before it not freed before it)
// become its live_at_start, in the order they were allocated, with their stream, device and stack;
// physical bytes held then become meta.physical_at_start_bytes (when `t` records them); snapshots at
// or after from_us are kept, stacks all; meta.peak_live_bytes (the recorder's figure for the whole
// trace) is dropped and meta.name says where it starts. Checked (check_trace): peaks and counts are
// the part's. meta.json is left as it was.
Trace trace_from(const Trace& t, std::uint64_t from_us);

}  // namespace glake::tracer
