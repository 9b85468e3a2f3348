// tracer/session.cpp: see session.h.
//
// The signal handler is async-signal-safe: it writes one byte to a non-blocking pipe (and chains to the
// handler that was there before). Everything else (collecting, symbolising, writing) runs on the
// watcher thread or the caller's.
#include "tracer/session.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "tracer/atomic_file.h"
#include "tracer/snapshot.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

std::atomic<int> g_signal_pipe{-1};  // the write end of the signal-owning session's pipe
std::atomic<int> g_term_pipe{-1};    // the same for SIGTERM/SIGINT (the session that handles them)
std::atomic<int> g_term_signal{0};   // the termination signal that came
// The process whose watcher reads those pipes. A forked child inherits the handlers and the pipes but
// not the watcher: its signals must not make its parent write (or, for SIGTERM, die).
std::atomic<pid_t> g_signal_owner{0};
struct sigaction g_chained {};       // the handler before ours (set before ours is installed)
std::atomic<TraceSession*> g_process_session{nullptr};
std::mutex g_start_mu;

void on_signal(int sig, siginfo_t* info, void* ctx) {
  int saved = errno;
  int fd = g_signal_pipe.load(std::memory_order_relaxed);
  if (fd >= 0 && ::getpid() == g_signal_owner.load(std::memory_order_relaxed)) {
    char c = 'd';
    ssize_t n = ::write(fd, &c, 1);
    (void)n;
  }
  errno = saved;
  if ((g_chained.sa_flags & SA_SIGINFO) != 0) {
    if (g_chained.sa_sigaction != nullptr) g_chained.sa_sigaction(sig, info, ctx);
  } else if (g_chained.sa_handler != SIG_DFL && g_chained.sa_handler != SIG_IGN && g_chained.sa_handler != nullptr) {
    g_chained.sa_handler(sig);
  }
}

// SIGTERM or SIGINT where the program left the default action (the process ends): a scheduler's
// SIGTERM (or ^C) would otherwise end it without the trace. The watcher writes the trace, then ends
// the process by the same signal with the default action (watch()).
void on_terminate(int sig) {
  int saved = errno;
  int fd = g_term_pipe.load(std::memory_order_relaxed);
  if (fd >= 0 && ::getpid() == g_signal_owner.load(std::memory_order_relaxed)) {
    g_term_signal.store(sig, std::memory_order_relaxed);
    char c = 't';
    ssize_t n = ::write(fd, &c, 1);
    (void)n;
  } else {
    // Not the recording process (a forked child): the default action, as without glake. The signal is
    // blocked while this handler runs, so it ends the process as the handler returns.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
    ::raise(sig);
  }
  errno = saved;
}

void at_exit() {
  if (TraceSession* s = g_process_session.load(std::memory_order_acquire)) (void)s->dump();
}

std::string read_cmdline() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && s.back() == '\0') s.pop_back();
  for (char& c : s)
    if (c == '\0') c = ' ';
  return s;
}

// "123", "64K", "1M" (binary).
bool parse_count(const char* text, std::uint64_t* out) {
  if (text == nullptr || *text == '\0') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || text[0] == '-') return false;
  std::uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10, ++end;
  else if (*end == 'M' || *end == 'm') mul = 1ull << 20, ++end;
  else if (*end == 'G' || *end == 'g') mul = 1ull << 30, ++end;
  if (*end != '\0' || v > UINT64_MAX / mul) return false;
  *out = v * mul;
  return true;
}

int parse_signal(const std::string& s) {
  if (s == "0" || s == "off" || s == "none") return 0;
  std::string n = s.rfind("SIG", 0) == 0 ? s.substr(3) : s;
  if (n == "USR1") return SIGUSR1;
  if (n == "USR2") return SIGUSR2;
  if (n == "HUP") return SIGHUP;
  if (n == "PROF") return SIGPROF;
  if (n == "WINCH") return SIGWINCH;
  if (n.rfind("RTMIN+", 0) == 0) {
    int k = std::atoi(n.c_str() + 6);
    return k >= 0 && SIGRTMIN + k <= SIGRTMAX ? SIGRTMIN + k : -1;
  }
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (end != s.c_str() && *end == '\0' && v > 0 && v < NSIG && v != SIGKILL && v != SIGSTOP) return static_cast<int>(v);
  return -1;
}

}  // namespace

std::string expand_trace_path(const std::string& pattern, int pid) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size()) {
      if (pattern[i + 1] == 'p') {
        out += std::to_string(pid);
        ++i;
        continue;
      }
      if (pattern[i + 1] == '%') {
        out += '%';
        ++i;
        continue;
      }
    }
    out += pattern[i];
  }
  return out;
}

std::string pid_trace_path(const std::string& p, int pid) {
  for (std::string_view suffix : {".json.gz", ".json", ".gz"}) {
    if (p.size() > suffix.size() && std::string_view(p).substr(p.size() - suffix.size()) == suffix)
      return fmt::format("{}.{}{}", p.substr(0, p.size() - suffix.size()), pid, suffix);
  }
  return fmt::format("{}.{}", p, pid);
}

std::string default_oom_path(const std::string& p) {
  for (std::string_view suffix : {".json.gz", ".json", ".gz"}) {
    if (p.size() > suffix.size() && std::string_view(p).substr(p.size() - suffix.size()) == suffix)
      return p.substr(0, p.size() - suffix.size()) + ".oom.json";
  }
  return p + ".oom.json";
}

bool SessionOptions::from_env(SessionOptions* o, std::vector<std::string>* errors) {
  const char* path = std::getenv("GLAKE_TRACE");
  if (path == nullptr || *path == '\0') return false;
  *o = SessionOptions{};
  o->path = expand_trace_path(path, ::getpid());
  auto bad = [&](const char* var, const char* value, const char* accepted) {
    errors->push_back(fmt::format("{}='{}' is not valid ({}); using the default", var, value, accepted));
  };
  if (const char* v = std::getenv("GLAKE_TRACE_EVENTS"); v != nullptr && *v != '\0') {
    std::uint64_t n = 0;
    if (!parse_count(v, &n) || n < 16 || n > (std::uint64_t{1} << 32))
      bad("GLAKE_TRACE_EVENTS", v, "a count of events from 16 to 4G, K/M/G suffixes");
    else o->recorder.capacity = static_cast<std::size_t>(n);
  }
  if (const char* v = std::getenv("GLAKE_TRACE_KEEP"); v != nullptr && *v != '\0') {
    if (std::strcmp(v, "newest") == 0) o->recorder.keep = RecorderOptions::Keep::newest;
    else if (std::strcmp(v, "oldest") == 0) o->recorder.keep = RecorderOptions::Keep::oldest;
    else bad("GLAKE_TRACE_KEEP", v, "newest or oldest");
  }
  if (const char* v = std::getenv("GLAKE_TRACE_STACKS"); v != nullptr && *v != '\0') {
    if (std::strcmp(v, "1") == 0) o->recorder.stacks = true;
    else if (std::strcmp(v, "0") == 0) o->recorder.stacks = false;
    else bad("GLAKE_TRACE_STACKS", v, "0 or 1");
  }
  if (const char* v = std::getenv("GLAKE_TRACE_STACK_DEPTH"); v != nullptr && *v != '\0') {
    std::uint64_t n = 0;
    if (!parse_count(v, &n) || n < 1 || n > 48) bad("GLAKE_TRACE_STACK_DEPTH", v, "1 to 48");
    else o->recorder.stack_depth = static_cast<int>(n);
  }
  if (const char* v = std::getenv("GLAKE_TRACE_SYMBOLS"); v != nullptr && *v != '\0') {
    std::string s = v;
    if (s == "auto" || s == "addr2line" || s == "dladdr" || s == "none") o->recorder.symbolizer = s;
    else bad("GLAKE_TRACE_SYMBOLS", v, "auto, addr2line, dladdr or none");
  }
  if (const char* v = std::getenv("GLAKE_TRACE_CLOCK"); v != nullptr && *v != '\0') {
    std::string s = v;
    if (s == "auto" || s == "tsc" || s == "monotonic") o->recorder.clock = s;
    else bad("GLAKE_TRACE_CLOCK", v, "auto, tsc or monotonic");
  }
  if (const char* v = std::getenv("GLAKE_TRACE_TIME"); v != nullptr && *v != '\0') {
    if (std::strcmp(v, "sampled") == 0) o->recorder.time = RecorderOptions::Time::sampled;
    else if (std::strcmp(v, "exact") == 0) o->recorder.time = RecorderOptions::Time::exact;
    else bad("GLAKE_TRACE_TIME", v, "sampled or exact");
  }
  if (const char* v = std::getenv("GLAKE_TRACE_SIGNAL"); v != nullptr && *v != '\0') {
    int sig = parse_signal(v);
    if (sig < 0) bad("GLAKE_TRACE_SIGNAL", v, "USR1, USR2, HUP, PROF, WINCH, RTMIN+N, a number, or 0/off");
    else o->signal = sig;
  }
  o->oom_path = default_oom_path(o->path);
  if (const char* v = std::getenv("GLAKE_TRACE_OOM"); v != nullptr && *v != '\0') {
    std::string s = v;
    o->oom_path = s == "0" || s == "off" ? std::string() : expand_trace_path(s, ::getpid());
  }
  if (const char* v = std::getenv("GLAKE_TRACE_SNAPSHOTS"); v != nullptr && *v != '\0') {
    std::uint64_t n = 0;
    if (!parse_count(v, &n) || n > 100000) bad("GLAKE_TRACE_SNAPSHOTS", v, "a count from 0 to 100000");
    else o->max_snapshots = static_cast<std::size_t>(n);
  }
  if (const char* v = std::getenv("GLAKE_TRACE_QUIET"); v != nullptr && *v != '\0') o->quiet = std::strcmp(v, "0") != 0;
  return true;
}

TraceSession::TraceSession(SessionOptions options)
    : options_(std::move(options)), recorder_(options_.recorder), pid_(::getpid()), cmdline_(read_cmdline()) {
  if (options_.name.empty()) options_.name = program_invocation_short_name;
  path_ = options_.path;
  ::clock_gettime(CLOCK_REALTIME_COARSE, &started_);
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) == 0) host_ = host;
  if (::pipe2(pipe_, O_CLOEXEC) != 0) throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
  ::fcntl(pipe_[1], F_SETFL, ::fcntl(pipe_[1], F_GETFL) | O_NONBLOCK);
  watcher_ = std::thread([this] { watch(); });
  if (options_.signal > 0) {
    int expected = -1;
    if (g_signal_pipe.compare_exchange_strong(expected, pipe_[1])) {
      struct sigaction sa {};
      sa.sa_sigaction = on_signal;
      sa.sa_flags = SA_SIGINFO | SA_RESTART;
      sigemptyset(&sa.sa_mask);
      struct sigaction now {};
      ::sigaction(options_.signal, nullptr, &now);
      if ((now.sa_flags & SA_SIGINFO) != 0 && now.sa_sigaction == on_signal) {
        // Ours already: a forked child's session after its parent's (forget_after_fork). g_chained is
        // still the handler the parent's session found; the signal now writes this process's trace.
        old_action_ = g_chained;
        g_signal_owner.store(pid_, std::memory_order_relaxed);
        signal_installed_ = true;
      } else {
        g_chained = now;
        g_signal_owner.store(pid_, std::memory_order_relaxed);
        if (::sigaction(options_.signal, &sa, &old_action_) == 0) {
          signal_installed_ = true;
        } else {
          g_signal_pipe.store(-1);
        }
      }
    }
  }
  if (options_.write_on_termination) {
    int expected = -1;
    if (g_term_pipe.compare_exchange_strong(expected, pipe_[1])) {
      g_signal_owner.store(pid_, std::memory_order_relaxed);
      const int signals[2] = {SIGTERM, SIGINT};
      for (int k = 0; k < 2; ++k) {
        struct sigaction now {};
        if (::sigaction(signals[k], nullptr, &now) == 0 && (now.sa_flags & SA_SIGINFO) == 0 &&
            now.sa_handler == on_terminate && signals[k] != options_.signal) {
          // Installed by the parent's session (a forked child's, after forget_after_fork): the
          // default action was there before it.
          term_old_[k].sa_handler = SIG_DFL;
          sigemptyset(&term_old_[k].sa_mask);
          term_installed_[k] = signals[k];
          continue;
        }
        // Only where the signal would end the process as it is: a program's own handler (Python's for
        // SIGINT) or SIG_IGN stays.
        if (signals[k] == options_.signal || ::sigaction(signals[k], nullptr, &now) != 0 ||
            (now.sa_flags & SA_SIGINFO) != 0 || now.sa_handler != SIG_DFL)
          continue;
        struct sigaction sa {};
        sa.sa_handler = on_terminate;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (::sigaction(signals[k], &sa, &term_old_[k]) == 0) term_installed_[k] = signals[k];
      }
    }
  }
}

TraceSession::~TraceSession() {
  if (signal_installed_) {
    ::sigaction(options_.signal, &old_action_, nullptr);
    g_signal_pipe.store(-1);
    g_chained = {};
  }
  for (int k = 0; k < 2; ++k) {
    if (term_installed_[k] == 0) continue;
    struct sigaction now {};
    // Unless the program has replaced ours since.
    if (::sigaction(term_installed_[k], nullptr, &now) == 0 && now.sa_handler == on_terminate)
      ::sigaction(term_installed_[k], &term_old_[k], nullptr);
  }
  int mine = pipe_[1];
  g_term_pipe.compare_exchange_strong(mine, -1);
  char q = 'q';
  int flags = ::fcntl(pipe_[1], F_GETFL);
  ::fcntl(pipe_[1], F_SETFL, flags & ~O_NONBLOCK);
  while (::write(pipe_[1], &q, 1) < 0 && errno == EINTR) {
  }
  if (watcher_.joinable()) watcher_.join();
  ::close(pipe_[0]);
  ::close(pipe_[1]);
}

TraceSession* TraceSession::start_from_env(std::vector<std::string>* errors) {
  std::lock_guard lock(g_start_mu);
  if (TraceSession* s = g_process_session.load(std::memory_order_acquire)) return s;
  SessionOptions o;
  if (!SessionOptions::from_env(&o, errors)) return nullptr;
  TraceSession* s = nullptr;
  try {
    s = new TraceSession(std::move(o));  // never deleted: it writes at exit
  } catch (const std::exception& e) {
    errors->push_back(fmt::format("GLAKE_TRACE: cannot start the recorder: {}; not tracing", e.what()));
    return nullptr;
  }
  g_process_session.store(s, std::memory_order_release);
  // Once per process image: a forked child's own session (forget_after_fork) is written by the at-exit
  // writer it inherited, which writes whatever session is the process's then.
  static bool at_exit_registered = false;
  if (!at_exit_registered) at_exit_registered = std::atexit(at_exit) == 0;
  return s;
}

TraceSession* TraceSession::get() { return g_process_session.load(std::memory_order_acquire); }

void TraceSession::forget_after_fork() noexcept {
  TraceSession* s = g_process_session.exchange(nullptr, std::memory_order_acq_rel);
  if (s == nullptr) return;
  // The handlers stay installed; with no pipe they do what they do in any child (chain, or the default
  // action) until the child's own session takes them over. The pipe is shared with the parent's
  // watcher: the child must not write into it (a request would make the parent write).
  int mine = s->pipe_[1];
  g_signal_pipe.compare_exchange_strong(mine, -1);
  mine = s->pipe_[1];
  g_term_pipe.compare_exchange_strong(mine, -1);
  g_term_signal.store(0, std::memory_order_relaxed);  // the parent's, if one came: not this process's
  ::close(s->pipe_[0]);
  ::close(s->pipe_[1]);
  s->pipe_[0] = s->pipe_[1] = -1;
}

void TraceSession::request_dump() noexcept {
  if (dump_pending_.exchange(true, std::memory_order_acq_rel)) return;
  char c = 'd';
  ssize_t n = ::write(pipe_[1], &c, 1);
  (void)n;
}

void TraceSession::watch() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // signals go to the program's threads, not here
  for (;;) {
    char c = 0;
    ssize_t n = ::read(pipe_[0], &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == 'q') return;
    // Coalesce requests that came meanwhile.
    bool quit = false, terminate = c == 't';
    for (;;) {
      pollfd p{pipe_[0], POLLIN, 0};
      if (::poll(&p, 1, 0) != 1) break;
      char more = 0;
      if (::read(pipe_[0], &more, 1) != 1) break;
      if (more == 'q') quit = true;
      if (more == 't') terminate = true;
    }
    // The signal is noted before its byte is written; the byte is lost if the pipe is full (dump
    // requests queued while a write was slow), but the wake-up it needed came from those requests.
    if (g_term_signal.load(std::memory_order_relaxed) != 0) terminate = true;
    dump_pending_.store(false, std::memory_order_release);
    (void)dump();
    if (terminate) {
      // The trace is written: now what the signal would have done (on_terminate).
      const int sig = g_term_signal.load(std::memory_order_relaxed);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigemptyset(&dfl.sa_mask);
      ::sigaction(sig, &dfl, nullptr);
      ::kill(::getpid(), sig);  // to the process: this thread blocks every signal
    }
    if (quit) return;
  }
}

void TraceSession::add_totals_source(std::function<Totals()> source) {
  std::lock_guard lock(state_mu_);
  totals_sources_.push_back(std::move(source));
}

std::string TraceSession::last_error() const {
  std::lock_guard lock(state_mu_);
  return last_error_;
}

std::string TraceSession::write_trace_file(const std::string& path, bool own) {
  auto t0 = std::chrono::steady_clock::now();
  CollectOptions co;
  co.name = options_.name;
  co.extra_meta = {{"pid", pid_}, {"cmdline", cmdline_}, {"host", host_}};
  std::vector<std::function<Totals()>> sources;
  {
    std::lock_guard lock(state_mu_);
    co.snapshots = snapshots_;
    if (snapshots_dropped_ > 0) co.extra_meta["snapshots_dropped"] = snapshots_dropped_;
    sources = totals_sources_;
  }
  if (!sources.empty()) {
    Totals sum;
    for (const auto& f : sources) {
      Totals t = f();
      sum.live_bytes += t.live_bytes;
      sum.physical_bytes += t.physical_bytes;
    }
    co.totals = sum;
  }
  Trace t = recorder_.collect(co);
  std::string written = path;
  {
    AtomicFile f(path, gz_suffix(path));
    write_trace_json(t, [&](std::string_view s) { f.write(s); });
    if (!own) {
      f.commit();
    } else {
      // The look and the rename under the directory's lock (commit_locked): processes sharing the path
      // that write at once (workers ending together) see one another's renames, and none replaces
      // another's trace. Another's file counts from its rename (ctime), not from when its bytes were
      // written (mtime, which can be before this session started).
      auto since_start = [&](const timespec& ts) {
        return ts.tv_sec > started_.tv_sec || (ts.tv_sec == started_.tv_sec && ts.tv_nsec >= started_.tv_nsec);
      };
      f.commit_locked([&] {
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && !(wrote_ && st.st_dev == wrote_dev_ && st.st_ino == wrote_ino_) &&
            (since_start(st.st_mtim) || since_start(st.st_ctim))) {
          written = pid_trace_path(options_.path, pid_);
          std::string line = fmt::format("glake: {} was written by another process while this one ran (GLAKE_TRACE "
                                         "without %p?): this process's trace goes to {}\n", path, written);
          ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
          (void)n;
          f.set_path(written);
          path_ = written;
        }
        // What is renamed is the temporary file: its identity is the one to know as this session's.
        struct stat mine {};
        wrote_ = ::stat(f.temp_path().c_str(), &mine) == 0;
        wrote_dev_ = mine.st_dev;
        wrote_ino_ = mine.st_ino;
      });
    }
  }
  dumps_.fetch_add(1, std::memory_order_acq_rel);
  if (!options_.quiet) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string line = fmt::format("glake: trace written to {}: {} events ({} dropped), {} stacks, {} snapshots ({:.2f} s)\n",
                                   written, t.events.size(), t.meta.events_dropped.value_or(0), t.stacks.size(),
                                   t.snapshots.size(), s);
    ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    (void)n;
  }
  return "";
}

std::string TraceSession::dump(const std::string& path) noexcept {
  std::string err;
  // Before the lock: a child forked while another thread of the parent held it (writing the trace)
  // would wait for it for ever (at its exit, say): the thread that holds it does not exist there.
  if (::getpid() != pid_) return "not the recording process (a forked child writes no trace)";
  try {
    std::lock_guard lock(dump_mu_);
    return path.empty() ? write_trace_file(path_, true) : write_trace_file(path, false);
  } catch (const std::exception& e) {
    err = e.what();
  } catch (...) {
    err = "unknown error";
  }
  try {
    std::lock_guard lock(state_mu_);
    last_error_ = err;
  } catch (...) {
  }
  std::string line = "glake: cannot write the trace: " + err + "\n";
  ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
  (void)n;
  return err;
}

std::string TraceSession::on_snapshot(TraceSnapshot snap) noexcept {
  std::string written;
  try {
    recorder_.mark();  // the events before the snapshot are placed before it
    if (snap.t_us == 0) snap.t_us = recorder_.now_us();
    snap.json = snapshot_to_json(snap).dump();
    {
      std::lock_guard lock(state_mu_);
      if (options_.max_snapshots > 0) {
        if (snapshots_.size() < options_.max_snapshots) {
          snapshots_.push_back(snap);
        } else {
          snapshots_.back() = snap;  // keep the first ones and the latest
          ++snapshots_dropped_;
        }
      } else {
        ++snapshots_dropped_;
      }
    }
    if (!options_.oom_path.empty() && ::getpid() == pid_) {
      Trace t;
      nlohmann::ordered_json m;
      m["name"] = options_.name;
      m["source"] = "glake tracer (snapshot)";
      m["pid"] = pid_;
      m["cmdline"] = cmdline_;
      m["trace"] = options_.path;
      m["note"] = "the pool's state when the snapshot was taken; the whole trace is written to \"trace\"";
      t.meta.json = m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // cmdline: any bytes
      t.snapshots.push_back(snap);
      write_trace(t, options_.oom_path);
      written = options_.oom_path;
      if (!options_.quiet) {
        std::string line = fmt::format("glake: {} snapshot written to {} (glake-trace summary {})\n", snap.reason,
                                       written, written);
        ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
        (void)n;
      }
    }
  } catch (const std::exception& e) {
    try {
      std::lock_guard lock(state_mu_);
      last_error_ = e.what();
    } catch (...) {
    }
    written.clear();
    // One line, as dump() gives: callers (the shim) ignore the return value, so the snapshot file that
    // GLAKE_TRACE_OOM asked for would otherwise be missing without a word.
    std::string line = std::string("glake: cannot write the snapshot: ") + e.what() + "\n";
    ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    (void)n;
  }
  if (snap.reason == "oom") request_dump();
  return written;
}

}  // namespace glake::tracer
