// tracer/trace_writer.h: writes a Trace in glake's format (tracer/FORMAT.md), atomically.
//
// Layout: {"format": "glake-trace", "version": 1, "meta": ..., "live_at_start": [...], "events": [...],
// "stacks": {...}, "snapshots": [...]}, one event per line. Columns are written only as far as an event
// needs them (trailing zeros dropped, at least 5), so a trace with alloc/free events only and no extra
// columns is also a valid shared-format trace apart from its "format"/"version" keys. meta is
// trace.meta.json (an object, written as it is). gzip when the path ends with ".gz".
// What read_trace() returns of the written file equals the Trace written (events, blocks, stacks,
// snapshots; meta as text).
#pragma once

#include <functional>
#include <string>

#include "tracer/trace.h"

namespace glake::tracer {

// Appends the JSON text of the trace to `out` in pieces (out is called with each piece).
void write_trace_json(const Trace& trace, const std::function<void(std::string_view)>& out);
// Writes the trace to `path` atomically (atomic_file.h); throws AtomicFileError.
void write_trace(const Trace& trace, const std::string& path);
// The JSON text, for tests and small traces.
std::string trace_to_json(const Trace& trace);

// A JSON string literal (quotes, escapes; invalid UTF-8 bytes become U+FFFD).
std::string json_quote(std::string_view s);

}  // namespace glake::tracer
