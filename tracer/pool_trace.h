// tracer/pool_trace.h: the tracer attached to the pool: pool events into the recorder, pool snapshots
// into the trace's JSON. The one file of the tracer library proper that knows pool types (the
// recorder and the formats do not).
//
// Use (what the shim's thin adapter does):
//   TraceSession* s = TraceSession::start_from_env(&errors);   // GLAKE_TRACE set?
//   PoolTraceObserver observer(&s->recorder());                  // one for every pool
//   allocator.set_observer(&observer);
//   register_pool(*s, &allocator);                               // its totals, for wrapped rings
//   ... allocator.allocate(...) returned out_of_memory (no pool lock held now):
//   on_out_of_memory(*s, allocator, context);                   // snapshot, write, ask for the trace
// and dump() from the C API. PoolTraceObserver::on_event only records (see recorder.h for the cost);
// it never calls back into the pool.
#pragma once

#include <string>

#include "pool/allocator.h"
#include "pool/observer.h"
#include "tracer/recorder.h"
#include "tracer/session.h"

namespace glake::tracer {

// pool::EventKind -> trace op (same meanings, see pool/observer.h). The two enums list the same kinds in
// the same order (static_asserts in pool_trace.cpp), so the mapping is a cast.
inline Op op_of(pool::EventKind kind) { return static_cast<Op>(static_cast<std::uint8_t>(kind)); }

// One observer per pool: the pool emits every event with its mutex held (pool/observer.h), so one
// pool's events are serialised, which is what a lane asks of its writer. The observer makes a lane on
// its first event and records all its pool's events there (device carried per event): no atomic
// read-modify-write per event, and the pool's order kept exactly. Pools (of one device or of several)
// each have their own lane, so any number may share a recorder. Past Recorder::kMaxLanes pools, or if
// a lane cannot be reserved, the observer records into the shared ring.
class PoolTraceObserver final : public pool::Observer {
 public:
  explicit PoolTraceObserver(Recorder* recorder) : recorder_(recorder) {}
  void on_event(const pool::PoolEvent& e) noexcept override {
    // lane_ is read and written only here, under the pool's lock.
    if (Recorder::Lane* lane = lane_; __builtin_expect(lane != nullptr, 1)) {
      lane->record(op_of(e.kind), device_of(e), static_cast<std::uint64_t>(e.stream),
                   static_cast<std::uint64_t>(e.address), e.size, e.aux);
      return;
    }
    record_without_lane(e);
  }

 private:
  static std::uint32_t device_of(const pool::PoolEvent& e) { return e.device < 0 ? 0u : static_cast<std::uint32_t>(e.device); }
  // The first event (makes the lane), or every event when there is none.
  [[gnu::noinline]] void record_without_lane(const pool::PoolEvent& e) noexcept {
    if (!tried_lane_) {
      tried_lane_ = true;
      lane_ = recorder_->add_lane();
    }
    if (lane_ != nullptr) {
      lane_->record(op_of(e.kind), device_of(e), static_cast<std::uint64_t>(e.stream),
                    static_cast<std::uint64_t>(e.address), e.size, e.aux);
      return;
    }
    recorder_->record(op_of(e.kind), device_of(e), static_cast<std::uint64_t>(e.stream),
                      static_cast<std::uint64_t>(e.address), e.size, e.aux);
  }

  Recorder* recorder_;
  Recorder::Lane* lane_ = nullptr;  // this pool's lane (null: not made yet, or none: the shared ring)
  bool tried_lane_ = false;
};

// What the pool's snapshot does not know about the moment it was taken.
struct SnapshotContext {
  std::uint64_t t_us = 0;          // on the trace's clock (Recorder::now_us()); 0: the session's now
  std::uint32_t device = 0;
  std::string reason = "oom";      // "oom", "request", ...
  std::uint64_t request = 0;       // oom: the request that failed (bytes)
  std::uint64_t stream = 0;
  std::uint64_t limit = 0;         // GLAKE_LIMIT (0: none)
  std::uint64_t device_total = 0;  // the device's memory (0: unknown)
  std::uint64_t device_free = 0;   // free on the device per the driver (0: unknown)
};

TraceSnapshot to_trace_snapshot(const pool::Snapshot& s, const SnapshotContext& c);
// The snapshot's JSON object (tracer/snapshot.h; FORMAT.md "snapshots").
std::string pool_snapshot_json(const pool::Snapshot& s, const SnapshotContext& c);
// Writes the snapshot as a small glake trace of its own (meta, no events, one snapshot) to `path`,
// atomically: `glake-trace summary PATH` explains it. Returns "" or what went wrong.
std::string write_pool_snapshot(const std::string& path, const pool::Snapshot& s, const SnapshotContext& c) noexcept;

// Adds the pool's live (requested) and physical bytes to what the session's traces start from when the
// ring overwrote older events (TraceSession::add_totals_source). The pool must outlive the session's
// last write (the shim's pools are never destroyed).
void register_pool(TraceSession& session, const pool::Allocator* pool);

// For the shim, after allocate() returned out_of_memory (no pool lock held): takes the pool's snapshot
// and hands it to the session (kept for the trace, written to GLAKE_TRACE_OOM, whole trace requested).
// Returns the snapshot file written, or "".
std::string on_out_of_memory(TraceSession& session, const pool::Allocator& pool, SnapshotContext c) noexcept;

}  // namespace glake::tracer
