// tracer/trace.h: an allocation trace in memory, as the replay and the other trace tools see it.
//
// The on-disk format is the one of the shared traces (PyTorch allocator history, see
// /work/shared/traces/README.md): {"meta": {...}, "live_at_start": [[addr, size], ...],
// "events": [[t_us, op, addr, size, stream], ...]}, gzip-compressed or plain. trace_reader.h reads it.
//
// Invariants of a Trace that read_trace() returned (check_trace() establishes them):
// - events are in file order and t_us never decreases;
// - every free names a block that is live at that point (allocated by an earlier event or listed in
//   live_at_start) and carries the size it was allocated with;
// - no allocation names an address that is live, and live_at_start names each address once;
// - event_offsets has one entry per event (empty only for traces built in memory);
// - peak_live_bytes is the largest sum of live sizes, live_at_start included.
// Addresses are identifiers only: a replay places blocks itself.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace glake::tracer {

enum class Op : std::uint8_t { alloc, free };

struct TraceEvent {
  std::uint64_t t_us = 0;    // microseconds, monotonic within a trace
  std::uint64_t addr = 0;    // the recording allocator's address: an identifier
  std::uint64_t size = 0;    // bytes
  std::uint64_t stream = 0;  // CUDA stream handle as an integer
  Op op = Op::alloc;
};

struct LiveBlock {
  std::uint64_t addr = 0;
  std::uint64_t size = 0;
};

// What the tools use from "meta"; the whole object is kept as text for tools that want more.
struct TraceMeta {
  std::string name;                                 // meta.name, else the file name
  std::optional<std::uint64_t> peak_live_bytes;     // as the recorder computed it
  std::optional<std::uint64_t> peak_reserved_native;  // meta.peak_reserved_pytorch_native
  std::optional<double> median_iter_s;
  std::string json;  // the "meta" object as it appears in the file ("{}" when absent)
};

struct Trace {
  std::string path;  // where it was read from ("" for traces built in memory)
  TraceMeta meta;
  std::vector<LiveBlock> live_at_start;
  std::vector<TraceEvent> events;
  // Byte offset of each event's '[' in the decompressed JSON, for error messages.
  std::vector<std::uint64_t> event_offsets;
  std::uint64_t peak_live_bytes = 0;  // computed by check_trace()
  std::uint64_t allocs = 0;           // alloc events
  std::uint64_t frees = 0;            // free events
};

}  // namespace glake::tracer
