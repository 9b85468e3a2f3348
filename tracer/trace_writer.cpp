// tracer/trace_writer.cpp: see trace_writer.h. Events are formatted by hand into a buffer that is
// handed out every 1 MiB: a million events take well under a second.
#include "tracer/trace_writer.h"

#include <charconv>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tracer/atomic_file.h"
#include "tracer/snapshot.h"

namespace glake::tracer {
namespace {

class Buffer {
 public:
  explicit Buffer(const std::function<void(std::string_view)>& out) : out_(out) { buf_.reserve(kFlush + 4096); }
  ~Buffer() = default;
  void put(std::string_view s) {
    buf_.append(s);
    maybe_flush();
  }
  void put(char c) { buf_.push_back(c); }
  void num(std::uint64_t v) {
    char tmp[24];
    auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
    buf_.append(tmp, static_cast<std::size_t>(r.ptr - tmp));
  }
  void maybe_flush() {
    if (buf_.size() >= kFlush) flush();
  }
  void flush() {
    if (!buf_.empty()) out_(buf_);
    buf_.clear();
  }

 private:
  static constexpr std::size_t kFlush = std::size_t{1} << 20;
  const std::function<void(std::string_view)>& out_;
  std::string buf_;
};

}  // namespace

std::string json_quote(std::string_view s) {
  // nlohmann's dump with the replace handler: escapes and invalid UTF-8 handled in one place.
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void write_trace_json(const Trace& t, const std::function<void(std::string_view)>& out) {
  Buffer b(out);
  b.put("{\"format\": \"glake-trace\", \"version\": 1,\n\"meta\": ");
  b.put(t.meta.json.empty() ? std::string_view("{}") : std::string_view(t.meta.json));
  b.put(",\n\"live_at_start\": [");
  for (std::size_t i = 0; i < t.live_at_start.size(); ++i) {
    const LiveBlock& l = t.live_at_start[i];
    b.put(i == 0 ? "\n[" : ",\n[");
    b.num(l.addr);
    b.put(',');
    b.num(l.size);
    int cols = l.stack != 0 ? 5 : l.device != 0 ? 4 : l.stream != 0 ? 3 : 2;
    if (cols > 2) b.put(','), b.num(l.stream);
    if (cols > 3) b.put(','), b.num(l.device);
    if (cols > 4) b.put(','), b.num(l.stack);
    b.put(']');
    b.maybe_flush();
  }
  b.put("],\n\"events\": [");
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    b.put(i == 0 ? "\n[" : ",\n[");
    b.num(e.t_us);
    b.put(",\"");
    b.put(op_name(e.op));
    b.put("\",");
    b.num(e.addr);
    b.put(',');
    b.num(e.size);
    b.put(',');
    b.num(e.stream);
    int cols = e.aux != 0 ? 9 : e.stack != 0 ? 8 : e.thread != 0 ? 7 : e.device != 0 ? 6 : 5;
    if (cols > 5) b.put(','), b.num(e.device);
    if (cols > 6) b.put(','), b.num(e.thread);
    if (cols > 7) b.put(','), b.num(e.stack);
    if (cols > 8) b.put(','), b.num(e.aux);
    b.put(']');
    b.maybe_flush();
  }
  b.put("],\n\"stacks\": {");
  bool first = true;
  for (const auto& [id, frames] : t.stacks) {
    b.put(first ? "\n\"" : ",\n\"");
    first = false;
    b.num(id);
    b.put("\": [");
    for (std::size_t k = 0; k < frames.size(); ++k) {
      const Frame& f = frames[k];
      if (k > 0) b.put(", ");
      b.put("{\"fn\": ");
      b.put(json_quote(f.fn));
      if (!f.src.empty()) b.put(", \"src\": "), b.put(json_quote(f.src));
      if (!f.obj.empty()) b.put(", \"obj\": "), b.put(json_quote(f.obj));
      b.put('}');
    }
    b.put(']');
    b.maybe_flush();
  }
  b.put("},\n\"snapshots\": [");
  for (std::size_t i = 0; i < t.snapshots.size(); ++i) {
    b.put(i == 0 ? "\n" : ",\n");
    if (t.snapshots[i].json.empty()) b.put(snapshot_to_json(t.snapshots[i]).dump());
    else b.put(t.snapshots[i].json);
    b.maybe_flush();
  }
  b.put("]}\n");
  b.flush();
}

void write_trace(const Trace& trace, const std::string& path) {
  AtomicFile f(path, gz_suffix(path));
  write_trace_json(trace, [&](std::string_view s) { f.write(s); });
  f.commit();
}

std::string trace_to_json(const Trace& trace) {
  std::string s;
  write_trace_json(trace, [&](std::string_view p) { s.append(p); });
  return s;
}

}  // namespace glake::tracer
