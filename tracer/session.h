// tracer/session.h: a process's trace: the recorder, where and when the trace is written.
//
// GLAKE_TRACE=PATH turns it on (start_from_env); the trace is written to PATH
//   - when the process exits (atexit; not in a forked child, which never writes its parent's trace),
//     and when SIGTERM or SIGINT ends it (where the program left their default action: the watcher
//     writes the trace, then the process ends by the signal, as it would have),
//   - on request: dump() (the shim's C API calls it), or the signal GLAKE_TRACE_SIGNAL (default SIGUSR2:
//     `kill -USR2 PID`): the handler only writes a byte to a pipe; a watcher thread does the writing,
//   - after an out-of-memory snapshot (on_oom_snapshot), by the watcher thread.
// A forked child never writes its parent's session; forget_after_fork() lets it start one of its own.
// Every write is atomic (temporary file, fsync, rename): a reader never sees half a trace. Each write
// is every ring as it is then; the last one (normally at exit) is the most complete. A path ending
// in .gz is gzip-compressed; "%p" in the path becomes the process id (several processes, one setting).
// Without "%p", processes that share the setting (a launcher's workers inheriting GLAKE_TRACE) would
// replace one another's trace: a session that finds its path written by another process since it
// started writes to PATH with ".PID" before its ".json"/".json.gz" instead, and says so on stderr. The
// look and the rename hold an flock() of the directory (AtomicFile::commit_locked), so sessions that
// write at the same moment see one another's files.
//
// Out of memory: the caller (the shim, after pool::Allocator::allocate() returned out_of_memory, with no
// pool lock held) hands over the pool's snapshot (tracer/pool_trace.h makes it); the session keeps it
// for the trace's "snapshots" (at most GLAKE_TRACE_SNAPSHOTS: the first ones and the latest), writes it
// at once, as a small trace of its own, to GLAKE_TRACE_OOM (default: PATH with ".oom.json" for its
// ".json"/".json.gz" suffix), and asks the watcher for the whole trace.
//
// Settings (a bad value is reported in `errors`, naming the variable and the accepted values; the
// default is used):
//   GLAKE_TRACE_EVENTS       events per ring (default 1M; 16 to 4G, K/M/G suffixes, binary), rounded
//                            up to a power of two (1000000: 1048576): the shared ring and each
//                            pool's lane (recorder.h) hold this many each, 64 bytes an event (64 MiB
//                            per ring at 1M, reserved, committed as written)
//   GLAKE_TRACE_KEEP         newest (default: the ring overwrites the oldest) | oldest (refuses new ones)
//   GLAKE_TRACE_STACKS       0 (default) | 1: call stacks of allocations (needs a build with libunwind)
//   GLAKE_TRACE_STACK_DEPTH  frames per stack (default 16, 1..48)
//   GLAKE_TRACE_SYMBOLS      auto (default) | addr2line | dladdr | none
//   GLAKE_TRACE_SIGNAL       USR2 (default) | USR1 | a number | 0/off: the signal that writes the trace
//   GLAKE_TRACE_OOM          where out-of-memory snapshots go; 0/off: only into the trace
//   GLAKE_TRACE_SNAPSHOTS    snapshots kept in the trace (default 16)
//   GLAKE_TRACE_CLOCK        auto (default) | tsc | monotonic
//   GLAKE_TRACE_TIME         sampled (default: times interpolated, within 1 ms) | exact (clock per event)
//   GLAKE_TRACE_QUIET        1: no line on stderr when a trace is written
#pragma once

#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tracer/recorder.h"

namespace glake::tracer {

struct SessionOptions {
  std::string path;      // where the trace goes ("%p" expanded)
  RecorderOptions recorder;
  int signal = SIGUSR2;  // 0: none
  std::string oom_path;  // "" : snapshots only in the trace
  std::size_t max_snapshots = 16;
  bool quiet = false;
  std::string name;      // meta.name (default: the program's name)
  // SIGTERM and SIGINT, where their action is the default (ending the process): write the trace first,
  // then end the process by the signal (one session per process does; a forked child is unaffected).
  bool write_on_termination = true;

  // Reads GLAKE_TRACE and the settings above. Returns false if GLAKE_TRACE is unset or empty.
  static bool from_env(SessionOptions* out, std::vector<std::string>* errors);
};

class TraceSession {
 public:
  // Starts the recorder, the watcher thread and the signal handler (if options.signal != 0 and no other
  // session holds one). Throws std::bad_alloc if the ring cannot be reserved.
  explicit TraceSession(SessionOptions options);
  // Stops the watcher and restores the signal's previous handler (for tests; the process's session is
  // never destroyed).
  ~TraceSession();
  TraceSession(const TraceSession&) = delete;
  TraceSession& operator=(const TraceSession&) = delete;

  // The process's session from GLAKE_TRACE (made once, with an atexit writer); null if GLAKE_TRACE is
  // unset or the ring cannot be reserved (one line in errors). Thread-safe.
  static TraceSession* start_from_env(std::vector<std::string>* errors);
  // The process's session, or null.
  static TraceSession* get();
  // In a forked child (the fork handler of a child that goes on recording: the shim's, where the parent
  // had no pool yet): the parent's session is the parent's (it writes only in the parent), so forget it
  // here; the next start_from_env() makes the child's own, with GLAKE_TRACE read again ("%p": the
  // child's id), that writes at the child's exit and takes over the signal handlers the parent's
  // installed. Async-signal-safe (atomic stores, close()); the parent's object is left as it is. Not
  // while another thread of the parent was in start_from_env() (the shim's fork handler excludes it).
  static void forget_after_fork() noexcept;

  Recorder& recorder() { return recorder_; }
  void record(const RecordEvent& e) noexcept { recorder_.record(e); }

  // Writes the trace now (to `path`, default the session's). Returns "" or what went wrong. Writes are
  // serialised; a forked child writes nothing ("not the recording process").
  std::string dump(const std::string& path = "") noexcept;
  // Asks the watcher thread to write the trace (async-signal-safe; coalesces while one is pending).
  void request_dump() noexcept;

  // An out-of-memory (or other) snapshot: kept for the trace, written to oom_path (returned, "" if none
  // or on failure: see last_error()), and a whole-trace write requested if reason is "oom". t_us 0 means
  // now.
  std::string on_snapshot(TraceSnapshot snapshot) noexcept;

  // A source of the live (requested) and physical bytes of now, summed over all sources when a trace is
  // written: with them a trace whose ring overwrote older events still starts from the right totals
  // (recorder.h). tracer/pool_trace.h's register_pool() adds a pool. Thread-safe.
  void add_totals_source(std::function<Totals()> source);

  const SessionOptions& options() const { return options_; }
  std::uint64_t dumps() const { return dumps_.load(std::memory_order_acquire); }
  std::string last_error() const;
  int signal() const { return signal_installed_ ? options_.signal : 0; }

 private:
  void watch();
  // own: the session's path (path_), which another process may have written meanwhile (dump()).
  std::string write_trace_file(const std::string& path, bool own);

  SessionOptions options_;
  Recorder recorder_;
  const int pid_;
  std::string cmdline_, host_;
  int pipe_[2] = {-1, -1};
  std::atomic<bool> dump_pending_{false};
  std::thread watcher_;
  bool signal_installed_ = false;
  struct sigaction old_action_ {};
  int term_installed_[2] = {0, 0};  // SIGTERM, SIGINT if this session handles them (write_on_termination)
  struct sigaction term_old_[2] {};
  std::mutex dump_mu_;
  // Under dump_mu_: where the session's trace goes (options_.path, or its ".PID" variant once another
  // process wrote there while this one ran: a subprocess that inherited GLAKE_TRACE without "%p"), and
  // the file this session last put there.
  std::string path_;
  timespec started_{};  // CLOCK_REALTIME_COARSE, the clock of file times
  bool wrote_ = false;
  dev_t wrote_dev_ = 0;
  ino_t wrote_ino_ = 0;
  mutable std::mutex state_mu_;  // snapshots_, snapshots_dropped_, last_error_, totals_sources_
  std::vector<TraceSnapshot> snapshots_;
  std::vector<std::function<Totals()>> totals_sources_;
  std::uint64_t snapshots_dropped_ = 0;
  std::string last_error_;
  std::atomic<std::uint64_t> dumps_{0};
};

// GLAKE_TRACE's "%p" expansion ("%%" is a '%').
std::string expand_trace_path(const std::string& pattern, int pid);
// The default out-of-memory snapshot path for a trace path: "x.json.gz" / "x.json" / "x" -> "x.oom.json".
std::string default_oom_path(const std::string& trace_path);
// Where a trace goes when another process wrote trace_path first: "x.json.gz" -> "x.PID.json.gz".
std::string pid_trace_path(const std::string& trace_path, int pid);

}  // namespace glake::tracer
