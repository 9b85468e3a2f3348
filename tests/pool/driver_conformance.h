// tests/pool/driver_conformance.h: the conformance suite every Driver must pass (pool/driver.h).
//
// A GoogleTest typed, parameterised suite. A traits type T provides
//   static std::unique_ptr<glake::pool::Driver> make();  // a fresh driver for each test
//   static constexpr bool host_visible;                   // mapped device memory is CPU memory
// Only Driver's interface is used. Mapped memory is read and written through pointers only when
// T::host_visible (the host driver); on a GPU the same tests run without touching bytes, and the GPU
// suite checks bytes with kernels. Pinned host memory (host_alloc) is always CPU memory.
// Only what the contract promises is checked: exact statuses where it names them (invalid_value for
// misaligned arguments), "not ok" where it only forbids the call.
//
// Include this header in one translation unit per executable and instantiate it inside namespace
// glake::pool:
//   namespace glake::pool {
//   INSTANTIATE_TYPED_TEST_SUITE_P(Cuda, DriverConformance, ::testing::Types<CudaTraits>);
//   }
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>

#include "pool/driver.h"

namespace glake::pool {

template <class T>
class DriverConformance : public ::testing::Test {
 protected:
  static constexpr std::size_t kNone = ~std::size_t{0};

  void SetUp() override {
    ASSERT_NE(driver_, nullptr);
    g_ = driver_->granularity();
  }

  Driver& d() { return *driver_; }

  // A byte pattern that differs between neighbouring bytes, pages and seeds.
  static std::uint8_t pattern(std::uint32_t seed, std::size_t i) {
    const std::size_t h = (i ^ (i >> 9) ^ (i >> 17)) * 0x9e3779b1u + seed * 0x85ebca6bu;
    return static_cast<std::uint8_t>(h >> 13);
  }
  static void fill(std::uintptr_t addr, std::size_t n, std::uint32_t seed, std::size_t index_base = 0) {
    auto* p = reinterpret_cast<std::uint8_t*>(addr);
    for (std::size_t i = 0; i < n; ++i) p[i] = pattern(seed, index_base + i);
  }
  // Index of the first byte that differs from the pattern, or kNone.
  static std::size_t first_mismatch(std::uintptr_t addr, std::size_t n, std::uint32_t seed,
                                    std::size_t index_base = 0) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(addr);
    for (std::size_t i = 0; i < n; ++i) {
      if (p[i] != pattern(seed, index_base + i)) return i;
    }
    return kNone;
  }

  std::unique_ptr<Driver> driver_ = T::make();
  std::size_t g_ = 0;
};

TYPED_TEST_SUITE_P(DriverConformance);

TYPED_TEST_P(DriverConformance, GranularityIsAPowerOfTwo) {
  const std::size_t g = this->g_;
  EXPECT_NE(g, 0u);
  EXPECT_EQ(g & (g - 1), 0u) << "granularity " << g;
  std::size_t free = 0, total = 0;
  ASSERT_EQ(this->d().mem_info(&free, &total), Status::ok);
  EXPECT_GT(total, 0u);
  EXPECT_LE(free, total);
}

TYPED_TEST_P(DriverConformance, ReserveGivesAlignedDisjointRanges) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr a = 0, b = 0;
  ASSERT_EQ(d.reserve(4 * g, &a), Status::ok);
  ASSERT_EQ(d.reserve(g, &b), Status::ok);
  EXPECT_NE(a, 0u);
  EXPECT_NE(b, 0u);
  EXPECT_EQ(a % g, 0u);
  EXPECT_EQ(b % g, 0u);
  EXPECT_TRUE(a + 4 * g <= b || b + g <= a) << "reservations overlap";
  EXPECT_EQ(d.free_reserve(a, 4 * g), Status::ok);
  EXPECT_EQ(d.free_reserve(b, g), Status::ok);
}

TYPED_TEST_P(DriverConformance, CreateAndRelease) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  PhysHandle a = 0, b = 0;
  ASSERT_EQ(d.create(g, &a), Status::ok);
  ASSERT_EQ(d.create(2 * g, &b), Status::ok);
  EXPECT_NE(a, b);
  EXPECT_EQ(d.release(a), Status::ok);
  EXPECT_EQ(d.release(b), Status::ok);
}

TYPED_TEST_P(DriverConformance, MapSetAccessUnmapRoundTrip) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(2 * g, &va), Status::ok);
  ASSERT_EQ(d.create(2 * g, &h), Status::ok);
  ASSERT_EQ(d.map(va, 2 * g, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va, 2 * g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    this->fill(va, 2 * g, 1);
    EXPECT_EQ(this->first_mismatch(va, 2 * g, 1), this->kNone);
  }
  EXPECT_EQ(d.unmap(va, 2 * g), Status::ok);
  // The range stays reserved and can be mapped again; the chunk keeps its bytes.
  ASSERT_EQ(d.map(va, 2 * g, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va, 2 * g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    EXPECT_EQ(this->first_mismatch(va, 2 * g, 1), this->kNone);
  }
  EXPECT_EQ(d.unmap(va, 2 * g), Status::ok);
  EXPECT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 2 * g), Status::ok);
}

TYPED_TEST_P(DriverConformance, MisalignedArgumentsAreRejectedAndChangeNothing) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  ASSERT_GE(g, 2u);
  const std::size_t half = g / 2;
  DevPtr va = 0;
  PhysHandle h = 0;
  EXPECT_EQ(d.reserve(g + half, &va), Status::invalid_value);
  EXPECT_EQ(d.create(half, &h), Status::invalid_value);
  EXPECT_EQ(d.create(g + half, &h), Status::invalid_value);

  ASSERT_EQ(d.reserve(4 * g, &va), Status::ok);
  ASSERT_EQ(d.create(2 * g, &h), Status::ok);
  EXPECT_EQ(d.map(va + half, g, h, 0), Status::invalid_value);
  EXPECT_EQ(d.map(va, half, h, 0), Status::invalid_value);
  EXPECT_EQ(d.map(va, g + half, h, 0), Status::invalid_value);
  EXPECT_EQ(d.map(va, g, h, half), Status::invalid_value);
  // Nothing was mapped: setting access over the range fails, and a valid map of it succeeds.
  EXPECT_NE(d.set_access(va, g), Status::ok);
  ASSERT_EQ(d.map(va, 2 * g, h, 0), Status::ok);
  EXPECT_EQ(d.set_access(va + half, g), Status::invalid_value);
  EXPECT_EQ(d.set_access(va, g + half), Status::invalid_value);
  EXPECT_EQ(d.unmap(va + half, g), Status::invalid_value);
  EXPECT_EQ(d.unmap(va, g + half), Status::invalid_value);
  // The mapping is still whole: access can be set over all of it and it unmaps once.
  EXPECT_EQ(d.set_access(va, 2 * g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    this->fill(va, 2 * g, 2);
    EXPECT_EQ(this->first_mismatch(va, 2 * g, 2), this->kNone);
  }
  EXPECT_EQ(d.unmap(va, 2 * g), Status::ok);
  EXPECT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 4 * g), Status::ok);
}

// The real driver accepts cuMemUnmap of a range that holds no mapping (seen on the H100, driver 580),
// so the contract leaves it undefined and only a remap after an unmap is checked here; the host
// driver's stricter checks are in its own tests.
TYPED_TEST_P(DriverConformance, UnmapThenMapAgain) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(2 * g, &va), Status::ok);
  ASSERT_EQ(d.create(g, &h), Status::ok);
  ASSERT_EQ(d.map(va, g, h, 0), Status::ok);
  EXPECT_EQ(d.unmap(va, g), Status::ok);
  ASSERT_EQ(d.map(va + g, g, h, 0), Status::ok) << "a chunk unmapped from one slot maps at another";
  EXPECT_EQ(d.set_access(va + g, g), Status::ok);
  EXPECT_EQ(d.unmap(va + g, g), Status::ok);
  EXPECT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 2 * g), Status::ok);
}

TYPED_TEST_P(DriverConformance, BadMapsAreRejected) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr va = 0;
  PhysHandle a = 0, b = 0;
  ASSERT_EQ(d.reserve(2 * g, &va), Status::ok);
  ASSERT_EQ(d.create(g, &a), Status::ok);
  ASSERT_EQ(d.create(g, &b), Status::ok);
  EXPECT_NE(d.map(va, g, a, g), Status::ok) << "offset past the chunk";
  EXPECT_NE(d.map(va, 2 * g, a, 0), Status::ok) << "size past the chunk";
  ASSERT_EQ(d.map(va, g, a, 0), Status::ok);
  EXPECT_NE(d.map(va, g, b, 0), Status::ok) << "map over a mapped range";
  // The failed map left the first mapping alone and the rest of the range free.
  ASSERT_EQ(d.map(va + g, g, b, 0), Status::ok);
  EXPECT_EQ(d.set_access(va, 2 * g), Status::ok);
  EXPECT_EQ(d.unmap(va, g), Status::ok);
  EXPECT_EQ(d.unmap(va + g, g), Status::ok);
  EXPECT_EQ(d.release(a), Status::ok);
  EXPECT_EQ(d.release(b), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 2 * g), Status::ok);
}

// Two chunks mapped side by side in reverse order into one range read and write as one block, and
// the bytes are the chunks' own: another mapping of each chunk sees them.
TYPED_TEST_P(DriverConformance, StitchedRangeSharesBytesWithEachChunk) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr stitched = 0, plain = 0;
  PhysHandle a = 0, b = 0;
  ASSERT_EQ(d.reserve(2 * g, &stitched), Status::ok);
  ASSERT_EQ(d.reserve(2 * g, &plain), Status::ok);
  ASSERT_EQ(d.create(g, &a), Status::ok);
  ASSERT_EQ(d.create(g, &b), Status::ok);
  // stitched = [b | a]; plain = [a | b].
  ASSERT_EQ(d.map(stitched + g, g, a, 0), Status::ok);
  ASSERT_EQ(d.map(stitched, g, b, 0), Status::ok);
  ASSERT_EQ(d.set_access(stitched, 2 * g), Status::ok);
  ASSERT_EQ(d.map(plain, g, a, 0), Status::ok);
  ASSERT_EQ(d.map(plain + g, g, b, 0), Status::ok);
  ASSERT_EQ(d.set_access(plain, 2 * g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    this->fill(stitched, 2 * g, 3);
    EXPECT_EQ(this->first_mismatch(stitched, 2 * g, 3), this->kNone);
    EXPECT_EQ(this->first_mismatch(plain, g, 3, g), this->kNone) << "chunk a through its other mapping";
    EXPECT_EQ(this->first_mismatch(plain + g, g, 3, 0), this->kNone) << "chunk b through its other mapping";
    // Across the seam, written through the other range.
    const DevPtr seam = plain + g - 64;
    this->fill(seam, 128, 4);
    EXPECT_EQ(this->first_mismatch(stitched + 2 * g - 64, 64, 4), this->kNone);
    EXPECT_EQ(this->first_mismatch(stitched, 64, 4, 64), this->kNone);
  }
  for (DevPtr base : {stitched, plain}) {
    EXPECT_EQ(d.unmap(base, g), Status::ok);
    EXPECT_EQ(d.unmap(base + g, g), Status::ok);
  }
  EXPECT_EQ(d.release(a), Status::ok);
  EXPECT_EQ(d.release(b), Status::ok);
  EXPECT_EQ(d.free_reserve(stitched, 2 * g), Status::ok);
  EXPECT_EQ(d.free_reserve(plain, 2 * g), Status::ok);
}

// What the pool's stitching relies on: a whole chunk mapped at two addresses at once, each alias seeing
// the other's writes, and unmapping one alias keeps the bytes. (Mapping part of a chunk, or one chunk
// with different sizes, is refused by the real driver: the pool never does it.)
TYPED_TEST_P(DriverConformance, OneChunkAtTwoAddressesAliases) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(3 * g, &va), Status::ok);
  ASSERT_EQ(d.create(g, &h), Status::ok);
  const DevPtr x = va, y = va + 2 * g;
  ASSERT_EQ(d.map(x, g, h, 0), Status::ok);
  ASSERT_EQ(d.map(y, g, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(x, g), Status::ok);
  ASSERT_EQ(d.set_access(y, g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    this->fill(x, g, 5);
    EXPECT_EQ(this->first_mismatch(y, g, 5), this->kNone);
    this->fill(y, 64, 7);
    EXPECT_EQ(this->first_mismatch(x, 64, 7), this->kNone);
  }
  EXPECT_EQ(d.unmap(y, g), Status::ok);
  if constexpr (TypeParam::host_visible) {
    EXPECT_EQ(this->first_mismatch(x + 64, g - 64, 5, 64), this->kNone) << "unmapping an alias lost bytes";
  }
  EXPECT_EQ(d.unmap(x, g), Status::ok);
  EXPECT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 3 * g), Status::ok);
}

// Memory of a chunk released while mapped stays usable, and goes back to the device at the last unmap.
// Measured with mem_info(), so the chunk is large enough to stand out of other users' noise.
TYPED_TEST_P(DriverConformance, ReleaseWhileMappedFreesAtLastUnmap) {
  auto& d = this->d();
  const std::size_t g = this->g_;
  const std::size_t size = std::max<std::size_t>(g, (std::size_t{256} << 20) / g * g);
  std::size_t free0 = 0, free1 = 0, free2 = 0, free3 = 0, total = 0;
  ASSERT_EQ(d.mem_info(&free0, &total), Status::ok);
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(size, &va), Status::ok);
  ASSERT_EQ(d.create(size, &h), Status::ok);
  ASSERT_EQ(d.map(va, size, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va, size), Status::ok);
  ASSERT_EQ(d.mem_info(&free1, &total), Status::ok);
  EXPECT_LE(free1 + size / 2, free0) << "create took no memory";
  if constexpr (TypeParam::host_visible) this->fill(va, g, 8);
  ASSERT_EQ(d.release(h), Status::ok);
  ASSERT_EQ(d.mem_info(&free2, &total), Status::ok);
  EXPECT_LE(free2 + size / 2, free0) << "memory freed while still mapped";
  if constexpr (TypeParam::host_visible) {
    EXPECT_EQ(this->first_mismatch(va, g, 8), this->kNone);
    this->fill(va + size - g, g, 9);
    EXPECT_EQ(this->first_mismatch(va + size - g, g, 9), this->kNone);
  }
  ASSERT_EQ(d.unmap(va, size), Status::ok);
  ASSERT_EQ(d.mem_info(&free3, &total), Status::ok);
  EXPECT_GE(free3 + size / 2, free0) << "memory not freed at the last unmap";
  EXPECT_EQ(d.free_reserve(va, size), Status::ok);
}

TYPED_TEST_P(DriverConformance, EventsRecordQuerySynchronize) {
  auto& d = this->d();
  EventHandle e = 0, f = 0;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  ASSERT_EQ(d.event_create(&f), Status::ok);
  EXPECT_NE(e, f);
  EXPECT_EQ(d.event_query(e), Status::ok) << "an event never recorded is complete";
  ASSERT_EQ(d.event_record(e, 0), Status::ok);
  const Status q = d.event_query(e);
  EXPECT_TRUE(q == Status::ok || q == Status::not_ready) << status_name(q);
  EXPECT_EQ(d.event_synchronize(e), Status::ok);
  EXPECT_EQ(d.event_query(e), Status::ok);
  EXPECT_EQ(d.stream_wait_event(0, e), Status::ok);
  ASSERT_EQ(d.event_record(f, 0), Status::ok);
  EXPECT_EQ(d.event_synchronize(f), Status::ok);
  ASSERT_EQ(d.event_record(f, 0), Status::ok);
  EXPECT_EQ(d.stream_synchronize(0), Status::ok);
  EXPECT_EQ(d.event_query(f), Status::ok) << "the stream's work before the wait is done";
  EXPECT_EQ(d.event_destroy(e), Status::ok);
  EXPECT_EQ(d.event_destroy(f), Status::ok);
}

TYPED_TEST_P(DriverConformance, DefaultStreamIsNotCapturing) {
  bool capturing = true;
  ASSERT_EQ(this->d().stream_is_capturing(0, &capturing), Status::ok);
  EXPECT_FALSE(capturing);
}

TYPED_TEST_P(DriverConformance, EveryCallIsCounted) {
  auto& d = this->d();
  const DriverStats& st = d.stats();
  const std::size_t g = this->g_;
  // Runs fn, which makes exactly one call of kind c, and checks that it was counted once.
  auto counted = [&](Call c, bool expect_ok, const std::function<Status()>& fn) {
    const std::uint64_t calls = st.calls(c), failures = st.failures(c), ns = st.ns(c);
    const Status s = fn();
    EXPECT_EQ(s == Status::ok, expect_ok) << call_name(c) << ": " << status_name(s);
    EXPECT_EQ(st.calls(c), calls + 1) << call_name(c);
    EXPECT_EQ(st.failures(c), failures + (expect_ok ? 0 : 1)) << call_name(c);
    EXPECT_GE(st.ns(c), ns) << call_name(c);
  };
  DevPtr va = 0;
  PhysHandle h = 0;
  EventHandle e = 0;
  int fd = -1;
  bool capturing = true;
  void* src = nullptr;
  void* dst = nullptr;
  counted(Call::reserve, true, [&] { return d.reserve(g, &va); });
  counted(Call::create, true, [&] { return d.create(g, &h); });
  counted(Call::create, false, [&] { return d.create(g / 2, &h); });
  counted(Call::map, true, [&] { return d.map(va, g, h, 0); });
  counted(Call::set_access, true, [&] { return d.set_access(va, g); });
  counted(Call::export_fd, true, [&] { return d.export_fd(h, &fd); });
  if (fd >= 0) close(fd);
  counted(Call::unmap, true, [&] { return d.unmap(va, g); });
  counted(Call::release, true, [&] { return d.release(h); });
  counted(Call::free_reserve, true, [&] { return d.free_reserve(va, g); });
  counted(Call::event_create, true, [&] { return d.event_create(&e); });
  counted(Call::event_record, true, [&] { return d.event_record(e, 0); });
  counted(Call::event_synchronize, true, [&] { return d.event_synchronize(e); });
  counted(Call::event_query, true, [&] { return d.event_query(e); });
  counted(Call::stream_wait_event, true, [&] { return d.stream_wait_event(0, e); });
  counted(Call::stream_is_capturing, true, [&] { return d.stream_is_capturing(0, &capturing); });
  counted(Call::stream_synchronize, true, [&] { return d.stream_synchronize(0); });
  counted(Call::host_alloc, true, [&] { return d.host_alloc(4096, &src); });
  counted(Call::host_alloc, true, [&] { return d.host_alloc(4096, &dst); });
  counted(Call::memcpy_async, true, [&] { return d.memcpy_async(dst, src, 4096, 0); });
  counted(Call::event_record, true, [&] { return d.event_record(e, 0); });
  EXPECT_EQ(d.event_synchronize(e), Status::ok);
  counted(Call::host_free, true, [&] { return d.host_free(src); });
  counted(Call::host_free, true, [&] { return d.host_free(dst); });
  counted(Call::event_destroy, true, [&] { return d.event_destroy(e); });
  // Driver time is charged, measured or modeled.
  EXPECT_GT(st.ns(Call::create), 0u);
  EXPECT_GT(st.ns(Call::map), 0u);
  EXPECT_GE(st.total_ns(), st.ns(Call::create) + st.ns(Call::map));
}

TYPED_TEST_P(DriverConformance, ExportFdGivesAnOpenDescriptor) {
  auto& d = this->d();
  PhysHandle h = 0;
  ASSERT_EQ(d.create(this->g_, &h), Status::ok);
  int fd = -1;
  ASSERT_EQ(d.export_fd(h, &fd), Status::ok);
  EXPECT_GE(fd, 0);
  EXPECT_NE(fcntl(fd, F_GETFD), -1) << "not an open descriptor";
  EXPECT_EQ(close(fd), 0);
  EXPECT_EQ(d.release(h), Status::ok);
}

TYPED_TEST_P(DriverConformance, HostAllocAndAsyncCopyRoundTrip) {
  auto& d = this->d();
  constexpr std::size_t n = (std::size_t{1} << 20) + 123;
  void* src = nullptr;
  void* dst = nullptr;
  ASSERT_EQ(d.host_alloc(n, &src), Status::ok);
  ASSERT_EQ(d.host_alloc(n, &dst), Status::ok);
  ASSERT_NE(src, nullptr);
  ASSERT_NE(dst, nullptr);
  EXPECT_NE(src, dst);
  const auto s = reinterpret_cast<std::uintptr_t>(src), t = reinterpret_cast<std::uintptr_t>(dst);
  this->fill(s, n, 10);
  std::memset(dst, 0, n);
  EventHandle e = 0;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  ASSERT_EQ(d.memcpy_async(dst, src, n, 0), Status::ok);
  ASSERT_EQ(d.event_record(e, 0), Status::ok);
  ASSERT_EQ(d.event_synchronize(e), Status::ok);
  EXPECT_EQ(this->first_mismatch(t, n, 10), this->kNone);
  EXPECT_EQ(d.event_destroy(e), Status::ok);
  EXPECT_EQ(d.host_free(src), Status::ok);
  EXPECT_EQ(d.host_free(dst), Status::ok);
}

REGISTER_TYPED_TEST_SUITE_P(DriverConformance, GranularityIsAPowerOfTwo, ReserveGivesAlignedDisjointRanges,
                            CreateAndRelease, MapSetAccessUnmapRoundTrip,
                            MisalignedArgumentsAreRejectedAndChangeNothing, UnmapThenMapAgain,
                            BadMapsAreRejected, StitchedRangeSharesBytesWithEachChunk,
                            OneChunkAtTwoAddressesAliases, ReleaseWhileMappedFreesAtLastUnmap,
                            EventsRecordQuerySynchronize, DefaultStreamIsNotCapturing, EveryCallIsCounted,
                            ExportFdGivesAnOpenDescriptor, HostAllocAndAsyncCopyRoundTrip);

}  // namespace glake::pool
