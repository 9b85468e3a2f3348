// tracer/symbolize.h: return addresses to frames (function, file:line, object+offset), at dump time.
//
// dladdr1 gives the object and its load bias, and the function for exported symbols; `addr2line -C -f
// -i` (binutils, run as a subprocess, one batch per object, with a deadline) gives functions of every
// symbol table and file:line where the object has debug information (of the innermost function not
// glake's own, where glake's code was inlined into its caller). Modes: "auto" (addr2line if it is
// on PATH, else dladdr), "addr2line", "dladdr" (function+offset, no file:line), "none" (object+offset
// only). Results are cached per address.
//
// glake's own frames at the top of a stack (the recorder, the pool, the shim: everything in the object
// that holds the tracer when it is a shared library, and functions in glake::pool::, glake::shim::
// and the recorder's classes) are trimmed, so a stack starts at the caller of the allocation.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tracer/trace.h"

namespace glake::tracer {

class Symbolizer {
 public:
  explicit Symbolizer(std::string mode = "auto");

  // Symbolises every address not yet known (one addr2line run per object).
  void prefetch(const std::vector<std::uintptr_t>& ips);
  // The frames of a stack of return addresses (innermost first): leading glake frames trimmed, at most
  // `depth` kept.
  std::vector<Frame> frames(const std::uintptr_t* ips, int n, int depth);
  // The mode actually used ("addr2line", "dladdr" or "none").
  const std::string& mode() const { return mode_; }

 private:
  struct Info {
    Frame frame;
    bool internal = false;
  };
  const Info& info(std::uintptr_t ip);

  std::string mode_;
  std::string addr2line_;  // its path, "" if not used
  std::unordered_map<std::uintptr_t, Info> cache_;
};

// Runs `addr2line -C -f -e object addrs...` (hex, relative to the object's load bias) and returns one
// (function, "file:line") per address ("" where unknown); empty on failure or after `deadline_ms`.
std::vector<std::pair<std::string, std::string>> run_addr2line(const std::string& addr2line, const std::string& object,
                                                               const std::vector<std::uintptr_t>& addrs, int deadline_ms);

// The path of `name` on PATH, or "".
std::string find_on_path(const std::string& name);

}  // namespace glake::tracer
