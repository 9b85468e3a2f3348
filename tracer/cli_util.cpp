// tracer/cli_util.cpp: see cli_util.h.
#include "tracer/cli_util.h"

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "pool/config.h"
#include "tracer/atomic_file.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {

OptionParser::OptionParser(std::string command, std::string usage)
    : command_(std::move(command)), usage_(std::move(usage)) {}

void OptionParser::flag(const std::string& name, bool* out) {
  opts_.push_back({name, false, [out](const std::string&) {
                     *out = true;
                     return std::string();
                   }});
}

void OptionParser::text(const std::string& name, std::string* out) {
  opts_.push_back({name, true, [out](const std::string& v) {
                     *out = v;
                     return std::string();
                   }});
}

void OptionParser::bytes(const std::string& name, std::uint64_t* out) {
  opts_.push_back({name, true, [name, out](const std::string& v) {
                     std::size_t n = 0;
                     if (!pool::parse_bytes(v.c_str(), &n))
                       return fmt::format("{}: '{}' is not a byte count (e.g. 512K, 2M, 64G)", name, v);
                     *out = n;
                     return std::string();
                   }});
}

void OptionParser::count(const std::string& name, std::uint64_t* out, std::uint64_t lo, std::uint64_t hi) {
  opts_.push_back({name, true, [=](const std::string& v) {
                     char* end = nullptr;
                     unsigned long long n = std::strtoull(v.c_str(), &end, 10);
                     if (v.empty() || v[0] == '-' || *end != '\0' || n < lo || n > hi)
                       return fmt::format("{}: '{}' is not a number from {} to {}", name, v, lo, hi);
                     *out = n;
                     return std::string();
                   }});
}

void OptionParser::custom(const std::string& name, bool takes_value,
                          std::function<std::string(const std::string&)> apply) {
  opts_.push_back({name, takes_value, std::move(apply)});
}

int OptionParser::usage_error(const std::string& what) const {
  fmt::print(stderr, "glake-trace {}: {}\n(see glake-trace {} --help)\n", command_, what, command_);
  return 2;
}

int OptionParser::parse(const std::vector<std::string>& args, std::vector<std::string>* positional) {
  bool done = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (done || a.empty() || a[0] != '-' || a == "-") {
      positional->push_back(a);
      continue;
    }
    if (a == "--") {
      done = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      fmt::print("{}", usage_);
      return 0;
    }
    if (a == "-o") a = "--output";
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    const Opt* opt = nullptr;
    for (const Opt& o : opts_)
      if (o.name == a) opt = &o;
    if (opt == nullptr) return usage_error(fmt::format("unknown option '{}'", args[i]));
    if (opt->takes_value && !has_value) {
      if (i + 1 >= args.size()) return usage_error(a + " needs a value");
      value = args[++i];
    } else if (!opt->takes_value && has_value) {
      return usage_error(a + " takes no value");
    }
    std::string err = opt->apply(value);
    if (!err.empty()) return usage_error(err);
  }
  return -1;
}

bool read_trace_or_report(const std::string& command, const std::string& path, Trace* out) {
  try {
    *out = read_trace(path);
    return true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "glake-trace {}: error: {}\n", command, e.what());
    return false;
  }
}

bool write_output(const std::string& command, const std::string& path, const std::string& text) {
  if (path.empty() || path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  }
  try {
    write_file_atomic(path, text);
    return true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "glake-trace {}: error: {}\n", command, e.what());
    return false;
  }
}

std::string fmt_count(std::uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

}  // namespace glake::tracer
