// tracer/summary.h: `glake-trace summary`: what a trace says, for people (text) or tools (--json).
//
// Per trace: events by op, duration, devices/streams/threads; peak live; peak physical (from create and
// release events, else n/a, or glake's from a replay with --replay); fragmentation (physical - live)
// over time as a table of time buckets; the allocation sites (stacks) holding the most bytes at the
// peak of live bytes; every out-of-memory (the request, the sites holding the most bytes then, and
// the pool snapshot's explanation); dropped events.
#pragma once

#include <string>
#include <vector>

namespace glake::tracer {

int summary_command(const std::vector<std::string>& args);

}  // namespace glake::tracer
