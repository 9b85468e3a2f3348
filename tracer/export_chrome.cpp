// tracer/export_chrome.cpp: see export_chrome.h.
#include "tracer/export_chrome.h"

#include <algorithm>
#include <set>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tracer/cli_util.h"
#include "tracer/timeline.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

constexpr const char* kUsage =
    "usage: glake-trace export --chrome [options] TRACE [-o OUT.json]\n"
    "\n"
    "Writes the trace as Chrome trace-event JSON, which Perfetto (https://ui.perfetto.dev, \"Open trace\n"
    "file\"; it works offline once loaded) and chrome://tracing open. Per device: counters of live,\n"
    "physical and fragmented (physical - live) memory in MiB; instants for stitches, reclaims and\n"
    "out-of-memory errors on the recording thread's track.\n"
    "\n"
    "options:\n"
    "  --chrome             the output format (the only one; required)\n"
    "  -o, --output FILE    where to write (default: stdout; .gz compresses; written atomically)\n"
    "  --max-samples N      counter samples per device (default 200000, keeping each stretch's extremes;\n"
    "                       0: every event)\n"
    "  --blocks BYTES       also one slice per allocation of at least BYTES, from allocation to free\n"
    "                       (or to the last event, for blocks the trace never frees)\n"
    "  --replay             also glake's physical bytes from a replay through the pool (host driver)\n"
    "  -h, --help           this text\n";

double mib(std::uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }

}  // namespace

std::string chrome_trace_json(const Trace& all, const ChromeOptions& o) {
  using ojson = nlohmann::ordered_json;
  std::set<std::uint32_t> devices;
  for (const TraceEvent& e : all.events) devices.insert(e.device);
  for (const LiveBlock& b : all.live_at_start) devices.insert(b.device);
  if (devices.empty()) devices.insert(0);
  const int pid_base = 1;
  const std::uint64_t base = all.events.empty() ? 0 : all.events.front().t_us;
  auto rel = [base](std::uint64_t t) { return t >= base ? t - base : 0; };
  std::string out = "{\"traceEvents\": [\n";
  bool first = true;
  auto emit = [&](const ojson& j) {
    if (!first) out += ",\n";
    first = false;
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  for (std::uint32_t dev : devices) {
    Trace t = devices.size() == 1 ? all : filter_device(all, dev);
    const int pid = pid_base + static_cast<int>(dev);
    emit({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 0},
          {"args", {{"name", fmt::format("glake device {}: {}", dev, all.meta.name)}}}});
    emit({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", 0}, {"args", {{"sort_index", dev}}}});
    Timeline tl = build_timeline(t);
    std::vector<Sample> samples = o.max_samples == 0 ? tl.samples : downsample(tl.samples, o.max_samples);
    for (const Sample& s : samples) {
      ojson args = {{"live", mib(s.live)}};
      if (tl.has_physical) {
        args["physical"] = mib(s.physical);
        args["fragmented"] = mib(s.physical > s.live ? s.physical - s.live : 0);
      }
      emit({{"name", "memory (MiB)"}, {"ph", "C"}, {"ts", rel(s.t_us)}, {"pid", pid}, {"tid", 0}, {"args", args}});
    }
    if (o.replay) {
      ReplayOptions ro;
      GlakeReplay g = replay_for_timeline(t, ro, std::nullopt);
      if (g.error.empty()) {
        Timeline gl = tl;
        set_physical(gl, g.start_physical, g.physical_after_event, "glake replay");
        std::vector<Sample> gs = o.max_samples == 0 ? gl.samples : downsample(gl.samples, o.max_samples);
        for (const Sample& s : gs)
          emit({{"name", "glake replay (MiB)"}, {"ph", "C"}, {"ts", rel(s.t_us)}, {"pid", pid}, {"tid", 0},
                {"args", {{"physical", mib(s.physical)}, {"fragmented", mib(s.physical > s.live ? s.physical - s.live : 0)}}}});
      } else {
        emit({{"name", "glake replay failed"}, {"ph", "i"}, {"s", "p"}, {"ts", rel(tl.t_first)}, {"pid", pid}, {"tid", 0},
              {"args", {{"error", g.error}}}});
      }
    }
    std::set<std::uint32_t> threads;
    std::unordered_map<std::uint64_t, std::size_t> open;  // addr -> alloc event, for --blocks
    auto block_slice = [&](const TraceEvent& a, std::uint64_t end_us, bool freed) {
      ojson args = {{"address", fmt::format("0x{:x}", a.addr)}, {"size_MiB", mib(a.size)}, {"stream", a.stream}};
      if (!freed) args["freed"] = false;
      if (a.stack != 0) {
        ojson fr = ojson::array();
        for (const Frame& f : display_frames(t, a.stack, 6)) fr.push_back(frame_text(f));
        args["stack"] = fr;
      }
      emit({{"name", fmt::format("{:.1f} MiB", mib(a.size))}, {"cat", "block"}, {"ph", "X"}, {"ts", rel(a.t_us)},
            {"dur", end_us - a.t_us}, {"pid", pid}, {"tid", 0}, {"args", args}});
    };
    for (std::size_t i = 0; i < t.events.size(); ++i) {
      const TraceEvent& e = t.events[i];
      const int tid = static_cast<int>(e.thread == 0 ? 1 : e.thread);
      auto instant = [&](const char* name, ojson args) {
        threads.insert(static_cast<std::uint32_t>(tid));
        emit({{"name", name}, {"cat", "glake"}, {"ph", "i"}, {"s", "t"}, {"ts", rel(e.t_us)}, {"pid", pid}, {"tid", tid},
              {"args", args}});
      };
      switch (e.op) {
        case Op::stitch:
          instant("stitch", {{"address", fmt::format("0x{:x}", e.addr)}, {"size_MiB", mib(e.size)}, {"pages_moved", e.aux},
                             {"stream", e.stream}});
          break;
        case Op::oom:
          instant("out of memory", {{"request_MiB", mib(e.size)}, {"request_bytes", e.size}, {"stream", e.stream},
                                    {"live_MiB", mib(tl.samples[i + 1].live)}});
          break;
        case Op::reclaim: instant("reclaim", {{"size_MiB", mib(e.size)}}); break;
        case Op::alloc:
          if (o.blocks_min > 0 && e.size >= o.blocks_min) open[e.addr] = i;
          break;
        case Op::free:
          if (o.blocks_min > 0) {
            auto it = open.find(e.addr);
            if (it != open.end()) {
              block_slice(t.events[it->second], e.t_us, true);
              open.erase(it);
            }
          }
          break;
        default: break;
      }
    }
    // Blocks still live at the end of the trace: to its last event, in the order they were allocated.
    std::vector<std::size_t> never_freed;
    for (const auto& [addr, i] : open) never_freed.push_back(i);
    std::sort(never_freed.begin(), never_freed.end());
    for (std::size_t i : never_freed) block_slice(t.events[i], t.events.back().t_us, false);
    if (o.blocks_min > 0)
      emit({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", 0}, {"args", {{"name", "blocks"}}}});
    for (std::uint32_t th : threads)
      emit({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", th},
            {"args", {{"name", th == 1 ? std::string("events") : fmt::format("thread {}", th)}}}});
  }
  out += "\n],\n\"displayTimeUnit\": \"ms\",\n\"otherData\": ";
  ojson other = {{"source", "glake-trace export --chrome"}, {"trace", all.path}, {"name", all.meta.name},
                 {"format", all.format}, {"peak_live_bytes", all.peak_live_bytes}, {"t0_us", base}};
  if (all.peak_physical_bytes) other["peak_physical_bytes"] = *all.peak_physical_bytes;
  out += other.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out += "}\n";
  return out;
}

int export_command(const std::vector<std::string>& args) {
  bool chrome = false;
  ChromeOptions o;
  std::string output;
  std::uint64_t max_samples = o.max_samples;
  OptionParser p("export", kUsage);
  p.flag("--chrome", &chrome);
  p.flag("--replay", &o.replay);
  p.text("--output", &output);
  p.count("--max-samples", &max_samples, 0, 1ull << 32);
  p.bytes("--blocks", &o.blocks_min);
  std::vector<std::string> pos;
  if (int rc = p.parse(args, &pos); rc >= 0) return rc;
  if (!chrome) return p.usage_error("say which format: --chrome (the only one)");
  if (pos.size() != 1) return p.usage_error(pos.empty() ? "no trace given" : "one trace at a time");
  o.max_samples = static_cast<std::size_t>(max_samples);
  Trace t;
  if (!read_trace_or_report("export", pos[0], &t)) return 1;
  std::string json;
  try {
    json = chrome_trace_json(t, o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "glake-trace export: error: {}: {}\n", pos[0], e.what());
    return 1;
  }
  return write_output("export", output, json) ? 0 : 1;
}

}  // namespace glake::tracer
