// tracer/snapshot.h: a pool snapshot (TraceSnapshot, trace.h) to JSON and back, and what it says
// about fragmentation.
//
// The JSON object (FORMAT.md, "snapshots"):
//   {"t_us": T, "device": D, "reason": "oom", "request": BYTES, "stream": S, "page_size": P,
//    "spare_pages": N, "stats": {"physical": ..., ...},
//    "regions": [[base, size, state, stream, requested], ...], "small_blocks": [[...], ...],
//    "summary": {...}}
// t_us, page_size and regions are required; "summary" is derived (written for people and other tools,
// recomputed, never trusted, on reading). States: allocated, free, hole, busy, stale.
// This file does not depend on the pool: tracer/pool_trace.h converts pool::Snapshot into a
// TraceSnapshot.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "tracer/trace.h"

namespace glake::tracer {

// What a snapshot says about fragmentation. Bytes; "mapped" regions are allocated, free, busy, stale.
struct SnapshotSummary {
  std::uint64_t allocated_bytes = 0;  // large regions in use (blocks, shared pages included)
  std::uint64_t requested_bytes = 0;  // bytes the callers asked for in them (small pieces included)
  std::uint64_t free_bytes = 0;       // cached large regions, mapped and unused
  std::uint64_t largest_free_bytes = 0;
  std::uint64_t free_ranges = 0;
  std::uint64_t stale_bytes = 0;  // still mapped at addresses a stitch moved away from
  std::uint64_t busy_bytes = 0;
  std::uint64_t hole_bytes = 0;   // reserved address space with nothing mapped
  std::uint64_t small_free_bytes = 0;  // free pieces inside shared pages
  std::uint64_t spare_bytes = 0;       // pages held, mapped nowhere
  std::uint64_t physical_bytes = 0;    // stats.physical when present, else allocated + free + spare
  // physical - requested: memory held that no request uses (cached, rounding, shared-page slack).
  std::uint64_t unused_bytes() const { return physical_bytes > requested_bytes ? physical_bytes - requested_bytes : 0; }
};

SnapshotSummary summarize_snapshot(const TraceSnapshot& s);

// The JSON object of a snapshot (with "summary").
nlohmann::ordered_json snapshot_to_json(const TraceSnapshot& s);
// Fills `out` from a snapshot object (out.json is left alone). Throws std::invalid_argument naming the
// field and what was expected.
void snapshot_from_json(const nlohmann::json& j, TraceSnapshot& out);

// One paragraph for people: what the pool held and why a request of snapshot.request bytes could not
// be served (for reason "oom"), several lines, each ending in a newline. Times are shown from t0_us
// (the trace's first event; 0: as recorded).
std::string explain_snapshot(const TraceSnapshot& s, std::uint64_t t0_us = 0);

}  // namespace glake::tracer
