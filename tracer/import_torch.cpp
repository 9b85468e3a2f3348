// tracer/import_torch.cpp: see import_torch.h.
#include "tracer/import_torch.h"

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "tracer/cli_util.h"
#include "tracer/format_util.h"
#include "tracer/symbolize.h"
#include "tracer/trace_reader.h"

extern char** environ;

#ifndef GLAKE_SOURCE_SCRIPTS
#define GLAKE_SOURCE_SCRIPTS ""
#endif

namespace glake::tracer {
namespace {

constexpr const char* kScript = "torch_snapshot_to_json.py";

constexpr const char* kUsage =
    "usage: glake-trace import --torch SNAPSHOT.pickle -o OUT.json[.gz] [options]\n"
    "\n"
    "Converts a PyTorch memory snapshot into a glake trace: what PyTorch's allocator was asked for\n"
    "(alloc / free_requested), PyTorch's reserved memory (segment events), out-of-memory errors, and the\n"
    "call stacks PyTorch recorded. Then `glake-trace replay OUT` says what glake would hold, `summary`\n"
    "and `report` show where the memory went. No GPU and no torch needed.\n"
    "\n"
    "Record the snapshot in the job:\n"
    "  torch.cuda.memory._record_memory_history(max_entries=1000000)\n"
    "  ...  # the steps to look at\n"
    "  torch.cuda.memory._dump_snapshot(\"snapshot.pickle\")\n"
    "\n"
    "options:\n"
    "  --torch              the input is a PyTorch memory snapshot (the only kind; required)\n"
    "  -o, --output FILE    the glake trace to write (.gz compresses; required)\n"
    "  --device N           only this device (default: all, merged by time)\n"
    "  --name NAME          meta.name (default: the snapshot's file name)\n"
    "  --stack-depth N      frames kept per stack (default 32)\n"
    "  -h, --help           this text\n"
    "The conversion runs scripts/torch_snapshot_to_json.py with python3 (found through GLAKE_SCRIPTS, next\n"
    "to this executable, or in the source tree; GLAKE_PYTHON names another interpreter). The pickle is read\n"
    "with an unpickler that refuses every class: a file that is not a snapshot cannot run code.\n";

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string exe_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string p(buf, static_cast<std::size_t>(n));
  auto s = p.rfind('/');
  return s == std::string::npos ? std::string(".") : p.substr(0, s);
}

}  // namespace

std::string find_script(const std::string& name, std::string* searched) {
  std::vector<std::string> dirs;
  if (const char* e = std::getenv("GLAKE_SCRIPTS"); e != nullptr && *e != '\0') dirs.push_back(e);
  std::string exe = exe_dir();
  if (!exe.empty())
    for (const char* rel : {"/../scripts", "/../../scripts", "/../share/glake/scripts"}) dirs.push_back(exe + rel);
  if (std::strlen(GLAKE_SOURCE_SCRIPTS) > 0) dirs.push_back(GLAKE_SOURCE_SCRIPTS);
  for (const std::string& d : dirs) {
    std::string p = d + "/" + name;
    if (is_file(p)) return p;
    if (searched != nullptr) *searched += (searched->empty() ? "" : ", ") + d;
  }
  return "";
}

int import_command(const std::vector<std::string>& args) {
  bool torch = false;
  std::string output, name, device;
  std::uint64_t depth = 32;
  OptionParser p("import", kUsage);
  p.flag("--torch", &torch);
  p.text("--output", &output);
  p.text("--name", &name);
  p.count("--stack-depth", &depth, 1, 1000);
  p.custom("--device", true, [&](const std::string& v) {
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 6)
      return fmt::format("--device: '{}' is not a device number", v);
    device = v;
    return std::string();
  });
  std::vector<std::string> pos;
  if (int rc = p.parse(args, &pos); rc >= 0) return rc;
  if (!torch) return p.usage_error("say what to import: --torch (a PyTorch memory snapshot; the only kind)");
  if (pos.size() != 1) return p.usage_error(pos.empty() ? "no snapshot given" : "one snapshot at a time");
  if (output.empty() || output == "-") return p.usage_error("-o OUT.json[.gz] is required (the trace to write)");

  std::string searched;
  std::string script = find_script(kScript, &searched);
  if (script.empty()) {
    fmt::print(stderr, "glake-trace import: error: {} not found (searched {}); set GLAKE_SCRIPTS to the folder"
                       " holding it\n", kScript, searched);
    return 1;
  }
  std::string python = std::getenv("GLAKE_PYTHON") != nullptr ? std::getenv("GLAKE_PYTHON") : "";
  if (python.empty()) python = find_on_path("python3");
  if (python.empty()) {
    fmt::print(stderr, "glake-trace import: error: python3 not found on PATH (GLAKE_PYTHON names an interpreter)\n");
    return 1;
  }
  // The script writes next to the output, and the result replaces it only once this reader accepts it:
  // a rejected conversion leaves no file, and an older trace at that path stays as it was.
  const auto slash = output.rfind('/');
  const std::string written = slash == std::string::npos
                                  ? fmt::format(".import-{}-{}", ::getpid(), output)
                                  : fmt::format("{}/.import-{}-{}", output.substr(0, slash), ::getpid(), output.substr(slash + 1));
  std::vector<std::string> argv_s = {python, script, pos[0], "-o", written, "--stack-depth", std::to_string(depth),
                                     "--quiet"};
  if (!device.empty()) argv_s.insert(argv_s.end(), {"--device", device});
  if (!name.empty()) argv_s.insert(argv_s.end(), {"--name", name});
  std::vector<char*> argv;
  for (std::string& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) {
    fmt::print(stderr, "glake-trace import: error: cannot run {}: {}\n", python, std::strerror(rc));
    return 1;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::remove(written.c_str());
    fmt::print(stderr, "glake-trace import: error: the conversion of {} failed (see above)\n", pos[0]);
    return 1;
  }
  Trace t;
  if (!read_trace_or_report("import", written, &t)) {
    std::remove(written.c_str());
    fmt::print(stderr, "glake-trace import: error: {} wrote a trace this reader rejects (a bug of the script)\n", script);
    return 1;
  }
  if (std::rename(written.c_str(), output.c_str()) != 0) {
    const int err = errno;
    std::remove(written.c_str());
    fmt::print(stderr, "glake-trace import: error: cannot rename {} to {}: {}\n", written, output, std::strerror(err));
    return 1;
  }
  fmt::print("{}: {} events, {} blocks live at the start, peak live {}", output, fmt_count(t.events.size()),
             fmt_count(t.live_at_start.size()), fmt_bytes(t.peak_live_bytes));
  if (t.meta.peak_reserved_native) fmt::print(", PyTorch peak reserved {}", fmt_bytes(*t.meta.peak_reserved_native));
  fmt::print("\nnext: glake-trace replay {0}   (glake's peak)\n      glake-trace summary {0}\n"
             "      glake-trace report {0} -o report.html\n", output);
  return 0;
}

}  // namespace glake::tracer
