// tracer/pool_trace.cpp: see pool_trace.h.
#include "tracer/pool_trace.h"

#include <nlohmann/json.hpp>

#include "tracer/atomic_file.h"
#include "tracer/snapshot.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

#define GLAKE_SAME_KIND(k) static_assert(static_cast<int>(pool::EventKind::k) == static_cast<int>(Op::k))
GLAKE_SAME_KIND(alloc);
GLAKE_SAME_KIND(free);
GLAKE_SAME_KIND(create);
GLAKE_SAME_KIND(release);
GLAKE_SAME_KIND(map);
GLAKE_SAME_KIND(unmap);
GLAKE_SAME_KIND(stitch);
GLAKE_SAME_KIND(reclaim);
GLAKE_SAME_KIND(oom);
GLAKE_SAME_KIND(offload);
#undef GLAKE_SAME_KIND

const char* state_name(pool::Region::State s) {
  switch (s) {
    case pool::Region::State::allocated: return "allocated";
    case pool::Region::State::free: return "free";
    case pool::Region::State::hole: return "hole";
    case pool::Region::State::busy: return "busy";
    case pool::Region::State::stale: return "stale";
  }
  return "hole";
}

SnapshotRegion region_of(const pool::Region& r) {
  SnapshotRegion g;
  g.base = r.base;
  g.size = r.size;
  g.state = state_name(r.state);
  g.stream = r.stream;
  g.requested = r.requested;
  return g;
}

}  // namespace

TraceSnapshot to_trace_snapshot(const pool::Snapshot& s, const SnapshotContext& c) {
  TraceSnapshot t;
  t.t_us = c.t_us;
  t.device = c.device;
  t.reason = c.reason;
  t.request = c.request;
  t.page_size = s.page_size;
  t.spare_pages = s.spare_pages;
  t.regions.reserve(s.regions.size());
  for (const pool::Region& r : s.regions) t.regions.push_back(region_of(r));
  t.small_blocks.reserve(s.small_blocks.size());
  for (const pool::Region& r : s.small_blocks) t.small_blocks.push_back(region_of(r));
  const pool::Stats& st = s.stats;
  t.stats = {{"requested", st.requested.current}, {"requested_peak", st.requested.peak},
             {"blocks", st.blocks.current},       {"blocks_peak", st.blocks.peak},
             {"physical", st.physical.current},   {"physical_peak", st.physical.peak},
             {"mapped", st.mapped.current},       {"mapped_peak", st.mapped.peak},
             {"allocs", st.allocs},               {"frees", st.frees},
             {"creates", st.creates},             {"releases", st.releases},
             {"maps", st.maps},                   {"unmaps", st.unmaps},
             {"stitches", st.stitches},           {"reclaims", st.reclaims},
             {"ooms", st.ooms},                   {"driver_ns", st.driver_ns},
             {"stream", c.stream}};
  if (c.limit != 0) t.stats["limit"] = c.limit;
  if (c.device_total != 0) t.stats["device_total"] = c.device_total;
  if (c.device_free != 0) t.stats["device_free"] = c.device_free;
  return t;
}

std::string pool_snapshot_json(const pool::Snapshot& s, const SnapshotContext& c) {
  return snapshot_to_json(to_trace_snapshot(s, c)).dump();
}

std::string write_pool_snapshot(const std::string& path, const pool::Snapshot& s, const SnapshotContext& c) noexcept {
  try {
    Trace t;
    TraceSnapshot snap = to_trace_snapshot(s, c);
    snap.json = snapshot_to_json(snap).dump();
    nlohmann::ordered_json m;
    m["name"] = "pool snapshot";
    m["source"] = "glake tracer (snapshot)";
    t.meta.json = m.dump();
    t.snapshots.push_back(std::move(snap));
    write_trace(t, path);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

void register_pool(TraceSession& session, const pool::Allocator* pool) {
  session.add_totals_source([pool] {
    pool::Stats s = pool->stats();
    return Totals{s.requested.current, s.physical.current};
  });
}

std::string on_out_of_memory(TraceSession& session, const pool::Allocator& pool, SnapshotContext c) noexcept {
  try {
    session.recorder().mark();  // the out-of-memory event is placed before the snapshot
    if (c.t_us == 0) c.t_us = session.recorder().now_us();
    return session.on_snapshot(to_trace_snapshot(pool.snapshot(), c));
  } catch (...) {
    return "";
  }
}

}  // namespace glake::tracer
