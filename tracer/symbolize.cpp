// tracer/symbolize.cpp: see symbolize.h.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "tracer/symbolize.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include <fmt/format.h>

extern char** environ;

namespace glake::tracer {
namespace {

constexpr int kAddr2lineDeadlineMs = 20000;  // per object
constexpr std::size_t kAddr2lineBatch = 2000;  // addresses per run (command line length)

std::string demangle(const char* name) {
  if (name == nullptr) return "";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::string base_name(const std::string& p) {
  auto s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

// The object holding this file's code, and whether it is the main program.
struct Self {
  std::string object;
  bool main_program = true;
};
// Never destroyed: made at the first write of a trace (a glake_trace_dump, a USR2, an out-of-memory),
// after the session registered its at-exit writer, it would be destroyed before that writer runs
// (exit() runs them in reverse order), which would then read a freed string and keep glake's own
// frames at the top of the stacks it symbolises.
const Self& self() {
  static const Self& s = *new Self([] {
    Self r;
    Dl_info info{};
    link_map* map = nullptr;
    if (dladdr1(reinterpret_cast<void*>(&find_on_path), &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) != 0 &&
        map != nullptr) {
      r.main_program = map->l_name == nullptr || map->l_name[0] == '\0';
      r.object = r.main_program ? self_exe() : std::string(map->l_name);
    }
    return r;
  }());
  return s;
}

bool internal_name(const std::string& fn) {
  static constexpr const char* kPrefixes[] = {"glake::pool::", "glake::shim::", "glake::tracer::Recorder::",
                                              "glake::tracer::detail::",
                                              "glake::tracer::StackTable::", "glake::tracer::PoolTraceObserver::",
                                              "glake::tracer::TraceSession::"};
  for (const char* p : kPrefixes)
    if (fn.rfind(p, 0) == 0) return true;
  return false;
}

// "a/b/../c" -> "a/c", "a/./b" -> "a/b" (lexically; build folders give sources as "build/../src/x.cpp").
std::string normalize_path(const std::string& p) {
  if (p.find("/.") == std::string::npos) return p;
  const bool absolute = !p.empty() && p[0] == '/';
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t end = p.find('/', start);
    if (end == std::string::npos) end = p.size();
    std::string part = p.substr(start, end - start);
    if (part == "..") {
      if (!parts.empty() && parts.back() != "..") parts.pop_back();
      else if (!absolute) parts.push_back(part);
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    start = end + 1;
  }
  std::string out = absolute ? "/" : "";
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i > 0 ? "/" : "") + parts[i];
  return out;
}

std::uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000000;
}

}  // namespace

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path != nullptr ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (!dir.empty()) {
      std::string full = dir + "/" + name;
      struct stat st {};
      if (::stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(full.c_str(), X_OK) == 0) return full;
    }
    start = end + 1;
  }
  return "";
}

std::vector<std::pair<std::string, std::string>> run_addr2line(const std::string& addr2line, const std::string& object,
                                                               const std::vector<std::uintptr_t>& addrs,
                                                               int deadline_ms) {
  std::vector<std::pair<std::string, std::string>> out;
  if (addrs.empty()) return out;
  // -i: the chain of inlined functions at each address too (innermost first), each -a address first.
  std::vector<std::string> args = {addr2line, "-C", "-f", "-i", "-a", "-e", object};
  for (std::uintptr_t a : addrs) args.push_back(fmt::format("0x{:x}", a));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child must not run under the preloaded shim (or a sanitizer's runtime).
  std::vector<char*> envp;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e)
    if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0 && std::strncmp(*e, "GLAKE_", 6) != 0) envp.push_back(*e);
  envp.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return out;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, addr2line.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return out;
  }
  std::string text;
  char buf[65536];
  const std::uint64_t deadline = now_ms() + static_cast<std::uint64_t>(deadline_ms);
  bool timed_out = false;
  for (;;) {
    std::uint64_t now = now_ms();
    if (now >= deadline) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(deadline - now));
    if (n == 0 || (n < 0 && errno == EINTR)) continue;  // the deadline is checked above
    if (n < 0) break;
    ssize_t r = ::read(fds[0], buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    text.append(buf, static_cast<std::size_t>(r));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return out;
  // Per address: the address, then two lines (function, file:line) per function of its inline chain.
  std::vector<std::vector<std::string>> groups;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.rfind("0x", 0) == 0) groups.emplace_back();
    else if (!groups.empty()) groups.back().push_back(std::move(line));
  }
  if (groups.size() != addrs.size()) return out;
  for (const std::vector<std::string>& g : groups) {
    if (g.size() < 2) return {};
    // Named by the innermost function that is not glake's own: glake's code inlined into its caller
    // (Recorder::record) leaves the caller's frame with the caller's name and line.
    std::size_t pick = 0;
    for (std::size_t k = 0; k + 1 < g.size(); k += 2)
      if (!internal_name(g[k])) {
        pick = k;
        break;
      }
    std::string fn = g[pick], src = g[pick + 1];
    if (fn == "??") fn.clear();
    if (auto d = src.find(" (discriminator"); d != std::string::npos) src.resize(d);
    auto ends_with = [&](std::string_view suffix) {
      return src.size() >= suffix.size() && std::string_view(src).substr(src.size() - suffix.size()) == suffix;
    };
    if (src.rfind("??", 0) == 0 || ends_with(":?") || ends_with(":0")) src.clear();
    out.emplace_back(std::move(fn), std::move(src));
  }
  return out;
}

Symbolizer::Symbolizer(std::string mode) : mode_(std::move(mode)) {
  if (mode_ == "auto" || mode_ == "addr2line") {
    addr2line_ = find_on_path("addr2line");
    mode_ = addr2line_.empty() ? "dladdr" : "addr2line";
  } else if (mode_ != "dladdr" && mode_ != "none") {
    mode_ = "dladdr";
  }
}

void Symbolizer::prefetch(const std::vector<std::uintptr_t>& ips) {
  struct Pending {
    std::vector<std::uintptr_t> ips, rel;
  };
  std::map<std::string, Pending> by_object;
  for (std::uintptr_t ip : ips) {
    if (cache_.count(ip) != 0) continue;
    Info& in = cache_[ip];
    // A return address points after the call: look up the call itself.
    const std::uintptr_t look = ip > 0 ? ip - 1 : ip;
    Dl_info dl{};
    link_map* map = nullptr;
    if (dladdr1(reinterpret_cast<void*>(look), &dl, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) == 0 ||
        map == nullptr) {
      in.frame.obj = fmt::format("0x{:x}", ip);
      continue;
    }
    const bool main_program = map->l_name == nullptr || map->l_name[0] == '\0';
    std::string object = main_program ? self_exe() : std::string(map->l_name);
    const std::uintptr_t rel = ip - static_cast<std::uintptr_t>(map->l_addr);
    in.frame.obj = fmt::format("{}+0x{:x}", base_name(object), rel);
    if (mode_ != "none" && dl.dli_sname != nullptr) {
      in.frame.fn = demangle(dl.dli_sname);
      if (dl.dli_saddr != nullptr && mode_ == "dladdr")
        in.frame.fn += fmt::format("+0x{:x}", ip - reinterpret_cast<std::uintptr_t>(dl.dli_saddr));
    }
    in.internal = !self().main_program && object == self().object;
    if (mode_ == "addr2line" && !object.empty()) {
      Pending& p = by_object[object];
      p.ips.push_back(ip);
      p.rel.push_back(rel - 1);
    }
  }
  for (auto& [object, p] : by_object) {
    for (std::size_t start = 0; start < p.ips.size(); start += kAddr2lineBatch) {
      std::size_t end = std::min(p.ips.size(), start + kAddr2lineBatch);
      std::vector<std::uintptr_t> rel(p.rel.begin() + static_cast<std::ptrdiff_t>(start),
                                      p.rel.begin() + static_cast<std::ptrdiff_t>(end));
      auto res = run_addr2line(addr2line_, object, rel, kAddr2lineDeadlineMs);
      if (res.size() != rel.size()) break;  // failed or too slow: keep what dladdr gave
      for (std::size_t i = 0; i < rel.size(); ++i) {
        Info& in = cache_[p.ips[start + i]];
        if (!res[i].first.empty()) in.frame.fn = res[i].first;
        in.frame.src = normalize_path(res[i].second);
      }
    }
  }
  for (std::uintptr_t ip : ips) {
    Info& in = cache_[ip];
    if (!in.internal) in.internal = internal_name(in.frame.fn);
  }
}

const Symbolizer::Info& Symbolizer::info(std::uintptr_t ip) {
  auto it = cache_.find(ip);
  if (it != cache_.end()) return it->second;
  prefetch({ip});
  return cache_[ip];
}

std::vector<Frame> Symbolizer::frames(const std::uintptr_t* ips, int n, int depth) {
  std::vector<Frame> out;
  int i = 0;
  while (i < n && info(ips[i]).internal) ++i;
  if (i == n) i = 0;  // all glake's own (a test calling the pool directly): keep them
  for (; i < n && static_cast<int>(out.size()) < depth; ++i) out.push_back(info(ips[i]).frame);
  return out;
}

}  // namespace glake::tracer
