// tests/tracer/cli_test_util.h: running glake-trace (GLAKE_TRACE_BIN) and python3 from the tests.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/tracer/trace_test_util.h"

namespace glake::tracer::testing_util {

struct CmdResult {
  int status = -1;
  std::string out, err;
};

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs a shell command line; stdout and stderr captured separately.
inline CmdResult run_shell(const std::string& cmdline) {
  CmdResult r;
  std::string err_path = temp_path("stderr");
  std::string cmd = cmdline + " 2>" + quote(err_path);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.err = slurp(err_path);
  return r;
}

inline const char* trace_bin() { return std::getenv("GLAKE_TRACE_BIN"); }

// `glake-trace ARGS` (ARGS already quoted as needed).
inline CmdResult glake_trace(const std::string& args) {
  const char* bin = trace_bin();
  if (bin == nullptr) return {};
  return run_shell(quote(bin) + " " + args);
}

}  // namespace glake::tracer::testing_util
