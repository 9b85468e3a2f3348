// tracer/summary.cpp: see summary.h.
#include "tracer/summary.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tracer/cli_util.h"
#include "tracer/format_util.h"
#include "tracer/replay.h"
#include "tracer/snapshot.h"
#include "tracer/timeline.h"

namespace glake::tracer {
namespace {

constexpr const char* kUsage =
    "usage: glake-trace summary [options] TRACE...\n"
    "\n"
    "What a trace (glake's format or the shared one, gzip or plain) says about memory:\n"
    "  - events by kind, duration, devices, streams and threads;\n"
    "  - peak live bytes (the sum of live allocations) and when;\n"
    "  - peak physical bytes (what the recording allocator held, from create/release events; n/a for\n"
    "    traces without them unless --replay gives glake's);\n"
    "  - fragmentation (physical - live) over time, a table of time buckets;\n"
    "  - the allocation sites (call stacks) holding the most bytes at the peak of live bytes;\n"
    "  - every out-of-memory: the request, the sites holding the most bytes then, and what the pool's\n"
    "    snapshot says (why the request could not be served);\n"
    "  - events the recorder dropped (its ring was full).\n"
    "\n"
    "options:\n"
    "  --json               one JSON object per trace, on one line\n"
    "  --buckets N          time buckets of the fragmentation table (default 10)\n"
    "  --top N              allocation sites listed (default 10)\n"
    "  --frames N           frames shown per site (default 4)\n"
    "  --device N           only this device's events\n"
    "  --replay             replay the trace through glake's pool (host driver) and use its physical bytes\n"
    "  --granularity BYTES  with --replay: page size (default 2M)\n"
    "  --small-limit BYTES  with --replay: requests up to this share one-page chunks (default 1M; 0: none)\n"
    "  --no-stitch          with --replay: stitching off\n"
    "  -h, --help           this text\n"
    "Exit status: 0 all summarised, 1 some trace could not be read (the message names file and position),\n"
    "2 bad usage.\n";

struct Options {
  bool json = false, replay = false, no_stitch = false;
  std::uint64_t buckets = 10, top = 10, frames = 4;
  std::string device;
  std::uint64_t granularity = 2 << 20, small_limit = 1 << 20;
};

std::string at_text(const Trace& t, const Timeline& tl, std::size_t event) {
  if (event == kAtStart) return "at the start";
  return fmt::format("at {} (event {})", fmt_time_us(t.events[event].t_us - tl.t_first), fmt_count(event));
}

std::string ratio(std::uint64_t a, std::uint64_t b) {
  return b == 0 ? std::string("n/a") : fmt::format("{:.3f}", static_cast<double>(a) / static_cast<double>(b));
}

nlohmann::ordered_json frames_json(const Trace& t, std::uint32_t stack, int n) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  for (const Frame& f : display_frames(t, stack, n)) a.push_back(frame_text(f));
  return a;
}

void sites_text(std::string& out, const Trace& t, const std::vector<Site>& sites, std::uint64_t total, const Options& o) {
  if (t.stacks.empty()) {
    if (!t.meta.stacks_note.empty()) out += "    (the trace has no call stacks: stacks " + t.meta.stacks_note + ")\n";
    else out += "    (the trace has no call stacks; glake records them with GLAKE_TRACE_STACKS=1 in a build with libunwind)\n";
  }
  std::size_t shown = 0;
  for (const Site& s : sites) {
    if (shown >= o.top) break;
    ++shown;
    double pct = total > 0 ? 100.0 * static_cast<double>(s.bytes) / static_cast<double>(total) : 0;
    std::string what = s.at_start ? "live at the start of the trace" : s.stack == 0 ? "no stack" : fmt::format("stack {}", s.stack);
    out += fmt::format("  {:>3}. {:>11} {:>6.1f}%  {:>7} blocks  {}\n", shown, fmt_bytes(s.bytes), pct, fmt_count(s.blocks), what);
    if (s.stack != 0)
      for (const Frame& f : display_frames(t, s.stack, static_cast<int>(o.frames))) out += "          at " + frame_text(f) + "\n";
  }
  if (sites.size() > shown) out += fmt::format("       ... {} more sites\n", sites.size() - shown);
}

nlohmann::ordered_json sites_json(const Trace& t, const std::vector<Site>& sites, const Options& o) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < sites.size() && i < o.top; ++i) {
    const Site& s = sites[i];
    a.push_back({{"bytes", s.bytes}, {"blocks", s.blocks}, {"stack", s.stack}, {"live_at_start", s.at_start},
                 {"frames", frames_json(t, s.stack, static_cast<int>(o.frames))}});
  }
  return a;
}

int summarize(const std::string& path, const Options& o) {
  Trace full;
  if (!read_trace_or_report("summary", path, &full)) return 1;
  Trace t;
  try {
    if (!o.device.empty()) t = filter_device(full, static_cast<std::uint32_t>(std::stoul(o.device)));
    else t = std::move(full);
  } catch (const std::exception& e) {
    fmt::print(stderr, "glake-trace summary: error: {}: {}\n", path, e.what());
    return 1;
  }
  Timeline tl = build_timeline(t);
  std::optional<GlakeReplay> replay;
  if (o.replay) {
    ReplayOptions ro;
    ro.granularity = o.granularity;
    ro.config.small_limit = o.small_limit;
    ro.config.stitch = !o.no_stitch;
    replay = replay_for_timeline(t, ro, std::nullopt);
    if (!replay->error.empty()) {
      fmt::print(stderr, "glake-trace summary: error: {}: the replay failed: {}\n", path, replay->error);
      return 1;
    }
    set_physical(tl, replay->start_physical, replay->physical_after_event, "glake replay");
  }
  std::vector<Bucket> buckets = bucketize(t, tl, static_cast<int>(o.buckets));
  std::uint64_t peak_total = 0, peak_blocks = 0;
  std::vector<Site> sites = sites_at(t, tl.peak_live_event, &peak_total, &peak_blocks);
  std::vector<std::size_t> ooms;
  for (std::size_t i = 0; i < t.events.size(); ++i)
    if (t.events[i].op == Op::oom) ooms.push_back(i);
  const std::uint64_t dropped = t.meta.events_dropped.value_or(0);
  const double duration_s = static_cast<double>(tl.t_last - tl.t_first) * 1e-6;

  if (o.json) {
    using ojson = nlohmann::ordered_json;
    ojson j;
    j["trace"] = path;
    j["name"] = t.meta.name;
    j["format"] = t.format;
    j["events"] = t.events.size();
    ojson ops = ojson::object();
    for (int k = 0; k < kOps; ++k) ops[op_name(static_cast<Op>(k))] = tl.ops[k];
    j["events_by_op"] = ops;
    j["live_at_start"] = t.live_at_start.size();
    j["duration_s"] = duration_s;
    j["devices"] = tl.devices;
    j["streams"] = tl.streams;
    j["threads"] = tl.threads;
    j["peak_live_bytes"] = tl.peak_live;
    j["peak_live_t_us"] = tl.after(tl.peak_live_event).t_us;
    j["peak_physical_bytes"] = tl.has_physical ? ojson(tl.peak_physical) : ojson(nullptr);
    j["peak_physical_t_us"] = tl.has_physical ? ojson(tl.after(tl.peak_physical_event).t_us) : ojson(nullptr);
    j["physical_source"] = tl.has_physical ? ojson(tl.physical_source) : ojson(nullptr);
    j["peak_fragmentation_bytes"] = tl.has_physical ? ojson(tl.peak_frag) : ojson(nullptr);
    j["peak_fragmentation_t_us"] = tl.has_physical ? ojson(tl.after(tl.peak_frag_event).t_us) : ojson(nullptr);
    j["native_peak_reserved_bytes"] = t.meta.peak_reserved_native ? ojson(*t.meta.peak_reserved_native) : ojson(nullptr);
    j["events_dropped"] = dropped;
    j["stacks"] = t.stacks.size();
    j["stacks_note"] = t.meta.stacks_note;
    ojson bj = ojson::array();
    for (const Bucket& b : buckets)
      bj.push_back({{"t0_us", b.t0}, {"t1_us", b.t1}, {"max_live_bytes", b.max_live},
                    {"max_physical_bytes", tl.has_physical ? ojson(b.max_physical) : ojson(nullptr)},
                    {"max_fragmentation_bytes", tl.has_physical ? ojson(b.max_frag) : ojson(nullptr)},
                    {"events", b.events}, {"stitches", b.stitches}, {"ooms", b.ooms}});
    j["buckets"] = bj;
    j["peak_sites"] = sites_json(t, sites, o);
    ojson oj = ojson::array();
    for (std::size_t i : ooms) {
      std::uint64_t tot = 0;
      std::vector<Site> s = sites_at(t, i, &tot);
      oj.push_back({{"t_us", t.events[i].t_us}, {"device", t.events[i].device}, {"request_bytes", t.events[i].size},
                    {"live_bytes", tot}, {"sites", sites_json(t, s, o)}});
    }
    j["ooms"] = oj;
    ojson sj = ojson::array();
    for (const TraceSnapshot& s : t.snapshots) {
      SnapshotSummary m = summarize_snapshot(s);
      sj.push_back({{"t_us", s.t_us}, {"device", s.device}, {"reason", s.reason}, {"request_bytes", s.request},
                    {"physical_bytes", m.physical_bytes}, {"requested_bytes", m.requested_bytes},
                    {"free_bytes", m.free_bytes}, {"free_ranges", m.free_ranges},
                    {"largest_free_bytes", m.largest_free_bytes}, {"explanation", explain_snapshot(s, tl.t_first)}});
    }
    j["snapshots"] = sj;
    if (replay) {
      j["replay"] = {{"peak_physical_bytes", replay->report.peak_physical_bytes},
                     {"stitches", replay->report.pool_stats.stitches},
                     {"granularity", replay->report.granularity},
                     {"stitch", replay->report.stitch},
                     {"small_limit", replay->report.small_limit},
                     {"at_peak", breakdown_json(replay->report.at_peak)}};
    }
    std::fputs((j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n").c_str(), stdout);
    return 0;
  }

  std::string out;
  if (t.events.empty() && !t.snapshots.empty()) {
    // A snapshot file (GLAKE_TRACE_OOM): the pool's state, explained; the whole trace is elsewhere.
    out += fmt::format("{} ({}): {} snapshot(s), no events\n", t.meta.name, path, t.snapshots.size());
    try {
      auto m = nlohmann::json::parse(t.meta.json);
      if (m.contains("trace") && m["trace"].is_string())
        out += fmt::format("  the whole trace (events, allocation sites) is written to {}\n", m["trace"].get<std::string>());
    } catch (const std::exception&) {
    }
    for (const TraceSnapshot& s : t.snapshots) out += "\n" + explain_snapshot(s);
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  out += fmt::format("{} ({}, {}{}): {} events over {}, {} blocks live at the start\n", t.meta.name, path,
                     t.format, t.format == "glake-trace" ? fmt::format(" v{}", t.version) : std::string(),
                     fmt_count(t.events.size()), fmt_time_us(tl.t_last - tl.t_first), fmt_count(t.live_at_start.size()));
  std::string ops;
  for (int k = 0; k < kOps; ++k)
    if (tl.ops[k] > 0) ops += fmt::format("{}{} {}", ops.empty() ? "" : ", ", op_name(static_cast<Op>(k)), fmt_count(tl.ops[k]));
  out += fmt::format("  events          {}; {} device(s), {} stream(s){}\n", ops.empty() ? "none" : ops, tl.devices,
                     tl.streams, tl.threads > 0 ? fmt::format(", {} thread(s)", tl.threads) : std::string());
  out += fmt::format("  peak live       {:>10}  {}\n", fmt_bytes(tl.peak_live), at_text(t, tl, tl.peak_live_event));
  if (tl.has_physical) {
    out += fmt::format("  peak physical   {:>10}  {}, {} x peak live ({})\n", fmt_bytes(tl.peak_physical),
                       at_text(t, tl, tl.peak_physical_event), ratio(tl.peak_physical, tl.peak_live),
                       tl.physical_source == "trace" ? "from the trace's create/release events"
                                                     : "glake's pool in a replay on the host driver");
    if (replay) out += fmt::format("  at that peak    {}\n", format_breakdown(replay->report.at_peak));
    out += fmt::format("  fragmentation   {:>10}  most physical - live, {}\n", fmt_bytes(tl.peak_frag),
                       at_text(t, tl, tl.peak_frag_event));
  } else {
    out += "  peak physical          n/a  (no create/release events in the trace: --replay gives glake's)\n";
  }
  if (t.meta.peak_reserved_native)
    out += fmt::format("  PyTorch native  {:>10}  peak reserved (meta), {} x peak live\n",
                       fmt_bytes(*t.meta.peak_reserved_native), ratio(*t.meta.peak_reserved_native, tl.peak_live));
  if (dropped > 0)
    out += fmt::format("  dropped         {} events were lost by the recorder (its ring was full): the trace starts or"
                       " ends early; GLAKE_TRACE_EVENTS raises the capacity\n", fmt_count(dropped));
  if (!t.meta.stacks_note.empty()) out += fmt::format("  stacks          {} ({} distinct)\n", t.meta.stacks_note, t.stacks.size());

  if (!buckets.empty()) {
    out += fmt::format("\nfragmentation over time ({} buckets of {}):\n", buckets.size(),
                       fmt_time_us(buckets.size() > 1 ? buckets[1].t0 - buckets[0].t0 : tl.t_last - tl.t_first));
    out += fmt::format("  {:>10} {:>10}  {:>11} {:>11} {:>11} {:>7} {:>9} {:>6}\n", "from", "to", "peak live",
                       "peak phys", "max frag", "frag %", "events", "ooms");
    for (const Bucket& b : buckets) {
      std::string phys = tl.has_physical ? fmt_bytes(b.max_physical) : std::string("n/a");
      std::string frag = tl.has_physical ? fmt_bytes(b.max_frag) : std::string("n/a");
      std::string pct = tl.has_physical && b.max_physical > 0
                            ? fmt::format("{:.1f}%", 100.0 * static_cast<double>(b.max_frag) / static_cast<double>(b.max_physical))
                            : std::string("n/a");
      out += fmt::format("  {:>10} {:>10}  {:>11} {:>11} {:>11} {:>7} {:>9} {:>6}\n", fmt_time_us(b.t0 - tl.t_first),
                         fmt_time_us(b.t1 - tl.t_first), fmt_bytes(b.max_live), phys, frag, pct, fmt_count(b.events),
                         b.ooms);
    }
  }

  out += fmt::format("\nallocation sites holding the most bytes at the peak of live bytes ({} in {} blocks, {}):\n",
                     fmt_bytes(peak_total), fmt_count(peak_blocks), at_text(t, tl, tl.peak_live_event));
  sites_text(out, t, sites, peak_total, o);

  for (std::size_t k = 0; k < ooms.size() && k < 5; ++k) {
    const TraceEvent& e = t.events[ooms[k]];
    std::uint64_t tot = 0, blocks = 0;
    std::vector<Site> s = sites_at(t, ooms[k], &tot, &blocks);
    out += fmt::format("\nout of memory on device {} {}: a request of {}; {} live in {} blocks, held by:\n", e.device,
                       at_text(t, tl, ooms[k]), fmt_bytes(e.size), fmt_bytes(tot), fmt_count(blocks));
    Options few = o;
    few.top = std::min<std::uint64_t>(o.top, 5);
    sites_text(out, t, s, tot, few);
  }
  if (ooms.size() > 5) out += fmt::format("\n... {} more out-of-memory events\n", ooms.size() - 5);
  for (const TraceSnapshot& s : t.snapshots) out += "\n" + explain_snapshot(s, t.events.empty() ? 0 : tl.t_first);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

int summary_command(const std::vector<std::string>& args) {
  Options o;
  OptionParser p("summary", kUsage);
  p.flag("--json", &o.json);
  p.flag("--replay", &o.replay);
  p.flag("--no-stitch", &o.no_stitch);
  p.count("--buckets", &o.buckets, 1, 1000);
  p.count("--top", &o.top, 1, 100000);
  p.count("--frames", &o.frames, 1, 64);
  p.custom("--device", true, [&](const std::string& v) {
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 9)
      return fmt::format("--device: '{}' is not a device number", v);
    o.device = v;
    return std::string();
  });
  p.bytes("--granularity", &o.granularity);
  p.bytes("--small-limit", &o.small_limit);
  std::vector<std::string> traces;
  if (int rc = p.parse(args, &traces); rc >= 0) return rc;
  if (traces.empty()) return p.usage_error("no trace given");
  if ((o.granularity & (o.granularity - 1)) != 0 || o.granularity < 4096)
    return p.usage_error("--granularity: not a power of two >= 4K");
  int status = 0;
  for (std::size_t i = 0; i < traces.size(); ++i) {
    if (i > 0 && !o.json) std::fputs("\n", stdout);
    if (summarize(traces[i], o) != 0) status = 1;
    std::fflush(stdout);
  }
  return status;
}

}  // namespace glake::tracer
