// tracer/trace_reader.cpp: gzip inflation, the streaming JSON parser of traces and the trace checks.
//
// The parser is a cursor over the decompressed text. Its only state besides the position is "where it
// is" (section, element index, field), so that a failure can say what was expected at which byte and
// in which event. Numbers are parsed by hand (non-negative integers only); strings are decoded with
// their escapes; values of unknown keys are skipped with a depth limit. "meta" and each snapshot are
// small: their text is handed to nlohmann::json; events, live_at_start and stacks are parsed here.
//
// Which format a file is in is known for sure only at the end ("format" may follow "events"): rows and
// ops that only the glake format allows are accepted while parsing and remembered (the first one's
// position), and rejected at the end if the file turns out not to be a glake trace.
#include "tracer/trace_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tracer/snapshot.h"

namespace glake::tracer {
namespace {

constexpr std::uint64_t kProgressStep = std::uint64_t{4} << 20;  // bytes between progress calls

std::string read_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; only regular files are read.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw TraceError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)), {});
  struct stat st {};
  const int err = ::fstat(fd, &st) != 0 ? errno : 0;
  if (err != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw TraceError(fmt::format("{}: cannot read: {}", path,
                                 err != 0                ? std::strerror(err)
                                 : S_ISDIR(st.st_mode) ? "is a directory"
                                                       : "not a regular file (a trace is read from a file)"),
                     {});
  }
  std::string bytes;
  bytes.resize(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      throw TraceError(fmt::format("{}: read failed after {} bytes: {}", path, got,
                                   n == 0 ? "file shrank" : std::strerror(err)), got);
    }
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return bytes;
}

// Shows the input at `pos` for messages: a few characters, escaped, or "end of input".
std::string describe_at(std::string_view s, std::size_t pos) {
  if (pos >= s.size()) return "end of input";
  std::string out = "'";
  std::size_t end = std::min(s.size(), pos + 20);
  for (std::size_t i = pos; i < end; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') out += "\\n";
    else if (c < 0x20 || c >= 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  out += end < s.size() ? "...'" : "'";
  return out;
}

class Parser {
 public:
  Parser(std::string_view s, const std::string& origin, const ReadProgress& progress)
      : s_(s), origin_(origin), progress_(progress) {}

  Trace parse() {
    Trace t;
    t.meta.json = "{}";
    bool seen_meta = false, seen_live = false, seen_events = false, seen_format = false, seen_version = false,
         seen_stacks = false, seen_snapshots = false;
    std::size_t version_at = 0;
    skip_ws();
    if (pos_ >= s_.size()) fail(s_.empty() ? "empty input, expected a JSON object" : "expected a JSON object");
    expect('{', "'{' to open the trace object");
    skip_ws();
    if (peek() == '}') {
      ++pos_;
    } else {
      for (;;) {
        section_ = Section::top;
        std::size_t key_at = pos_;
        std::string key = parse_string("a key");
        expect(':', "':' after a key");
        auto once = [&](bool& seen) {
          if (seen) fail(fmt::format("key \"{}\" appears twice", key), key_at);
          seen = true;
        };
        if (key == "meta") {
          once(seen_meta);
          parse_meta(t.meta);
        } else if (key == "live_at_start") {
          once(seen_live);
          parse_live(t.live_at_start);
        } else if (key == "events") {
          once(seen_events);
          parse_events(t);
        } else if (key == "format") {
          once(seen_format);
          skip_ws();
          std::size_t at = pos_;
          std::string f = parse_string("the format name \"glake-trace\"");
          if (f != "glake-trace")
            fail(fmt::format("unknown format \"{}\" (this reader knows \"glake-trace\" and the shared format, "
                             "which has no \"format\" key)", f), at);
          glake_ = true;
        } else if (key == "version") {
          once(seen_version);
          skip_ws();
          version_at = pos_;
          std::uint64_t v = parse_u64();
          if (v != 1)
            fail(fmt::format("unsupported version {} of the glake-trace format (this reader knows version 1)", v),
                 version_at);
          t.version = static_cast<std::uint32_t>(v);
        } else if (key == "stacks") {
          once(seen_stacks);
          parse_stacks(t.stacks);
        } else if (key == "snapshots") {
          once(seen_snapshots);
          parse_snapshots(t.snapshots);
        } else {
          skip_value(0);
        }
        section_ = Section::top;
        skip_ws();
        char c = peek();
        ++pos_;
        if (c == '}') break;
        if (c != ',') fail("expected ',' or '}' in the trace object", pos_ - 1);
        skip_ws();
      }
    }
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected data after the trace object");
    if (!seen_events)
      throw TraceError(fmt::format("{}: byte 0: the trace object has no key \"events\" (required)", origin_), 0);
    if (glake_) {
      t.format = "glake-trace";
      if (!seen_version)
        throw TraceError(fmt::format("{}: byte 0: a glake-trace file needs \"version\" (1)", origin_), 0);
    } else {
      if (seen_version)
        throw TraceError(fmt::format("{}: byte {}: \"version\" without \"format\": \"glake-trace\"", origin_,
                                     version_at), version_at);
      if (first_glake_only_) {
        const GlakeOnly& g = *first_glake_only_;
        throw TraceError(fmt::format("{}: byte {} in {}: {}; only glake-trace files (\"format\": \"glake-trace\") "
                                     "may have extra columns, ops other than \"a\" and \"f\", \"stacks\" and "
                                     "\"snapshots\"",
                                     origin_, g.at, g.where, g.what), g.at);
      }
    }
    return t;
  }

 private:
  enum class Section { top, meta, live, events, stacks, snapshots };

  // The first element that only the glake format allows, for the error if the file is not one.
  struct GlakeOnly {
    std::size_t at;
    std::string where;  // "events[3]"
    std::string what;   // "op \"create\""
  };
  void glake_only(std::size_t at, std::string where, std::string what) {
    if (glake_ || first_glake_only_) return;
    first_glake_only_ = GlakeOnly{at, std::move(where), std::move(what)};
  }

  [[noreturn]] void fail(std::string_view what) const { fail(what, pos_); }
  [[noreturn]] void fail(std::string_view what, std::size_t at) const {
    std::string where;
    switch (section_) {
      case Section::top: break;
      case Section::meta: where = " in meta"; break;
      case Section::live: where = fmt::format(" in live_at_start[{}]", index_); break;
      case Section::events:
        where = fmt::format(" in events[{}]", index_);
        if (field_ != nullptr) where += fmt::format(" ({})", field_);
        break;
      case Section::stacks:
        where = stack_key_.empty() ? std::string(" in stacks") : fmt::format(" in stacks[\"{}\"]", stack_key_);
        if (field_ != nullptr) where += fmt::format(" ({})", field_);
        break;
      case Section::snapshots: where = fmt::format(" in snapshots[{}]", index_); break;
    }
    std::string found = at >= s_.size() ? std::string(" (the input ends here: truncated?)")
                                         : " (found " + describe_at(s_, at) + ")";
    throw TraceError(fmt::format("{}: byte {}{}: {}{}", origin_, at, where, what, found), at);
  }

  void skip_ws() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
      ++pos_;
    }
  }
  // The next significant character; fails at end of input.
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }
  void expect(char c, std::string_view what) {
    if (peek() != c) fail(fmt::format("expected {}", what));
    ++pos_;
  }

  std::uint64_t parse_u64() {
    char c = peek();
    if (c == '-') fail("expected a non-negative integer");
    if (c < '0' || c > '9') fail("expected a non-negative integer");
    std::size_t start = pos_;
    std::uint64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      auto d = static_cast<std::uint64_t>(s_[pos_] - '0');
      if (v > (UINT64_MAX - d) / 10) fail("integer does not fit 64 bits", start);
      v = v * 10 + d;
      ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E'))
      fail("expected an integer, not a fraction or exponent", start);
    if (pos_ - start > 1 && s_[start] == '0') fail("integer with a leading zero", start);
    return v;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  std::uint32_t parse_hex4() {
    if (s_.size() - pos_ < 4) {
      pos_ = s_.size();
      fail("unexpected end of input in a \\u escape");
    }
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
      else fail("expected a hex digit in a \\u escape");
      ++pos_;
    }
    return v;
  }
  // A JSON string, decoded. `what` names what was expected, for the message when it is not a string.
  std::string parse_string(std::string_view what) {
    if (peek() != '"') fail(fmt::format("expected {} (a string)", what));
    ++pos_;
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unexpected end of input in a string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string", pos_ - 1);
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unexpected end of input in a string");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xd800 && cp < 0xdc00 && s_.substr(pos_, 2) == "\\u") {
            pos_ += 2;
            std::uint32_t lo = parse_hex4();
            if (lo < 0xdc00 || lo >= 0xe000) fail("invalid surrogate pair in a \\u escape");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("invalid escape in a string", pos_ - 1);
      }
    }
  }

  // Skips any JSON value, checking its structure (not the contents of numbers and literals in detail).
  void skip_value(int depth) {
    if (depth > 256) fail("nesting deeper than 256");
    char c = peek();
    if (c == '"') {
      parse_string("a value");
    } else if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++pos_;
      if (peek() == close) {
        ++pos_;
        return;
      }
      for (;;) {
        if (c == '{') {
          parse_string("a key");
          expect(':', "':' after a key");
        }
        skip_value(depth + 1);
        char d = peek();
        ++pos_;
        if (d == close) return;
        if (d != ',') fail(fmt::format("expected ',' or '{}'", close), pos_ - 1);
      }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      ++pos_;
      while (pos_ < s_.size() && s_[pos_] != '\0' && std::strchr("0123456789.eE+-", s_[pos_]) != nullptr) ++pos_;
    } else {
      for (std::string_view lit : {"true", "false", "null"}) {
        if (s_.substr(pos_, lit.size()) == lit) {
          pos_ += lit.size();
          return;
        }
      }
      fail("expected a JSON value");
    }
  }

  static std::optional<std::uint64_t> meta_u64(const nlohmann::json& m, const char* key) {
    auto it = m.find(key);
    if (it == m.end() || it->is_null()) return std::nullopt;
    if (it->is_number_unsigned()) return it->get<std::uint64_t>();
    if (it->is_number_integer() && it->get<std::int64_t>() >= 0)
      return static_cast<std::uint64_t>(it->get<std::int64_t>());
    throw std::invalid_argument(fmt::format("meta.{}: expected a non-negative integer, found {}", key, it->dump()));
  }

  void parse_meta(TraceMeta& meta) {
    section_ = Section::meta;
    skip_ws();
    std::size_t start = pos_;
    if (peek() != '{') fail("expected an object for \"meta\"");
    skip_value(0);
    std::string_view text = s_.substr(start, pos_ - start);
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      fail(fmt::format("bad JSON: {}", e.what()), start + (e.byte > 0 ? e.byte - 1 : 0));
    } catch (const nlohmann::json::exception& e) {  // out_of_range: a number such as 1e400
      fail(fmt::format("bad JSON: {}", e.what()), start);
    }
    try {
      if (auto it = m.find("name"); it != m.end() && !it->is_null()) {
        if (!it->is_string()) throw std::invalid_argument("meta.name: expected a string, found " + it->dump());
        meta.name = it->get<std::string>();
      }
      meta.peak_live_bytes = meta_u64(m, "peak_live_bytes");
      meta.peak_reserved_native = meta_u64(m, "peak_reserved_pytorch_native");
      meta.physical_at_start_bytes = meta_u64(m, "physical_at_start_bytes");
      meta.events_dropped = meta_u64(m, "events_dropped");
      if (auto it = m.find("stacks"); it != m.end() && !it->is_null()) {
        if (!it->is_string()) throw std::invalid_argument("meta.stacks: expected a string, found " + it->dump());
        meta.stacks_note = it->get<std::string>();
      }
      if (auto it = m.find("median_iter_s"); it != m.end() && !it->is_null()) {
        if (!it->is_number()) throw std::invalid_argument("meta.median_iter_s: expected a number, found " + it->dump());
        meta.median_iter_s = it->get<double>();
      }
    } catch (const std::invalid_argument& e) {
      fail(e.what(), start);
    }
    meta.json = std::string(text);
  }

  std::uint32_t parse_u32(const char* what) {
    skip_ws();
    std::size_t at = pos_;
    std::uint64_t v = parse_u64();
    if (v > UINT32_MAX) fail(fmt::format("{} does not fit 32 bits", what), at);
    return static_cast<std::uint32_t>(v);
  }

  void parse_live(std::vector<LiveBlock>& out) {
    section_ = Section::live;
    index_ = 0;
    expect('[', "'[' to open \"live_at_start\" (an array of [addr, size])");
    if (peek() == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      std::size_t block_at = pos_;
      expect('[', "'[' to open a block [addr, size]");
      LiveBlock b;
      b.addr = parse_u64();
      expect(',', "',' after addr (a block is [addr, size])");
      b.size = parse_u64();
      // glake format: [addr, size, stream, device, stack], trailing ones optional.
      int columns = 2;
      while (columns < 5 && peek() == ',') {
        ++pos_;
        if (columns == 2) b.stream = parse_u64();
        else if (columns == 3) b.device = parse_u32("device");
        else b.stack = parse_u32("stack");
        ++columns;
      }
      if (columns > 2) glake_only(block_at, fmt::format("live_at_start[{}]", index_), fmt::format("a block of {} elements: the shared format's blocks have 2 (addr, size)", columns));
      expect(']', columns < 5 ? "']' after size (a block is [addr, size]; glake-trace: [addr, size, stream, device, stack])"
                              : "']' to close the block (at most 5 elements: addr, size, stream, device, stack)");
      out.push_back(b);
      char c = peek();
      ++pos_;
      if (c == ']') return;
      if (c != ',') fail("expected ',' or ']' after a block", pos_ - 1);
      ++index_;
    }
  }

  void parse_events(Trace& t) {
    section_ = Section::events;
    index_ = 0;
    field_ = nullptr;
    expect('[', "'[' to open \"events\" (an array of [t_us, op, addr, size, stream])");
    if (peek() == ']') {
      ++pos_;
      return;
    }
    t.events.reserve(s_.size() / 48);
    t.event_offsets.reserve(s_.size() / 48);
    std::uint64_t next_progress = pos_ + kProgressStep;
    static constexpr const char* kExtra[] = {"device", "thread", "stack", "aux"};
    for (;;) {
      field_ = nullptr;
      skip_ws();
      const std::size_t event_at = pos_;
      t.event_offsets.push_back(pos_);
      expect('[', "'[' to open an event [t_us, op, addr, size, stream]");
      TraceEvent e;
      field_ = "t_us";
      e.t_us = parse_u64();
      field_ = "op";
      expect(',', "',' after t_us (an event is [t_us, op, addr, size, stream])");
      skip_ws();
      if (s_.size() - pos_ >= 3 && s_[pos_] == '"' && s_[pos_ + 2] == '"' &&
          (s_[pos_ + 1] == 'a' || s_[pos_ + 1] == 'f')) {
        e.op = s_[pos_ + 1] == 'a' ? Op::alloc : Op::free;
        pos_ += 3;
      } else {  // another op, an escaped spelling, or an error
        std::size_t at = pos_;
        std::string op = parse_string("op \"a\" or \"f\"");
        std::optional<Op> o = op_from_name(op);
        if (!o)
          fail(fmt::format("expected op \"a\" or \"f\" (glake-trace files also: create, release, map, unmap, stitch, "
                           "reclaim, oom, offload), found \"{}\"", op), at);
        e.op = *o;
        if (!is_alloc_or_free(e.op)) glake_only(event_at, fmt::format("events[{}]", index_), fmt::format("op \"{}\": the shared format's ops are \"a\" and \"f\"", op));
      }
      field_ = "addr";
      expect(',', "',' after op");
      e.addr = parse_u64();
      field_ = "size";
      expect(',', "',' after addr");
      e.size = parse_u64();
      field_ = "stream";
      expect(',', "',' after size");
      e.stream = parse_u64();
      int columns = 5;
      while (columns < 9 && peek() == ',') {
        ++pos_;
        field_ = kExtra[columns - 5];
        switch (columns) {
          case 5: e.device = parse_u32("device"); break;
          case 6: e.thread = parse_u32("thread"); break;
          case 7: e.stack = parse_u32("stack"); break;
          default: e.aux = parse_u64(); break;
        }
        ++columns;
      }
      field_ = nullptr;
      if (columns > 5)
        glake_only(event_at, fmt::format("events[{}]", index_),
                   fmt::format("{} elements: the shared format's events have 5 elements (t_us, op, addr, size, stream)", columns));
      expect(']', glake_ || columns == 9
                      ? "']' to close the event (an event has 5 to 9 elements: t_us, op, addr, size, stream, device, "
                        "thread, stack, aux)"
                      : "']' to close the event (an event has 5 elements: t_us, op, addr, size, stream; glake-trace "
                        "files may add device, thread, stack, aux)");
      t.events.push_back(e);
      char c = peek();
      ++pos_;
      if (c == ']') break;
      if (c != ',') fail("expected ',' or ']' after an event", pos_ - 1);
      ++index_;
      if (progress_ && pos_ >= next_progress) {
        progress_("parse", pos_, s_.size());
        next_progress = pos_ + kProgressStep;
      }
    }
    field_ = nullptr;
  }

  // "stacks": {"ID": [FRAME, ...], ...}; FRAME: {"fn": s, "src": s, "obj": s} (each optional, other keys
  // skipped) or a string (the function).
  void parse_stacks(std::map<std::uint32_t, std::vector<Frame>>& out) {
    section_ = Section::stacks;
    stack_key_.clear();
    field_ = nullptr;
    skip_ws();
    glake_only(pos_, "stacks", "the key \"stacks\"");
    expect('{', "'{' to open \"stacks\" (an object: stack id -> array of frames)");
    if (peek() == '}') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      std::size_t key_at = pos_;
      stack_key_ = parse_string("a stack id (a string of digits)");
      std::uint64_t id = 0;
      bool digits = !stack_key_.empty() && stack_key_.size() <= 10 && (stack_key_.size() == 1 || stack_key_[0] != '0');
      for (char c : stack_key_) {
        if (c < '0' || c > '9') digits = false;
        else id = id * 10 + static_cast<std::uint64_t>(c - '0');
      }
      if (!digits || id == 0 || id > UINT32_MAX)
        fail(fmt::format("stack id \"{}\" is not an integer from 1 to 2^32-1", stack_key_), key_at);
      if (out.count(static_cast<std::uint32_t>(id)) != 0) fail("stack id appears twice", key_at);
      expect(':', "':' after a stack id");
      std::vector<Frame>& frames = out[static_cast<std::uint32_t>(id)];
      expect('[', "'[' to open the stack's frames");
      if (peek() == ']') {
        ++pos_;
      } else {
        for (;;) {
          Frame f;
          if (peek() == '"') {
            f.fn = parse_string("a frame");
          } else {
            expect('{', "a frame ({\"fn\": ..., \"src\": ..., \"obj\": ...} or a string)");
            if (peek() == '}') {
              ++pos_;
            } else {
              for (;;) {
                std::string k = parse_string("a key of the frame");
                expect(':', "':' after a key");
                if (k == "fn") field_ = "fn", f.fn = parse_string("the function name");
                else if (k == "src") field_ = "src", f.src = parse_string("\"file:line\"");
                else if (k == "obj") field_ = "obj", f.obj = parse_string("\"object+0xoffset\"");
                else skip_value(1);
                field_ = nullptr;
                char c = peek();
                ++pos_;
                if (c == '}') break;
                if (c != ',') fail("expected ',' or '}' in a frame", pos_ - 1);
              }
            }
          }
          frames.push_back(std::move(f));
          char c = peek();
          ++pos_;
          if (c == ']') break;
          if (c != ',') fail("expected ',' or ']' after a frame", pos_ - 1);
        }
      }
      stack_key_.clear();
      char c = peek();
      ++pos_;
      if (c == '}') return;
      if (c != ',') fail("expected ',' or '}' after a stack", pos_ - 1);
    }
  }

  // "snapshots": [SNAPSHOT, ...]; each object goes through nlohmann::json (see FORMAT.md).
  void parse_snapshots(std::vector<TraceSnapshot>& out) {
    section_ = Section::snapshots;
    index_ = 0;
    skip_ws();
    glake_only(pos_, "snapshots", "the key \"snapshots\"");
    expect('[', "'[' to open \"snapshots\" (an array of objects)");
    if (peek() == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      std::size_t start = pos_;
      if (peek() != '{') fail("expected a snapshot object");
      skip_value(0);
      std::string_view text = s_.substr(start, pos_ - start);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(text);
      } catch (const nlohmann::json::parse_error& e) {
        fail(fmt::format("bad JSON: {}", e.what()), start + (e.byte > 0 ? e.byte - 1 : 0));
      } catch (const nlohmann::json::exception& e) {  // out_of_range: a number such as 1e400
        fail(fmt::format("bad JSON: {}", e.what()), start);
      }
      TraceSnapshot snap;
      try {
        snapshot_from_json(j, snap);
      } catch (const std::invalid_argument& e) {
        fail(e.what(), start);
      }
      snap.json = std::string(text);
      out.push_back(std::move(snap));
      char c = peek();
      ++pos_;
      if (c == ']') return;
      if (c != ',') fail("expected ',' or ']' after a snapshot", pos_ - 1);
      ++index_;
    }
  }

  std::string_view s_;
  const std::string& origin_;
  const ReadProgress& progress_;
  std::size_t pos_ = 0;
  Section section_ = Section::top;
  std::uint64_t index_ = 0;
  const char* field_ = nullptr;
  std::string stack_key_;
  bool glake_ = false;  // "format": "glake-trace" seen so far
  std::optional<GlakeOnly> first_glake_only_;
};

}  // namespace

bool is_gzip(std::string_view bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

std::string gunzip(std::string_view in, const std::string& origin, const ReadProgress& progress) {
  // ISIZE (the last 4 bytes) is the size mod 2^32 of the last member: a hint, bounded by deflate's
  // largest ratio so that a corrupt trailer cannot make us commit gigabytes up front.
  std::size_t hint = in.size() * 4;
  if (in.size() >= 18) {
    std::uint32_t isize = 0;
    std::memcpy(&isize, in.data() + in.size() - 4, 4);
    hint = std::max<std::size_t>(hint, std::min<std::size_t>(isize, in.size() * 1032));
  }
  std::string out(std::max<std::size_t>(hint, 4096) + 1, '\0');

  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
    throw TraceError(fmt::format("{}: cannot start zlib", origin), {});
  std::size_t in_pos = 0, out_pos = 0;
  std::uint64_t next_progress = kProgressStep;
  auto fail = [&](const std::string& what) {
    inflateEnd(&zs);
    throw TraceError(fmt::format("{}: gzip: {} (compressed byte {}, {} bytes decompressed)", origin, what,
                                 in_pos, out_pos), in_pos);
  };
  for (;;) {
    if (out_pos == out.size()) out.resize(out.size() * 2);
    std::size_t in_chunk = std::min<std::size_t>(in.size() - in_pos, 1u << 30);
    std::size_t out_chunk = std::min<std::size_t>(out.size() - out_pos, 1u << 30);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + in_pos));
    zs.avail_in = static_cast<uInt>(in_chunk);
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + out_pos);
    zs.avail_out = static_cast<uInt>(out_chunk);
    int rc = inflate(&zs, Z_NO_FLUSH);
    in_pos += in_chunk - zs.avail_in;
    out_pos += out_chunk - zs.avail_out;
    if (progress && in_pos >= next_progress) {
      progress("inflate", in_pos, in.size());
      next_progress = in_pos + kProgressStep;
    }
    if (rc == Z_STREAM_END) {
      // Another member may follow (gzip files may be concatenated); zero padding is tolerated.
      std::string_view rest = in.substr(in_pos);
      if (rest.empty() || rest.find_first_not_of('\0') == std::string_view::npos) break;
      if (!is_gzip(rest)) fail("unexpected data after the end of the gzip stream");
      inflateReset(&zs);
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR) {
      if (zs.avail_out == 0) continue;  // grow and go on
      if (in_pos == in.size()) fail("truncated: the compressed data ends before the gzip stream does");
      fail("no progress");
    }
    if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR)
      fail(fmt::format("corrupt data: {}", zs.msg != nullptr ? zs.msg : "invalid deflate stream"));
    if (rc == Z_MEM_ERROR) fail("out of memory");
    fail(fmt::format("zlib error {}", rc));
  }
  inflateEnd(&zs);
  out.resize(out_pos);
  return out;
}

Trace parse_trace(std::string_view json, const std::string& origin, const ReadProgress& progress) {
  Parser p(json, origin, progress);
  Trace t = p.parse();
  t.path = origin;
  check_trace(t, origin);
  return t;
}

void check_trace(Trace& t, const std::string& origin) {
  auto at_event = [&](std::size_t i) {
    if (i < t.event_offsets.size()) return fmt::format("byte {} in events[{}]", t.event_offsets[i], i);
    return fmt::format("events[{}]", i);
  };
  auto event_fail = [&](std::size_t i, const std::string& what) {
    std::optional<std::uint64_t> off;
    if (i < t.event_offsets.size()) off = t.event_offsets[i];
    throw TraceError(fmt::format("{}: {}: {}", origin, at_event(i), what), off);
  };
  auto known_stack = [&](std::uint32_t id) { return id == 0 || t.stacks.count(id) != 0; };
  std::unordered_map<std::uint64_t, std::uint64_t> live;  // addr -> size
  live.reserve(t.live_at_start.size() + 1024);
  std::uint64_t live_bytes = 0;
  for (std::size_t i = 0; i < t.live_at_start.size(); ++i) {
    const LiveBlock& b = t.live_at_start[i];
    if (!live.emplace(b.addr, b.size).second)
      throw TraceError(fmt::format("{}: live_at_start[{}]: address {} is listed twice", origin, i, b.addr), {});
    if (!known_stack(b.stack))
      throw TraceError(fmt::format("{}: live_at_start[{}]: stack {} is not in \"stacks\"", origin, i, b.stack), {});
    // Sums past 2^64 would wrap silently here and in every tool that adds sizes up after us.
    if (b.size > UINT64_MAX - live_bytes)
      throw TraceError(fmt::format("{}: live_at_start[{}]: the live bytes pass 2^64", origin, i), {});
    live_bytes += b.size;
  }
  std::uint64_t peak = live_bytes;
  std::uint64_t physical = t.meta.physical_at_start_bytes.value_or(0);
  std::uint64_t peak_physical = physical;
  bool has_physical = false;
  t.allocs = t.frees = t.other_events = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    if (i > 0 && e.t_us < t.events[i - 1].t_us)
      event_fail(i, fmt::format("t_us goes backwards ({} after {})", e.t_us, t.events[i - 1].t_us));
    if (!known_stack(e.stack)) event_fail(i, fmt::format("stack {} is not in \"stacks\"", e.stack));
    switch (e.op) {
      case Op::alloc: {
        ++t.allocs;
        auto [it, fresh] = live.emplace(e.addr, e.size);
        if (!fresh) event_fail(i, fmt::format("allocation of address {}, which is live already", e.addr));
        if (e.size > UINT64_MAX - live_bytes)
          event_fail(i, fmt::format("allocation of {} bytes: the live bytes ({} before it) pass 2^64", e.size, live_bytes));
        live_bytes += e.size;
        peak = std::max(peak, live_bytes);
        break;
      }
      case Op::free: {
        ++t.frees;
        auto it = live.find(e.addr);
        if (it == live.end()) event_fail(i, fmt::format("free of unknown address {} (not live at this point)", e.addr));
        if (it->second != e.size)
          event_fail(i, fmt::format("free of address {} with size {}, but it was allocated with size {}", e.addr,
                                    e.size, it->second));
        live_bytes -= it->second;
        live.erase(it);
        break;
      }
      case Op::create:
        ++t.other_events;
        has_physical = true;
        if (e.size > UINT64_MAX - physical)
          event_fail(i, fmt::format("create of {} bytes: the physical bytes ({} before it) pass 2^64", e.size, physical));
        physical += e.size;
        peak_physical = std::max(peak_physical, physical);
        break;
      case Op::release:
        ++t.other_events;
        has_physical = true;
        if (e.size > physical)
          event_fail(i, fmt::format("release of {} bytes, but only {} are held (creates so far plus "
                                    "meta.physical_at_start_bytes)", e.size, physical));
        physical -= e.size;
        break;
      default: ++t.other_events; break;
    }
  }
  t.peak_live_bytes = peak;
  if (has_physical || t.meta.physical_at_start_bytes) t.peak_physical_bytes = peak_physical;
  else t.peak_physical_bytes.reset();
}

Trace read_trace(const std::string& path, const ReadProgress& progress) {
  std::string bytes = read_file(path);
  if (is_gzip(bytes)) bytes = gunzip(bytes, path, progress);
  Trace t = parse_trace(bytes, path, progress);
  t.path = path;
  if (t.meta.name.empty()) {
    std::string_view base = path;
    if (auto slash = base.rfind('/'); slash != std::string_view::npos) base.remove_prefix(slash + 1);
    for (std::string_view ext : {".gz", ".json"})
      if (base.size() > ext.size() && base.substr(base.size() - ext.size()) == ext) base.remove_suffix(ext.size());
    t.meta.name = std::string(base);
  }
  return t;
}

}  // namespace glake::tracer
