// tests/gpu/test_cuda_driver.cpp: CudaDriver on a real GPU.
//
// Runs the conformance suite every Driver passes (tests/pool/driver_conformance.h) against the real
// driver, then what only the CUDA driver has: opening, capabilities, contexts (a thread with no current
// context, teardown at process exit), peers, and statuses that are CUDA's own error codes.
// Device: GLAKE_TEST_DEVICE (default 0). One primary-context retain is kept for the whole run, so the
// fresh driver each test makes does not recreate the primary context every time.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "pool/cuda_driver.h"
#include "tests/pool/driver_conformance.h"

namespace glake::pool {
namespace {

int test_device() {
  const char* v = std::getenv("GLAKE_TEST_DEVICE");
  return v != nullptr && *v != '\0' ? std::atoi(v) : 0;
}

std::string describe(Status s) { return std::string(status_name(s)) + " (" + std::to_string(static_cast<int>(s)) + ")"; }

// Opens a driver; on failure records a test failure naming the status and returns nullptr.
std::unique_ptr<CudaDriver> open_driver() {
  std::unique_ptr<CudaDriver> d;
  const Status s = CudaDriver::open(test_device(), &d);
  if (s != Status::ok) {
    ADD_FAILURE() << "CudaDriver::open(" << test_device() << "): " << describe(s);
    return nullptr;
  }
  return d;
}

// Held (never destroyed) so the primary context stays retained between tests.
void keep_primary_context() {
  static CudaDriver* keeper = open_driver().release();
  (void)keeper;
}

}  // namespace

struct CudaTraits {
  static constexpr bool host_visible = false;
  static std::unique_ptr<Driver> make() {
    keep_primary_context();
    return open_driver();
  }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Cuda, DriverConformance, ::testing::Types<CudaTraits>);

namespace {

TEST(CudaDriver, OpenRejectsBadArguments) {
  std::unique_ptr<CudaDriver> d;
  EXPECT_EQ(CudaDriver::open(0, nullptr), Status::invalid_value);
  EXPECT_NE(CudaDriver::open(-1, &d), Status::ok);
  EXPECT_EQ(d, nullptr);
  EXPECT_NE(CudaDriver::open(1 << 20, &d), Status::ok);
  EXPECT_EQ(d, nullptr);
}

TEST(CudaDriver, ReportsCapabilities) {
  auto d = open_driver();
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->device(), test_device());
  const std::size_t g = d->granularity();
  EXPECT_GE(g, std::size_t{4096});
  EXPECT_EQ(g & (g - 1), 0u);
  std::printf("granularity: %zu rdma_capable: %d fd_exportable: %d\n", g, d->rdma_capable() ? 1 : 0,
              d->fd_exportable() ? 1 : 0);
  RecordProperty("granularity", std::to_string(g));
  // H100 (DESIGN.md): 2 MiB granularity, POSIX fd export works.
  EXPECT_TRUE(d->fd_exportable());
}

// Calls that need a context work from a thread that never touched CUDA.
TEST(CudaDriver, WorksOnAThreadWithoutContext) {
  auto d = open_driver();
  ASSERT_NE(d, nullptr);
  Status results[8];
  for (auto& r : results) r = Status::unknown;
  std::thread t([&] {
    std::size_t free = 0, total = 0;
    results[0] = d->mem_info(&free, &total);
    EventHandle e = 0;
    results[1] = d->event_create(&e);
    results[2] = d->event_record(e, 0);
    results[3] = d->event_synchronize(e);
    bool capturing = true;
    results[4] = d->stream_is_capturing(0, &capturing);
    void* p = nullptr;
    results[5] = d->host_alloc(1 << 16, &p);
    results[6] = p != nullptr ? d->host_free(p) : Status::unknown;
    results[7] = d->event_destroy(e);
  });
  t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(results[i], Status::ok) << "call " << i << ": " << describe(results[i]);
}

// Physical memory and mappings made on one thread are used and torn down on another.
TEST(CudaDriver, HandlesCrossThreads) {
  auto d = open_driver();
  ASSERT_NE(d, nullptr);
  const std::size_t g = d->granularity();
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d->reserve(2 * g, &va), Status::ok);
  ASSERT_EQ(d->create(2 * g, &h), Status::ok);
  Status mapped = Status::unknown, access = Status::unknown;
  std::thread([&] {
    mapped = d->map(va, 2 * g, h, 0);
    access = d->set_access(va, 2 * g);
  }).join();
  EXPECT_EQ(mapped, Status::ok) << describe(mapped);
  EXPECT_EQ(access, Status::ok) << describe(access);
  EXPECT_EQ(d->unmap(va, 2 * g), Status::ok);
  EXPECT_EQ(d->release(h), Status::ok);
  EXPECT_EQ(d->free_reserve(va, 2 * g), Status::ok);
}

TEST(CudaDriver, FailuresAreCudaErrors) {
  auto d = open_driver();
  ASSERT_NE(d, nullptr);
  const std::size_t g = d->granularity();
  // 1 PiB of physical memory: the driver refuses, nothing is created, and the failure is counted.
  const std::uint64_t failures = d->stats().failures(Call::create);
  PhysHandle h = 0;
  const Status s = d->create((std::size_t{1} << 50) / g * g, &h);
  EXPECT_NE(s, Status::ok);
  std::printf("create(1 PiB): %s\n", describe(s).c_str());
  EXPECT_EQ(d->stats().failures(Call::create), failures + 1);
  // 128 TiB of address space in one reservation does not fit (DESIGN.md).
  DevPtr va = 0;
  const Status r = d->reserve((std::size_t{128} << 40) / g * g, &va);
  if (r == Status::ok) {
    EXPECT_EQ(d->free_reserve(va, (std::size_t{128} << 40) / g * g), Status::ok);
  }
  std::printf("reserve(128 TiB): %s\n", describe(r).c_str());
}

TEST(CudaDriver, PeersAreOnlyThoseThatCanAccess) {
  auto d = open_driver();
  ASSERT_NE(d, nullptr);
  d->add_peer(d->device());
  d->add_peer(-1);
  d->add_peer(1 << 20);
  EXPECT_TRUE(d->peers().empty());
  // Other devices: registered only if they can access this one; repeats ignored. set_access still
  // works over a mapping with every registered peer.
  for (int p = 0; p < 64; ++p) {
    if (p != d->device()) {
      d->add_peer(p);
      d->add_peer(p);
    }
  }
  const auto peers = d->peers();
  std::printf("peers of device %d:", d->device());
  for (int p : peers) std::printf(" %d", p);
  std::printf("\n");
  for (std::size_t i = 0; i < peers.size(); ++i) {
    for (std::size_t j = i + 1; j < peers.size(); ++j) EXPECT_NE(peers[i], peers[j]);
  }
  const std::size_t g = d->granularity();
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d->reserve(g, &va), Status::ok);
  ASSERT_EQ(d->create(g, &h), Status::ok);
  ASSERT_EQ(d->map(va, g, h, 0), Status::ok);
  EXPECT_EQ(d->set_access(va, g), Status::ok);
  EXPECT_EQ(d->unmap(va, g), Status::ok);
  EXPECT_EQ(d->release(h), Status::ok);
  EXPECT_EQ(d->free_reserve(va, g), Status::ok);
}

// A driver held in a static object is destroyed at process exit, after or amid the CUDA driver's own
// teardown: that must be quiet. Runs in a fresh process (re-executed, not forked: CUDA does not survive
// fork).
TEST(CudaDriverDeathTest, StaticDriverAtExitIsQuiet) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        static std::unique_ptr<CudaDriver> held;
        if (CudaDriver::open(test_device(), &held) != Status::ok) std::_Exit(3);
        DevPtr va = 0;
        PhysHandle h = 0;
        EventHandle e = 0;
        const std::size_t g = held->granularity();
        if (held->reserve(g, &va) != Status::ok || held->create(g, &h) != Status::ok ||
            held->map(va, g, h, 0) != Status::ok || held->set_access(va, g) != Status::ok ||
            held->event_create(&e) != Status::ok || held->event_record(e, 0) != Status::ok) {
          std::_Exit(4);
        }
        // Left mapped and alive on purpose: exit tears down with live driver state.
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace glake::pool
