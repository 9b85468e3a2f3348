// tests/tracer/test_session.cpp: the process's trace session: GLAKE_TRACE_* settings (bad values are
// reported, defaults kept), writing on request, on a signal (by the watcher thread, chaining to the
// handler that was there), at exit (and not in a forked child), and out-of-memory snapshots of a real
// pool on the host driver (a small trace of their own, plus the whole trace asked for).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pool/allocator.h"
#include "pool/host_driver.h"
#include "tests/tracer/recorder_test_util.h"
#include "tests/tracer/trace_test_util.h"
#include "tracer/pool_trace.h"
#include "tracer/session.h"
#include "tracer/snapshot.h"
#include "tracer/trace_reader.h"
#include "tracer/trace_writer.h"

namespace glake::tracer {
namespace {

using testing_util::ev;

SessionOptions quiet_options(const std::string& path, int signal = 0) {
  SessionOptions o;
  o.path = path;
  o.signal = signal;
  o.quiet = true;
  o.oom_path = default_oom_path(path);
  o.name = "session-test";
  return o;
}

bool wait_for(const std::function<bool()>& cond, int ms = 10000) {
  for (int i = 0; i < ms / 10; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

TEST(Session, PathsExpand) {
  EXPECT_EQ(expand_trace_path("/tmp/t-%p.json", 42), "/tmp/t-42.json");
  EXPECT_EQ(expand_trace_path("a%%b%x", 1), "a%b%x");
  EXPECT_EQ(default_oom_path("/x/trace.json.gz"), "/x/trace.oom.json");
  EXPECT_EQ(default_oom_path("trace.json"), "trace.oom.json");
  EXPECT_EQ(default_oom_path("trace"), "trace.oom.json");
}

TEST(Session, SettingsFromTheEnvironment) {
  SessionOptions o;
  std::vector<std::string> errors;
  ::unsetenv("GLAKE_TRACE");
  EXPECT_FALSE(SessionOptions::from_env(&o, &errors));
  ::setenv("GLAKE_TRACE", "/tmp/x-%p.json.gz", 1);
  ::setenv("GLAKE_TRACE_EVENTS", "64K", 1);
  ::setenv("GLAKE_TRACE_KEEP", "oldest", 1);
  ::setenv("GLAKE_TRACE_STACKS", "1", 1);
  ::setenv("GLAKE_TRACE_STACK_DEPTH", "7", 1);
  ::setenv("GLAKE_TRACE_SIGNAL", "USR1", 1);
  ::setenv("GLAKE_TRACE_TIME", "exact", 1);
  ::setenv("GLAKE_TRACE_OOM", "off", 1);
  ASSERT_TRUE(SessionOptions::from_env(&o, &errors));
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(o.path, "/tmp/x-" + std::to_string(::getpid()) + ".json.gz");
  EXPECT_EQ(o.recorder.capacity, 65536u);
  {
    // Rounded up, never down: a user who asks for 1000000 keeps at least that many (README, session.h).
    RecorderOptions r;
    r.capacity = 1000000;
    EXPECT_EQ(Recorder(r).capacity(), std::size_t{1} << 20);
  }
  EXPECT_EQ(o.recorder.keep, RecorderOptions::Keep::oldest);
  EXPECT_TRUE(o.recorder.stacks);
  EXPECT_EQ(o.recorder.stack_depth, 7);
  EXPECT_EQ(o.signal, SIGUSR1);
  EXPECT_EQ(o.recorder.time, RecorderOptions::Time::exact);
  EXPECT_TRUE(o.oom_path.empty());

  ::setenv("GLAKE_TRACE_EVENTS", "lots", 1);
  ::setenv("GLAKE_TRACE_KEEP", "middle", 1);
  ::setenv("GLAKE_TRACE_SIGNAL", "KILL", 1);
  ::setenv("GLAKE_TRACE_STACK_DEPTH", "99", 1);
  ::unsetenv("GLAKE_TRACE_OOM");
  errors.clear();
  ASSERT_TRUE(SessionOptions::from_env(&o, &errors));
  EXPECT_EQ(errors.size(), 4u);
  for (const std::string& e : errors) EXPECT_NE(e.find("GLAKE_TRACE_"), std::string::npos) << e;
  EXPECT_EQ(o.recorder.capacity, RecorderOptions{}.capacity) << "a bad value keeps the default";
  EXPECT_EQ(o.signal, SIGUSR2);
  EXPECT_EQ(o.oom_path, "/tmp/x-" + std::to_string(::getpid()) + ".oom.json");
  for (const char* v : {"GLAKE_TRACE", "GLAKE_TRACE_EVENTS", "GLAKE_TRACE_KEEP", "GLAKE_TRACE_STACKS",
                        "GLAKE_TRACE_STACK_DEPTH", "GLAKE_TRACE_SIGNAL", "GLAKE_TRACE_TIME"})
    ::unsetenv(v);
}

TEST(Session, DumpOnRequest) {
  std::string path = testing_util::temp_path("req.json");
  std::remove(path.c_str());
  TraceSession s(quiet_options(path));
  s.record(ev(Op::alloc, 0x1000, 10));
  s.record(ev(Op::free, 0x1000, 10));
  EXPECT_EQ(s.dump(), "");
  EXPECT_EQ(s.dumps(), 1u);
  Trace t = read_trace(path);
  EXPECT_EQ(t.events.size(), 2u);
  auto m = nlohmann::json::parse(t.meta.json);
  EXPECT_EQ(m["pid"], ::getpid());
  EXPECT_EQ(m["name"], "session-test");
  EXPECT_NE(m["cmdline"].get<std::string>().find("test_session"), std::string::npos);
  // Another path on request; an unwritable one is an error, not a crash.
  std::string other = testing_util::temp_path("other.json.gz");
  EXPECT_EQ(s.dump(other), "");
  EXPECT_EQ(read_trace(other).events.size(), 2u);
  std::string err = s.dump("/nonexistent-dir/t.json");
  EXPECT_NE(err.find("/nonexistent-dir/t.json"), std::string::npos) << err;
  EXPECT_EQ(s.last_error(), err);
}

std::atomic<int> g_previous_handler_calls{0};
void previous_handler(int) { ++g_previous_handler_calls; }

TEST(Session, SignalMakesTheWatcherWrite) {
  struct sigaction prev {}, saved {};
  prev.sa_handler = previous_handler;
  sigemptyset(&prev.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR2, &prev, &saved), 0);
  std::string path = testing_util::temp_path("sig.json");
  std::remove(path.c_str());
  {
    TraceSession s(quiet_options(path, SIGUSR2));
    ASSERT_EQ(s.signal(), SIGUSR2);
    s.record(ev(Op::alloc, 0x1000, 10));
    ::raise(SIGUSR2);
    EXPECT_TRUE(wait_for([&] { return s.dumps() >= 1; })) << "the watcher did not write";
    EXPECT_EQ(g_previous_handler_calls.load(), 1) << "the previous handler is chained";
    EXPECT_EQ(read_trace(path).events.size(), 1u);
    s.record(ev(Op::free, 0x1000, 10));
    ::kill(::getpid(), SIGUSR2);
    EXPECT_TRUE(wait_for([&] { return s.dumps() >= 2; }));
    EXPECT_EQ(read_trace(path).events.size(), 2u);
  }
  struct sigaction now {};
  ::sigaction(SIGUSR2, nullptr, &now);
  EXPECT_EQ(now.sa_handler, previous_handler) << "the session restores the handler it found";
  ::sigaction(SIGUSR2, &saved, nullptr);
}

TEST(Session, WritesAtExitAndNotInAForkedChild) {
  std::string path = testing_util::temp_path("exit.json");
  std::remove(path.c_str());
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("GLAKE_TRACE", path.c_str(), 1);
    ::setenv("GLAKE_TRACE_SIGNAL", "0", 1);
    ::setenv("GLAKE_TRACE_QUIET", "1", 1);
    std::vector<std::string> errors;
    TraceSession* s = TraceSession::start_from_env(&errors);
    if (s == nullptr || !errors.empty()) ::_exit(3);
    s->record(ev(Op::alloc, 0x1000, 10));
    pid_t grandchild = ::fork();
    if (grandchild == 0) {
      // A forked child neither writes on request nor at exit.
      if (s->dump().find("not the recording process") == std::string::npos) ::_exit(4);
      std::exit(0);
    }
    int st = 0;
    ::waitpid(grandchild, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ::_exit(5);
    if (testing_util::file_exists(path)) ::_exit(6);
    s->record(ev(Op::free, 0x1000, 10));
    std::exit(0);  // the atexit writer runs
  }
  int st = 0;
  ::waitpid(child, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), 0);
  Trace t = read_trace(path);
  EXPECT_EQ(t.events.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(t.meta.json)["pid"], child);
}

// A child forked while another thread of its parent was writing the trace (the watcher after a USR2
// or an out-of-memory, glake_trace_dump on a thread) inherits the write's lock held by a thread that
// does not exist in it: its at-exit writer (or any dump()) waited on that lock for ever, so the child
// never exited. A forked child writes nothing, so it must not take the lock at all.
TEST(Session, AChildForkedDuringADumpExits) {
  std::string path = testing_util::temp_path("fork-during-dump.json");
  std::remove(path.c_str());
  TraceSession s(quiet_options(path));
  s.record(ev(Op::alloc, 0x1000, 10));
  std::atomic<bool> in_dump{false}, release{false};
  s.add_totals_source([&] {  // called by the write, with its lock held
    in_dump = true;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return Totals{};
  });
  std::thread writer([&] { EXPECT_EQ(s.dump(), ""); });
  ASSERT_TRUE(wait_for([&] { return in_dump.load(); }));
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(5);  // a hang ends by SIGALRM
    const std::string err = s.dump();
    ::_exit(err.find("not the recording process") != std::string::npos ? 0 : 3);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  release = true;
  writer.join();
  EXPECT_TRUE(WIFEXITED(st)) << "the child hung (signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0) << ")";
  EXPECT_EQ(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0);
  EXPECT_EQ(read_trace(path).events.size(), 1u);
  std::remove(path.c_str());
}

// A forked child that goes on recording (the shim's child of a parent with a session and no pool yet)
// forgets the parent's session and starts its own: "%p" is its own id, the signal writes its trace
// (not the parent's), the at-exit writer it inherited writes it once, and the parent's file is left alone.
TEST(Session, AForkedChildCanStartASessionOfItsOwn) {
  std::string pattern = testing_util::temp_path("own-%p.json");
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("GLAKE_TRACE", pattern.c_str(), 1);
    ::setenv("GLAKE_TRACE_QUIET", "1", 1);
    std::vector<std::string> errors;
    TraceSession* s = TraceSession::start_from_env(&errors);
    if (s == nullptr || !errors.empty() || s->signal() != SIGUSR2) ::_exit(3);
    s->record(ev(Op::alloc, 0x1000, 10));
    pid_t grandchild = ::fork();
    if (grandchild == 0) {
      TraceSession::forget_after_fork();
      if (TraceSession::get() != nullptr) ::_exit(4);
      TraceSession* own = TraceSession::start_from_env(&errors);
      if (own == nullptr || own == s || !errors.empty()) ::_exit(5);
      if (own->options().path != expand_trace_path(pattern, ::getpid())) ::_exit(6);
      if (own->signal() != SIGUSR2) ::_exit(7);
      own->record(ev(Op::alloc, 0x2000, 20));
      own->record(ev(Op::alloc, 0x3000, 30));
      ::kill(::getpid(), SIGUSR2);
      if (!wait_for([&] { return own->dumps() >= 1; })) ::_exit(8);
      std::exit(0);  // the inherited at-exit writer: one more write of this session
    }
    int st = 0;
    ::waitpid(grandchild, &st, 0);
    if (!WIFEXITED(st)) ::_exit(9);
    if (WEXITSTATUS(st) != 0) ::_exit(10 + WEXITSTATUS(st));
    const std::string theirs = expand_trace_path(pattern, grandchild);
    if (read_trace(theirs).events.size() != 2) ::_exit(30);
    std::remove(theirs.c_str());
    if (s->dumps() != 0) ::_exit(31);  // the grandchild's signal did not reach this process's session
    std::exit(0);
  }
  int st = 0;
  ::waitpid(child, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << "signal " << WTERMSIG(st);
  ASSERT_EQ(WEXITSTATUS(st), 0);
  const std::string mine = expand_trace_path(pattern, child);
  Trace t = read_trace(mine);
  EXPECT_EQ(t.events.size(), 1u);
  std::remove(mine.c_str());
}

// A scheduler's SIGTERM (or ^C) where the program left the default action ended the process with no
// trace at all: the trace is written first, and the process still ends by the signal.
TEST(Session, SigtermWritesTheTraceThenEndsTheProcessByIt) {
  for (int sig : {SIGTERM, SIGINT}) {
    std::string path = testing_util::temp_path("term.json");
    std::remove(path.c_str());
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::signal(sig, SIG_DFL);
      ::setenv("GLAKE_TRACE", path.c_str(), 1);
      ::setenv("GLAKE_TRACE_SIGNAL", "0", 1);
      ::setenv("GLAKE_TRACE_QUIET", "1", 1);
      std::vector<std::string> errors;
      TraceSession* s = TraceSession::start_from_env(&errors);
      if (s == nullptr || !errors.empty()) ::_exit(3);
      s->record(ev(Op::alloc, 0x1000, 10));
      // A forked child (a DataLoader worker) ended by the signal just ends: its parent writes nothing.
      pid_t worker = ::fork();
      if (worker == 0) {
        ::kill(::getpid(), sig);
        ::_exit(4);
      }
      int st = 0;
      ::waitpid(worker, &st, 0);
      if (!WIFSIGNALED(st) || WTERMSIG(st) != sig) ::_exit(5);
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      if (testing_util::file_exists(path) || s->dumps() != 0) ::_exit(6);
      ::kill(::getpid(), sig);
      std::this_thread::sleep_for(std::chrono::seconds(20));
      ::_exit(7);  // not ended by the signal
    }
    int st = 0;
    ::waitpid(child, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st)) << "signal " << sig << ": exit status " << WEXITSTATUS(st);
    EXPECT_EQ(WTERMSIG(st), sig);
    Trace t = read_trace(path);
    EXPECT_EQ(t.events.size(), 1u);
    EXPECT_EQ(nlohmann::json::parse(t.meta.json)["pid"], child);
  }
}

// A SIGTERM that came while the watcher's pipe was full (dump requests by the signal, queued while a
// write was slow) could not write its byte: the trace was written but the process went on running.
TEST(Session, SigtermWhileThePipeIsFullStillEndsTheProcess) {
  std::string path = testing_util::temp_path("term-full.json");
  std::remove(path.c_str());
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::signal(SIGTERM, SIG_DFL);
    ::setenv("GLAKE_TRACE", path.c_str(), 1);
    ::setenv("GLAKE_TRACE_SIGNAL", "USR2", 1);
    ::setenv("GLAKE_TRACE_QUIET", "1", 1);
    std::vector<std::string> errors;
    TraceSession* s = TraceSession::start_from_env(&errors);
    if (s == nullptr || !errors.empty()) ::_exit(3);
    s->record(ev(Op::alloc, 0x1000, 10));
    std::atomic<bool> in_write{false}, go_on{false};
    s->add_totals_source([&] {  // holds the watcher's first write until the pipe is full
      in_write.store(true);
      while (!go_on.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return Totals{};
    });
    ::raise(SIGUSR2);
    while (!in_write.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (int k = 0; k < 70000; ++k) ::raise(SIGUSR2);  // a byte each: more than a pipe holds
    ::raise(SIGTERM);
    go_on.store(true);
    std::this_thread::sleep_for(std::chrono::seconds(20));
    ::_exit(7);  // not ended by the signal
  }
  int st = 0;
  ::waitpid(child, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "exit status " << WEXITSTATUS(st);
  EXPECT_EQ(WTERMSIG(st), SIGTERM);
  Trace t = read_trace(path);
  EXPECT_EQ(t.events.size(), 1u);
  std::remove(path.c_str());
}

// A program's own handler stays: its SIGTERM is its business (it may exit, and the atexit writer runs).
TEST(Session, AProgramsOwnSigtermHandlerIsKept) {
  struct sigaction mine {}, saved {};
  mine.sa_handler = previous_handler;
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(::sigaction(SIGTERM, &mine, &saved), 0);
  {
    TraceSession s(quiet_options(testing_util::temp_path("own-term.json")));
    struct sigaction now {};
    ::sigaction(SIGTERM, nullptr, &now);
    EXPECT_EQ(now.sa_handler, previous_handler);
  }
  ::sigaction(SIGTERM, &saved, nullptr);
}

// The signal that writes the trace, sent to a forked child (which has no watcher), made the parent
// write its trace: the child inherited the handler and the parent's pipe.
TEST(Session, TheDumpSignalOfAForkedChildIsNotItsParents) {
  std::string path = testing_util::temp_path("child-usr2.json");
  std::remove(path.c_str());
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("GLAKE_TRACE", path.c_str(), 1);
    ::setenv("GLAKE_TRACE_SIGNAL", "USR2", 1);
    ::setenv("GLAKE_TRACE_QUIET", "1", 1);
    std::vector<std::string> errors;
    TraceSession* s = TraceSession::start_from_env(&errors);
    if (s == nullptr || !errors.empty() || s->signal() != SIGUSR2) ::_exit(3);
    s->record(ev(Op::alloc, 0x1000, 10));
    pid_t worker = ::fork();
    if (worker == 0) {
      ::raise(SIGUSR2);
      ::_exit(0);
    }
    int st = 0;
    ::waitpid(worker, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ::_exit(4);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (testing_util::file_exists(path) || s->dumps() != 0) ::_exit(5);
    ::raise(SIGUSR2);  // its own: written
    if (!wait_for([&] { return s->dumps() == 1; })) ::_exit(6);
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(child, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0);
  std::remove(path.c_str());
}

// Two processes with one GLAKE_TRACE (no "%p": a launcher and its workers) each renamed its trace over
// the other's: all but the last were lost without a word. A session whose path another process wrote
// since it started writes to PATH.PID instead and says so; a file from before it started (an earlier
// run) and its own earlier writes are replaced as before.
TEST(Session, APathAnotherProcessWroteMeanwhileIsNotReplaced) {
  EXPECT_EQ(pid_trace_path("/a/t.json.gz", 7), "/a/t.7.json.gz");
  EXPECT_EQ(pid_trace_path("/a/t.json", 7), "/a/t.7.json");
  EXPECT_EQ(pid_trace_path("/a/t", 7), "/a/t.7");
  std::string path = testing_util::temp_path("shared.json");
  std::string mine = pid_trace_path(path, ::getpid());
  std::remove(mine.c_str());
  Trace other;
  other.meta.json = R"({"pid": 1})";
  write_trace(other, path);  // an earlier run's
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  TraceSession s(quiet_options(path));
  s.record(ev(Op::alloc, 0x1000, 10));
  EXPECT_EQ(s.dump(), "");
  EXPECT_EQ(read_trace(path).events.size(), 1u) << "an earlier run's file is replaced";
  EXPECT_EQ(s.dump(), "");
  EXPECT_EQ(read_trace(path).events.size(), 1u) << "and so is the session's own";
  EXPECT_FALSE(testing_util::file_exists(mine));
  write_trace(other, path);  // another process, now
  s.record(ev(Op::free, 0x1000, 10));
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(s.dump(), "");
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(read_trace(path).events.size(), 0u) << "the other process's trace stays";
  EXPECT_EQ(read_trace(mine).events.size(), 2u);
  EXPECT_NE(err.find(path + " was written by another process"), std::string::npos) << err;
  EXPECT_NE(err.find(mine), std::string::npos) << err;
  s.record(ev(Op::alloc, 0x2000, 10));
  EXPECT_EQ(s.dump(), "");
  EXPECT_EQ(read_trace(mine).events.size(), 3u) << "later writes go to the same place";
  EXPECT_EQ(read_trace(path).events.size(), 0u);
  std::remove(path.c_str());
  std::remove(mine.c_str());
}

// Processes that share the path and write at the same moment (a launcher's workers ending together):
// each looked at the path, found nobody's trace there, and renamed its own over it, so all but one were
// lost without a word. The look and the rename are one step among glake's writers: every trace stays.
TEST(Session, ProcessesWritingASharedPathAtOnceEachKeepTheirTrace) {
  constexpr int kProcesses = 6;
  for (int round = 0; round < 10; ++round) {
    std::string path = testing_util::temp_path("race.json");
    std::remove(path.c_str());
    int ready[2], go[2];
    ASSERT_EQ(::pipe(ready), 0);
    ASSERT_EQ(::pipe(go), 0);
    std::vector<pid_t> pids;
    for (int k = 0; k < kProcesses; ++k) {
      pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::close(ready[0]);
        ::close(go[1]);
        SessionOptions o = quiet_options(path);
        TraceSession s(o);
        for (int e = 0; e <= k; ++e) s.record(ev(Op::alloc, 0x1000 * (e + 1), 10));
        char c = 'r';
        if (::write(ready[1], &c, 1) != 1) ::_exit(3);
        if (::read(go[0], &c, 1) != 0) ::_exit(4);  // all released at once: the write end closes
        ::_exit(s.dump().empty() ? 0 : 5);
      }
      pids.push_back(pid);
    }
    ::close(ready[1]);
    ::close(go[0]);
    char c = 0;
    for (int k = 0; k < kProcesses; ++k) ASSERT_EQ(::read(ready[0], &c, 1), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // written after every session started
    ::close(go[1]);
    ::close(ready[0]);
    std::vector<std::size_t> counts;
    for (pid_t pid : pids) {
      int st = 0;
      ASSERT_EQ(::waitpid(pid, &st, 0), pid);
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
      std::string theirs = pid_trace_path(path, pid);
      if (testing_util::file_exists(theirs)) {
        counts.push_back(read_trace(theirs).events.size());
        std::remove(theirs.c_str());
      }
    }
    if (testing_util::file_exists(path)) counts.push_back(read_trace(path).events.size());
    std::remove(path.c_str());
    std::sort(counts.begin(), counts.end());
    std::vector<std::size_t> want;
    for (int k = 0; k < kProcesses; ++k) want.push_back(static_cast<std::size_t>(k + 1));
    ASSERT_EQ(counts, want) << "round " << round << ": a trace was lost";
  }
}

TEST(Session, OutOfMemorySnapshot) {
  std::string path = testing_util::temp_path("oom.json");
  std::string oom_path = default_oom_path(path);
  std::remove(path.c_str());
  std::remove(oom_path.c_str());
  TraceSession s(quiet_options(path));
  pool::HostDriver::Options d;
  d.capacity = std::size_t{16} << 20;
  d.cost_model = false;
  pool::HostDriver driver(d);
  pool::Allocator alloc(driver, pool::Config{});
  PoolTraceObserver observer(&s.recorder());
  alloc.set_observer(&observer);
  std::vector<pool::DevPtr> live;
  pool::DevPtr p = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(alloc.allocate(std::size_t{4} << 20, 0, &p), pool::Status::ok);
    live.push_back(p);
  }
  ASSERT_EQ(alloc.allocate(std::size_t{3} << 20, 0, &p), pool::Status::ok);  // 14 MiB held
  live.push_back(p);
  ASSERT_EQ(alloc.free(live[1]), pool::Status::ok);                            // a 4 MiB hole
  pool::Status st = alloc.allocate(std::size_t{8} << 20, 0, &p);               // needs 8: 4 free + 2 left
  ASSERT_EQ(st, pool::Status::out_of_memory);
  SnapshotContext c;
  c.request = std::size_t{8} << 20;
  c.device = 0;
  c.limit = 0;
  std::string written = on_out_of_memory(s, alloc, c);
  EXPECT_EQ(written, oom_path);
  Trace snap = read_trace(oom_path);
  ASSERT_EQ(snap.snapshots.size(), 1u);
  const TraceSnapshot& sn = snap.snapshots[0];
  EXPECT_EQ(sn.reason, "oom");
  EXPECT_EQ(sn.request, std::uint64_t{8} << 20);
  SnapshotSummary m = summarize_snapshot(sn);
  EXPECT_EQ(m.physical_bytes, std::uint64_t{16} << 20);
  EXPECT_EQ(m.requested_bytes, std::uint64_t{11} << 20);
  std::string why = explain_snapshot(sn);
  EXPECT_NE(why.find("out of memory"), std::string::npos) << why;
  EXPECT_NE(why.find("8.00 MiB"), std::string::npos) << why;
  // The whole trace follows, written by the watcher, with the snapshot and the oom event in it.
  EXPECT_TRUE(wait_for([&] { return s.dumps() >= 1; }));
  alloc.set_observer(nullptr);
  Trace t = read_trace(path);
  ASSERT_EQ(t.snapshots.size(), 1u);
  bool oom_event = false;
  for (const TraceEvent& e : t.events) oom_event |= e.op == Op::oom && e.size == (std::uint64_t{8} << 20);
  EXPECT_TRUE(oom_event);
  for (pool::DevPtr q : live)
    if (q != live[1]) alloc.free(q);
}

TEST(Session, UnwritableSnapshotPathGetsOneLine) {
  // The shim ignores on_snapshot()'s result: a GLAKE_TRACE_OOM that cannot be written said nothing.
  SessionOptions o = quiet_options(testing_util::temp_path("unused.json"));
  o.oom_path = "/nonexistent-dir/x.oom.json";
  TraceSession s(o);
  TraceSnapshot snap;
  snap.reason = "request";  // not "oom": no whole-trace write
  snap.page_size = 4096;
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(s.on_snapshot(snap), "");
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("glake: cannot write the snapshot: /nonexistent-dir/x.oom.json"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(s.last_error().find("/nonexistent-dir/x.oom.json"), std::string::npos);
}

TEST(Session, WrappedRingStartsFromTheRegisteredPoolsTotals) {
  std::string path = testing_util::temp_path("wrap.json");
  SessionOptions o = quiet_options(path);
  o.recorder.capacity = 64;
  TraceSession s(o);
  pool::HostDriver::Options d;
  d.cost_model = false;
  pool::HostDriver driver(d);
  pool::Allocator alloc(driver, pool::Config{});
  PoolTraceObserver observer(&s.recorder());
  alloc.set_observer(&observer);
  register_pool(s, &alloc);
  pool::DevPtr keep = 0, p = 0;
  ASSERT_EQ(alloc.allocate(std::size_t{6} << 20, 0, &keep), pool::Status::ok);  // soon out of the ring
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(alloc.allocate(4096, 0, &p), pool::Status::ok);
    ASSERT_EQ(alloc.free(p), pool::Status::ok);
  }
  ASSERT_EQ(s.dump(), "");
  alloc.set_observer(nullptr);
  Trace t = read_trace(path);
  EXPECT_GT(*t.meta.events_dropped, 0u);
  ASSERT_FALSE(t.live_at_start.empty());
  EXPECT_EQ(t.live_at_start[0].addr, 1u) << "the unseen live bytes";
  EXPECT_EQ(t.live_at_start[0].size, std::uint64_t{6} << 20);
  EXPECT_EQ(t.peak_live_bytes, (std::uint64_t{6} << 20) + 4096);
  EXPECT_EQ(*t.meta.physical_at_start_bytes, alloc.stats().physical.current);
  ASSERT_EQ(alloc.free(keep), pool::Status::ok);
}

}  // namespace
}  // namespace glake::tracer
