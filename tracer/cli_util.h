// tracer/cli_util.h: what the glake-trace subcommands share: option parsing with --help and usage
// errors (exit status 2), reading a trace with errors that name the file and the position, and
// writing output to stdout or atomically to a file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tracer/trace.h"

namespace glake::tracer {

class OptionParser {
 public:
  // command: "summary"; usage: the --help text.
  OptionParser(std::string command, std::string usage);

  void flag(const std::string& name, bool* out);                    // --name
  void text(const std::string& name, std::string* out);             // --name VALUE / --name=VALUE
  void bytes(const std::string& name, std::uint64_t* out);          // 2M, 64G, ...
  void count(const std::string& name, std::uint64_t* out, std::uint64_t lo, std::uint64_t hi);
  void custom(const std::string& name, bool takes_value, std::function<std::string(const std::string&)> apply);

  // Options may come anywhere; "--" ends them; "-o" is an alias of "--output" if that was declared.
  // Returns -1 when the caller should go on, else the exit status (0 after --help, 2 after a usage error,
  // reported on stderr).
  int parse(const std::vector<std::string>& args, std::vector<std::string>* positional);
  int usage_error(const std::string& what) const;

 private:
  struct Opt {
    std::string name;
    bool takes_value;
    std::function<std::string(const std::string&)> apply;  // returns an error or ""
  };
  std::string command_, usage_;
  std::vector<Opt> opts_;
};

// Reads a trace (either format). On failure prints "glake-trace CMD: error: MESSAGE" and returns false.
bool read_trace_or_report(const std::string& command, const std::string& path, Trace* out);

// Writes `text` to `path` atomically (gzip for .gz), or to stdout for "" or "-". Returns false after
// printing the error.
bool write_output(const std::string& command, const std::string& path, const std::string& text);

// "1,234,567".
std::string fmt_count(std::uint64_t n);

}  // namespace glake::tracer
