// tests/pool/test_host_memory.cpp: host memory running out (std::bad_alloc from operator new) at any
// point of any pool operation leaves the pool whole: validate() clean after each, and once the pool is
// gone, no driver resource (event, mapping, physical allocation, reservation) left behind.
// Its own executable: it replaces the global operator new, which fails, once armed, from its k-th
// call on. The driver's own allocations never fail (a real driver answers out of memory, not
// std::bad_alloc): the stand-in below forwards to the host driver with failures held off.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <new>
#include <random>
#include <vector>

#include "pool/allocator.h"
#include "pool/host_driver.h"

namespace {
std::atomic<long> g_left{-1};  // allocations that still succeed; -1: all
thread_local int t_quiet = 0;  // inside the driver: never fail

void* take(std::size_t n) {
  if (t_quiet == 0) {
    long left = g_left.load(std::memory_order_relaxed);
    while (left >= 0) {
      if (left == 0) throw std::bad_alloc();
      if (g_left.compare_exchange_weak(left, left - 1)) break;
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return take(n); }
void* operator new[](std::size_t n) { return take(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace glake::pool {
namespace {

struct Quiet {
  Quiet() { ++t_quiet; }
  ~Quiet() { --t_quiet; }
};

// The host driver, its own allocations never failing.
class QuietDriver final : public Driver {
 public:
  explicit QuietDriver(HostDriver& d) : d_(d) {}
  int device() const override { return d_.device(); }
  std::size_t granularity() const override { return d_.granularity(); }
#define FWD(name, params, args) \
  Status name params override {  \
    Quiet q;                     \
    return d_.name args;         \
  }
  FWD(mem_info, (std::size_t * f, std::size_t* t), (f, t))
  FWD(reserve, (std::size_t s, DevPtr* va), (s, va))
  FWD(free_reserve, (DevPtr va, std::size_t s), (va, s))
  FWD(create, (std::size_t s, PhysHandle* h), (s, h))
  FWD(release, (PhysHandle h), (h))
  FWD(map, (DevPtr va, std::size_t s, PhysHandle h, std::size_t o), (va, s, h, o))
  FWD(unmap, (DevPtr va, std::size_t s), (va, s))
  FWD(set_access, (DevPtr va, std::size_t s), (va, s))
  FWD(export_fd, (PhysHandle h, int* fd), (h, fd))
  FWD(event_create, (EventHandle * e), (e))
  FWD(event_destroy, (EventHandle e), (e))
  FWD(event_record, (EventHandle e, StreamHandle s), (e, s))
  FWD(event_query, (EventHandle e), (e))
  FWD(event_synchronize, (EventHandle e), (e))
  FWD(stream_wait_event, (StreamHandle s, EventHandle e), (s, e))
  FWD(stream_is_capturing, (StreamHandle s, bool* c), (s, c))
  FWD(stream_synchronize, (StreamHandle s), (s))
  FWD(memcpy_async, (void* dst, const void* src, std::size_t n, StreamHandle s), (dst, src, n, s))
  FWD(host_alloc, (std::size_t n, void** p), (n, p))
  FWD(host_free, (void* p), (p))
#undef FWD

 private:
  HostDriver& d_;
};

// Runs f with host memory failing from its k-th allocation on; whether it ran out.
template <class F>
bool failing_from(long k, F&& f) {
  g_left.store(k);
  bool threw = false;
  try {
    f();
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  g_left.store(-1);
  return threw;
}

constexpr long kPoints = 16;  // a call's first allocations, where each failure point is tried

void workload(Config cfg, unsigned seed, int steps) {
  HostDriver::Options o;
  o.backed = false;
  o.capacity = std::size_t{1} << 30;
  HostDriver host(o);
  QuietDriver drv(host);
  int threw = 0;
  {
    Allocator pool(drv, cfg);
    std::mt19937_64 rng(seed);
    std::map<DevPtr, StreamHandle> live;
    StreamHandle next_stream = 4;
    std::vector<StreamHandle> streams{1, 2, 3};
    const std::size_t MiB = std::size_t{1} << 20;
    for (int step = 0; step < steps; ++step) {
      const long k = static_cast<long>(rng() % kPoints);
      const StreamHandle s = streams[rng() % streams.size()];
      const unsigned op = static_cast<unsigned>(rng() % 100);
      const char* what = "";
      if (op < 45) {
        what = "allocate";
        std::size_t n = (rng() % 3 == 0) ? (1 + rng() % 256) * 1024 : (1 + rng() % 24) * MiB / 2 + 512 * (rng() % 8);
        DevPtr p = 0;
        Status r = Status::unknown;
        threw += failing_from(k, [&] { r = pool.allocate(n, s, &p); });
        if (r == Status::ok && p != 0) live[p] = s;
      } else if (op < 85 && !live.empty()) {
        what = "free";
        auto it = live.begin();
        std::advance(it, static_cast<long>(rng() % live.size()));
        const DevPtr p = it->first;
        Status r = Status::unknown;
        const bool own = rng() % 2 == 0;
        threw += failing_from(k, [&] { r = own ? pool.free(p, it->second) : pool.free(p, s); });
        if (r == Status::ok) live.erase(it);
      } else if (op < 92) {
        what = "work";
        if (rng() % 2 == 0)
          host.enqueue_work(s);
        else
          host.complete_work(s);
      } else if (op < 96) {
        what = "trim";
        threw += failing_from(k, [&] { pool.trim(rng() % 2 == 0 ? 0 : 64 * MiB, rng() % 2 == 0); });
      } else {
        what = "forget_stream";
        const bool t = failing_from(k, [&] { pool.forget_stream(s); });
        threw += t;
        if (!t) {
          for (auto& x : streams)
            if (x == s) x = next_stream++;
          for (auto& [p, ls] : live)  // its blocks are freed on their own stream (the ghost) from now on
            if (ls == s) ls = 0;
        }
      }
      const std::string v = pool.validate();
      ASSERT_EQ("", v) << "after " << what << " at step " << step << ", host memory failing from its allocation " << k;
    }
    for (auto& [p, s] : live) EXPECT_EQ(Status::ok, s != 0 ? pool.free(p, s) : pool.free(p));
    pool.trim(0);
    EXPECT_EQ("", pool.validate());
    EXPECT_GT(threw, 0);
  }
  // The pool gone: everything it took from the driver went back.
  EXPECT_EQ(0u, host.live_events());
  EXPECT_EQ(0u, host.mappings());
  EXPECT_EQ(0u, host.reserved_bytes());
  EXPECT_EQ(0u, host.physical_in_use());
}

TEST(HostMemory, RunningOutAnywhereLeavesThePoolWhole) {
  for (unsigned seed = 1; seed <= 6; ++seed) workload(Config{}, seed, 1500);
}

TEST(HostMemory, RunningOutAnywhereLeavesThePoolWholeWithLentTailsAndLargePages) {
  Config c;
  c.lend = true;
  c.small_limit = 0;
  for (unsigned seed = 1; seed <= 4; ++seed) workload(c, seed, 1500);
  c.lend = false;
  c.small_limit = std::size_t{1} << 20;
  c.max_create = std::size_t{8} << 20;
  for (unsigned seed = 1; seed <= 4; ++seed) workload(c, seed, 1500);
}

}  // namespace
}  // namespace glake::pool
