// tests/shim/standin/standin.h: what the stand-in CUDA driver and runtime offer tests beyond CUDA.
//
// The stand-in libcuda.so.1 (driver.cpp) emulates a GPU on the host: device memory is memfd-backed
// host memory (VMM physical chunks are memfds, reservations PROT_NONE mappings, cuMemMap maps a chunk
// at a reserved address with no access until cuMemSetAccess), every stream is a worker thread that
// runs its work in order (host functions from cuLaunchHostFunc play the kernels), the legacy default
// stream synchronizes with blocking streams, events complete when their stream reaches them, and graph
// capture records a stream's work for replay. Captures follow CUDA's rules: in the capture modes'
// terms a potentially unsafe call (a query of or wait for an event, a stream or the device, an
// allocation no capture sees) is refused with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the
// captures that forbid it, the legacy stream conflicts with a capturing blocking stream
// (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT), and a capture not in relaxed mode ends on its own thread. Devices: GLAKE_STANDIN_DEVICES (2), each with
// GLAKE_STANDIN_MEMORY bytes (1G); VMM granularity 2 MiB.
//
// It behaves like the real driver where glake depends on it: cuGetProcAddress by base name and
// version, legacy cudaIpc failing on VMM memory, cuMemFree synchronizing, calls before cuInit, after
// exit-time teardown (CUDA_ERROR_DEINITIALIZED) and in a forked child of an initialised parent
// (CUDA_ERROR_NOT_INITIALIZED) failing.
#pragma once

#include <cuda.h>
#include <stddef.h>

extern "C" {
// Device allocations made with cuMemAlloc/cuMemAllocAsync/... (not VMM) that are still live.
int standin_live_allocations(void);
// Bytes of device memory in use on the device (VMM chunks and other allocations).
size_t standin_memory_in_use(int device);
// 1 if the VMM mapping containing ptr grants `device` read-write access, 0 if not, -1 if ptr is mapped
// nowhere.
int standin_mapping_access(const void* ptr, int device);
// A device allocation made behind every hook's back, as another allocator (or glake before it loaded)
// would have made it. Free it with cudaFree/cuMemFree.
CUresult standin_raw_alloc(CUdeviceptr* ptr, size_t size);
// cuStreamCreate calls under way now (each sleeps GLAKE_STANDIN_STREAM_DELAY_US first).
int standin_streams_being_created(void);
// Device synchronizations (cuCtxSynchronize, and the one cuMemFree does) so far.
unsigned long long standin_device_syncs(void);
// Threads waiting in a device synchronization now.
int standin_device_syncs_waiting(void);
// cuDeviceGetDefaultMemPool calls so far (whoever made them: the program, the runtime or glake).
unsigned long long standin_default_pool_queries(void);
// cuCtxSynchronize calls made while a stream of the device was capturing (which break a real capture).
unsigned long long standin_device_syncs_in_capture(void);
// cuCtxSynchronize calls made on its device while this stream (a live one, made by cuStreamCreate) was
// capturing; a new stream given the handle of a destroyed one starts again at 0.
unsigned long long standin_stream_syncs_in_capture(CUstream stream);
// The streams of the device (the per-thread ones of every thread included) capturing now.
int standin_streams_capturing(int device);
// cuEventQuery, cuEventSynchronize, cuStreamQuery and cuStreamSynchronize calls made while any stream
// was capturing, refused or not (in CUDA's default capture mode, global, one from any thread is refused
// and invalidates the capture).
unsigned long long standin_waits_in_capture(void);
// The next cuEventQuery or cuEventSynchronize calls fn(arg) first, before it looks at the capture
// modes: what another thread does in between (e.g. begin a capture).
void standin_before_next_event_wait(void (*fn)(void*), void* arg);
// The next cuStreamEndCapture ends its capture but fails with `error` and returns no graph, as the
// driver does when a fork of the capture was never joined back (CUDA_ERROR_STREAM_CAPTURE_UNJOINED).
void standin_fail_next_end_capture(CUresult error);
// The next capture that begins calls fn(arg) once it is under way, before its begin returns: what
// another thread does in between.
void standin_after_next_begin_capture(void (*fn)(void*), void* arg);
// The next cuDeviceGetMemPool calls fn(arg) once it has its answer, before it returns (another
// thread's work landing between a caller's look and what it does with what it saw).
void standin_after_next_get_mem_pool(void (*fn)(void*), void* arg);
// The next cuDeviceSetMemPool that succeeds calls fn(arg) once the pool is current, before it returns
// (another thread's work landing between a caller's choice of a pool and what it does after).
void standin_after_next_set_mem_pool(void (*fn)(void*), void* arg);
// The next cuMemExportToShareableHandle calls fn(arg) first, before it looks at the handle: what
// another thread does in between.
void standin_before_next_export(void (*fn)(void*), void* arg);

// Runtime (libcudart.so.13): the pointer the runtime's own driver table holds for `name` (e.g.
// "cuMemAlloc_v2"), as it got it from cuGetProcAddress at initialisation.
void* standin_runtime_driver_entry(const char* name);
}
