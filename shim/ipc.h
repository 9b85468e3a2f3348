// shim/ipc.h: cudaIpcGetMemHandle / cudaIpcOpenMemHandle / cudaIpcCloseMemHandle for glake memory.
//
// Legacy CUDA IPC fails on VMM memory, so glake shares its pages as POSIX file descriptors instead:
// - Export (cudaIpcGetMemHandle on a glake block): the block is recorded in this process's export
//   table and the 64-byte handle names it: magic "GLAKEIPC", exporter pid, a per-process nonce, the
//   block's address, an export id, size and device. The first export starts a server thread listening
//   on the abstract unix socket "\0glake-ipc-<pid>-<nonce>" (SOCK_SEQPACKET; only peers of the same
//   uid are served).
// - Import (cudaIpcOpenMemHandle on such a handle): the importer connects, the server checks that the
//   block is still live with the same pages (with each batch's export, in one step against the pool's
//   trims: Allocator::export_pages) and sends one file descriptor per page, with its size
//   (a page may be several granules and reach beyond the block; it is mapped whole) (SCM_RIGHTS, in
//   batches), and the importer maps them side by side into a reservation of its own with the real
//   driver (cuMemImportFromShareableHandle, cuMemMap, cuMemSetAccess for its current device), then
//   closes them. The pointer it returns is the block's address in that reservation. A handle of the
//   importing process itself is refused, as CUDA refuses it.
// - Close: unmaps and frees the reservation (the pages live on in the exporter).
// The driver's cuIpcGetMemHandle / cuIpcOpenMemHandle / cuIpcCloseMemHandle do the same (router.cpp): a
// program linked with the static runtime (NCCL's, when NCCL_CUMEM_ENABLE=0 makes it share cudaMalloc
// buffers) reaches them through cuGetProcAddress; the two handle types are the same 64 bytes.
// As with CUDA IPC, a small block shares its whole page, and an exporter must keep the block alive
// while importers use it. Both processes must run under glake (children started by
// torch.multiprocessing inherit LD_PRELOAD).
//
// Thread-safe: one mutex guards the tables; no lock is held across socket I/O, and only the pool's
// (Allocator::export_pages) across a driver call.
#pragma once

#include <cuda_runtime_api.h>
#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "pool/allocator.h"

namespace glake::shim {

class Ipc {
 public:
  Ipc() = default;
  Ipc(const Ipc&) = delete;
  Ipc& operator=(const Ipc&) = delete;

  static bool is_glake_handle(const cudaIpcMemHandle_t& handle);

  cudaError_t export_block(int device, pool::Allocator& alloc, const pool::BlockInfo& info, cudaIpcMemHandle_t* handle);
  // The block at `base` was freed: its export (if any) goes.
  void forget(pool::DevPtr base);
  bool has_exports() const { return exports_.load(std::memory_order_relaxed) != 0; }

  // Maps the block that `handle` names for `device` (the importer's: the runtime's current device or
  // the current context's). A handle this process exported gives cudaErrorDeviceUninitialized, as CUDA.
  cudaError_t open(const cudaIpcMemHandle_t& handle, unsigned int flags, int device, void** ptr);
  // False if ptr is not an address open() returned; else closes it and sets *result.
  bool close(void* ptr, cudaError_t* result);

  // The process is exiting (glake's exit handler, which runs before the driver's teardown): the
  // server answers every later request with an error and makes no driver call, and a batch whose
  // driver calls already began is waited for (up to 2 s).
  void stop_answering();

  // Fork: the lock is held across fork(); the child has no server thread and no exports.
  void lock_for_fork();
  void unlock_after_fork();
  void after_fork_child();

  // The server thread's loop (public for pthread_create's trampoline).
  void serve();

 private:
  struct Export;
  struct Import;

  bool start_server_locked();
  void answer(int conn);

  mutable pthread_mutex_t mutex_ = PTHREAD_MUTEX_INITIALIZER;
  Export* export_list_ = nullptr;  // singly linked, newest first
  Import* import_list_ = nullptr;
  std::atomic<std::size_t> exports_{0};  // read without the lock as a hint (has_exports)
  std::atomic<bool> stopping_{false};
  std::atomic<int> exporting_{0};  // the server is inside a batch's driver calls
  std::uint64_t next_id_ = 1;
  std::uint64_t nonce_ = 0;
  int listen_fd_ = -1;
  bool server_started_ = false;
};

}  // namespace glake::shim
