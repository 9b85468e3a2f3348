// tests/pool/test_host_driver.cpp: HostDriver against the driver conformance suite, plus what only the
// emulation has: exact statuses, capacity, fault injection at every call kind, the cost model, the
// stream/event emulation, page protection, and the enum names of pool/names.cpp.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "pool/host_driver.h"
#include "pool/observer.h"
#include "tests/pool/driver_conformance.h"

namespace glake::pool {

struct HostTraits {
  static constexpr bool host_visible = true;
  static std::unique_ptr<Driver> make() { return std::make_unique<HostDriver>(); }
};
INSTANTIATE_TYPED_TEST_SUITE_P(Host, DriverConformance, ::testing::Types<HostTraits>);

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kG = 2 * kMiB;  // the default granularity

// True if the byte at p can be read (the kernel reports EFAULT instead of faulting us).
bool readable(DevPtr p) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  const ssize_t n = write(fds[1], reinterpret_cast<const void*>(p), 1);
  close(fds[0]);
  close(fds[1]);
  return n == 1;
}

int open_fds() {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return n;
}

HostDriver::Options with_capacity(std::size_t capacity) {
  HostDriver::Options o;
  o.capacity = capacity;
  return o;
}

// --- exact statuses and validation -------------------------------------------------------------

TEST(HostDriver, DefaultOptions) {
  HostDriver d;
  EXPECT_EQ(d.granularity(), kG);
  EXPECT_EQ(d.device(), 0);
  std::size_t free = 0, total = 0;
  ASSERT_EQ(d.mem_info(&free, &total), Status::ok);
  EXPECT_EQ(total, std::size_t{80} << 30);
  EXPECT_EQ(free, total);
  EXPECT_EQ(d.mem_info(nullptr, &total), Status::invalid_value);
}

TEST(HostDriver, GranularityIsRoundedUpToAPowerOfTwoPage) {
  HostDriver::Options o;
  o.granularity = 3000;
  o.device = 3;
  HostDriver d(o);
  EXPECT_EQ(d.granularity(), 4096u);
  EXPECT_EQ(d.device(), 3);
  o.granularity = 64 * 1024;
  HostDriver e(o);
  EXPECT_EQ(e.granularity(), 64u * 1024);
  DevPtr va = 0;
  ASSERT_EQ(e.reserve(64 * 1024, &va), Status::ok);
  EXPECT_EQ(va % (64 * 1024), 0u);
  EXPECT_EQ(e.free_reserve(va, 64 * 1024), Status::ok);
}

TEST(HostDriver, FailedCallsLeaveOutputsAndStateAlone) {
  HostDriver d;
  DevPtr va = 7;
  PhysHandle h = 7;
  EventHandle e = 7;
  void* p = &va;
  EXPECT_EQ(d.reserve(0, &va), Status::invalid_value);
  EXPECT_EQ(d.reserve(kG + 4096, &va), Status::invalid_value);
  EXPECT_EQ(d.reserve(kG, nullptr), Status::invalid_value);
  EXPECT_EQ(d.create(0, &h), Status::invalid_value);
  EXPECT_EQ(d.create(kG / 2, &h), Status::invalid_value);
  EXPECT_EQ(d.create(kG, nullptr), Status::invalid_value);
  EXPECT_EQ(d.event_create(nullptr), Status::invalid_value);
  EXPECT_EQ(d.host_alloc(0, &p), Status::invalid_value);
  EXPECT_EQ(d.host_alloc(16, nullptr), Status::invalid_value);
  EXPECT_EQ(d.stream_is_capturing(0, nullptr), Status::invalid_value);
  EXPECT_EQ(d.export_fd(12345, nullptr), Status::invalid_value);
  EXPECT_EQ(va, 7u);
  EXPECT_EQ(h, 7u);
  EXPECT_EQ(e, 7u);
  EXPECT_EQ(p, &va);
  EXPECT_EQ(d.physical_in_use(), 0u);
  EXPECT_EQ(d.reserved_bytes(), 0u);
  EXPECT_EQ(d.live_events(), 0u);
  EXPECT_EQ(d.stats().failures(Call::reserve), 3u);
  EXPECT_EQ(d.stats().failures(Call::create), 3u);
}

TEST(HostDriver, UnknownAndReleasedHandlesAreInvalid) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle h = 0;
  int fd = -1;
  ASSERT_EQ(d.reserve(2 * kG, &va), Status::ok);
  EXPECT_EQ(d.release(0), Status::invalid_handle);
  EXPECT_EQ(d.release(12345), Status::invalid_handle);
  EXPECT_EQ(d.map(va, kG, 12345, 0), Status::invalid_handle);
  EXPECT_EQ(d.export_fd(12345, &fd), Status::invalid_handle);
  ASSERT_EQ(d.create(kG, &h), Status::ok);
  ASSERT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.release(h), Status::invalid_handle);
  EXPECT_EQ(d.map(va, kG, h, 0), Status::invalid_handle);
  EXPECT_EQ(d.export_fd(h, &fd), Status::invalid_handle);
  EXPECT_EQ(fd, -1);
  EXPECT_EQ(d.mappings(), 0u);
  EXPECT_EQ(d.physical_in_use(), 0u);
}

TEST(HostDriver, MapMustLieInOneReservationOverUnmappedPages) {
  HostDriver d;
  DevPtr va = 0, gone = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(2 * kG, &va), Status::ok);
  ASSERT_EQ(d.reserve(2 * kG, &gone), Status::ok);
  ASSERT_EQ(d.free_reserve(gone, 2 * kG), Status::ok);
  ASSERT_EQ(d.create(4 * kG, &h), Status::ok);
  EXPECT_EQ(d.map(gone, kG, h, 0), Status::invalid_value) << "outside every reservation";
  EXPECT_EQ(d.map(va + kG, 2 * kG, h, 0), Status::invalid_value) << "straddles the reservation's end";
  EXPECT_EQ(d.map(va, 0, h, 0), Status::invalid_value);
  EXPECT_EQ(d.map(va, kG, h, 4 * kG), Status::invalid_value) << "offset at the chunk's end";
  EXPECT_EQ(d.map(va, kG, h, ~std::size_t{0} - kG + 1), Status::invalid_value) << "offset overflows";
  ASSERT_EQ(d.map(va + kG, kG, h, 0), Status::ok);
  EXPECT_EQ(d.map(va, 2 * kG, h, kG), Status::invalid_value) << "overlaps the mapping's start";
  EXPECT_EQ(d.mappings(), 1u);
  ASSERT_EQ(d.map(va, kG, h, 3 * kG), Status::ok);
  EXPECT_EQ(d.mappings(), 2u);
}

TEST(HostDriver, UnmapTakesExactlyOneMapping) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(4 * kG, &va), Status::ok);
  ASSERT_EQ(d.create(4 * kG, &h), Status::ok);
  ASSERT_EQ(d.map(va, 2 * kG, h, 0), Status::ok);
  ASSERT_EQ(d.map(va + 2 * kG, 2 * kG, h, 2 * kG), Status::ok);
  EXPECT_EQ(d.unmap(va, kG), Status::invalid_value) << "part of a mapping";
  EXPECT_EQ(d.unmap(va + kG, kG), Status::invalid_value) << "part of a mapping";
  EXPECT_EQ(d.unmap(va, 4 * kG), Status::invalid_value) << "two mappings at once";
  EXPECT_EQ(d.unmap(va, 0), Status::invalid_value);
  EXPECT_EQ(d.mappings(), 2u);
  EXPECT_EQ(d.unmap(va + 2 * kG, 2 * kG), Status::ok);
  EXPECT_EQ(d.unmap(va, 2 * kG), Status::ok);
  EXPECT_EQ(d.mappings(), 0u);
}

TEST(HostDriver, AccessIsGrantedOnlyBySetAccess) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle a = 0, b = 0;
  ASSERT_EQ(d.reserve(4 * kG, &va), Status::ok);
  EXPECT_FALSE(readable(va)) << "a reservation is not accessible";
  ASSERT_EQ(d.create(kG, &a), Status::ok);
  ASSERT_EQ(d.create(kG, &b), Status::ok);
  ASSERT_EQ(d.map(va, kG, a, 0), Status::ok);
  ASSERT_EQ(d.map(va + 2 * kG, kG, b, 0), Status::ok);
  EXPECT_FALSE(readable(va)) << "a fresh mapping is not accessible";
  EXPECT_EQ(d.set_access(va, 3 * kG), Status::invalid_value) << "a hole in the range";
  EXPECT_EQ(d.set_access(va + kG, kG), Status::invalid_value) << "the hole alone";
  EXPECT_EQ(d.set_access(va + 3 * kG, kG), Status::invalid_value) << "past the last mapping";
  EXPECT_FALSE(readable(va));
  EXPECT_FALSE(readable(va + 2 * kG));
  ASSERT_EQ(d.set_access(va, kG), Status::ok);
  EXPECT_TRUE(readable(va));
  EXPECT_TRUE(readable(va + kG - 1));
  EXPECT_FALSE(readable(va + 2 * kG));
  ASSERT_EQ(d.unmap(va, kG), Status::ok);
  EXPECT_FALSE(readable(va)) << "an unmapped range is inaccessible again";
  // Mapping again starts without access, like a fresh cuMemMap.
  ASSERT_EQ(d.map(va, kG, a, 0), Status::ok);
  EXPECT_FALSE(readable(va));
}

TEST(HostDriver, FreeReserveTakesExactlyAnIdleReservation) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(4 * kG, &va), Status::ok);
  EXPECT_EQ(d.reserved_bytes(), 4 * kG);
  EXPECT_EQ(d.free_reserve(va, 2 * kG), Status::invalid_value) << "wrong size";
  EXPECT_EQ(d.free_reserve(va + kG, 3 * kG), Status::invalid_value) << "not its start";
  ASSERT_EQ(d.create(kG, &h), Status::ok);
  ASSERT_EQ(d.map(va + kG, kG, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va + kG, kG), Status::ok);
  std::memset(reinterpret_cast<void*>(va + kG), 0x5a, kG);
  EXPECT_EQ(d.free_reserve(va, 4 * kG), Status::invalid_value) << "still mapped";
  EXPECT_EQ(d.reserved_bytes(), 4 * kG);
  EXPECT_EQ(*reinterpret_cast<volatile unsigned char*>(va + 2 * kG - 1), 0x5a);
  ASSERT_EQ(d.unmap(va + kG, kG), Status::ok);
  EXPECT_EQ(d.free_reserve(va, 4 * kG), Status::ok);
  EXPECT_EQ(d.reserved_bytes(), 0u);
  EXPECT_EQ(d.free_reserve(va, 4 * kG), Status::invalid_value) << "double free";
}

TEST(HostDriver, ReleasedChunkLivesUntilItsLastMappingGoes) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle h = 0;
  const int fds = open_fds();
  ASSERT_EQ(d.reserve(2 * kG, &va), Status::ok);
  ASSERT_EQ(d.create(kG, &h), Status::ok);
  EXPECT_EQ(open_fds(), fds + 1);
  ASSERT_EQ(d.map(va, kG, h, 0), Status::ok);
  ASSERT_EQ(d.map(va + kG, kG, h, 0), Status::ok);
  ASSERT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.physical_in_use(), kG);
  ASSERT_EQ(d.unmap(va, kG), Status::ok);
  EXPECT_EQ(d.physical_in_use(), kG);
  EXPECT_EQ(open_fds(), fds + 1);
  ASSERT_EQ(d.unmap(va + kG, kG), Status::ok);
  EXPECT_EQ(d.physical_in_use(), 0u);
  EXPECT_EQ(open_fds(), fds) << "the chunk's memfd stays open";
}

TEST(HostDriver, ExportedFdIsTheChunk) {
  HostDriver d;
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(kG, &va), Status::ok);
  ASSERT_EQ(d.create(kG, &h), Status::ok);
  ASSERT_EQ(d.map(va, kG, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va, kG), Status::ok);
  std::memset(reinterpret_cast<void*>(va), 0x3c, kG);
  int fd = -1;
  ASSERT_EQ(d.export_fd(h, &fd), Status::ok);
  struct stat st{};
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), kG);
  void* other = mmap(nullptr, kG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(other, MAP_FAILED);
  EXPECT_EQ(static_cast<unsigned char*>(other)[kG - 1], 0x3c);
  static_cast<unsigned char*>(other)[0] = 0x11;
  EXPECT_EQ(*reinterpret_cast<volatile unsigned char*>(va), 0x11);
  munmap(other, kG);
  close(fd);
}

TEST(HostDriver, HostMemoryChecksItsPointers) {
  HostDriver d;
  void* p = nullptr;
  ASSERT_EQ(d.host_alloc(100, &p), Status::ok);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 4096, 0u);
  int local = 0;
  EXPECT_EQ(d.host_free(&local), Status::invalid_value);
  EXPECT_EQ(d.host_free(nullptr), Status::invalid_value);
  EXPECT_EQ(d.memcpy_async(nullptr, p, 1, 0), Status::invalid_value);
  EXPECT_EQ(d.memcpy_async(p, p, 0, 0), Status::ok);
  EXPECT_EQ(d.host_free(p), Status::ok);
  EXPECT_EQ(d.host_free(p), Status::invalid_value) << "double free";
}

TEST(HostDriver, DestructorReturnsEverything) {
  const int fds = open_fds();
  {
    HostDriver d;
    DevPtr va = 0;
    PhysHandle h = 0, spare = 0;
    EventHandle e = 0;
    void* p = nullptr;
    ASSERT_EQ(d.reserve(2 * kG, &va), Status::ok);
    ASSERT_EQ(d.create(kG, &h), Status::ok);
    ASSERT_EQ(d.create(kG, &spare), Status::ok);
    ASSERT_EQ(d.map(va, kG, h, 0), Status::ok);
    ASSERT_EQ(d.release(h), Status::ok);
    ASSERT_EQ(d.event_create(&e), Status::ok);
    ASSERT_EQ(d.host_alloc(4096, &p), Status::ok);
    EXPECT_EQ(open_fds(), fds + 2);
  }
  EXPECT_EQ(open_fds(), fds);  // and the sanitizer build checks that nothing leaks
}

// --- capacity ----------------------------------------------------------------------------------

TEST(HostDriver, CapacityBoundsCreate) {
  HostDriver d(with_capacity(4 * kG));
  PhysHandle a = 0, b = 0, c = 0;
  ASSERT_EQ(d.create(2 * kG, &a), Status::ok);
  ASSERT_EQ(d.create(kG, &b), Status::ok);
  EXPECT_EQ(d.create(2 * kG, &c), Status::out_of_memory);
  EXPECT_EQ(c, 0u);
  EXPECT_EQ(d.physical_in_use(), 3 * kG);
  std::size_t free = 0, total = 0;
  ASSERT_EQ(d.mem_info(&free, &total), Status::ok);
  EXPECT_EQ(free, kG);
  EXPECT_EQ(total, 4 * kG);
  ASSERT_EQ(d.create(kG, &c), Status::ok) << "exactly at capacity";
  EXPECT_EQ(d.create(kG, &c), Status::out_of_memory);
  EXPECT_EQ(d.stats().failures(Call::create), 2u);
  ASSERT_EQ(d.release(a), Status::ok);
  EXPECT_EQ(d.create(2 * kG, &a), Status::ok) << "works again after a release";
  EXPECT_EQ(d.physical_in_use(), 4 * kG);
}

TEST(HostDriver, ReleasedButMappedChunkStillCountsAgainstCapacity) {
  HostDriver d(with_capacity(2 * kG));
  DevPtr va = 0;
  PhysHandle a = 0, b = 0;
  ASSERT_EQ(d.reserve(2 * kG, &va), Status::ok);
  ASSERT_EQ(d.create(2 * kG, &a), Status::ok);
  ASSERT_EQ(d.map(va, 2 * kG, a, 0), Status::ok);
  ASSERT_EQ(d.release(a), Status::ok);
  EXPECT_EQ(d.create(kG, &b), Status::out_of_memory);
  ASSERT_EQ(d.unmap(va, 2 * kG), Status::ok);
  EXPECT_EQ(d.create(2 * kG, &b), Status::ok);
}

TEST(HostDriver, HugeCapacityCommitsOnlyTouchedPages) {
  HostDriver d(with_capacity(std::size_t{1} << 40));
  DevPtr va = 0;
  PhysHandle h = 0;
  const std::size_t size = std::size_t{64} << 30;
  ASSERT_EQ(d.reserve(size, &va), Status::ok);
  ASSERT_EQ(d.create(size, &h), Status::ok);
  ASSERT_EQ(d.map(va, size, h, 0), Status::ok);
  ASSERT_EQ(d.set_access(va, size), Status::ok);
  *reinterpret_cast<volatile char*>(va + size - 1) = 1;
  EXPECT_EQ(d.physical_in_use(), size);
}

// Options::backed false (the replay's driver): the same books, no host memory and no file per chunk,
// so it holds more chunks than the process may open files (a backed driver runs out there).
TEST(HostDriver, UnbackedKeepsTheBooksWithoutHostMemory) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(open_fds() + 32);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  constexpr int kChunks = 256;
  std::vector<PhysHandle> unbacked_chunks, backed_chunks;
  Status backed_failed = Status::ok;
  {
    HostDriver backed(with_capacity(std::size_t{1} << 40));
    for (int i = 0; i < kChunks && backed_failed == Status::ok; ++i) {
      PhysHandle h = 0;
      backed_failed = backed.create(kG, &h);
    }
  }
  HostDriver::Options o = with_capacity(std::size_t{1} << 40);
  o.backed = false;
  HostDriver d(o);
  for (int i = 0; i < kChunks; ++i) {
    PhysHandle h = 0;
    ASSERT_EQ(d.create(kG, &h), Status::ok) << "chunk " << i;
    unbacked_chunks.push_back(h);
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(backed_failed, Status::out_of_memory) << "the file limit was not in effect: the test proves nothing";
  EXPECT_EQ(d.physical_in_use(), kChunks * kG);

  DevPtr a = 0, b = 0;
  ASSERT_EQ(d.reserve(kChunks * kG, &a), Status::ok);
  ASSERT_EQ(d.reserve(4 * kG, &b), Status::ok);
  EXPECT_EQ(a % kG, 0u);
  EXPECT_GE(a, DevPtr{1} << 48) << "above every host address";
  EXPECT_TRUE(b >= a + kChunks * kG || b + 4 * kG <= a) << "reservations overlap";
  for (int i = 0; i < kChunks; ++i) ASSERT_EQ(d.map(a + i * kG, kG, unbacked_chunks[i], 0), Status::ok);
  EXPECT_EQ(d.set_access(a, kChunks * kG), Status::ok);
  EXPECT_EQ(d.map(a, kG, unbacked_chunks[1], 0), Status::invalid_value) << "over a mapping";
  EXPECT_EQ(d.map(b + 4 * kG, kG, unbacked_chunks[1], 0), Status::invalid_value) << "outside every reservation";
  ASSERT_EQ(d.map(b, kG, unbacked_chunks[0], 0), Status::ok) << "one chunk at two addresses";
  EXPECT_EQ(d.mappings(), static_cast<std::size_t>(kChunks) + 1);
  int fd = -1;
  EXPECT_EQ(d.export_fd(unbacked_chunks[0], &fd), Status::not_supported);
  EXPECT_EQ(fd, -1);
  ASSERT_EQ(d.release(unbacked_chunks[0]), Status::ok);
  EXPECT_EQ(d.physical_in_use(), kChunks * kG) << "still mapped";
  for (int i = 0; i < kChunks; ++i) ASSERT_EQ(d.unmap(a + i * kG, kG), Status::ok);
  ASSERT_EQ(d.unmap(b, kG), Status::ok);
  EXPECT_EQ(d.physical_in_use(), (kChunks - 1) * kG);
  EXPECT_EQ(d.free_reserve(a, kChunks * kG), Status::ok);
  EXPECT_EQ(d.free_reserve(b, 4 * kG), Status::ok);
  EXPECT_EQ(d.reserved_bytes(), 0u);
}

// --- fault injection ---------------------------------------------------------------------------

// One representative call of each kind, with what it needs prepared, what to check after it
// succeeded (and undo, so that it can be made again), and what to check after it failed.
struct FaultCase {
  std::function<void()> prepare = [] {};
  std::function<Status()> attempt;
  std::function<void()> after_ok = [] {};
  std::function<void()> after_failure = [] {};
};

class HostFaultInjection : public ::testing::TestWithParam<int> {
 protected:
  struct Snapshot {
    std::size_t in_use, mappings, reserved, events;
    int fds;
    bool operator==(const Snapshot&) const = default;
  };
  Snapshot snapshot() const {
    return {d_.physical_in_use(), d_.mappings(), d_.reserved_bytes(), d_.live_events(), open_fds()};
  }

  void SetUp() override {
    ASSERT_EQ(d_.reserve(4 * kG, &va_), Status::ok);
    ASSERT_EQ(d_.create(kG, &h_), Status::ok);
    ASSERT_EQ(d_.event_create(&e_), Status::ok);
    ASSERT_EQ(d_.event_record(e_, kStream), Status::ok);
    ASSERT_EQ(d_.host_alloc(kBytes, &src_), Status::ok);
    ASSERT_EQ(d_.host_alloc(kBytes, &dst_), Status::ok);
    d_.set_capturing(kStream, true);
  }

  FaultCase make_case(Call c);

  static constexpr StreamHandle kStream = 7;
  static constexpr std::size_t kBytes = 4096;
  HostDriver d_{with_capacity(16 * kG)};
  DevPtr va_ = 0;
  PhysHandle h_ = 0;
  EventHandle e_ = 0;
  void* src_ = nullptr;
  void* dst_ = nullptr;
  // Scratch outputs and resources of the cases.
  DevPtr out_va_ = 0;
  PhysHandle out_h_ = 0;
  EventHandle out_e_ = 0;
  void* out_p_ = nullptr;
  int out_fd_ = -1;
  bool out_bool_ = false;
};

FaultCase HostFaultInjection::make_case(Call c) {
  FaultCase k;
  switch (c) {
    case Call::reserve:
      k.prepare = [&] { out_va_ = 0; };
      k.attempt = [&] { return d_.reserve(kG, &out_va_); };
      k.after_ok = [&] { ASSERT_EQ(d_.free_reserve(out_va_, kG), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(out_va_, 0u); };
      break;
    case Call::free_reserve:
      k.prepare = [&] { ASSERT_EQ(d_.reserve(kG, &out_va_), Status::ok); };
      k.attempt = [&] { return d_.free_reserve(out_va_, kG); };
      k.after_failure = [&] {  // still reserved: it can be mapped
        ASSERT_EQ(d_.map(out_va_, kG, h_, 0), Status::ok);
        ASSERT_EQ(d_.unmap(out_va_, kG), Status::ok);
      };
      break;
    case Call::create:
      k.prepare = [&] { out_h_ = 0; };
      k.attempt = [&] { return d_.create(kG, &out_h_); };
      k.after_ok = [&] { ASSERT_EQ(d_.release(out_h_), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(out_h_, 0u); };
      break;
    case Call::release:
      k.prepare = [&] { ASSERT_EQ(d_.create(kG, &out_h_), Status::ok); };
      k.attempt = [&] { return d_.release(out_h_); };
      k.after_failure = [&] {  // still a live handle
        ASSERT_EQ(d_.map(va_, kG, out_h_, 0), Status::ok);
        ASSERT_EQ(d_.unmap(va_, kG), Status::ok);
      };
      break;
    case Call::map:
      k.attempt = [&] { return d_.map(va_, kG, h_, 0); };
      k.after_ok = [&] { ASSERT_EQ(d_.unmap(va_, kG), Status::ok); };
      break;
    case Call::unmap:
      k.prepare = [&] {
        ASSERT_EQ(d_.map(va_, kG, h_, 0), Status::ok);
        ASSERT_EQ(d_.set_access(va_, kG), Status::ok);
      };
      k.attempt = [&] { return d_.unmap(va_, kG); };
      k.after_ok = [&] { EXPECT_FALSE(readable(va_)); };
      k.after_failure = [&] { EXPECT_TRUE(readable(va_)); };
      break;
    case Call::set_access:
      k.prepare = [&] { ASSERT_EQ(d_.map(va_, kG, h_, 0), Status::ok); };
      k.attempt = [&] { return d_.set_access(va_, kG); };
      k.after_ok = [&] {
        EXPECT_TRUE(readable(va_));
        ASSERT_EQ(d_.unmap(va_, kG), Status::ok);
      };
      k.after_failure = [&] { EXPECT_FALSE(readable(va_)); };
      break;
    case Call::export_fd:
      k.prepare = [&] { out_fd_ = -1; };
      k.attempt = [&] { return d_.export_fd(h_, &out_fd_); };
      k.after_ok = [&] { ASSERT_EQ(close(out_fd_), 0); };
      k.after_failure = [&] { EXPECT_EQ(out_fd_, -1); };
      break;
    case Call::event_create:
      k.prepare = [&] { out_e_ = 0; };
      k.attempt = [&] { return d_.event_create(&out_e_); };
      k.after_ok = [&] { ASSERT_EQ(d_.event_destroy(out_e_), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(out_e_, 0u); };
      break;
    case Call::event_destroy:
      k.prepare = [&] { ASSERT_EQ(d_.event_create(&out_e_), Status::ok); };
      k.attempt = [&] { return d_.event_destroy(out_e_); };
      k.after_failure = [&] { EXPECT_EQ(d_.event_query(out_e_), Status::ok); };
      break;
    case Call::event_record:
      // e_ was recorded on the idle stream; a new record after more work would make it not ready.
      k.prepare = [&] { d_.enqueue_work(kStream); };
      k.attempt = [&] { return d_.event_record(e_, kStream); };
      k.after_ok = [&] {
        EXPECT_EQ(d_.event_query(e_), Status::not_ready);
        d_.complete_work(kStream);
      };
      k.after_failure = [&] { EXPECT_EQ(d_.event_query(e_), Status::ok); };
      break;
    case Call::event_query:
      k.attempt = [&] { return d_.event_query(e_); };
      break;
    case Call::event_synchronize:
      k.prepare = [&] {
        d_.enqueue_work(kStream);
        ASSERT_EQ(d_.event_record(e_, kStream), Status::ok);
      };
      k.attempt = [&] { return d_.event_synchronize(e_); };
      k.after_ok = [&] { EXPECT_EQ(d_.event_query(e_), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(d_.event_query(e_), Status::not_ready); };
      break;
    case Call::stream_wait_event:
      k.attempt = [&] { return d_.stream_wait_event(kStream, e_); };
      break;
    case Call::stream_is_capturing:
      k.prepare = [&] { out_bool_ = false; };
      k.attempt = [&] { return d_.stream_is_capturing(kStream, &out_bool_); };
      k.after_ok = [&] { EXPECT_TRUE(out_bool_); };
      k.after_failure = [&] { EXPECT_FALSE(out_bool_); };
      break;
    case Call::stream_synchronize:
      k.prepare = [&] {
        d_.enqueue_work(kStream);
        ASSERT_EQ(d_.event_record(e_, kStream), Status::ok);
      };
      k.attempt = [&] { return d_.stream_synchronize(kStream); };
      k.after_ok = [&] { EXPECT_EQ(d_.event_query(e_), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(d_.event_query(e_), Status::not_ready); };
      break;
    case Call::memcpy_async:
      k.prepare = [&] {
        std::memset(src_, 0xab, kBytes);
        std::memset(dst_, 0, kBytes);
      };
      k.attempt = [&] { return d_.memcpy_async(dst_, src_, kBytes, kStream); };
      k.after_ok = [&] { EXPECT_EQ(std::memcmp(dst_, src_, kBytes), 0); };
      k.after_failure = [&] { EXPECT_EQ(static_cast<unsigned char*>(dst_)[kBytes - 1], 0); };
      break;
    case Call::host_alloc:
      k.prepare = [&] { out_p_ = nullptr; };
      k.attempt = [&] { return d_.host_alloc(100, &out_p_); };
      k.after_ok = [&] { ASSERT_EQ(d_.host_free(out_p_), Status::ok); };
      k.after_failure = [&] { EXPECT_EQ(out_p_, nullptr); };
      break;
    case Call::host_free:
      k.prepare = [&] { ASSERT_EQ(d_.host_alloc(100, &out_p_), Status::ok); };
      k.attempt = [&] { return d_.host_free(out_p_); };
      k.after_failure = [&] { std::memset(out_p_, 1, 100); };  // still ours (the sanitizers would see)
      break;
    case Call::count_:
      break;
  }
  return k;
}

TEST_P(HostFaultInjection, NthCallFailsWithoutSideEffects) {
  const Call c = static_cast<Call>(GetParam());
  FaultCase k = make_case(c);
  ASSERT_TRUE(k.attempt) << "no fault case for " << call_name(c);
  const DriverStats& st = d_.stats();
  const std::uint64_t calls = st.calls(c);
  const std::uint64_t failures = st.failures(c);

  // A fault on a kind this case never calls, armed first, must not fire; the one on c fires on the
  // 2nd call.
  const Call other = c == Call::stream_wait_event ? Call::event_query : Call::stream_wait_event;
  d_.fail_nth(other, 1, Status::unknown);
  d_.fail_nth(c, 2, Status::not_permitted);

  k.prepare();
  ASSERT_EQ(k.attempt(), Status::ok) << "1st call";
  k.after_ok();

  k.prepare();
  const Snapshot before = snapshot();
  ASSERT_EQ(k.attempt(), Status::not_permitted) << "2nd call";
  EXPECT_EQ(snapshot(), before);
  k.after_failure();

  // No prepare: a failed call changed nothing, so the prepared state is still there.
  ASSERT_EQ(k.attempt(), Status::ok) << "3rd call";
  k.after_ok();

  EXPECT_EQ(st.calls(c), calls + 3);
  EXPECT_EQ(st.failures(c), failures + 1);
}

INSTANTIATE_TEST_SUITE_P(EveryCall, HostFaultInjection, ::testing::Range(0, kCallKinds),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(call_name(static_cast<Call>(info.param)));
                         });

TEST(HostDriverFaults, CountFromWhenArmedAndDefaultToOutOfMemory) {
  HostDriver d;
  PhysHandle h = 0;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(d.create(kG, &h), Status::ok);
  d.fail_nth(Call::create, 1);
  EXPECT_EQ(d.create(kG, &h), Status::out_of_memory);
  EXPECT_EQ(d.create(kG, &h), Status::ok);
  EXPECT_EQ(d.physical_in_use(), 4 * kG);
}

TEST(HostDriverFaults, SeveralFaultsOfOneKind) {
  HostDriver d;
  DevPtr va = 0;
  d.fail_nth(Call::reserve, 3, Status::invalid_context);
  d.fail_nth(Call::reserve, 1);
  EXPECT_EQ(d.reserve(kG, &va), Status::out_of_memory);
  EXPECT_EQ(d.reserve(kG, &va), Status::ok);
  EXPECT_EQ(d.reserve(kG, &va), Status::invalid_context);
  EXPECT_EQ(d.reserve(kG, &va), Status::ok);
  EXPECT_EQ(d.reserved_bytes(), 2 * kG);
}

TEST(HostDriverFaults, ClearFaultsDisarms) {
  HostDriver d;
  PhysHandle h = 0;
  d.fail_nth(Call::create, 1);
  d.fail_nth(Call::create, 2);
  d.fail_nth(Call::create, 0);  // arms nothing
  d.clear_faults();
  EXPECT_EQ(d.create(kG, &h), Status::ok);
  EXPECT_EQ(d.create(kG, &h), Status::ok);
  EXPECT_EQ(d.stats().failures(Call::create), 0u);
}

TEST(HostDriverFaults, InjectedFailureBeatsValidation) {
  HostDriver d;
  d.fail_nth(Call::release, 1, Status::deinitialized);
  EXPECT_EQ(d.release(12345), Status::deinitialized);
  EXPECT_EQ(d.release(12345), Status::invalid_handle);
}

// --- cost model --------------------------------------------------------------------------------

TEST(HostDriverCost, CreateAndReleaseFollowTheMeasuredPoints) {
  HostDriver d;
  const DriverStats& st = d.stats();
  struct Point {
    std::size_t size;
    std::uint64_t create_ns, release_ns;
  };
  // Measured: 2 / 32 / 512 MiB. Interpolated halfway in log2: 8 MiB, 128 MiB. Clamped: 1 GiB.
  const Point points[] = {
      {2 * kMiB, 21'000, 17'000},   {32 * kMiB, 14'000, 39'000},   {512 * kMiB, 25'000, 343'000},
      {8 * kMiB, 17'500, 28'000},   {128 * kMiB, 19'500, 191'000}, {1024 * kMiB, 25'000, 343'000},
  };
  for (const Point& p : points) {
    const std::uint64_t c0 = st.ns(Call::create), r0 = st.ns(Call::release);
    PhysHandle h = 0;
    ASSERT_EQ(d.create(p.size, &h), Status::ok);
    ASSERT_EQ(d.release(h), Status::ok);
    EXPECT_EQ(st.ns(Call::create) - c0, p.create_ns) << p.size;
    EXPECT_EQ(st.ns(Call::release) - r0, p.release_ns) << p.size;
    EXPECT_EQ(HostDriver::modeled_ns(Call::create, p.size), p.create_ns);
  }
}

TEST(HostDriverCost, MapUnmapAccessAndReserve) {
  HostDriver d;
  const DriverStats& st = d.stats();
  DevPtr va = 0;
  PhysHandle h = 0;
  ASSERT_EQ(d.reserve(4 * kG, &va), Status::ok);
  EXPECT_EQ(st.ns(Call::reserve), 5'000u);
  ASSERT_EQ(d.create(3 * kG, &h), Status::ok);
  for (std::size_t i = 0; i < 3; ++i) ASSERT_EQ(d.map(va + i * kG, kG, h, i * kG), Status::ok);
  EXPECT_EQ(st.ns(Call::map), 3 * 1'750u);
  ASSERT_EQ(d.set_access(va, 3 * kG), Status::ok);
  EXPECT_EQ(st.ns(Call::set_access), 3 * 48'000u) << "per mapping covered, not per call";
  ASSERT_EQ(d.set_access(va + kG, kG), Status::ok);
  EXPECT_EQ(st.ns(Call::set_access), 4 * 48'000u);
  for (std::size_t i = 0; i < 3; ++i) ASSERT_EQ(d.unmap(va + i * kG, kG), Status::ok);
  EXPECT_EQ(st.ns(Call::unmap), 3 * 25'000u);
  ASSERT_EQ(d.free_reserve(va, 4 * kG), Status::ok);
  EXPECT_EQ(st.ns(Call::free_reserve), 5'000u);
}

TEST(HostDriverCost, EventsAndOtherCalls) {
  HostDriver d;
  const DriverStats& st = d.stats();
  EventHandle e = 0;
  bool capturing = false;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  ASSERT_EQ(d.event_record(e, 0), Status::ok);
  ASSERT_EQ(d.event_query(e), Status::ok);
  ASSERT_EQ(d.stream_wait_event(0, e), Status::ok);
  ASSERT_EQ(d.stream_is_capturing(0, &capturing), Status::ok);
  EXPECT_EQ(st.ns(Call::event_create), 1'000u);
  EXPECT_EQ(st.ns(Call::event_record), 2'000u);
  EXPECT_EQ(st.ns(Call::event_query), 2'000u);
  EXPECT_EQ(st.ns(Call::stream_wait_event), 2'000u);
  EXPECT_EQ(st.ns(Call::stream_is_capturing), 1'000u);
  EXPECT_EQ(st.total_ns(), 8'000u);
}

TEST(HostDriverCost, FailedCallsCostOneMicrosecond) {
  HostDriver d;
  PhysHandle h = 0;
  EXPECT_EQ(d.create(kG / 2, &h), Status::invalid_value);
  EXPECT_EQ(d.stats().ns(Call::create), 1'000u);
  d.fail_nth(Call::create, 1);
  EXPECT_EQ(d.create(512 * kMiB, &h), Status::out_of_memory);
  EXPECT_EQ(d.stats().ns(Call::create), 2'000u);
}

TEST(HostDriverCost, OffChargesNothingButStillCounts) {
  HostDriver::Options o;
  o.cost_model = false;
  HostDriver d(o);
  PhysHandle h = 0;
  ASSERT_EQ(d.create(kG, &h), Status::ok);
  EXPECT_EQ(d.create(kG / 2, &h), Status::invalid_value);
  ASSERT_EQ(d.release(h), Status::ok);
  EXPECT_EQ(d.stats().calls(Call::create), 2u);
  EXPECT_EQ(d.stats().failures(Call::create), 1u);
  EXPECT_EQ(d.stats().total_ns(), 0u);
}

// --- streams and events ------------------------------------------------------------------------

TEST(HostDriverStreams, QueryFollowsSubmittedAndCompletedWork) {
  HostDriver d;
  EventHandle e = 0;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  ASSERT_EQ(d.event_record(e, 5), Status::ok);
  EXPECT_EQ(d.event_query(e), Status::ok) << "recorded on an idle stream";
  d.enqueue_work(5);
  EXPECT_EQ(d.event_query(e), Status::ok) << "work submitted after the record does not matter";
  ASSERT_EQ(d.event_record(e, 5), Status::ok);
  EXPECT_EQ(d.event_query(e), Status::not_ready);
  d.complete_work(0);
  d.complete_work(6);
  EXPECT_EQ(d.event_query(e), Status::not_ready) << "other streams' work does not matter";
  d.complete_work(5);
  EXPECT_EQ(d.event_query(e), Status::ok);
  EXPECT_EQ(d.stats().failures(Call::event_query), 0u) << "not_ready is an answer, not a failure";
}

TEST(HostDriverStreams, SynchronizeCompletesUpToTheRecordedPoint) {
  HostDriver d;
  EventHandle first = 0, second = 0;
  ASSERT_EQ(d.event_create(&first), Status::ok);
  ASSERT_EQ(d.event_create(&second), Status::ok);
  d.enqueue_work(3);
  ASSERT_EQ(d.event_record(first, 3), Status::ok);
  d.enqueue_work(3);
  ASSERT_EQ(d.event_record(second, 3), Status::ok);
  EXPECT_EQ(d.event_query(first), Status::not_ready);
  EXPECT_EQ(d.event_synchronize(first), Status::ok);
  EXPECT_EQ(d.event_query(first), Status::ok);
  EXPECT_EQ(d.event_query(second), Status::not_ready);
  EXPECT_EQ(d.event_synchronize(second), Status::ok);
  EXPECT_EQ(d.event_query(second), Status::ok);
}

TEST(HostDriverStreams, DefaultStreamIsAStreamLikeAnyOther) {
  HostDriver d;
  EventHandle e = 0;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  d.enqueue_work(0);
  ASSERT_EQ(d.event_record(e, 0), Status::ok);
  EXPECT_EQ(d.event_query(e), Status::not_ready);
  d.complete_work(0);
  EXPECT_EQ(d.event_query(e), Status::ok);
}

TEST(HostDriverStreams, UnknownAndDestroyedEventsAreInvalidHandles) {
  HostDriver d;
  EventHandle e = 0;
  ASSERT_EQ(d.event_create(&e), Status::ok);
  EXPECT_EQ(d.live_events(), 1u);
  ASSERT_EQ(d.event_destroy(e), Status::ok);
  EXPECT_EQ(d.live_events(), 0u);
  for (EventHandle bad : {e, EventHandle{0}, EventHandle{12345}}) {
    EXPECT_EQ(d.event_record(bad, 0), Status::invalid_handle);
    EXPECT_EQ(d.event_query(bad), Status::invalid_handle);
    EXPECT_EQ(d.event_synchronize(bad), Status::invalid_handle);
    EXPECT_EQ(d.stream_wait_event(0, bad), Status::invalid_handle);
    EXPECT_EQ(d.event_destroy(bad), Status::invalid_handle);
  }
}

TEST(HostDriverStreams, CaptureIsWhatTheTestSays) {
  HostDriver d;
  bool capturing = true;
  ASSERT_EQ(d.stream_is_capturing(9, &capturing), Status::ok);
  EXPECT_FALSE(capturing);
  d.set_capturing(9, true);
  ASSERT_EQ(d.stream_is_capturing(9, &capturing), Status::ok);
  EXPECT_TRUE(capturing);
  ASSERT_EQ(d.stream_is_capturing(0, &capturing), Status::ok);
  EXPECT_FALSE(capturing);
  d.set_capturing(9, false);
  ASSERT_EQ(d.stream_is_capturing(9, &capturing), Status::ok);
  EXPECT_FALSE(capturing);
}

// --- names (pool/names.cpp) --------------------------------------------------------------------

TEST(Names, EveryValueHasItsOwnName) {
  std::set<std::string> calls;
  for (int i = 0; i < kCallKinds; ++i) {
    const std::string n = call_name(static_cast<Call>(i));
    EXPECT_NE(n, "unrecognized") << i;
    calls.insert(n);
  }
  EXPECT_EQ(calls.size(), static_cast<std::size_t>(kCallKinds));
  EXPECT_STREQ(call_name(Call::set_access), "set_access");
  EXPECT_STREQ(call_name(Call::count_), "unrecognized");

  EXPECT_STREQ(status_name(Status::ok), "ok");
  EXPECT_STREQ(status_name(Status::out_of_memory), "out_of_memory");
  EXPECT_STREQ(status_name(Status::not_ready), "not_ready");
  EXPECT_STREQ(status_name(Status::unknown), "unknown");
  EXPECT_STREQ(status_name(static_cast<Status>(217)), "unrecognized");

  std::set<std::string> kinds;
  for (int i = 0; i <= static_cast<int>(EventKind::offload); ++i) {
    const std::string n = event_kind_name(static_cast<EventKind>(i));
    EXPECT_NE(n, "unrecognized") << i;
    kinds.insert(n);
  }
  EXPECT_EQ(kinds.size(), static_cast<std::size_t>(EventKind::offload) + 1);
  EXPECT_STREQ(event_kind_name(EventKind::stitch), "stitch");
  EXPECT_STREQ(event_kind_name(static_cast<EventKind>(200)), "unrecognized");
}

}  // namespace
}  // namespace glake::pool
