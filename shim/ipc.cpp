// shim/ipc.cpp: IPC of glake memory through file descriptors (see ipc.h).
#include "shim/ipc.h"

#include <errno.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "shim/real.h"

namespace glake::shim {

namespace {

constexpr char kMagic[8] = {'G', 'L', 'A', 'K', 'E', 'I', 'P', 'C'};
constexpr std::uint32_t kVersion = 2;
constexpr std::size_t kBatch = 64;  // descriptors per message (the kernel allows 253)

// The 64 bytes of a cudaIpcMemHandle_t that names a glake export.
struct Wire {
  char magic[8];
  std::uint32_t version;
  std::int32_t pid;
  std::uint64_t nonce;
  std::uint64_t base;
  std::uint64_t id;
  std::uint64_t size;
  std::int32_t device;
  std::uint32_t check;
};
static_assert(sizeof(Wire) <= sizeof(cudaIpcMemHandle_t));

struct Request {
  char magic[8];
  std::uint64_t base;
  std::uint64_t id;
};

struct Reply {
  std::int32_t status;  // cudaError_t
  std::uint32_t count;  // descriptors attached to this message
  std::uint64_t bytes;  // of all the pages, each mapped whole after the one before
  std::uint64_t offset;  // of the block in its first page
  std::uint64_t size;
  std::uint64_t sizes[kBatch];  // of the pages whose descriptors this message carries
};

std::uint32_t checksum(const Wire& w) {
  // FNV-1a over everything before `check`: rejects foreign handles that happen to start with the magic.
  const auto* p = reinterpret_cast<const unsigned char*>(&w);
  std::uint32_t h = 2166136261u;
  for (std::size_t i = 0; i < offsetof(Wire, check); ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

socklen_t socket_name(int pid, std::uint64_t nonce, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  // Abstract namespace: sun_path[0] == 0, no file to clean up.
  const int n = std::snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "glake-ipc-%d-%016llx", pid,
                              static_cast<unsigned long long>(nonce));
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<std::size_t>(n));
}

void set_timeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool send_reply(int conn, const Reply& r, const int* fds, std::size_t nfds) {
  iovec iov{const_cast<Reply*>(&r), sizeof r};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kBatch)];
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  for (;;) {
    const ssize_t n = sendmsg(conn, &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof r)) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

// One reply and the descriptors that came with it (closed by the caller).
bool receive_reply(int conn, Reply* r, std::vector<int>* fds) {
  iovec iov{r, sizeof *r};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kBatch)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  // A failed receive (the exporter gone, a timeout) writes no control data: the buffer holds nothing
  // of ours, and no descriptor came.
  if (n <= 0) return false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds->push_back(fd);
    }
  }
  return n == static_cast<ssize_t>(sizeof *r) && (msg.msg_flags & MSG_CTRUNC) == 0;
}

void* server_main(void* self) {
  static_cast<Ipc*>(self)->serve();
  return nullptr;
}

class Locked {
 public:
  explicit Locked(pthread_mutex_t* m) : m_(m) { pthread_mutex_lock(m_); }
  ~Locked() { pthread_mutex_unlock(m_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  pthread_mutex_t* m_;
};

}  // namespace

struct Ipc::Export {
  Export* next = nullptr;
  std::uint64_t id = 0;
  pool::DevPtr base = 0;
  int device = -1;
  pool::Allocator* alloc = nullptr;
  std::vector<pool::PhysPage> pages;
  std::size_t offset = 0;
  std::size_t size = 0;
};

struct Ipc::Import {
  Import* next = nullptr;
  int pid = 0;
  std::uint64_t nonce = 0;
  std::uint64_t base = 0;
  std::uint64_t id = 0;
  int device = 0;  // access is granted to this device only: another device's open maps again
  CUdeviceptr va = 0;
  std::size_t bytes = 0;  // of the reservation, all mapped
  void* ptr = nullptr;     // what open() returned
  int refs = 0;
};

bool Ipc::is_glake_handle(const cudaIpcMemHandle_t& handle) {
  Wire w;
  std::memcpy(&w, &handle, sizeof w);
  return std::memcmp(w.magic, kMagic, sizeof kMagic) == 0 && w.version == kVersion && w.check == checksum(w);
}

bool Ipc::start_server_locked() {
  if (server_started_) return true;
  if (nonce_ == 0 && getrandom(&nonce_, sizeof nonce_, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof nonce_)) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    nonce_ = (static_cast<std::uint64_t>(ts.tv_nsec) << 20) ^ static_cast<std::uint64_t>(ts.tv_sec) ^
             static_cast<std::uint64_t>(getpid());
  }
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr;
  const socklen_t len = socket_name(getpid(), nonce_, &addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, 64) != 0) {
    ::close(fd);
    return false;
  }
  // The thread takes no signals: they stay with the program's own threads.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  listen_fd_ = fd;
  pthread_t t;
  const bool ok = pthread_create(&t, &attr, server_main, this) == 0;
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (!ok) {
    ::close(fd);
    listen_fd_ = -1;
    return false;
  }
  server_started_ = true;
  return true;
}

cudaError_t Ipc::export_block(int device, pool::Allocator& alloc, const pool::BlockInfo& info,
                              cudaIpcMemHandle_t* handle) {
  if (info.pages.empty()) return cudaErrorInvalidValue;
  Wire w{};
  {
    Locked lock(&mutex_);
    if (!start_server_locked()) return cudaErrorOperatingSystem;
    Export* e = export_list_;
    while (e != nullptr && !(e->base == info.base && e->pages == info.pages)) e = e->next;
    if (e == nullptr) {
      e = new (std::nothrow) Export;
      if (e == nullptr) return cudaErrorMemoryAllocation;
      try {
        e->pages = info.pages;
      } catch (...) {
        delete e;
        return cudaErrorMemoryAllocation;
      }
      e->id = next_id_++;
      e->base = info.base;
      e->device = device;
      e->alloc = &alloc;
      e->offset = info.offset_in_first_page;
      e->size = info.block_size;
      e->next = export_list_;
      export_list_ = e;
      exports_.fetch_add(1, std::memory_order_relaxed);
    }
    std::memcpy(w.magic, kMagic, sizeof kMagic);
    w.version = kVersion;
    w.pid = getpid();
    w.nonce = nonce_;
    w.base = e->base;
    w.id = e->id;
    w.size = e->size;
    w.device = device;
  }
  w.check = checksum(w);
  std::memset(handle, 0, sizeof *handle);
  std::memcpy(handle, &w, sizeof w);
  return cudaSuccess;
}

void Ipc::forget(pool::DevPtr base) {
  Export* gone = nullptr;
  {
    Locked lock(&mutex_);
    for (Export** e = &export_list_; *e != nullptr; e = &(*e)->next) {
      if ((*e)->base != base) continue;
      gone = *e;
      *e = gone->next;
      exports_.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
  }
  delete gone;
}

void Ipc::serve() {
  for (;;) {
    int listen_fd;
    {
      Locked lock(&mutex_);
      listen_fd = listen_fd_;
    }
    if (listen_fd < 0) return;
    const int conn = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
        if (errno != EINTR && errno != ECONNABORTED) usleep(10000);
        continue;
      }
      return;  // the socket is gone
    }
    answer(conn);
    ::close(conn);
  }
}

void Ipc::answer(int conn) {
  ucred cred{};
  socklen_t cl = sizeof cred;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != geteuid()) return;
  set_timeouts(conn, 10);
  Request req{};
  ssize_t n;
  do {
    n = recv(conn, &req, sizeof req, 0);
  } while (n < 0 && errno == EINTR);
  Reply reply{};
  reply.status = cudaErrorInvalidResourceHandle;
  if (n != static_cast<ssize_t>(sizeof req) || std::memcmp(req.magic, kMagic, sizeof kMagic) != 0) {
    (void)send_reply(conn, reply, nullptr, 0);
    return;
  }
  // A copy of the export, so that no lock is held across driver calls and socket I/O.
  Export e;
  {
    Locked lock(&mutex_);
    const Export* x = export_list_;
    while (x != nullptr && !(x->base == req.base && x->id == req.id)) x = x->next;
    if (x != nullptr) {
      try {
        e.pages = x->pages;
      } catch (...) {
        x = nullptr;
      }
    }
    if (x != nullptr) {
      e.base = x->base;
      e.alloc = x->alloc;
      e.offset = x->offset;
      e.size = x->size;
    }
  }
  if (e.alloc == nullptr) {
    (void)send_reply(conn, reply, nullptr, 0);
    return;
  }
  for (const pool::PhysPage& p : e.pages) reply.bytes += p.size;
  reply.offset = e.offset;
  reply.size = e.size;
  int fds[kBatch];
  for (std::size_t i = 0; i < e.pages.size(); i += kBatch) {
    // Announced before the check, which stop_answering() makes in the other order (both sequentially
    // consistent): either the batch sees the stop, or the exit handler sees the batch and waits.
    exporting_.fetch_add(1);
    if (stopping_.load()) {  // before each batch's driver calls
      exporting_.fetch_sub(1);
      reply.status = cudaErrorInvalidResourceHandle;
      reply.count = 0;
      (void)send_reply(conn, reply, nullptr, 0);
      return;
    }
    const std::size_t k = std::min(kBatch, e.pages.size() - i);
    for (std::size_t j = 0; j < k; ++j) reply.sizes[j] = e.pages[i + j].size;
    // Still the same live block on the same pages, checked with the export in one step: a free of the
    // block and a trim in between would have the driver export handles the pool has released.
    pool::Status s;
    try {
      s = e.alloc->export_pages(e.base, e.pages, i, k, fds);
    } catch (...) {
      s = pool::Status::out_of_memory;
    }
    exporting_.fetch_sub(1);
    reply.status = s == pool::Status::ok          ? cudaSuccess
                   : s == pool::Status::not_found ? cudaErrorInvalidResourceHandle
                                                  : cudaErrorMapBufferObjectFailed;
    reply.count = s == pool::Status::ok ? static_cast<std::uint32_t>(k) : 0;
    const bool sent = send_reply(conn, reply, fds, reply.count);
    for (std::size_t j = 0; j < reply.count; ++j) ::close(fds[j]);
    if (!sent || s != pool::Status::ok) return;
  }
}

cudaError_t Ipc::open(const cudaIpcMemHandle_t& handle, unsigned int, int device, void** ptr) {
  Wire w;
  std::memcpy(&w, &handle, sizeof w);
  // This device's open of the same handle, if any (mutex_ held).
  auto opened = [&]() -> Import* {
    for (Import* i = import_list_; i != nullptr; i = i->next)
      if (i->pid == w.pid && i->nonce == w.nonce && i->base == w.base && i->id == w.id && i->device == device)
        return i;
    return nullptr;
  };
  {
    Locked lock(&mutex_);
    // A handle of this very process: CUDA refuses it (cudaErrorDeviceUninitialized; the driver's
    // CUDA_ERROR_INVALID_CONTEXT, the same 201). Both the pid and the server's nonce: a process of
    // another pid namespace may have this pid, and a forked child has a pid of its own (and draws a
    // nonce of its own: after_fork_child), so it still opens its parent's handles.
    if (server_started_ && w.pid == getpid() && w.nonce == nonce_) return cudaErrorDeviceUninitialized;
    if (Import* i = opened()) {
      ++i->refs;
      *ptr = i->ptr;
      return cudaSuccess;
    }
  }
  const DriverApi& d = real_driver();
  if (d.mem_address_reserve == nullptr || d.mem_import_from_shareable_handle == nullptr || d.mem_map == nullptr ||
      d.mem_set_access == nullptr || d.mem_unmap == nullptr || d.mem_address_free == nullptr ||
      d.mem_release == nullptr || d.device_get == nullptr)
    return cudaErrorNotSupported;
  CUdevice cu = 0;
  if (d.device_get(&cu, device) != CUDA_SUCCESS) return cudaErrorInvalidDevice;

  const int conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (conn < 0) return cudaErrorOperatingSystem;
  set_timeouts(conn, 30);
  sockaddr_un addr;
  const socklen_t len = socket_name(w.pid, w.nonce, &addr);
  if (connect(conn, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    ::close(conn);
    return cudaErrorInvalidResourceHandle;  // the exporter is gone
  }
  Request req{};
  std::memcpy(req.magic, kMagic, sizeof kMagic);
  req.base = w.base;
  req.id = w.id;
  if (send(conn, &req, sizeof req, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof req)) {
    ::close(conn);
    return cudaErrorInvalidResourceHandle;
  }

  cudaError_t result = cudaSuccess;
  CUdeviceptr va = 0;
  std::size_t total = 0, mapped = 0, offset = 0;  // bytes
  std::vector<int> fds;
  try {
    while (result == cudaSuccess) {
      Reply r{};
      fds.clear();
      const bool got = receive_reply(conn, &r, &fds);
      if (!got || r.status != cudaSuccess || r.count != fds.size()) {
        result = got && r.status != cudaSuccess ? static_cast<cudaError_t>(r.status) : cudaErrorInvalidResourceHandle;
      } else if (va == 0) {
        total = r.bytes;
        offset = r.offset;
        if (total == 0 || offset >= total || r.size > total - offset ||
            d.mem_address_reserve(&va, total, 0, 0, 0) != CUDA_SUCCESS) {
          va = 0;
          result = cudaErrorMapBufferObjectFailed;
        }
      }
      for (std::size_t k = 0; k < fds.size(); ++k) {
        if (result == cudaSuccess) {
          CUmemGenericAllocationHandle h = 0;
          void* os_handle = reinterpret_cast<void*>(static_cast<std::intptr_t>(fds[k]));
          const std::size_t size = r.sizes[k];
          if (size == 0 || size > total - mapped ||
              d.mem_import_from_shareable_handle(&h, os_handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) !=
                  CUDA_SUCCESS) {
            result = cudaErrorMapBufferObjectFailed;
          } else {
            // The mapping keeps the memory alive; the handle itself is not needed after it.
            if (d.mem_map(va + mapped, size, 0, h, 0) == CUDA_SUCCESS)
              mapped += size;
            else
              result = cudaErrorMapBufferObjectFailed;
            (void)d.mem_release(h);
          }
        }
        ::close(fds[k]);
      }
      fds.clear();
      if (result == cudaSuccess && va != 0 && mapped == total) break;
    }
  } catch (...) {
    for (int fd : fds) ::close(fd);
    result = cudaErrorMemoryAllocation;
  }
  ::close(conn);
  if (result == cudaSuccess) {
    CUmemAccessDesc desc{};
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = cu;
    desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (d.mem_set_access(va, total, &desc, 1) != CUDA_SUCCESS) result = cudaErrorMapBufferObjectFailed;
  }
  auto* imp = result == cudaSuccess ? new (std::nothrow) Import : nullptr;
  if (result == cudaSuccess && imp == nullptr) result = cudaErrorMemoryAllocation;
  if (result != cudaSuccess) {
    if (mapped > 0) (void)d.mem_unmap(va, mapped);
    if (va != 0) (void)d.mem_address_free(va, total);
    return result;
  }
  imp->pid = w.pid;
  imp->nonce = w.nonce;
  imp->base = w.base;
  imp->id = w.id;
  imp->device = device;
  imp->va = va;
  imp->bytes = total;
  imp->ptr = reinterpret_cast<void*>(va + offset);
  imp->refs = 1;
  Import* same = nullptr;  // another thread's open of the handle that finished first
  {
    Locked lock(&mutex_);
    same = opened();
    if (same != nullptr) {
      ++same->refs;
      *ptr = same->ptr;
    } else {
      imp->next = import_list_;
      import_list_ = imp;
      *ptr = imp->ptr;
    }
  }
  if (same != nullptr) {  // one mapping per handle and device, as CUDA's count of opens
    (void)d.mem_unmap(va, total);
    (void)d.mem_address_free(va, total);
    delete imp;
  }
  return cudaSuccess;
}

bool Ipc::close(void* ptr, cudaError_t* result) {
  Import* gone = nullptr;
  {
    Locked lock(&mutex_);
    Import** i = &import_list_;
    while (*i != nullptr && (*i)->ptr != ptr) i = &(*i)->next;
    if (*i == nullptr) return false;
    if (--(*i)->refs > 0) {
      *result = cudaSuccess;
      return true;
    }
    gone = *i;
    *i = gone->next;
  }
  const DriverApi& d = real_driver();
  CUresult r = d.mem_unmap(gone->va, gone->bytes);
  const CUresult r2 = d.mem_address_free(gone->va, gone->bytes);
  if (r == CUDA_SUCCESS) r = r2;
  *result = r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
  delete gone;
  return true;
}

void Ipc::stop_answering() {
  stopping_.store(true);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (exporting_.load() != 0 && std::chrono::steady_clock::now() < deadline) usleep(1000);
}

void Ipc::lock_for_fork() { pthread_mutex_lock(&mutex_); }
void Ipc::unlock_after_fork() { pthread_mutex_unlock(&mutex_); }

void Ipc::after_fork_child() {
  pthread_mutex_init(&mutex_, nullptr);
  // The server thread did not come along, and the parent's exports and imports are the parent's.
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  server_started_ = false;
  exporting_.store(0);
  nonce_ = 0;
  export_list_ = nullptr;
  import_list_ = nullptr;
  exports_.store(0, std::memory_order_relaxed);
}

}  // namespace glake::shim
