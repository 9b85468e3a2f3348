// tracer/atomic_file.h: writing a file so that no reader ever sees it half-written.
//
// The bytes go to a temporary file in the destination's directory (".NAME.tmp-PID-N", created with
// O_EXCL), optionally through gzip; commit() flushes, fsyncs, closes, renames it over the destination
// (atomic within one file system) and fsyncs the directory. A file that is not committed (an error, an
// exception, the destructor) is unlinked: the destination keeps its old content or stays absent.
// A destination that exists and is not a regular file (a device such as /dev/null, a FIFO, a socket)
// is written in place, with no temporary file and no rename; a directory is an error.
// Errors throw AtomicFileError naming the path and the system's reason.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace glake::tracer {

class AtomicFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class AtomicFile {
 public:
  // gzip: compress what is written (level 3: fast; traces compress ~10x).
  AtomicFile(std::string path, bool gzip);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::string_view bytes);
  // Before commit(): the destination becomes `path`, in the same directory (the temporary file there
  // is what is renamed).
  void set_path(std::string path) { path_ = std::move(path); }
  void commit();
  // commit(), with decide() called just before the rename (it may set_path()) while this process holds
  // an exclusive flock() of the destination's directory, until the rename is done: writers that commit
  // this way into one directory look and rename one at a time (what another has renamed there, decide()
  // sees). Where the file system refuses the lock (some network ones), without it.
  void commit_locked(const std::function<void()>& decide);
  // Drops the temporary file (the destructor does it too).
  void abort() noexcept;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }
  std::uint64_t bytes_written() const { return written_; }  // to the file (compressed if gzip)

 private:
  void write_raw(const char* p, std::size_t n);
  void deflate_some(const char* p, std::size_t n, int flush);
  [[noreturn]] void fail(const std::string& what, int err);

  std::string path_, temp_;
  int fd_ = -1;
  bool gzip_ = false;
  bool direct_ = false;  // written in place: the destination is not a regular file
  void* zs_ = nullptr;  // z_stream
  std::string zbuf_;
  std::uint64_t written_ = 0;
};

// Writes `bytes` to `path` atomically (gzip if path ends with ".gz").
void write_file_atomic(const std::string& path, std::string_view bytes);

// True if `path` names a gzip file by its suffix (".gz").
bool gz_suffix(std::string_view path);

}  // namespace glake::tracer
