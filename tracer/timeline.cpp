// tracer/timeline.cpp: see timeline.h.
#include "tracer/timeline.h"

#include <algorithm>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tracer/pool_trace.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {

Timeline build_timeline(const Trace& t) {
  Timeline tl;
  std::unordered_map<std::uint64_t, std::uint64_t> live_size;
  live_size.reserve(t.live_at_start.size() + 1024);
  std::uint64_t live = 0;
  for (const LiveBlock& b : t.live_at_start) {
    live_size[b.addr] = b.size;
    live += b.size;
  }
  tl.has_physical = t.peak_physical_bytes.has_value();
  if (tl.has_physical) tl.physical_source = "trace";
  std::uint64_t physical = t.meta.physical_at_start_bytes.value_or(0);
  tl.samples.reserve(t.events.size() + 1);
  std::uint64_t t0 = t.events.empty() ? 0 : t.events.front().t_us;
  tl.samples.push_back({t0, live, tl.has_physical ? physical : 0});
  tl.peak_live = live;
  tl.peak_physical = tl.has_physical ? physical : 0;
  tl.peak_frag = tl.has_physical && physical > live ? physical - live : 0;
  std::set<std::uint32_t> devices, threads;
  std::set<std::uint64_t> streams;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    ++tl.ops[static_cast<int>(e.op)];
    devices.insert(e.device);
    if (e.thread != 0) threads.insert(e.thread);
    switch (e.op) {
      case Op::alloc:
        streams.insert(e.stream);
        live += e.size;
        break;
      case Op::free:
        streams.insert(e.stream);
        live -= e.size;
        break;
      case Op::create: physical += e.size; break;
      case Op::release: physical -= e.size; break;
      default: break;
    }
    tl.samples.push_back({e.t_us, live, tl.has_physical ? physical : 0});
    if (live > tl.peak_live) {
      tl.peak_live = live;
      tl.peak_live_event = i;
    }
    if (tl.has_physical) {
      if (physical > tl.peak_physical) {
        tl.peak_physical = physical;
        tl.peak_physical_event = i;
      }
      if (physical > live && physical - live > tl.peak_frag) {
        tl.peak_frag = physical - live;
        tl.peak_frag_event = i;
      }
    }
  }
  tl.t_first = t0;
  tl.t_last = t.events.empty() ? 0 : t.events.back().t_us;
  tl.devices = devices.size();
  tl.streams = streams.size();
  tl.threads = threads.size();
  return tl;
}

void set_physical(Timeline& tl, std::uint64_t start, const std::vector<std::uint64_t>& after,
                  const std::string& source) {
  tl.has_physical = true;
  tl.physical_source = source;
  tl.samples[0].physical = start;
  tl.peak_physical = start;
  tl.peak_physical_event = kAtStart;
  tl.peak_frag = start > tl.samples[0].live ? start - tl.samples[0].live : 0;
  tl.peak_frag_event = kAtStart;
  for (std::size_t i = 0; i < after.size() && i + 1 < tl.samples.size(); ++i) {
    Sample& s = tl.samples[i + 1];
    s.physical = after[i];
    if (s.physical > tl.peak_physical) {
      tl.peak_physical = s.physical;
      tl.peak_physical_event = i;
    }
    if (s.physical > s.live && s.physical - s.live > tl.peak_frag) {
      tl.peak_frag = s.physical - s.live;
      tl.peak_frag_event = i;
    }
  }
}

std::vector<Bucket> bucketize(const Trace& t, const Timeline& tl, int n) {
  std::vector<Bucket> out;
  if (t.events.empty() || n <= 0) return out;
  const std::uint64_t span = tl.t_last - tl.t_first;
  // span / n + 1, not (span + n) / n: a span near 2^64 (t_us 0 and 2^64 - 1 in one trace) would wrap
  // to no buckets at all. width >= 2 whenever span >= n, so span / width + 1 cannot wrap either.
  const std::uint64_t width = span / static_cast<std::uint64_t>(n) + 1;
  const std::uint64_t buckets = std::min<std::uint64_t>(static_cast<std::uint64_t>(n), span / width + 1);
  out.resize(static_cast<std::size_t>(buckets));
  for (std::size_t b = 0; b < out.size(); ++b) {
    out[b].t0 = tl.t_first + b * width;  // b * width <= span: within [t_first, t_last]
    out[b].t1 = out[b].t0 + std::min(width, tl.t_last - out[b].t0);
  }
  // Each bucket starts with the state at its start (the previous bucket's end).
  Sample prev = tl.samples[0];
  std::size_t b = 0;
  auto open = [&](Bucket& k) {
    k.max_live = std::max(k.max_live, prev.live);
    k.max_physical = std::max(k.max_physical, prev.physical);
    if (prev.physical > prev.live) k.max_frag = std::max(k.max_frag, prev.physical - prev.live);
    k.end_live = prev.live;
    k.end_physical = prev.physical;
  };
  open(out[0]);
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    std::size_t nb = std::min<std::size_t>(out.size() - 1, static_cast<std::size_t>((e.t_us - tl.t_first) / width));
    while (b < nb) open(out[++b]);
    Bucket& k = out[b];
    const Sample& s = tl.samples[i + 1];
    ++k.events;
    if (e.op == Op::alloc) ++k.allocs;
    else if (e.op == Op::free) ++k.frees;
    else if (e.op == Op::stitch) ++k.stitches;
    else if (e.op == Op::oom) ++k.ooms;
    k.max_live = std::max(k.max_live, s.live);
    k.max_physical = std::max(k.max_physical, s.physical);
    if (s.physical > s.live) k.max_frag = std::max(k.max_frag, s.physical - s.live);
    k.end_live = s.live;
    k.end_physical = s.physical;
    prev = s;
  }
  while (b + 1 < out.size()) open(out[++b]);
  return out;
}

std::vector<Sample> downsample(const std::vector<Sample>& s, std::size_t max_points) {
  if (s.size() <= max_points || max_points < 8) return s;
  // Stretches of equal sample count; from each, its extremes of live and physical in time order.
  const std::size_t stretches = max_points / 4;
  const double per = static_cast<double>(s.size()) / static_cast<double>(stretches);
  std::vector<Sample> out;
  out.reserve(max_points + 2);
  for (std::size_t k = 0; k < stretches; ++k) {
    std::size_t a = static_cast<std::size_t>(static_cast<double>(k) * per);
    std::size_t z = std::min(s.size(), static_cast<std::size_t>(static_cast<double>(k + 1) * per));
    if (a >= z) continue;
    std::size_t idx[4] = {a, a, a, a};  // max live, min live, max physical, min physical
    for (std::size_t i = a; i < z; ++i) {
      if (s[i].live > s[idx[0]].live) idx[0] = i;
      if (s[i].live < s[idx[1]].live) idx[1] = i;
      if (s[i].physical > s[idx[2]].physical) idx[2] = i;
      if (s[i].physical < s[idx[3]].physical) idx[3] = i;
    }
    std::sort(std::begin(idx), std::end(idx));
    std::size_t last = SIZE_MAX;
    for (std::size_t i : idx)
      if (i != last) out.push_back(s[i]), last = i;
  }
  if (out.empty() || out.back().t_us != s.back().t_us || out.back().live != s.back().live) out.push_back(s.back());
  return out;
}

std::vector<Site> sites_at(const Trace& t, std::size_t event, std::uint64_t* total_bytes, std::uint64_t* total_blocks) {
  struct Live {
    std::uint64_t size;
    std::uint32_t stack;
    bool at_start;
  };
  std::unordered_map<std::uint64_t, Live> live;
  live.reserve(t.live_at_start.size() + 4096);
  for (const LiveBlock& b : t.live_at_start) live[b.addr] = {b.size, b.stack, b.stack == 0};
  if (event != kAtStart) {
    for (std::size_t i = 0; i <= event && i < t.events.size(); ++i) {
      const TraceEvent& e = t.events[i];
      if (e.op == Op::alloc) live[e.addr] = {e.size, e.stack, false};
      else if (e.op == Op::free) live.erase(e.addr);
    }
  }
  std::unordered_map<std::uint64_t, Site> by;  // key: stack, or a marker for "at start"
  std::uint64_t bytes = 0, blocks = 0;
  for (const auto& [addr, l] : live) {
    std::uint64_t key = l.at_start ? (std::uint64_t{1} << 40) : l.stack;
    Site& s = by[key];
    s.stack = l.stack;
    s.at_start = l.at_start;
    s.bytes += l.size;
    ++s.blocks;
    bytes += l.size;
    ++blocks;
  }
  std::vector<Site> out;
  out.reserve(by.size());
  for (auto& [k, s] : by) out.push_back(s);
  std::sort(out.begin(), out.end(), [](const Site& a, const Site& b) {
    return a.bytes != b.bytes ? a.bytes > b.bytes : a.stack < b.stack;
  });
  if (total_bytes != nullptr) *total_bytes = bytes;
  if (total_blocks != nullptr) *total_blocks = blocks;
  return out;
}

namespace {

bool is_python(const Frame& f) {
  auto c = f.src.rfind(".py:");
  return c != std::string::npos;
}

bool is_noise(const Frame& f) {
  static constexpr const char* kFn[] = {"PyEval_", "_PyEval_", "PyObject_", "_PyObject_", "PyFunction_",
                                        "_PyFunction_", "PyVectorcall", "_PyVectorcall", "__libc_start",
                                        "_start", "unwind::unwind", "CapturedTraceback", "gather_with_cpp",
                                        "CUDACachingAllocator", "c10::cuda::", "c10::impl::", "cfunction_call",
                                        "method_vectorcall", "slot_tp_call", "_PyObject_Call"};
  static constexpr const char* kSrc[] = {"ceval.c", "pythonrun.c", "Modules/main.c", "Objects/call.c",
                                         "Objects/methodobject.c", "pycore_ceval.h", "cpython/abstract.h",
                                         "core/boxing", "/Register", "/Redispatch"};
  for (const char* p : kFn)
    if (f.fn.find(p) != std::string::npos) return true;
  for (const char* p : kSrc)
    if (f.src.find(p) != std::string::npos) return true;
  return false;
}

}  // namespace

std::vector<Frame> display_frames(const Trace& t, std::uint32_t stack, int n) {
  std::vector<Frame> out;
  auto it = t.stacks.find(stack);
  if (it == t.stacks.end()) return out;
  const auto& frames = it->second;
  bool python = std::any_of(frames.begin(), frames.end(), is_python);
  for (const Frame& f : frames) {
    if (static_cast<int>(out.size()) >= n) break;
    if (python ? !is_python(f) : is_noise(f)) continue;
    out.push_back(f);
  }
  if (out.empty())
    for (const Frame& f : frames) {
      if (static_cast<int>(out.size()) >= n) break;
      out.push_back(f);
    }
  return out;
}

std::string frame_text(const Frame& f) {
  std::string fn = f.fn.empty() ? std::string("??") : f.fn;
  if (fn.size() > 160) fn = fn.substr(0, 157) + "...";
  if (!f.src.empty()) return fmt::format("{} ({})", fn, f.src);
  if (!f.obj.empty()) return fmt::format("{} [{}]", fn, f.obj);
  return fn;
}

Trace filter_device(const Trace& t, std::uint32_t device) {
  Trace r;
  r.path = t.path;
  r.format = t.format;
  r.version = t.version;
  r.meta = t.meta;
  r.stacks = t.stacks;
  for (const LiveBlock& b : t.live_at_start)
    if (b.device == device) r.live_at_start.push_back(b);
  for (std::size_t i = 0; i < t.events.size(); ++i)
    if (t.events[i].device == device) {
      r.events.push_back(t.events[i]);
      if (i < t.event_offsets.size()) r.event_offsets.push_back(t.event_offsets[i]);
    }
  for (const TraceSnapshot& s : t.snapshots)
    if (s.device == device) r.snapshots.push_back(s);
  // A device the trace never names (a typo) gets an error, not an empty summary.
  const bool any = !t.events.empty() || !t.live_at_start.empty() || !t.snapshots.empty();
  if (any && r.events.empty() && r.live_at_start.empty() && r.snapshots.empty()) {
    std::set<std::uint32_t> named;
    for (const TraceEvent& e : t.events) named.insert(e.device);
    for (const LiveBlock& b : t.live_at_start) named.insert(b.device);
    for (const TraceSnapshot& s : t.snapshots) named.insert(s.device);
    throw std::runtime_error(fmt::format("no device {} in the trace (it has device {})", device, fmt::join(named, ", ")));
  }
  // physical_at_start_bytes is for all devices together: keep it only if this is the only device.
  bool others = std::any_of(t.events.begin(), t.events.end(), [&](const TraceEvent& e) { return e.device != device; });
  if (others) r.meta.physical_at_start_bytes.reset();
  if (others && r.meta.physical_at_start_bytes.value_or(0) == 0) {
    // Without the start value a device's releases could exceed its creates: start from what it needs.
    // Unsigned and saturated: sizes near 2^63 overflowed a signed sum (undefined behaviour); a start
    // that does not fit is then refused by check_trace() below.
    std::uint64_t held = 0, need = 0;
    for (const TraceEvent& e : r.events) {
      if (e.op == Op::create) {
        held = e.size > UINT64_MAX - held ? UINT64_MAX : held + e.size;
      } else if (e.op == Op::release && e.size > held) {
        need = e.size - held > UINT64_MAX - need ? UINT64_MAX : need + (e.size - held);
        held = 0;
      } else if (e.op == Op::release) {
        held -= e.size;
      }
    }
    if (need > 0) r.meta.physical_at_start_bytes = need;
  }
  check_trace(r, t.path.empty() ? t.meta.name : t.path);
  return r;
}

GlakeReplay replay_for_timeline(const Trace& t, ReplayOptions options, std::optional<std::size_t> snapshot_event) {
  GlakeReplay g;
  g.physical_after_event.assign(t.events.size(), 0);
  std::size_t filled = 0;  // events [0, filled) have their value
  std::uint64_t last = 0;
  options.reps = 0;
  auto take = [&](const pool::Allocator& pool, std::uint64_t t_us, std::uint32_t device) {
    SnapshotContext c;
    c.t_us = t_us;
    c.device = device;
    c.reason = "glake replay at the peak of live bytes";
    g.snapshot = to_trace_snapshot(pool.snapshot(), c);
  };
  options.after_setup = [&](const pool::Allocator& pool) {
    g.start_physical = pool.stats().physical.current;
    last = g.start_physical;
    if (snapshot_event == kAtStart) take(pool, t.events.empty() ? 0 : t.events.front().t_us, 0);
  };
  options.after_step = [&](std::size_t i, const pool::Allocator& pool) {
    while (filled < i) g.physical_after_event[filled++] = last;
    last = pool.stats().physical.current;
    g.physical_after_event[i] = last;
    filled = i + 1;
    if (snapshot_event == i) take(pool, t.events[i].t_us, t.events[i].device);
  };
  try {
    g.report = replay_trace(t, options);
  } catch (const std::exception& e) {
    g.error = e.what();
  }
  while (filled < g.physical_after_event.size()) g.physical_after_event[filled++] = last;
  return g;
}

}  // namespace glake::tracer
