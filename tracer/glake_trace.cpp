// tracer/glake_trace.cpp: main of the `glake-trace` command, a dispatcher over subcommands.
//
// Each subcommand is one function `int NAME_command(const std::vector<std::string>& args)` (args: what
// follows the subcommand's name; returns the exit status), declared in the header of its own file
// (replay: tracer/replay.h, summary: summary.h, export: export_chrome.h, import: import_torch.h, report:
// report.h). Traces in both formats are read by tracer/trace_reader.h (FORMAT.md). To add one, write its files, add them to tracer/meson.build and add a row to
// kSubcommands. Exit status 2 means bad usage, for every subcommand.
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "tracer/export_chrome.h"
#include "tracer/import_torch.h"
#include "tracer/replay.h"
#include "tracer/report.h"
#include "tracer/summary.h"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(const std::vector<std::string>& args);
  const char* summary;
};

constexpr Subcommand kSubcommands[] = {
    {"summary", glake::tracer::summary_command,
     "peaks, fragmentation over time, the allocation sites holding the most bytes, out-of-memory explained"},
    {"replay", glake::tracer::replay_command,
     "replay allocation traces through the pool on the host driver; report memory and driver time (what-if)"},
    {"export", glake::tracer::export_command, "export --chrome: Chrome trace-event JSON for Perfetto"},
    {"import", glake::tracer::import_command, "import --torch: a PyTorch memory snapshot becomes a glake trace"},
    {"report", glake::tracer::report_command, "one self-contained HTML page: plots, block maps, allocation sites"},
};

void print_usage(std::FILE* to) {
  fmt::print(to, "usage: glake-trace SUBCOMMAND [options] [args...]\n\nsubcommands:\n");
  for (const Subcommand& s : kSubcommands) fmt::print(to, "  {:<10} {}\n", s.name, s.summary);
  fmt::print(to, "\n`glake-trace SUBCOMMAND --help` describes one. Traces: glake's format (GLAKE_TRACE=FILE under\n"
                 "the shim; tracer/FORMAT.md) or the shared one, gzip or plain.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  std::string_view name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    if (argc >= 3) {
      for (const Subcommand& s : kSubcommands)
        if (std::string_view(argv[2]) == s.name) return s.run({"--help"});
    }
    print_usage(stdout);
    return 0;
  }
  for (const Subcommand& s : kSubcommands) {
    if (name != s.name) continue;
    try {
      return s.run(std::vector<std::string>(argv + 2, argv + argc));
    } catch (const std::exception& e) {
      fmt::print(stderr, "glake-trace {}: error: {}\n", s.name, e.what());
      return 1;
    }
  }
  fmt::print(stderr, "glake-trace: unknown subcommand '{}'\n\n", name);
  print_usage(stderr);
  return 2;
}
