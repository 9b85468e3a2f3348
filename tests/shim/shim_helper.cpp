// tests/shim/shim_helper.cpp: small CUDA programs that test_process.cpp runs as separate processes,
// under the same preload, to see what only a fresh process can show. One mode per argv[1]; each
// prints what it saw on stdout ("key=value" lines) and exits 0 unless something went wrong.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "driver_proc.h"
#include "shim/glake.h"

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

int glake_status_now() {
  auto f = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "glake_status"));
  return f != nullptr ? f() : -1;
}
int glake_owns_now(const void* p) {
  auto f = reinterpret_cast<int (*)(const void*)>(dlsym(RTLD_DEFAULT, "glake_owns"));
  return f != nullptr ? f(p) : -1;
}

bool driver_loaded() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("libcuda.so") != std::string::npos) return true;
  return false;
}

bool unhex(const std::string& s, void* out, std::size_t n) {
  if (s.size() != 2 * n) return false;
  for (std::size_t i = 0; i < n; ++i)
    static_cast<unsigned char*>(out)[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return true;
}

// One allocation and its free; what glake made of them.
int mode_alloc() {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, 3 * MiB);
  std::printf("malloc=%d\nowns=%d\nstatus=%d\n", static_cast<int>(e), glake_owns_now(p), glake_status_now());
  const cudaError_t f = cudaFree(p);
  std::printf("free=%d\n", static_cast<int>(f));
  return e == cudaSuccess && f == cudaSuccess ? 0 : 1;
}

// No CUDA call at all: nothing of glake's or CUDA's may run.
int mode_no_cuda() {
  std::printf("status=%d\ndriver_loaded=%d\n", glake_status_now(), driver_loaded() ? 1 : 0);
  const char* a = std::getenv("PYTORCH_ALLOC_CONF");
  const char* b = std::getenv("PYTORCH_CUDA_ALLOC_CONF");
  std::printf("PYTORCH_ALLOC_CONF=%s\nPYTORCH_CUDA_ALLOC_CONF=%s\n", a ? a : "(unset)", b ? b : "(unset)");
  return 0;
}

// The environment as the program sees it after glake's constructor, then one CUDA call.
int mode_env() {
  for (const char* name : {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "GLAKE_LIMIT", "GLAKE_STITCH",
                           "GLAKE_TRACE", "GLAKE_SMALL_LIMIT", "GLAKE_MAX_CREATE", "GLAKE_PYTORCH", "GLAKE_VERBOSE",
                           "GLAKE_DISABLE",
                           "LD_PRELOAD"}) {
    const char* v = std::getenv(name);
    std::printf("%s=%s\n", name, v ? v : "(unset)");
  }
  std::fflush(stdout);
  return mode_alloc();
}

// Forks before any CUDA call; the child uses CUDA through glake.
int mode_fork_first() {
  const pid_t pid = fork();
  if (pid == 0) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, MiB);
    const int owned = glake_owns_now(p);
    if (e == cudaSuccess) cudaFree(p);
    _exit(e == cudaSuccess && owned == 1 ? 0 : 3);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  std::printf("child=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st));
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

// Forks while another thread makes glake's first pool (the stand-in's cuStreamCreate is slowed by
// GLAKE_STANDIN_STREAM_DELAY_US): the child of a process whose CUDA is initialised must find glake off.
int mode_fork_while_creating() {
  std::thread maker([] {
    void* p = nullptr;
    if (cudaMalloc(&p, MiB) == cudaSuccess) cudaFree(p);
  });
  // The pool's stream takes the stand-in's delay: fork while its cuStreamCreate sleeps (at most 10 s
  // after the start; the child then says where the maker was).
  int (*being_created)() = nullptr;
  for (int i = 0; i < 10000; ++i, usleep(1000)) {
    if (being_created == nullptr) {  // once the maker's first call has loaded the driver
      if (void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD))
        being_created = reinterpret_cast<int (*)()>(dlsym(lib, "standin_streams_being_created"));
    }
    if (being_created != nullptr && being_created() > 0) break;
  }
  const pid_t pid = fork();
  if (pid == 0) _exit(glake_status_now());
  int st = 0;
  waitpid(pid, &st, 0);
  maker.join();
  std::printf("child_status=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st));
  return 0;
}

// A process's first allocation (glake makes its pool then) on one thread while another captures in the
// global mode: the capture must survive glake's set-up.
int mode_first_alloc_during_capture() {
  cudaStream_t cap = nullptr, other = nullptr;
  if (cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking) != cudaSuccess ||
      cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) != cudaSuccess ||
      cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal) != cudaSuccess)
    return 1;
  cudaError_t alloc = cudaErrorUnknown;
  void* p = nullptr;
  std::thread([&] { alloc = cudaMallocAsync(&p, 4 * MiB, other); }).join();
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(cap, &graph);
  std::printf("alloc=%d\nowns=%d\nend=%d\n", static_cast<int>(alloc), glake_owns_now(p), static_cast<int>(end));
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (p != nullptr) cudaFreeAsync(p, other);
  return cudaStreamSynchronize(other) == cudaSuccess ? 0 : 1;
}

void* g_exit_ptr = nullptr;
void* g_exit_async = nullptr;
cudaStream_t g_exit_stream = nullptr;

void free_at_exit() {
  // Registered before the first CUDA call: runs after the driver's own exit-time teardown.
  const cudaError_t a = cudaFree(g_exit_ptr);
  const cudaError_t b = cudaFreeAsync(g_exit_async, g_exit_stream);
  std::fprintf(stderr, "exit-free: cudaFree=%d cudaFreeAsync=%d\n", static_cast<int>(a), static_cast<int>(b));
}

struct FreesInDestructor {
  ~FreesInDestructor() {
    if (g_exit_ptr != nullptr) (void)cudaFree(static_cast<char*>(g_exit_ptr));
  }
};
FreesInDestructor g_static_object;

// Frees glake memory from an atexit handler and a static destructor, after the driver went away.
int mode_exit_free() {
  std::atexit(free_at_exit);
  if (cudaMalloc(&g_exit_ptr, 5 * MiB) != cudaSuccess) return 1;
  if (cudaStreamCreate(&g_exit_stream) != cudaSuccess) return 1;
  if (cudaMallocAsync(&g_exit_async, MiB, g_exit_stream) != cudaSuccess) return 1;
  std::printf("owns=%d\n", glake_owns_now(g_exit_ptr));
  return 0;
}

// An imported block: prints how many of its n bytes differ from the exporter's pattern and writes the
// reply the exporter checks; 0, or the exit code saying which copy failed.
int check_and_reply(void* p, std::size_t n, int seed) {
  std::vector<unsigned char> buf(n);
  if (cudaMemcpy(buf.data(), p, n, cudaMemcpyDeviceToHost) != cudaSuccess) return 4;
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) wrong += buf[i] != static_cast<unsigned char>(seed + i * 13);
  std::printf("wrong=%zu\n", wrong);
  const unsigned char reply[4] = {0xde, 0xad, 0xbe, 0xef};
  return cudaMemcpy(p, reply, sizeof reply, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : 5;
}

// Opens a glake IPC handle of another process, checks and changes the bytes.
int mode_ipc_import(int argc, char** argv) {
  if (argc < 5) return 2;
  cudaIpcMemHandle_t h;
  if (!unhex(argv[2], &h, sizeof h)) return 2;
  const std::size_t n = std::strtoull(argv[3], nullptr, 10);
  const int seed = std::atoi(argv[4]);
  void* p = nullptr;
  const cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  std::printf("open=%d\n", static_cast<int>(e));
  if (e != cudaSuccess) return 0;  // the parent checks the code
  if (const int r = check_and_reply(p, n, seed); r != 0) return r;
  // Opened again from another device: a mapping of its own (access is granted per device).
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 1 && cudaSetDevice(1) == cudaSuccess) {
    void* q = nullptr;
    const cudaError_t e2 = cudaIpcOpenMemHandle(&q, h, cudaIpcMemLazyEnablePeerAccess);
    std::printf("other_device_open=%d\nother_device_own_mapping=%d\n", static_cast<int>(e2), q != p ? 1 : 0);
    if (e2 == cudaSuccess) (void)cudaIpcCloseMemHandle(q);
    (void)cudaSetDevice(0);
  }
  const cudaError_t c = cudaIpcCloseMemHandle(p);
  std::printf("close=%d\n", static_cast<int>(c));
  return 0;
}

// mode_ipc_import through the driver's cuIpcOpenMemHandle and cuIpcCloseMemHandle.
int mode_cu_ipc_import(int argc, char** argv) {
  if (argc < 5) return 2;
  CUipcMemHandle h;
  if (!unhex(argv[2], &h, sizeof h)) return 2;
  const std::size_t n = std::strtoull(argv[3], nullptr, 10);
  const int seed = std::atoi(argv[4]);
  const auto open = glake_test::driver_proc<decltype(&cuIpcOpenMemHandle_v2)>("cuIpcOpenMemHandle");
  const auto close = glake_test::driver_proc<decltype(&cuIpcCloseMemHandle)>("cuIpcCloseMemHandle");
  if (open == nullptr || close == nullptr || cudaFree(nullptr) != cudaSuccess) return 3;  // a current context
  CUdeviceptr d = 0;
  const CUresult e = open(&d, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
  std::printf("open=%d\n", static_cast<int>(e));
  if (e != CUDA_SUCCESS) return 0;
  void* p = reinterpret_cast<void*>(d);
  if (const int r = check_and_reply(p, n, seed); r != 0) return r;
  std::printf("close=%d\n", static_cast<int>(close(d)));
  return 0;
}

// Exports a block, prints its handle and exits. An atexit handler registered before the first CUDA call
// runs after glake's exit handler and the driver's teardown, says so ("exiting"), and keeps the process
// (and glake's IPC server) alive for 1.5 s more.
void linger() {
  (void)!write(1, "exiting\n", 8);
  usleep(1500000);
}
int mode_ipc_export_exit(int argc, char** argv) {
  const int pause_ms = argc > 2 ? std::atoi(argv[2]) : 200;  // from printing the handle to exit()
  std::atexit(linger);
  void* p = nullptr;
  if (cudaMalloc(&p, 4 * MiB) != cudaSuccess) return 1;
  cudaIpcMemHandle_t h;
  if (cudaIpcGetMemHandle(&h, p) != cudaSuccess) return 1;
  const auto* b = reinterpret_cast<const unsigned char*>(&h);
  for (std::size_t i = 0; i < sizeof h; ++i) std::printf("%02x", b[i]);
  std::printf("\n");
  std::fflush(stdout);
  usleep(static_cast<useconds_t>(pause_ms) * 1000);
  return 0;
}

// cudaMemGetInfo and cuMemGetInfo under GLAKE_LIMIT, before the device's first allocation (no pool
// yet) and after one was made and freed (cached): prints free (MiB) of each, and the total.
int mode_mem_info_limit() {
  if (cudaSetDevice(0) != cudaSuccess) return 1;
  const auto cu_info = glake_test::driver_proc<CUresult (*)(std::size_t*, std::size_t*)>("cuMemGetInfo");
  if (cu_info == nullptr) return 1;
  std::size_t free = 0, total = 0, cu_free = 0, cu_total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess || cu_info(&cu_free, &cu_total) != CUDA_SUCCESS) return 1;
  std::printf("before=%zu\ncu_before=%zu\ntotal=%zu\n", free / MiB, cu_free / MiB, total / MiB);
  void* p = nullptr;
  if (cudaMalloc(&p, 8 * MiB) != cudaSuccess || cudaFree(p) != cudaSuccess) return 1;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess || cu_info(&cu_free, &cu_total) != CUDA_SUCCESS) return 1;
  std::printf("after=%zu\ncu_after=%zu\n", free / MiB, cu_free / MiB);
  return 0;
}

// Runs out of memory under GLAKE_LIMIT, then asks for the trace: prints what came back.
int mode_trace_oom(int argc, char** argv) {
  if (argc < 3) return 2;
  void* a = nullptr;
  void* b = nullptr;
  const cudaError_t ea = cudaMalloc(&a, 32 * MiB);
  const cudaError_t eb = cudaMalloc(&b, 512 * MiB);
  auto dump = reinterpret_cast<int (*)(const char*)>(dlsym(RTLD_DEFAULT, "glake_trace_dump"));
  const int d = dump != nullptr ? dump(argv[2]) : -2;
  std::printf("first=%d\nsecond=%d\ndump=%d\n", static_cast<int>(ea), static_cast<int>(eb), d);
  cudaFree(a);
  return 0;
}

// Every pthread key of the process taken (as by a program that leaks keys) before glake's first
// capture of a thread's own stream: glake cannot make the key that ends such a capture at the thread's
// exit, and must set no other key instead. Prints how many keys' values the begin changed.
int mode_keys_taken() {
  if (cudaSetDevice(0) != cudaSuccess) return 1;
  void* p = nullptr;
  if (cudaMalloc(&p, MiB) != cudaSuccess) return 1;
  // The stand-in driver's own key, made at a thread's first use of its stream, exists before the keys
  // run out, as the real driver's does.
  std::thread([] {
    (void)cudaSetDevice(0);
    (void)cudaStreamSynchronize(cudaStreamPerThread);
  }).join();
  int taken = 0;
  for (pthread_key_t k; pthread_key_create(&k, nullptr) == 0;) ++taken;
  cudaError_t begun = cudaErrorUnknown, ended = cudaErrorUnknown;
  int changed = -1;
  std::thread([&] {
    (void)cudaSetDevice(0);
    (void)cudaStreamSynchronize(cudaStreamPerThread);  // the stand-in's key is set for this thread now
    // Each key holds a value of its own for the begin (a value already equal to what glake would
    // set shows nothing), and gets its own back after it.
    std::vector<void*> own(PTHREAD_KEYS_MAX);
    std::vector<char> marks(PTHREAD_KEYS_MAX);
    for (unsigned k = 0; k < PTHREAD_KEYS_MAX; ++k) {
      own[k] = pthread_getspecific(k);
      (void)pthread_setspecific(k, &marks[k]);
    }
    begun = cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed);
    changed = 0;
    for (unsigned k = 0; k < PTHREAD_KEYS_MAX; ++k) {
      changed += pthread_getspecific(k) != &marks[k];
      (void)pthread_setspecific(k, own[k]);  // its owner's destructor would get a value not its own
    }
    cudaGraph_t g = nullptr;
    ended = cudaStreamEndCapture(cudaStreamPerThread, &g);
    if (g != nullptr) (void)cudaGraphDestroy(g);
  }).join();
  std::printf("taken=%d\nbegin=%d\nend=%d\nchanged=%d\n", taken, static_cast<int>(begun), static_cast<int>(ended),
              changed);
  return cudaFree(p) == cudaSuccess ? 0 : 1;
}

// Allocates, then is sent SIGTERM (a scheduler ending the job) while the block is live.
int mode_trace_sigterm() {
  void* p = nullptr;
  if (cudaMalloc(&p, 3 * MiB) != cudaSuccess) return 1;
  std::printf("owns=%d\n", glake_owns_now(p));
  std::fflush(stdout);
  ::kill(::getpid(), SIGTERM);
  ::sleep(20);
  return 9;  // the signal did not end it
}

// GLAKE_TRACE_STACKS=1: an allocation, a trace written on request (argv[2]), then an allocation through
// another entry point (cudaMallocAsync), and the at-exit trace.
__attribute__((noinline)) cudaError_t stacks_first(void** p) { return cudaMalloc(p, 3 * MiB); }
__attribute__((noinline)) cudaError_t stacks_second(void** p) { return cudaMallocAsync(p, 3 * MiB, nullptr); }
int mode_trace_stacks(int argc, char** argv) {
  if (argc < 3) return 2;
  void* a = nullptr;
  void* b = nullptr;
  if (stacks_first(&a) != cudaSuccess) return 3;
  auto dump = reinterpret_cast<int (*)(const char*)>(dlsym(RTLD_DEFAULT, "glake_trace_dump"));
  if (dump == nullptr || dump(argv[2]) != 0) return 4;
  if (stacks_second(&b) != cudaSuccess) return 5;
  std::printf("owns=%d%d\n", glake_owns_now(a), glake_owns_now(b));
  return 0;  // from main: the at-exit writer
}

// Loads a library whose constructor makes a CUDA call while another thread makes the process's first
// (ctor_cuda.cpp); a hang there ends by the alarm.
int mode_dlopen_ctor() {
  alarm(20);
  const char* lib = std::getenv("GLAKE_TEST_CTOR_LIB");
  if (lib == nullptr || dlopen(lib, RTLD_NOW) == nullptr) return 3;
  std::printf("loaded\n");
  return 0;
}

// A thread makes the device's first pool (glake's entry points already looked up) while the main
// thread's dlopen runs a constructor that allocates (ctor_cuda.cpp, GLAKE_TEST_CTOR_POOL set by the
// test); a hang ends by the alarm.
int mode_dlopen_ctor_pool() {
  alarm(20);
  const char* lib = std::getenv("GLAKE_TEST_CTOR_LIB");
  if (lib == nullptr || cudaFree(nullptr) != cudaSuccess) return 3;  // glake's lookups done, no pool yet
  std::thread other([] {
    usleep(100 * 1000);  // the constructor is running by now, holding the loader's lock
    void* p = nullptr;
    if (cudaMalloc(&p, 1 << 20) == cudaSuccess) std::printf("other=%d\n", glake_owns_now(p));
  });
  const bool loaded = dlopen(lib, RTLD_NOW) != nullptr;
  other.join();
  if (!loaded) return 4;
  std::printf("loaded\n");
  return 0;
}

// Host memory runs out inside glake's hook (fail_malloc.cpp, preloaded before glake): the caller gets
// cudaErrorMemoryAllocation, also from cudaGetLastError, and the pool stays consistent and usable.
// argv[2] (default 1): how many allocations, the k-th with its k-th malloc failing (k = 0, 1, ...).
int mode_hook_oom(int argc, char** argv) {
  const long points = argc > 2 ? std::atol(argv[2]) : 1;
  auto fail = reinterpret_cast<void (*)(long)>(dlsym(RTLD_DEFAULT, "glake_test_fail_malloc"));
  auto validate = reinterpret_cast<int (*)(int, char*, size_t)>(dlsym(RTLD_DEFAULT, "glake_validate"));
  if (fail == nullptr || validate == nullptr) return 3;
  void* a = nullptr;
  if (cudaMalloc(&a, 3 * MiB) != cudaSuccess) return 4;  // the pool exists
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, 0) != cudaSuccess) return 4;
  int failures = 0, wrong = 0;
  std::vector<void*> kept;
  kept.reserve(256);
  // Each call with host memory failing from its k-th malloc on (k: a point of its path), then the pool
  // checked whole. A call that failed must say so, as CUDA would (cudaErrorMemoryAllocation, also as
  // the last error), and leave things as they were: a free that failed is tried again later.
  auto call = [&](const char* what, long k, auto&& f) {
    (void)cudaGetLastError();
    fail(k);
    const cudaError_t e = f();
    fail(-1);
    const cudaError_t last = cudaGetLastError();
    char msg[512] = {};
    if (validate(0, msg, sizeof msg) != 0) {
      std::printf("invalid after %s, host memory failing from its malloc %ld on: %s\n", what, k, msg);
      std::exit(5);
    }
    if (e != cudaSuccess) {
      ++failures;
      if (e != cudaErrorMemoryAllocation || last != cudaErrorMemoryAllocation) ++wrong;
    }
    return e;
  };
  for (long k = 0; k < points; ++k) {
    void* b = nullptr;
    // New windows: the slow path.
    const std::size_t n = (8 + k % 5) * MiB + 4096 * k;
    if (call("cudaMalloc", k, [&] { return cudaMalloc(&b, n); }) == cudaSuccess) kept.push_back(b);
    if (kept.size() % 3 == 0 && !kept.empty()) {  // free some, so later requests find holes and free blocks too
      if (call("cudaFree", k % 7, [&] { return cudaFree(kept.front()); }) == cudaSuccess) kept.erase(kept.begin());
    }
    if (k % 10 == 9)  // pages go back
      (void)call("cudaMemPoolTrimTo", k / 10, [&] { return cudaMemPoolTrimTo(pool, 0); });
  }
  void* c = nullptr;
  const cudaError_t again = cudaMalloc(&c, 64 * MiB);
  std::printf("failures=%d\nwrong=%d\nagain=%d owns=%d\n", failures, wrong, static_cast<int>(again), glake_owns_now(c));
  (void)cudaFree(c);
  for (void* p : kept) (void)cudaFree(p);
  (void)cudaFree(a);
  char msg[512] = {};
  std::printf("valid_end=%d %s\n", validate(0, msg, sizeof msg), msg);
  return 0;
}

// glake starts (its settings read, GLAKE_TRACE's session made) on a call that makes no pool and leaves
// the driver uninitialised (cuMemFree of an address that is nobody's, before cuInit); then a fork,
// and the child uses CUDA through glake and ends by exit() (at-exit handlers run).
int mode_fork_after_start() {
  using MemFree = CUresult (*)(CUdeviceptr);
  auto mem_free = reinterpret_cast<MemFree>(dlsym(RTLD_DEFAULT, "cuMemFree_v2"));
  if (mem_free == nullptr) return 3;
  const CUresult r = mem_free(CUdeviceptr{0x1000});
  std::printf("free_before_init=%d\nstatus=%d\n", static_cast<int>(r), glake_status_now());
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, 3 * MiB);
    const int owned = glake_owns_now(p);
    if (e == cudaSuccess) cudaFree(p);
    std::exit(e == cudaSuccess && owned == 1 ? 0 : 3);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  std::printf("child_pid=%d\nchild=%d\n", static_cast<int>(pid), WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st));
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string mode = argv[1];
  if (mode == "alloc") return mode_alloc();
  if (mode == "no-cuda") return mode_no_cuda();
  if (mode == "env") return mode_env();
  if (mode == "fork-first") return mode_fork_first();
  if (mode == "exit-free") return mode_exit_free();
  if (mode == "ipc-import") return mode_ipc_import(argc, argv);
  if (mode == "cu-ipc-import") return mode_cu_ipc_import(argc, argv);
  if (mode == "ipc-export-exit") return mode_ipc_export_exit(argc, argv);
  if (mode == "fork-while-creating") return mode_fork_while_creating();
  if (mode == "trace-oom") return mode_trace_oom(argc, argv);
  if (mode == "mem-info-limit") return mode_mem_info_limit();
  if (mode == "trace-sigterm") return mode_trace_sigterm();
  if (mode == "trace-stacks") return mode_trace_stacks(argc, argv);
  if (mode == "keys-taken") return mode_keys_taken();
  if (mode == "dlopen-ctor") return mode_dlopen_ctor();
  if (mode == "dlopen-ctor-pool") return mode_dlopen_ctor_pool();
  if (mode == "hook-oom") return mode_hook_oom(argc, argv);
  if (mode == "fork-after-start") return mode_fork_after_start();
  if (mode == "first-alloc-during-capture") return mode_first_alloc_during_capture();
  return 2;
}
