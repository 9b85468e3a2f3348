// tests/tracer/test_atomic_file.cpp: files are never seen half-written: a reader polling the
// destination while it is rewritten sees only whole old or whole new contents; a write that fails or
// is abandoned (an exception, a killed process) leaves the destination as it was; no temporary file
// stays behind after a commit or an abort.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/tracer/trace_test_util.h"
#include "tracer/atomic_file.h"
#include "tracer/trace_reader.h"

namespace glake::tracer {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string fresh_dir() {
  std::string d = testing_util::temp_path("dir");
  std::string cmd = "rm -rf '" + d + "' && mkdir -p '" + d + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  return d;
}

int entries(const std::string& dir) {
  int n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") ++n;
    ::closedir(d);
  }
  return n;
}

TEST(AtomicFile, CommitReplacesAndLeavesNoTemporary) {
  std::string dir = fresh_dir();
  std::string path = dir + "/out.txt";
  write_file_atomic(path, "first");
  EXPECT_EQ(slurp(path), "first");
  write_file_atomic(path, "second, longer");
  EXPECT_EQ(slurp(path), "second, longer");
  EXPECT_EQ(entries(dir), 1);
}

TEST(AtomicFile, AbortedWriteKeepsTheOldContent) {
  std::string dir = fresh_dir();
  std::string path = dir + "/out.txt";
  write_file_atomic(path, "old");
  {
    AtomicFile f(path, false);
    f.write("new but never committed");
    EXPECT_EQ(slurp(path), "old") << "nothing visible before commit";
  }  // destroyed without commit
  EXPECT_EQ(slurp(path), "old");
  EXPECT_EQ(entries(dir), 1) << "the temporary file is gone";
  try {
    AtomicFile f(path, false);
    f.write("also lost");
    throw std::runtime_error("failure in the middle");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(slurp(path), "old");
  EXPECT_EQ(entries(dir), 1);
}

TEST(AtomicFile, GzipIsReadable) {
  std::string dir = fresh_dir();
  std::string path = dir + "/t.json.gz";
  write_file_atomic(path, R"({"events":[[0,"a",1,10,0]]})");
  Trace t = read_trace(path);
  EXPECT_EQ(t.events.size(), 1u);
}

TEST(AtomicFile, ErrorsNameThePath) {
  try {
    write_file_atomic("/nonexistent-dir/x/out.json", "x");
    FAIL() << "expected AtomicFileError";
  } catch (const AtomicFileError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("/nonexistent-dir/x/out.json"), std::string::npos) << msg;
  }
}

// A destination that is not a regular file is written in place: renaming over it replaced a FIFO with
// a regular file, and `-o /dev/null` (GLAKE_TRACE=/dev/null) run as root replaced /dev/null itself.
TEST(AtomicFile, ADeviceOrAFifoIsWrittenInPlace) {
  // (Not tried on /dev/null itself: a regression run as root would replace it on the test machine.)
  struct stat st {};
  std::string dir = fresh_dir();
  std::string fifo = dir + "/pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = slurp(fifo); });
  write_file_atomic(fifo, "through the pipe");
  reader.join();
  EXPECT_EQ(got, "through the pipe");
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "still the FIFO";
  EXPECT_EQ(entries(dir), 1) << "no temporary file";
  try {
    write_file_atomic(dir, "x");
    FAIL() << "expected AtomicFileError";
  } catch (const AtomicFileError& e) {
    EXPECT_NE(std::string(e.what()).find(dir + ": is a directory"), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, ReaderNeverSeesAPartialFile) {
  std::string dir = fresh_dir();
  std::string path = dir + "/big.txt";
  // Two contents of several MiB, told apart by their first byte; each is one byte repeated, so a mix
  // or a short read shows.
  const std::size_t size = std::size_t{6} << 20;
  const std::string a(size, 'a'), b(size + 12345, 'b');
  write_file_atomic(path, a);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, reads{0};
  std::thread reader([&] {
    while (!stop.load()) {
      std::string s = slurp(path);
      ++reads;
      bool whole = (s.size() == a.size() && s == a) || (s.size() == b.size() && s == b);
      if (!whole) ++bad;
    }
  });
  for (int i = 0; i < 30; ++i) {
    if (i == 29) {  // the reader has read at least once before the last write (however it is scheduled)
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (reads.load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    }
    AtomicFile f(path, false);
    const std::string& c = i % 2 == 0 ? b : a;
    for (std::size_t off = 0; off < c.size(); off += 1 << 20) f.write(std::string_view(c).substr(off, 1 << 20));
    f.commit();
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(bad.load(), 0) << "a reader saw a partial or mixed file";
  EXPECT_EQ(entries(dir), 1);
}

TEST(AtomicFile, KilledWriterLeavesTheDestinationWhole) {
  std::string dir = fresh_dir();
  std::string path = dir + "/out.txt";
  write_file_atomic(path, "before");
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    AtomicFile f(path, false);
    std::string chunk(1 << 20, 'x');
    for (;;) f.write(chunk);  // until killed
  }
  // Wait until the child's temporary file grows, then kill it mid-write.
  for (int i = 0; i < 500 && entries(dir) < 2; ++i) ::usleep(10000);
  ::usleep(50000);
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_EQ(slurp(path), "before");
}

}  // namespace
}  // namespace glake::tracer
