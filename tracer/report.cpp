// tracer/report.cpp: see report.h. The page is built as one string: CSS, SVG made here (so that it
// shows without JS), and a small script that adds tooltips from a JSON blob of the plotted points and
// sets body[data-ready] (the screenshot test waits for it).
#include "tracer/report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tracer/cli_util.h"
#include "tracer/format_util.h"
#include "tracer/snapshot.h"
#include "tracer/timeline.h"

namespace glake::tracer {
namespace {

constexpr const char* kUsage =
    "usage: glake-trace report [options] TRACE [-o report.html]\n"
    "\n"
    "Writes one self-contained HTML page (no network: inline SVG, CSS and JS) about the trace: key numbers\n"
    "(peak live, the recording allocator's peak, PyTorch's native peak, glake's peak in a replay through\n"
    "the pool and the saving), memory and fragmentation over time, block maps (glake's pool at the peak of\n"
    "live bytes, and the trace's own snapshots: out-of-memory, PyTorch's segments), the allocation sites\n"
    "holding the most bytes at the peak, and out-of-memory explanations.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE    the page (default: stdout; written atomically)\n"
    "  --no-replay          skip glake's replay (no glake series, no block map at the peak)\n"
    "  --granularity BYTES  replay: page size (default 2M)\n"
    "  --small-limit BYTES  replay: requests up to this share one-page chunks (default 1M; 0: none)\n"
    "  --no-stitch          replay: stitching off\n"
    "  --capacity BYTES     replay: the device's memory (default 1T)\n"
    "  --device N           only this device's events\n"
    "  --top N              allocation sites listed (default 12)\n"
    "  -h, --help           this text\n";

std::string esc(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

// Points of up to three series over the same times, thinned keeping each stretch's extremes.
struct Row {
  std::uint64_t t;
  std::uint64_t v[3];
};
std::vector<Row> thin(const std::vector<Row>& rows, std::size_t max_points) {
  if (rows.size() <= max_points || max_points < 16) return rows;
  const std::size_t stretches = max_points / 6;
  const double per = static_cast<double>(rows.size()) / static_cast<double>(stretches);
  std::vector<Row> out;
  for (std::size_t k = 0; k < stretches; ++k) {
    std::size_t a = static_cast<std::size_t>(static_cast<double>(k) * per);
    std::size_t z = std::min(rows.size(), static_cast<std::size_t>(static_cast<double>(k + 1) * per));
    if (a >= z) continue;
    std::vector<std::size_t> idx;
    for (int s = 0; s < 3; ++s) {
      std::size_t hi = a, lo = a;
      for (std::size_t i = a; i < z; ++i) {
        if (rows[i].v[s] > rows[hi].v[s]) hi = i;
        if (rows[i].v[s] < rows[lo].v[s]) lo = i;
      }
      idx.push_back(hi);
      idx.push_back(lo);
    }
    std::sort(idx.begin(), idx.end());
    idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
    for (std::size_t i : idx) out.push_back(rows[i]);
  }
  out.push_back(rows.back());
  return out;
}

struct Unit {
  double div;
  const char* name;
};
Unit byte_unit(double max) {
  if (max >= 1024.0 * 1024 * 1024) return {1024.0 * 1024 * 1024, "GiB"};
  if (max >= 1024.0 * 1024) return {1024.0 * 1024, "MiB"};
  if (max >= 1024.0) return {1024.0, "KiB"};
  return {1.0, "B"};
}
double nice_step(double span, int ticks) {
  if (span <= 0) return 1;
  double raw = span / ticks;
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

struct Series {
  std::string name, color;
  int index;  // into Row::v
  bool dashed = false;
  bool area = false;
};
struct Marker {
  std::uint64_t t;
  std::string label;
};

// An SVG line chart of rows (time in us from t0) with the given series; markers are red vertical lines.
std::string svg_chart(const std::string& id, const std::vector<Row>& rows, const std::vector<Series>& series,
                      const std::vector<Marker>& markers, std::uint64_t t0, std::uint64_t t1, const std::string& y_title) {
  const int W = 1100, H = 340, L = 78, R = 24, T = 34, B = 44;
  const double pw = W - L - R, ph = H - T - B;
  double ymax = 1;
  for (const Row& r : rows)
    for (const Series& s : series) ymax = std::max(ymax, static_cast<double>(r.v[s.index]));
  Unit u = byte_unit(ymax);
  double ystep = nice_step(ymax / u.div, 5) * u.div;
  double ytop = std::ceil(ymax / ystep) * ystep;
  const double span_us = std::max<double>(1, static_cast<double>(t1 - t0));
  const bool ms = span_us < 2e6;
  const double tdiv = ms ? 1e3 : 1e6;
  double xstep = nice_step(span_us / tdiv, 8);
  auto X = [&](std::uint64_t t) { return L + pw * (static_cast<double>(t - std::min(t, t0)) / span_us); };
  auto Y = [&](double v) { return T + ph * (1.0 - v / ytop); };
  std::string s = fmt::format(
      "<svg class=\"chart\" id=\"{}\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" "
      "xmlns=\"http://www.w3.org/2000/svg\" data-t0=\"{}\" data-t1=\"{}\" data-l=\"{}\" data-r=\"{}\">\n",
      id, W, H, W, H, t0, t1, L, W - R);
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#fbfbfd\" stroke=\"#ccd\"/>\n", L, T, pw, ph);
  for (double v = 0; v <= ytop + ystep / 2; v += ystep) {
    double y = Y(v);
    s += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e4e4ec\"/>", L, W - R, y, y);
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">{:g}</text>\n", L - 6, y + 4,
                     std::round(v / u.div * 100) / 100);
  }
  for (double tv = 0; tv <= span_us / tdiv + 1e-9; tv += xstep) {
    double x = L + pw * (tv * tdiv / span_us);
    s += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" stroke=\"#eef\"/>", x, x, T, T + ph);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{:g}</text>\n", x, T + ph + 16,
                     std::round(tv * 1000) / 1000);
  }
  s += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">time ({})</text>\n", L + pw / 2,
                   H - 6, ms ? "ms" : "s");
  s += fmt::format("<text x=\"14\" y=\"{}\" class=\"axis\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{} ({})</text>\n",
                   T + ph / 2, T + ph / 2, esc(y_title), u.name);
  for (const Marker& m : markers) {
    double x = X(m.t);
    s += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" stroke=\"#d62728\" stroke-width=\"1.5\" "
                     "stroke-dasharray=\"4 3\"><title>{}</title></line>\n", x, x, T, T + ph, esc(m.label));
  }
  for (const Series& se : series) {
    std::string pts;
    pts.reserve(rows.size() * 14);
    for (const Row& r : rows) pts += fmt::format("{:.1f},{:.1f} ", X(r.t), Y(static_cast<double>(r.v[se.index])));
    if (se.area && !rows.empty()) {
      std::string poly = fmt::format("{:.1f},{:.1f} ", X(rows.front().t), Y(0)) + pts +
                         fmt::format("{:.1f},{:.1f}", X(rows.back().t), Y(0));
      s += fmt::format("<polygon points=\"{}\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n", poly, se.color);
    }
    s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{}/>\n", pts, se.color,
                     se.dashed ? " stroke-dasharray=\"6 3\"" : "");
  }
  double lx = L + 8;
  for (const Series& se : series) {
    s += fmt::format("<rect x=\"{:.0f}\" y=\"10\" width=\"16\" height=\"4\" fill=\"{}\"/>"
                     "<text x=\"{:.0f}\" y=\"16\" class=\"legend\">{}</text>\n",
                     lx, se.color, lx + 20, esc(se.name));
    lx += 34 + 7.0 * static_cast<double>(se.name.size());
  }
  if (!markers.empty()) {
    s += fmt::format("<line x1=\"{0:.0f}\" x2=\"{1:.0f}\" y1=\"12\" y2=\"12\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>"
                     "<text x=\"{2:.0f}\" y=\"16\" class=\"legend\">out of memory</text>\n", lx, lx + 16, lx + 20);
  }
  s += fmt::format("<line class=\"cursor\" x1=\"0\" x2=\"0\" y1=\"{}\" y2=\"{}\" stroke=\"#555\" visibility=\"hidden\"/>\n",
                   T, T + ph);
  s += "</svg>\n";
  return s;
}

// ---- block map ----

struct Cell {
  std::uint64_t bytes[6] = {};  // allocated, shared small pages, free, stale, busy, hole
  bool gap = false;
  std::uint64_t gap_bytes = 0;
  std::size_t region = SIZE_MAX;  // the region covering most of the cell
  std::uint64_t region_bytes = 0;
};
constexpr const char* kCellColors[] = {"#4e79a7", "#b07aa1", "#f28e2b", "#e8a0a8", "#edc948", "#e9e9ee"};
constexpr const char* kCellNames[] = {"allocated block", "shared small-block page", "free (cached, unused)",
                                      "stale alias (page moved by a stitch)", "busy (being stitched)",
                                      "reserved, nothing mapped"};

std::string block_map(const TraceSnapshot& snap, const std::string& caption) {
  const std::uint64_t page = std::max<std::uint64_t>(snap.page_size, 4096);
  std::vector<SnapshotRegion> regs = snap.regions;
  std::sort(regs.begin(), regs.end(), [](const SnapshotRegion& a, const SnapshotRegion& b) { return a.base < b.base; });
  std::set<std::uint64_t> small_pages;
  for (const SnapshotRegion& p : snap.small_blocks) small_pages.insert(p.base / page);
  // Pages per cell: at most ~24k cells.
  // A snapshot read from a file may hold any sizes (snapshot_from_json only keeps base + size within
  // 2^64): the sums saturate and a cell stays below 2^64 bytes, else cell_bytes could wrap to 0 (a
  // division by zero) or the walk below could wrap around and never end.
  std::uint64_t pages = 0;
  for (const SnapshotRegion& r : regs)
    if (r.state != "hole" || r.size / 32 < page) {
      const std::uint64_t n = r.size / page + (r.size % page != 0 ? 1 : 0);
      pages = n > UINT64_MAX - pages ? UINT64_MAX : pages + n;
    }
  const std::uint64_t per =
      std::clamp<std::uint64_t>(pages / 24000 + (pages % 24000 != 0 ? 1 : 0), 1, UINT64_MAX / page);
  const std::uint64_t cell_bytes = page * per;
  std::vector<Cell> cells;
  std::map<std::uint64_t, std::size_t> at;  // cell index by address / cell_bytes
  std::uint64_t end = 0;
  bool first = true;
  for (std::size_t ri = 0; ri < regs.size(); ++ri) {
    const SnapshotRegion& r = regs[ri];
    if (r.size == 0) continue;
    if (r.state == "hole" && r.size / 32 >= page) {
      Cell g;
      g.gap = true;
      g.gap_bytes = r.size;
      cells.push_back(g);
      at.clear();
      end = r.base + r.size;
      continue;
    }
    if (!first && r.base > end && r.base - end >= page) {
      Cell g;
      g.gap = true;
      g.gap_bytes = r.base - end;
      cells.push_back(g);
      at.clear();
    }
    first = false;
    int kind = r.state == "allocated" ? 0 : r.state == "free" ? 2 : r.state == "stale" ? 3 : r.state == "busy" ? 4 : 5;
    const std::uint64_t r_end = r.base + r.size;
    for (std::uint64_t a = r.base; a < r_end;) {
      std::uint64_t ci = a / cell_bytes;
      // To the cell's end, without (ci + 1) * cell_bytes (which wraps in the last cell below 2^64).
      std::uint64_t n = std::min(cell_bytes - a % cell_bytes, r_end - a);
      auto it = at.find(ci);
      if (it == at.end()) {
        it = at.emplace(ci, cells.size()).first;
        cells.emplace_back();
      }
      Cell& c = cells[it->second];
      int k = kind == 0 && small_pages.count(a / page) != 0 ? 1 : kind;
      c.bytes[k] += n;
      if (n > c.region_bytes) c.region_bytes = n, c.region = ri;
      a += n;
    }
    end = std::max(end, r.base + r.size);
  }
  const int cols = 128, cw = 8, gapx = 1;
  const int rows = static_cast<int>((cells.size() + cols - 1) / cols);
  const int W = cols * (cw + gapx) + 2, H = std::max(1, rows) * (cw + gapx) + 2;
  std::string s = fmt::format("<figure class=\"map\"><figcaption>{}</figcaption>\n"
                              "<svg viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">\n",
                              caption, W, H, W, H);
  std::uint64_t totals[6] = {};
  std::size_t run_start = 0;
  auto color_of = [&](const Cell& c, std::string* title) {
    if (c.gap) {
      *title = fmt::format("{} of address space with nothing mapped", fmt_bytes(c.gap_bytes));
      return std::string("url(#hatch)");
    }
    int best = 5;
    std::uint64_t bb = 0;
    for (int k = 0; k < 6; ++k)
      if (c.bytes[k] > bb) bb = c.bytes[k], best = k;
    std::string col = kCellColors[best];
    if (best == 0 && c.region != SIZE_MAX && c.region % 2 == 1) col = "#6f97c6";  // neighbouring blocks differ
    if (c.region != SIZE_MAX) {
      const SnapshotRegion& r = regs[c.region];
      *title = fmt::format("{}: 0x{:x}, {}{}{}", kCellNames[best], r.base, fmt_bytes(r.size),
                           r.state == "allocated" && r.requested > 0 ? fmt::format(", requested {}", fmt_bytes(r.requested)) : "",
                           r.stream != 0 ? fmt::format(", stream {}", r.stream) : "");
    } else {
      *title = kCellNames[best];
    }
    return col;
  };
  for (const Cell& c : cells)
    for (int k = 0; k < 6; ++k) totals[k] += c.bytes[k];
  // Runs of cells of one color and one region in a row become one rect.
  for (std::size_t i = 0; i <= cells.size(); ++i) {
    bool flush = i == cells.size() || i % cols == 0 || cells[i].gap || cells[run_start].gap ||
                 cells[i].region != cells[run_start].region;
    std::string t1, t2;
    if (!flush) flush = color_of(cells[i], &t1) != color_of(cells[run_start], &t2);
    if (!flush) continue;
    if (i > run_start) {
      std::string title;
      std::string col = color_of(cells[run_start], &title);
      std::size_t row = run_start / cols, c0 = run_start % cols, n = i - run_start;
      s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>\n",
                       1 + c0 * (cw + gapx), 1 + row * (cw + gapx), n * (cw + gapx) - gapx, cw, col, esc(title));
    }
    run_start = i;
  }
  s += "<defs><pattern id=\"hatch\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">"
       "<rect width=\"4\" height=\"4\" fill=\"#f4f4f6\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"4\" stroke=\"#aab\" stroke-width=\"1.5\"/>"
       "</pattern></defs>\n</svg>\n<div class=\"legend\">";
  for (int k = 0; k < 6; ++k) {
    if (totals[k] == 0 && k != 0 && k != 2) continue;
    s += fmt::format("<span><i style=\"background:{}\"></i>{} {}</span>", kCellColors[k], kCellNames[k], fmt_bytes(totals[k]));
  }
  s += "<span><i class=\"hatch\"></i>unmapped address space (not drawn to scale)</span>";
  s += fmt::format("</div><div class=\"note\">one cell = {}{}</div></figure>\n", fmt_bytes(cell_bytes),
                   per > 1 ? fmt::format(" ({} pages)", per) : "");
  return s;
}

std::string num_row(const std::string& what, const std::string& value, const std::string& note) {
  return fmt::format("<tr><th>{}</th><td class=\"num\">{}</td><td>{}</td></tr>\n", what, value, note);
}

std::string ratio_text(std::uint64_t a, std::uint64_t b) {
  return b == 0 ? std::string() : fmt::format("{:.3f} x peak live", static_cast<double>(a) / static_cast<double>(b));
}

}  // namespace

std::string report_html(const Trace& t, const ReportOptions& o) {
  Timeline tl = build_timeline(t);
  const bool imported = t.meta.json.find("PyTorch memory snapshot") != std::string::npos;
  const std::string recorded_name = imported ? "PyTorch reserved" : "recorded allocator physical";
  std::optional<GlakeReplay> g;
  if (o.replay) g = replay_for_timeline(t, o.replay_options, tl.peak_live_event);
  const bool glake_ok = g && g->error.empty();

  // Rows: live, recorded physical, glake physical.
  std::vector<Row> rows;
  rows.reserve(tl.samples.size());
  for (std::size_t i = 0; i < tl.samples.size(); ++i) {
    Row r{tl.samples[i].t_us, {tl.samples[i].live, tl.samples[i].physical, 0}};
    if (glake_ok) r.v[2] = i == 0 ? g->start_physical : g->physical_after_event[i - 1];
    rows.push_back(r);
  }
  std::vector<Row> pts = thin(rows, o.max_points);
  std::vector<Row> frag;
  frag.reserve(pts.size());
  for (const Row& r : pts)
    frag.push_back({r.t, {0, r.v[1] > r.v[0] ? r.v[1] - r.v[0] : 0, r.v[2] > r.v[0] ? r.v[2] - r.v[0] : 0}});
  std::vector<Marker> markers;
  for (const TraceEvent& e : t.events)
    if (e.op == Op::oom)
      markers.push_back({e.t_us, fmt::format("out of memory at {}: request of {}", fmt_time_us(e.t_us - tl.t_first), fmt_bytes(e.size))});

  std::vector<Series> mem = {{"live (allocations)", "#1f77b4", 0}};
  if (tl.has_physical) mem.push_back({recorded_name, "#ff7f0e", 1});
  if (glake_ok) mem.push_back({"glake (replay)", "#2ca02c", 2, true});
  std::vector<Series> fr;
  if (tl.has_physical) fr.push_back({recorded_name + " - live", "#ff7f0e", 1, false, true});
  if (glake_ok) fr.push_back({"glake (replay) - live", "#2ca02c", 2, true, true});

  const std::uint64_t t0 = tl.t_first, t1 = std::max(tl.t_last, tl.t_first + 1);
  std::string title = t.meta.name.empty() ? std::string("trace") : t.meta.name;

  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  h += fmt::format("<title>glake report: {}</title>\n", esc(title));
  h += R"(<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1160px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#667;margin-bottom:14px} table{border-collapse:collapse;margin:6px 0} th,td{padding:3px 10px;text-align:left;vertical-align:top}
table.kv th{font-weight:600;color:#334} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.grid{font-size:13px} table.grid th{background:#f0f1f6;border-bottom:1px solid #ccd} table.grid td{border-bottom:1px solid #eef}
.big{font-size:18px;font-weight:600} .save{color:#1a7f37} .warn{color:#b35900} .bad{color:#c62828}
svg .tick{font-size:11px;fill:#556} svg .axis{font-size:12px;fill:#334} svg .legend{font-size:12px;fill:#223}
figure.map{margin:10px 0 18px} figcaption{font-weight:600;margin-bottom:6px} .legend span{display:inline-block;margin:4px 14px 0 0;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px;border:1px solid #0002}
.legend i.hatch{background:repeating-linear-gradient(45deg,#f4f4f6 0 2px,#aab 2px 3px)} .note{font-size:12px;color:#667}
pre{background:#f6f7fb;padding:8px 10px;border-radius:4px;white-space:pre-wrap;font-size:12.5px}
.frames{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;color:#345}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #99a;border-radius:4px;padding:5px 8px;font-size:12px;box-shadow:0 2px 6px #0002;display:none;white-space:nowrap}
</style></head><body>
)";
  h += fmt::format("<h1>glake memory report: {}</h1>\n", esc(title));
  h += fmt::format("<div class=\"sub\">{} &middot; {} &middot; {} events over {} &middot; {} device(s), {} stream(s)</div>\n",
                   esc(t.path), esc(t.format), fmt_count(t.events.size()), fmt_time_us(tl.t_last - tl.t_first),
                   tl.devices, tl.streams);

  // Key numbers.
  h += "<h2>Key numbers</h2>\n<table class=\"kv\">\n";
  h += num_row("peak live", "<span class=\"big\">" + fmt_bytes(tl.peak_live) + "</span>",
               fmt::format("the most bytes live allocations held at once, at {}; no allocator can do with less",
                           fmt_time_us(tl.after(tl.peak_live_event).t_us - t0)));
  if (tl.has_physical)
    h += num_row("peak " + recorded_name, fmt_bytes(tl.peak_physical),
                 ratio_text(tl.peak_physical, tl.peak_live) +
                     (imported ? "; what PyTorch's caching allocator reserved from CUDA"
                               : "; what the recording allocator held (create/release events)"));
  if (t.meta.peak_reserved_native && (!tl.has_physical || *t.meta.peak_reserved_native != tl.peak_physical))
    h += num_row("PyTorch native peak reserved", fmt_bytes(*t.meta.peak_reserved_native),
                 ratio_text(*t.meta.peak_reserved_native, tl.peak_live) + " (the trace's meta)");
  if (glake_ok) {
    std::uint64_t gp = g->report.peak_physical_bytes;
    h += num_row("peak glake (replay)", "<span class=\"big\">" + fmt_bytes(gp) + "</span>",
                 ratio_text(gp, tl.peak_live) +
                     fmt::format("; the same allocations replayed through glake's pool (pages {}, stitching {}, {} stitches)",
                                 fmt_bytes(g->report.granularity), g->report.stitch ? "on" : "off",
                                 fmt_count(g->report.pool_stats.stitches)));
    const PeakBreakdown& b = g->report.at_peak;
    h += num_row("at glake's peak", fmt_bytes(b.requested) + " requested",
                 esc(fmt::format("+ rounding {} + free in small chunks {} + free large blocks {} ({} blocks; {} "
                                 "shorter than a page, on pages shared with live blocks){}",
                                 fmt_bytes(b.rounding), fmt_bytes(b.free_in_chunks), fmt_bytes(b.free_large),
                                 b.free_large_blocks, b.free_large_below_page,
                                 b.spare > 0 ? " + spare pages " + fmt_bytes(b.spare) : std::string())));
    std::optional<std::uint64_t> base;
    std::string base_name;
    if (t.meta.peak_reserved_native) base = *t.meta.peak_reserved_native, base_name = "PyTorch native";
    else if (tl.has_physical) base = tl.peak_physical, base_name = recorded_name;
    if (base && *base > 0) {
      double d = static_cast<double>(*base) - static_cast<double>(gp);
      std::string cls = d >= 0 ? "save" : "warn";
      h += num_row("glake vs " + base_name,
                   fmt::format("<span class=\"big {}\">{}{}</span>", cls, d >= 0 ? "saves " : "needs ",
                               fmt_bytes(static_cast<std::uint64_t>(std::fabs(d)))),
                   fmt::format("{:.1f}% of {}", 100.0 * std::fabs(d) / static_cast<double>(*base), fmt_bytes(*base)) +
                       (d >= 0 ? "" : " more"));
    }
  } else if (g) {
    h += num_row("glake (replay)", "<span class=\"bad\">failed</span>", esc(g->error));
  }
  if (t.meta.events_dropped.value_or(0) > 0)
    h += num_row("dropped events", "<span class=\"warn\">" + fmt_count(*t.meta.events_dropped) + "</span>",
                 "the recorder's ring was full: the trace is incomplete (GLAKE_TRACE_EVENTS raises it)");
  if (!t.meta.stacks_note.empty()) h += num_row("call stacks", fmt_count(t.stacks.size()), esc(t.meta.stacks_note));
  h += "</table>\n";

  h += "<h2>Memory over time</h2>\n";
  h += svg_chart("mem", pts, mem, markers, t0, t1, "bytes");
  if (!fr.empty()) {
    h += "<h2>Fragmentation over time</h2>\n<div class=\"note\">physical - live: memory held that no live allocation"
         " uses (cached blocks, rounding, partly used pages)</div>\n";
    h += svg_chart("frag", frag, fr, markers, t0, t1, "bytes");
  }

  // Bucket table (the trace's own physical; glake's column when replayed).
  std::vector<Bucket> buckets = bucketize(t, tl, o.buckets);
  std::vector<Bucket> gbuckets;
  if (glake_ok) {
    Timeline gl = tl;
    set_physical(gl, g->start_physical, g->physical_after_event, "glake replay");
    gbuckets = bucketize(t, gl, o.buckets);
  }
  if (!buckets.empty()) {
    h += "<table class=\"grid\"><tr><th>from</th><th>to</th><th>peak live</th>";
    if (tl.has_physical) h += fmt::format("<th>peak {0}</th><th>max {0} - live</th>", esc(recorded_name));
    if (glake_ok) h += "<th>peak glake</th><th>max glake - live</th>";
    h += "<th>events</th><th>ooms</th></tr>\n";
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      const Bucket& b = buckets[i];
      h += fmt::format("<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                       fmt_time_us(b.t0 - t0), fmt_time_us(b.t1 - t0), fmt_bytes(b.max_live));
      if (tl.has_physical) h += fmt::format("<td class=\"num\">{}</td><td class=\"num\">{}</td>", fmt_bytes(b.max_physical), fmt_bytes(b.max_frag));
      if (glake_ok && i < gbuckets.size())
        h += fmt::format("<td class=\"num\">{}</td><td class=\"num\">{}</td>", fmt_bytes(gbuckets[i].max_physical),
                         fmt_bytes(gbuckets[i].max_frag));
      h += fmt::format("<td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n", fmt_count(b.events), b.ooms);
    }
    h += "</table>\n";
  }

  h += "<h2>Block maps</h2>\n";
  bool any_map = false;
  if (glake_ok && g->snapshot) {
    h += block_map(*g->snapshot, fmt::format("glake's pool at the peak of live bytes ({}, replay): {}", fmt_time_us(tl.after(tl.peak_live_event).t_us - t0),
                                             esc(explain_snapshot(*g->snapshot, t0))));
    any_map = true;
  }
  std::size_t shown_snaps = 0;
  for (std::size_t i = 0; i < t.snapshots.size(); ++i) {
    // All out-of-memory snapshots (up to 4), and the last snapshot of any other kind.
    const TraceSnapshot& s = t.snapshots[i];
    bool last_of_kind = true;
    for (std::size_t j = i + 1; j < t.snapshots.size(); ++j)
      if (t.snapshots[j].reason == s.reason && t.snapshots[j].device == s.device) last_of_kind = false;
    if (!(s.reason == "oom" ? shown_snaps < 4 : last_of_kind)) continue;
    ++shown_snaps;
    h += block_map(s, fmt::format("{} (device {}, {}, from the trace)", esc(s.reason), s.device,
                                  fmt_time_us(s.t_us >= t0 ? s.t_us - t0 : s.t_us)));
    h += "<pre>" + esc(explain_snapshot(s, t.events.empty() ? 0 : t0)) + "</pre>\n";
    any_map = true;
  }
  if (!any_map) h += "<div class=\"note\">no block map: the trace has no snapshot and the replay was skipped</div>\n";

  // Sites at the peak.
  std::uint64_t total = 0, blocks = 0;
  std::vector<Site> sites = sites_at(t, tl.peak_live_event, &total, &blocks);
  h += fmt::format("<h2>Allocation sites holding the most bytes at the peak</h2>\n<div class=\"note\">{} in {} live blocks"
                   " at {}</div>\n", fmt_bytes(total), fmt_count(blocks), fmt_time_us(tl.after(tl.peak_live_event).t_us - t0));
  if (t.stacks.empty())
    h += fmt::format("<div class=\"note\">the trace has no call stacks{}: record with GLAKE_TRACE_STACKS=1 (a build with"
                     " libunwind), or import a PyTorch snapshot recorded with stacks</div>\n",
                     t.meta.stacks_note.empty() ? std::string() : " (stacks " + esc(t.meta.stacks_note) + ")");
  h += "<table class=\"grid\"><tr><th>#</th><th>bytes</th><th>share</th><th>blocks</th><th>where</th></tr>\n";
  for (std::size_t i = 0; i < sites.size() && static_cast<int>(i) < o.top_sites; ++i) {
    const Site& s = sites[i];
    std::string where;
    if (s.at_start) where = "live at the start of the trace";
    else if (s.stack == 0) where = "no stack";
    else {
      where = "<div class=\"frames\">";
      for (const Frame& f : display_frames(t, s.stack, 5)) where += esc(frame_text(f)) + "<br>";
      where += "</div>";
    }
    h += fmt::format("<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1f}%</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
                     i + 1, fmt_bytes(s.bytes), total > 0 ? 100.0 * static_cast<double>(s.bytes) / static_cast<double>(total) : 0.0,
                     fmt_count(s.blocks), where);
  }
  h += "</table>\n";

  if (!markers.empty()) {
    h += "<h2>Out of memory</h2>\n";
    std::size_t k = 0;
    for (std::size_t i = 0; i < t.events.size() && k < 5; ++i) {
      const TraceEvent& e = t.events[i];
      if (e.op != Op::oom) continue;
      ++k;
      std::uint64_t tot = 0, nb = 0;
      std::vector<Site> s = sites_at(t, i, &tot, &nb);
      h += fmt::format("<p>device {} at {}: a request of <b>{}</b> failed with {} live in {} blocks.", e.device,
                       fmt_time_us(e.t_us - t0), fmt_bytes(e.size), fmt_bytes(tot), fmt_count(nb));
      if (!s.empty() && s[0].stack != 0) {
        h += " The largest holder:<div class=\"frames\">";
        for (const Frame& f : display_frames(t, s[0].stack, 4)) h += esc(frame_text(f)) + "<br>";
        h += fmt::format("</div>({} in {} blocks)", fmt_bytes(s[0].bytes), fmt_count(s[0].blocks));
      }
      h += "</p>\n";
    }
  }

  // Tooltip data.
  nlohmann::json data;
  auto chart_data = [&](const std::vector<Row>& rs, const std::vector<Series>& ss) {
    nlohmann::json c;
    nlohmann::json ts = nlohmann::json::array();
    for (const Row& r : rs) ts.push_back(r.t);
    c["t"] = ts;
    nlohmann::json sers = nlohmann::json::array();
    for (const Series& se : ss) {
      nlohmann::json v = nlohmann::json::array();
      for (const Row& r : rs) v.push_back(r.v[se.index]);
      sers.push_back({{"name", se.name}, {"color", se.color}, {"v", v}});
    }
    c["series"] = sers;
    return c;
  };
  data["mem"] = chart_data(pts, mem);
  if (!fr.empty()) data["frag"] = chart_data(frag, fr);
  data["t0"] = t0;
  std::string blob = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // "</" cannot end the script element early.
  for (std::size_t p = blob.find("</"); p != std::string::npos; p = blob.find("</", p + 2)) blob.replace(p, 2, "<\\/");
  h += "<div id=\"tip\"></div>\n<script id=\"data\" type=\"application/json\">" + blob + "</script>\n";
  h += R"(<script>
(function(){
  var D = JSON.parse(document.getElementById('data').textContent), tip = document.getElementById('tip');
  function fmtB(b){var u=['B','KiB','MiB','GiB','TiB'],i=0;while(b>=1024&&i<4){b/=1024;i++;}return (i?b.toFixed(2):b)+' '+u[i];}
  function fmtT(us){return us<1e6?(us/1e3).toFixed(2)+' ms':(us/1e6).toFixed(3)+' s';}
  Array.prototype.forEach.call(document.querySelectorAll('svg.chart'), function(svg){
    var c = D[svg.id]; if(!c) return;
    var t0=+svg.dataset.t0, t1=+svg.dataset.t1, L=+svg.dataset.l, R=+svg.dataset.r, cur=svg.querySelector('.cursor');
    svg.addEventListener('mousemove', function(ev){
      var box=svg.getBoundingClientRect(), x=(ev.clientX-box.left)*svg.viewBox.baseVal.width/box.width;
      if(x<L||x>R){tip.style.display='none';cur.setAttribute('visibility','hidden');return;}
      var t=t0+(x-L)/(R-L)*(t1-t0), a=c.t, lo=0, hi=a.length-1;
      while(lo<hi){var m=(lo+hi)>>1; if(a[m]<t) lo=m+1; else hi=m;}
      if(lo>0&&Math.abs(a[lo-1]-t)<Math.abs(a[lo]-t)) lo--;
      var html='<b>'+fmtT(a[lo]-D.t0)+'</b>';
      c.series.forEach(function(s){html+='<br><span style="color:'+s.color+'">&#9632;</span> '+s.name+': '+fmtB(s.v[lo]);});
      tip.innerHTML=html; tip.style.display='block'; tip.style.left=(ev.clientX+14)+'px'; tip.style.top=(ev.clientY+10)+'px';
      var px=L+(a[lo]-t0)/(t1-t0)*(R-L); cur.setAttribute('x1',px); cur.setAttribute('x2',px); cur.setAttribute('visibility','visible');
    });
    svg.addEventListener('mouseleave', function(){tip.style.display='none';cur.setAttribute('visibility','hidden');});
  });
  document.body.setAttribute('data-ready','1');
})();
</script>
)";
  h += fmt::format("<div class=\"note\" style=\"margin-top:24px\">written by glake-trace report from {}</div>\n</body></html>\n",
                   esc(t.path));
  return h;
}

int report_command(const std::vector<std::string>& args) {
  ReportOptions o;
  std::string output, device;
  bool no_replay = false, no_stitch = false;
  std::uint64_t granularity = o.replay_options.granularity, small_limit = o.replay_options.config.small_limit,
                capacity = o.replay_options.capacity, top = static_cast<std::uint64_t>(o.top_sites);
  OptionParser p("report", kUsage);
  p.text("--output", &output);
  p.flag("--no-replay", &no_replay);
  p.flag("--no-stitch", &no_stitch);
  p.bytes("--granularity", &granularity);
  p.bytes("--small-limit", &small_limit);
  p.bytes("--capacity", &capacity);
  p.count("--top", &top, 1, 1000);
  p.custom("--device", true, [&](const std::string& v) {
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 9)
      return fmt::format("--device: '{}' is not a device number", v);
    device = v;
    return std::string();
  });
  std::vector<std::string> pos;
  if (int rc = p.parse(args, &pos); rc >= 0) return rc;
  if (pos.size() != 1) return p.usage_error(pos.empty() ? "no trace given" : "one trace at a time");
  if ((granularity & (granularity - 1)) != 0 || granularity < 4096)
    return p.usage_error("--granularity: not a power of two >= 4K");
  o.replay = !no_replay;
  o.replay_options.granularity = granularity;
  o.replay_options.capacity = capacity;
  o.replay_options.config.small_limit = small_limit;
  o.replay_options.config.stitch = !no_stitch;
  o.top_sites = static_cast<int>(top);
  Trace t;
  if (!read_trace_or_report("report", pos[0], &t)) return 1;
  std::string html;
  try {
    if (!device.empty()) t = filter_device(t, static_cast<std::uint32_t>(std::stoul(device)));
    html = report_html(t, o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "glake-trace report: error: {}: {}\n", pos[0], e.what());
    return 1;
  }
  if (!write_output("report", output, html)) return 1;
  if (!output.empty() && output != "-") fmt::print(stderr, "glake-trace report: wrote {} ({} KiB)\n", output, html.size() / 1024);
  return 0;
}

}  // namespace glake::tracer
