// tracer/trace_cut.cpp: see trace_cut.h.
#include "tracer/trace_cut.h"

#include <algorithm>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "tracer/trace_reader.h"

namespace glake::tracer {

Trace trace_from(const Trace& t, std::uint64_t from_us) {
  std::vector<LiveBlock> blocks = t.live_at_start;  // every block allocated before from_us, in order
  std::vector<bool> live(blocks.size(), true);
  std::unordered_map<std::uint64_t, std::size_t> index;  // live address -> its block
  for (std::size_t i = 0; i < blocks.size(); ++i) index[blocks[i].addr] = i;
  // check_trace() keeps physical within [0, 2^64) after every event: unsigned arithmetic is exact here
  // (sizes of 2^63 or more made a signed delta negative or overflow it).
  std::uint64_t physical = t.meta.physical_at_start_bytes.value_or(0);
  std::size_t first = 0;  // the first event kept
  for (; first < t.events.size() && t.events[first].t_us < from_us; ++first) {
    const TraceEvent& e = t.events[first];
    if (e.op == Op::alloc) {
      index[e.addr] = blocks.size();
      blocks.push_back(LiveBlock{e.addr, e.size, e.stream, e.device, e.stack});
      live.push_back(true);
    } else if (e.op == Op::free) {
      auto it = index.find(e.addr);
      if (it != index.end()) {  // check_trace() guarantees it is there
        live[it->second] = false;
        index.erase(it);
      }
    } else if (e.op == Op::create) {
      physical += e.size;
    } else if (e.op == Op::release) {
      physical -= e.size;
    }
  }

  Trace out;
  out.path = t.path;
  out.format = t.format;
  out.version = t.version;
  out.meta = t.meta;
  out.meta.peak_live_bytes.reset();
  out.meta.name = fmt::format("{} (from t = {:.3f} s)", t.meta.name, static_cast<double>(from_us) * 1e-6);
  if (t.peak_physical_bytes) out.meta.physical_at_start_bytes = physical;
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (live[i]) out.live_at_start.push_back(blocks[i]);
  out.events.assign(t.events.begin() + static_cast<std::ptrdiff_t>(first), t.events.end());
  if (t.event_offsets.size() == t.events.size())
    out.event_offsets.assign(t.event_offsets.begin() + static_cast<std::ptrdiff_t>(first), t.event_offsets.end());
  out.stacks = t.stacks;
  for (const TraceSnapshot& s : t.snapshots)
    if (s.t_us >= from_us) out.snapshots.push_back(s);
  check_trace(out, out.path.empty() ? out.meta.name : out.path);
  return out;
}

}  // namespace glake::tracer
