// tracer/trace.h: an allocation trace in memory, as the replay and the other trace tools see it.
//
// Two on-disk formats are read into it (trace_reader.h) and one is written (trace_writer.h):
// - the shared format (PyTorch allocator history, see /work/shared/traces/README.md): {"meta": {...},
//   "live_at_start": [[addr, size], ...], "events": [[t_us, op, addr, size, stream], ...]}, op "a" | "f";
// - glake's own format ("format": "glake-trace", "version": 1; tracer/FORMAT.md), a superset: more ops
//   (create, release, map, unmap, stitch, reclaim, oom, offload), optional extra columns per event
//   (device, thread, stack, aux), "stacks" (id -> frames) and "snapshots" (the pool's layout, e.g. at
//   out-of-memory).
// Both are gzip-compressed or plain.
//
// Invariants of a Trace that read_trace() returned (check_trace() establishes them):
// - events are in file order and t_us never decreases;
// - every free names a block that is live at that point (allocated by an earlier event or listed in
//   live_at_start) and carries the size it was allocated with;
// - no allocation names an address that is live, and live_at_start names each address once;
// - every stack id an event or block names is 0 (none) or a key of `stacks`;
// - the live bytes and the physical bytes (below) never pass 2^64 - 1, so sums of sizes do not wrap;
// - event_offsets has one entry per event (empty only for traces built in memory);
// - peak_live_bytes is the largest sum of live sizes, live_at_start included; allocs and frees count
//   the "a" and "f" events; the other ops never change the live set.
// Addresses are identifiers only: a replay places blocks itself and uses only the "a" and "f" events.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace glake::tracer {

// The order is the file format's: names in op_name(), never reorder.
enum class Op : std::uint8_t {
  alloc,    // "a": an allocation: addr, size (requested bytes), stream
  free,     // "f": a free requested by the program: addr, size it was allocated with, stream
  create,   // physical memory created: size (addr 0 or the segment's address)
  release,  // physical memory released: size
  map,      // addr, size mapped
  unmap,    // addr, size unmapped
  stitch,   // a block made of pages moved from elsewhere: addr, size; aux = pages moved
  reclaim,  // cached memory reclaimed before reporting out-of-memory: size
  oom,      // an allocation failed: size = the request, stream
  offload,  // LayerKV: bytes moved to host memory: addr, size
};
constexpr int kOps = 10;
// "a", "f", "create", ...; nullptr for an out-of-range value.
const char* op_name(Op op);
// The op named `name`, or nullopt.
std::optional<Op> op_from_name(std::string_view name);
inline bool is_alloc_or_free(Op op) { return op == Op::alloc || op == Op::free; }

struct TraceEvent {
  std::uint64_t t_us = 0;    // microseconds, monotonic within a trace
  std::uint64_t addr = 0;    // the recording allocator's address: an identifier
  std::uint64_t size = 0;    // bytes
  std::uint64_t stream = 0;  // CUDA stream handle as an integer
  Op op = Op::alloc;
  // Optional columns of the glake format (0 where the file has none).
  std::uint32_t device = 0;
  std::uint32_t thread = 0;  // the recording thread's id (Linux tid)
  std::uint32_t stack = 0;   // key of Trace::stacks, 0: none
  std::uint64_t aux = 0;     // op-specific (stitch: pages moved)
};

struct LiveBlock {
  std::uint64_t addr = 0;
  std::uint64_t size = 0;
  std::uint64_t stream = 0;   // optional third column
  std::uint32_t device = 0;   // optional fourth column
  std::uint32_t stack = 0;    // optional fifth column
};

// One frame of a call stack, as far as it could be symbolised.
struct Frame {
  std::string fn;   // function (demangled), "" if unknown
  std::string src;  // "file:line", "" if unknown
  std::string obj;  // "object+0xoffset" (the shared object or executable and the offset in it)
};

// A pool region or small block of a snapshot (pool::Region, without the pool dependency).
struct SnapshotRegion {
  std::uint64_t base = 0;
  std::uint64_t size = 0;
  std::string state;  // "allocated", "free", "hole", "busy", "stale"
  std::uint64_t stream = 0;
  std::uint64_t requested = 0;
};

// The pool's layout at one moment (written at out-of-memory, or on request).
struct TraceSnapshot {
  std::uint64_t t_us = 0;
  std::uint32_t device = 0;
  std::string reason;               // "oom", "request", ...
  std::uint64_t request = 0;        // oom: the request that failed
  std::uint64_t page_size = 0;
  std::uint64_t spare_pages = 0;
  std::vector<SnapshotRegion> regions;       // large-block layout, address order
  std::vector<SnapshotRegion> small_blocks;  // pieces of shared pages
  std::map<std::string, std::uint64_t> stats;  // the pool's counters (physical, requested, ...)
  std::string json;  // the snapshot object as it appears in the file
};

// What the tools use from "meta"; the whole object is kept as text for tools that want more.
struct TraceMeta {
  std::string name;                                 // meta.name, else the file name
  std::optional<std::uint64_t> peak_live_bytes;     // as the recorder computed it
  std::optional<std::uint64_t> peak_reserved_native;  // meta.peak_reserved_pytorch_native
  std::optional<double> median_iter_s;
  // glake format: physical bytes held when the first event was recorded (the recorder's ring may have
  // dropped the create events before it); 0 if absent.
  std::optional<std::uint64_t> physical_at_start_bytes;
  std::optional<std::uint64_t> events_dropped;      // events the recorder lost (ring full)
  std::string stacks_note;                          // meta.stacks: "on", "off", "unavailable: ..."
  std::string json;  // the "meta" object as it appears in the file ("{}" when absent)
};

struct Trace {
  std::string path;  // where it was read from ("" for traces built in memory)
  std::string format = "shared";  // "shared" or "glake-trace"
  std::uint32_t version = 0;      // glake-trace: the format version (1)
  TraceMeta meta;
  std::vector<LiveBlock> live_at_start;
  std::vector<TraceEvent> events;
  std::map<std::uint32_t, std::vector<Frame>> stacks;  // id (>= 1) -> frames, innermost first
  std::vector<TraceSnapshot> snapshots;
  // Byte offset of each event's '[' in the decompressed JSON, for error messages.
  std::vector<std::uint64_t> event_offsets;
  std::uint64_t peak_live_bytes = 0;  // computed by check_trace()
  std::uint64_t allocs = 0;           // alloc events
  std::uint64_t frees = 0;            // free events
  std::uint64_t other_events = 0;     // events of the other ops
  // From create/release events (plus meta.physical_at_start_bytes): nullopt if the trace has none.
  std::optional<std::uint64_t> peak_physical_bytes;
};

}  // namespace glake::tracer
