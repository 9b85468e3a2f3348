// tracer/atomic_file.cpp: see atomic_file.h.
#include "tracer/atomic_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace glake::tracer {
namespace {

std::atomic<std::uint64_t> g_temp_counter{0};

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

bool gz_suffix(std::string_view path) { return path.size() > 3 && path.substr(path.size() - 3) == ".gz"; }

AtomicFile::AtomicFile(std::string path, bool gzip) : path_(std::move(path)), gzip_(gzip) {
  if (path_.empty()) throw AtomicFileError("cannot write a file with an empty name");
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) throw AtomicFileError(fmt::format("{}: is a directory", path_));
    // A device, a FIFO or a socket (-o /dev/null, /dev/stdout): written in place. A rename would put a
    // regular file in its stead (for root, in place of /dev/null itself).
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) {
      int err = errno;
      throw AtomicFileError(fmt::format("{}: cannot open: {}", path_, std::strerror(err)));
    }
    direct_ = true;
  }
  std::string dir = dir_of(path_);
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    temp_ = fmt::format("{}/.{}.tmp-{}-{}", dir, base_of(path_), ::getpid(),
                        g_temp_counter.fetch_add(1, std::memory_order_relaxed));
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0 && errno != EEXIST) {
      int err = errno;
      throw AtomicFileError(fmt::format("{}: cannot create a temporary file in {}: {}", path_, dir, std::strerror(err)));
    }
  }
  if (fd_ < 0) throw AtomicFileError(fmt::format("{}: cannot create a temporary file in {}", path_, dir));
  if (gzip_) {
    auto* zs = new z_stream{};
    if (deflateInit2(zs, 3, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
      delete zs;
      abort();
      throw AtomicFileError(fmt::format("{}: cannot start zlib", path_));
    }
    zs_ = zs;
    zbuf_.resize(1 << 18);
  }
}

AtomicFile::~AtomicFile() { abort(); }

void AtomicFile::abort() noexcept {
  if (zs_ != nullptr) {
    deflateEnd(static_cast<z_stream*>(zs_));
    delete static_cast<z_stream*>(zs_);
    zs_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    if (!direct_) ::unlink(temp_.c_str());
  }
}

void AtomicFile::fail(const std::string& what, int err) {
  std::string msg = fmt::format("{}: {}: {}", path_, what, std::strerror(err));
  abort();
  throw AtomicFileError(msg);
}

void AtomicFile::write_raw(const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail(fmt::format("write failed after {} bytes", written_), w < 0 ? errno : EIO);
    p += w;
    n -= static_cast<std::size_t>(w);
    written_ += static_cast<std::uint64_t>(w);
  }
}

void AtomicFile::deflate_some(const char* p, std::size_t n, int flush) {
  auto* zs = static_cast<z_stream*>(zs_);
  zs->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(p));
  zs->avail_in = static_cast<uInt>(n);
  for (;;) {
    zs->next_out = reinterpret_cast<Bytef*>(zbuf_.data());
    zs->avail_out = static_cast<uInt>(zbuf_.size());
    int rc = deflate(zs, flush);
    if (rc == Z_STREAM_ERROR) fail("zlib deflate failed", EIO);
    write_raw(zbuf_.data(), zbuf_.size() - zs->avail_out);
    if (flush == Z_FINISH ? rc == Z_STREAM_END : (zs->avail_in == 0 && zs->avail_out != 0)) break;
  }
}

void AtomicFile::write(std::string_view bytes) {
  if (fd_ < 0) throw AtomicFileError(fmt::format("{}: write after commit or abort", path_));
  if (!gzip_) return write_raw(bytes.data(), bytes.size());
  while (!bytes.empty()) {  // avail_in is 32 bits
    std::size_t n = std::min<std::size_t>(bytes.size(), 1u << 30);
    deflate_some(bytes.data(), n, Z_NO_FLUSH);
    bytes.remove_prefix(n);
  }
}

void AtomicFile::commit() { commit_locked(nullptr); }

void AtomicFile::commit_locked(const std::function<void()>& decide) {
  if (fd_ < 0) throw AtomicFileError(fmt::format("{}: commit after commit or abort", path_));
  if (gzip_) {
    deflate_some("", 0, Z_FINISH);
    deflateEnd(static_cast<z_stream*>(zs_));
    delete static_cast<z_stream*>(zs_);
    zs_ = nullptr;
  }
  if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) fail("fsync failed", errno);
  int fd = fd_;
  fd_ = -1;
  if (direct_) {  // nothing to rename, nor to decide
    if (::close(fd) != 0) {
      int err = errno;
      throw AtomicFileError(fmt::format("{}: close failed: {}", path_, std::strerror(err)));
    }
    return;
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(temp_.c_str());
    throw AtomicFileError(fmt::format("{}: close failed: {}", path_, std::strerror(err)));
  }
  // The directory (the same before and after decide(): set_path keeps it) is locked for decide() and
  // the rename, and fsynced after: the rename is durable once the directory is.
  int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  bool locked = false;
  if (decide) {
    if (dfd >= 0) {
      while (!(locked = ::flock(dfd, LOCK_EX) == 0) && errno == EINTR) {
      }
    }
    try {
      decide();
    } catch (...) {
      // Unlocked before the close: a child forked meanwhile shares the descriptor, and the lock with it.
      if (locked) (void)::flock(dfd, LOCK_UN);
      if (dfd >= 0) ::close(dfd);
      ::unlink(temp_.c_str());
      throw;
    }
  }
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    if (locked) (void)::flock(dfd, LOCK_UN);
    if (dfd >= 0) ::close(dfd);
    ::unlink(temp_.c_str());
    throw AtomicFileError(fmt::format("{}: cannot rename {} over it: {}", path_, temp_, std::strerror(err)));
  }
  if (dfd >= 0) {
    if (locked) (void)::flock(dfd, LOCK_UN);
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path, gz_suffix(path));
  f.write(bytes);
  f.commit();
}

}  // namespace glake::tracer
