// tracer/trace_reader.h: reads allocation traces (the format of /work/shared/traces/README.md).
//
// A file is gzip-compressed (detected by its magic bytes 1f 8b; concatenated members are read as one
// stream) or plain JSON. The JSON is parsed by a small streaming parser over the decompressed buffer:
// the events of a 700k-event trace are read without building a DOM; only "meta" goes through
// nlohmann::json.
//
// Strictness (documented for users; every rule's violation is a TraceError):
// - top level: an object; "events" is required, "meta" (an object) and "live_at_start" are optional;
//   other keys are skipped; a key may not repeat; nothing but whitespace may follow the object;
// - live_at_start: an array of [addr, size]; events: an array of [t_us, op, addr, size, stream] with
//   op "a" or "f"; every number a non-negative integer that fits 64 bits;
// - the invariants listed in trace.h (monotonic time, frees of live blocks with their size, ...).
//
// Every TraceError's message names the file and the position: the byte offset in the decompressed JSON
// (for gzip problems: in the compressed file), the event or block index and what was expected.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tracer/trace.h"

namespace glake::tracer {

class TraceError : public std::runtime_error {
 public:
  TraceError(const std::string& message, std::optional<std::uint64_t> offset)
      : std::runtime_error(message), offset_(offset) {}
  // The byte offset the message refers to, if any (decompressed JSON, or compressed file for gzip).
  std::optional<std::uint64_t> offset() const { return offset_; }

 private:
  std::optional<std::uint64_t> offset_;
};

// Called now and then while reading: stage ("inflate" or "parse"), bytes done, bytes in all.
using ReadProgress = std::function<void(const char* stage, std::uint64_t done, std::uint64_t total)>;

// Reads, decompresses if needed, parses and checks a trace file.
Trace read_trace(const std::string& path, const ReadProgress& progress = {});

// True if bytes start with the gzip magic.
bool is_gzip(std::string_view bytes);

// Inflates a gzip buffer (all of its members). `origin` names it in messages.
std::string gunzip(std::string_view compressed, const std::string& origin,
                   const ReadProgress& progress = {});

// Parses JSON text into a trace and checks it (check_trace). `origin` names it in messages and becomes
// the trace's path.
Trace parse_trace(std::string_view json, const std::string& origin, const ReadProgress& progress = {});

// Checks the invariants of trace.h and computes peak_live_bytes, allocs and frees.
void check_trace(Trace& trace, const std::string& origin);

}  // namespace glake::tracer
