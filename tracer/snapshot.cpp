// tracer/snapshot.cpp: snapshot JSON (see snapshot.h) and its summary and explanation.
#include "tracer/snapshot.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "tracer/format_util.h"

namespace glake::tracer {
namespace {

using ojson = nlohmann::ordered_json;

bool valid_state(const std::string& s) {
  return s == "allocated" || s == "free" || s == "hole" || s == "busy" || s == "stale";
}

std::uint64_t get_u64(const nlohmann::json& j, const std::string& what) {
  if (j.is_number_unsigned()) return j.get<std::uint64_t>();
  if (j.is_number_integer() && j.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(j.get<std::int64_t>());
  throw std::invalid_argument(fmt::format("{}: expected a non-negative integer, found {}", what, j.dump()));
}

std::uint64_t field_u64(const nlohmann::json& j, const char* key, bool required, std::uint64_t fallback = 0) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw std::invalid_argument(fmt::format("the snapshot has no \"{}\" (required)", key));
    return fallback;
  }
  return get_u64(*it, key);
}

void regions_from_json(const nlohmann::json& j, const char* key, std::vector<SnapshotRegion>& out, bool required) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw std::invalid_argument(fmt::format("the snapshot has no \"{}\" (required)", key));
    return;
  }
  if (!it->is_array()) throw std::invalid_argument(fmt::format("{}: expected an array", key));
  out.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const auto& r = (*it)[i];
    std::string where = fmt::format("{}[{}]", key, i);
    if (!r.is_array() || r.size() < 3 || r.size() > 5)
      throw std::invalid_argument(
          fmt::format("{}: expected [base, size, state, stream, requested] (stream, requested optional), found {}",
                      where, r.dump()));
    SnapshotRegion g;
    g.base = get_u64(r[0], where + " base");
    g.size = get_u64(r[1], where + " size");
    // Past 2^64 the range wraps around: the block map would walk it forever.
    if (g.size > UINT64_MAX - g.base)
      throw std::invalid_argument(fmt::format("{}: base {} + size {} passes 2^64", where, g.base, g.size));
    if (!r[2].is_string() || !valid_state(r[2].get<std::string>()))
      throw std::invalid_argument(fmt::format("{} state: expected one of \"allocated\", \"free\", \"hole\", \"busy\", "
                                              "\"stale\", found {}", where, r[2].dump()));
    g.state = r[2].get<std::string>();
    if (r.size() > 3) g.stream = get_u64(r[3], where + " stream");
    if (r.size() > 4) g.requested = get_u64(r[4], where + " requested");
    out.push_back(std::move(g));
  }
}

ojson regions_to_json(const std::vector<SnapshotRegion>& v) {
  ojson a = ojson::array();
  for (const SnapshotRegion& r : v) a.push_back(ojson::array({r.base, r.size, r.state, r.stream, r.requested}));
  return a;
}

}  // namespace

SnapshotSummary summarize_snapshot(const TraceSnapshot& s) {
  SnapshotSummary m;
  for (const SnapshotRegion& r : s.regions) {
    if (r.state == "allocated") {
      m.allocated_bytes += r.size;
      m.requested_bytes += r.requested;
    } else if (r.state == "free") {
      m.free_bytes += r.size;
      m.largest_free_bytes = std::max<std::uint64_t>(m.largest_free_bytes, r.size);
      ++m.free_ranges;
    } else if (r.state == "stale") {
      m.stale_bytes += r.size;
    } else if (r.state == "busy") {
      m.busy_bytes += r.size;
    } else {
      m.hole_bytes += r.size;
    }
  }
  for (const SnapshotRegion& p : s.small_blocks) {
    if (p.state == "allocated") m.requested_bytes += p.requested;
    else if (p.state == "free") m.small_free_bytes += p.size;
  }
  // A shared page is one allocated large region whose requested is 0 in the pool's snapshot; its
  // pieces carry the requests (added above).
  m.spare_bytes = s.spare_pages * s.page_size;
  auto it = s.stats.find("physical");
  m.physical_bytes = it != s.stats.end() ? it->second : m.allocated_bytes + m.free_bytes + m.busy_bytes + m.spare_bytes;
  return m;
}

ojson snapshot_to_json(const TraceSnapshot& s) {
  ojson j;
  j["t_us"] = s.t_us;
  j["device"] = s.device;
  j["reason"] = s.reason;
  j["request"] = s.request;
  j["page_size"] = s.page_size;
  j["spare_pages"] = s.spare_pages;
  ojson stats = ojson::object();
  for (const auto& [k, v] : s.stats) stats[k] = v;
  j["stats"] = stats;
  SnapshotSummary m = summarize_snapshot(s);
  j["summary"] = {{"physical_bytes", m.physical_bytes},       {"requested_bytes", m.requested_bytes},
                  {"unused_bytes", m.unused_bytes()},          {"allocated_bytes", m.allocated_bytes},
                  {"free_bytes", m.free_bytes},                {"free_ranges", m.free_ranges},
                  {"largest_free_bytes", m.largest_free_bytes}, {"small_free_bytes", m.small_free_bytes},
                  {"spare_bytes", m.spare_bytes},              {"stale_bytes", m.stale_bytes},
                  {"busy_bytes", m.busy_bytes},                {"hole_bytes", m.hole_bytes}};
  j["regions"] = regions_to_json(s.regions);
  j["small_blocks"] = regions_to_json(s.small_blocks);
  return j;
}

void snapshot_from_json(const nlohmann::json& j, TraceSnapshot& out) {
  if (!j.is_object()) throw std::invalid_argument("expected a snapshot object");
  out.t_us = field_u64(j, "t_us", true);
  std::uint64_t device = field_u64(j, "device", false);
  if (device > UINT32_MAX) throw std::invalid_argument("device: does not fit 32 bits");
  out.device = static_cast<std::uint32_t>(device);
  if (auto it = j.find("reason"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) throw std::invalid_argument("reason: expected a string, found " + it->dump());
    out.reason = it->get<std::string>();
  }
  out.request = field_u64(j, "request", false);
  out.page_size = field_u64(j, "page_size", true);
  out.spare_pages = field_u64(j, "spare_pages", false);
  if (auto it = j.find("stats"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) throw std::invalid_argument("stats: expected an object, found " + it->dump());
    for (const auto& [k, v] : it->items())
      if (v.is_number()) out.stats[k] = get_u64(v, "stats." + k);
  }
  regions_from_json(j, "regions", out.regions, true);
  regions_from_json(j, "small_blocks", out.small_blocks, false);
}

std::string explain_snapshot(const TraceSnapshot& s, std::uint64_t t0_us) {
  SnapshotSummary m = summarize_snapshot(s);
  const std::uint64_t t = s.t_us >= t0_us ? s.t_us - t0_us : s.t_us;
  std::string out;
  const std::uint64_t page = std::max<std::uint64_t>(s.page_size, 1);
  if (s.reason == "oom") {
    std::uint64_t need = (s.request + page - 1) / page * page;
    out += fmt::format("out of memory on device {} at {}: a request of {} ({} in pages of {}) failed.\n", s.device,
                       fmt_time_us(t), fmt_bytes(s.request), fmt_bytes(need), fmt_bytes(page));
    std::uint64_t reusable = m.free_bytes + m.spare_bytes;
    out += fmt::format("  the pool held {} of physical memory: {} requested by live allocations, {} in rounding and"
                       " shared small-block pages, {} cached free ({} range{}, largest {}), {} spare pages.\n",
                       fmt_bytes(m.physical_bytes), fmt_bytes(m.requested_bytes),
                       fmt_bytes(m.allocated_bytes > m.requested_bytes ? m.allocated_bytes - m.requested_bytes : 0),
                       fmt_bytes(m.free_bytes), m.free_ranges, m.free_ranges == 1 ? "" : "s",
                       fmt_bytes(m.largest_free_bytes), fmt_bytes(m.spare_bytes));
    if (reusable >= need) {
      out += fmt::format("  the cached pages ({}) would have covered the request by stitching: stitching was off, or"
                         " the pages were still in use by another stream's pending work.\n",
                         fmt_bytes(reusable));
    } else {
      out += fmt::format("  even with every cached page stitched into one range ({}), {} more had to come from the"
                         " device",
                         fmt_bytes(reusable), fmt_bytes(need - reusable));
      auto lim = s.stats.find("limit");
      auto dfree = s.stats.find("device_free");
      if (lim != s.stats.end() && lim->second > 0)
        out += fmt::format(", beyond the limit of {} (GLAKE_LIMIT)", fmt_bytes(lim->second));
      if (dfree != s.stats.end()) out += fmt::format("; the device had {} free", fmt_bytes(dfree->second));
      out += ": the live allocations themselves are too large; see the allocation sites holding the most bytes.\n";
    }
  } else {
    out += fmt::format("snapshot of device {} at {} ({}): {} physical, {} requested by live allocations, {} cached"
                       " free ({} range{}, largest {}), {} spare.\n",
                       s.device, fmt_time_us(t), s.reason.empty() ? "no reason given" : s.reason,
                       fmt_bytes(m.physical_bytes), fmt_bytes(m.requested_bytes), fmt_bytes(m.free_bytes),
                       m.free_ranges, m.free_ranges == 1 ? "" : "s", fmt_bytes(m.largest_free_bytes),
                       fmt_bytes(m.spare_bytes));
  }
  if (m.small_free_bytes > 0)
    out += fmt::format("  {} free inside shared small-block pages (usable only by small requests).\n",
                       fmt_bytes(m.small_free_bytes));
  return out;
}

}  // namespace glake::tracer
