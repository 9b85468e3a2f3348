/* shim/glake.h: the public C API of libglake.so.
 *
 * A program running under the shim (LD_PRELOAD=libglake.so, or scripts/glake-run) can ask glake about
 * its pools: link nothing, look the functions up with dlsym(RTLD_DEFAULT, "glake_stats") (Python:
 * ctypes.CDLL(None).glake_stats), or link libglake.so directly. Every function is safe to call at any
 * time, from any thread, before glake has initialised (it then reports zeros) and in a process where
 * glake is off (it reports that and zeros).
 *
 * Devices are CUDA runtime ordinals (cudaGetDevice). Sizes are bytes.
 *
 * What glake reports to CUDA and PyTorch (documented behaviour):
 * - cudaMemGetInfo / cuMemGetInfo: free = what the driver reports free + what glake holds but no
 *   allocation uses (glake_stats_t.cached), capped by GLAKE_LIMIT when one is set. total = the driver's.
 * - The default memory pool's attributes (cudaMemPoolGetAttribute), which PyTorch's
 *   backend:cudaMallocAsync reads for torch.cuda.memory_stats(): ReservedMemCurrent/High = physical
 *   memory glake holds (physical/physical_peak); UsedMemCurrent/High = bytes the callers asked for, of
 *   live allocations (requested/requested_peak). Each also includes what the real default pool holds
 *   (normally nothing). Setting ReservedMemHigh or UsedMemHigh (to 0) resets that mark only, as CUDA's
 *   (ReservedMemHigh: physical_peak, mapped_peak; UsedMemHigh: requested_peak, blocks_peak).
 *   cudaMemPoolTrimTo(default pool, n) returns cached memory to the driver, whole pages, as long as
 *   glake still holds at least n bytes, as CUDA's pool keeps at least n (during a graph capture, only
 *   memory already known free: glake_trim). The release threshold is kept and reported, but glake
 *   does not give memory back on its own at synchronizations: it caches until trimmed.
 * - PyTorch: unless GLAKE_PYTORCH=0 or PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF already choose the
 *   allocator, libglake.so selects backend:cudaMallocAsync at process start (shim/pytorch.cpp), so every
 *   tensor is glake's and torch.cuda.memory_stats(), max_memory_*, reset_peak_memory_stats() and
 *   empty_cache() act on glake's figures. PyTorch itself refuses to share CUDA tensors between
 *   processes under that backend; jobs that do (torch.multiprocessing) run with backend:native, whose
 *   segments glake serves and shares (cudaIpc*).
 * - cudaFree / cuMemFree of glake memory synchronize the block's device first, as the real ones do.
 * - GLAKE_TRACE=PATH records the pools' activity (tracer/session.h).
 */
#ifndef GLAKE_H_
#define GLAKE_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLAKE_API_VERSION 1

/* glake_status() */
#define GLAKE_STATUS_NOT_STARTED 0 /* no CUDA call has reached glake yet */
#define GLAKE_STATUS_ON 1          /* device allocations go to glake's pools */
#define GLAKE_STATUS_OFF 2         /* every call passes through (bad GLAKE_* value, GLAKE_DISABLE=1, a forked
                                      child of a CUDA parent, or process exit under way) */

typedef struct glake_stats {
  uint64_t requested, requested_peak; /* bytes asked for, of live allocations */
  uint64_t blocks, blocks_peak;       /* bytes of live blocks (requests rounded to the pool's units) */
  uint64_t physical, physical_peak;   /* physical memory the pool holds */
  uint64_t mapped, mapped_peak;       /* virtual address space backed by a mapping */
  uint64_t cached;                    /* physical memory held but used by no allocation */
  uint64_t allocs, frees;
  uint64_t creates, releases;         /* physical chunks created / released */
  uint64_t maps, unmaps;
  uint64_t stitches;                  /* blocks formed by moving free chunks into a new range */
  uint64_t reclaims;                  /* times cached memory was reclaimed before out-of-memory */
  uint64_t ooms;                      /* out-of-memory errors returned */
  uint64_t driver_ns;                 /* time spent in the driver on the pool's behalf */
  uint64_t passthrough_allocs;        /* allocations on this device handed to the real API (graph capture,
                                         user pools, zero bytes); process-wide ones count on device -1 */
  uint64_t capture_frees_held;        /* glake blocks freed inside a graph capture: kept, never reused */
  uint64_t slow_allocs;               /* allocations that found no cached block at once (the slow path) */
  uint64_t slow_ns;                   /* host time in that slow path (settle, stitch, growth; driver included) */
} glake_stats_t;

/* Library version, "MAJOR.MINOR.PATCH". */
const char* glake_version(void);
/* One of GLAKE_STATUS_*. */
int glake_status(void);
/* Fills *out (out_size = sizeof(glake_stats_t) of the caller's header; a shorter struct gets the
   leading fields, a longer one zeros after them). Returns 0, or -1 if the device has no glake pool
   (then *out is zeroed). */
int glake_stats(int device, glake_stats_t* out, size_t out_size);
/* Returns cached memory of the device's pool to the driver, whole pages, as long as at least `keep`
   bytes stay cached. 0 on success, -1 without a pool. Synchronizes with the pool's streams first,
   unless a graph capture is under way (which that would invalidate): then only memory already known
   free goes. */
int glake_trim(int device, size_t keep);
/* Resets every peak of the device's pool to its current value. 0, or -1 without a pool. */
int glake_reset_peaks(int device);
/* Checks every invariant of the device's pool. Returns 0 if it is consistent, 1 if not (the first
   violation is written to msg, NUL-terminated, when msg_size > 0), -1 without a pool. */
int glake_validate(int device, char* msg, size_t msg_size);
/* The device whose glake pool holds the live allocation starting at ptr, or -1. */
int glake_device_of(const void* ptr);
/* 1 if ptr is the start of a live glake allocation, else 0. */
int glake_owns(const void* ptr);
/* With GLAKE_TRACE set: writes the trace now, to `path` (NULL: the GLAKE_TRACE path; it is written at
   exit anyway, and on SIGUSR2). 0 on success, -1 without a trace or on failure (said on stderr). */
int glake_trace_dump(const char* path);

/* PyTorch's CUDAPluggableAllocator entry points:
     torch.cuda.memory.CUDAPluggableAllocator("libglake.so", "glake_malloc", "glake_free")
   They work with or without LD_PRELOAD; `stream` is a cudaStream_t. glake_malloc returns NULL when out
   of memory, for size <= 0, and for a device that does not exist (cudaGetLastError then says
   cudaErrorInvalidDevice); glake_free(NULL, ...) does nothing. */
void* glake_malloc(ssize_t size, int device, void* stream);
void glake_free(void* ptr, ssize_t size, int device, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* GLAKE_H_ */
