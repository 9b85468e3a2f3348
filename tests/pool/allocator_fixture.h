// tests/pool/allocator_fixture.h: a pool over the host driver with a reference model of what every
// live block must hold. Each live block is filled through its pointer with a pattern unique to it and
// checked later, so moving pages around (stitching) must keep every byte where it belongs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "pool/allocator.h"
#include "pool/host_driver.h"

namespace glake::pool::testing {

inline std::uint64_t pattern_word(std::uint64_t id, std::size_t i) {
  return (id * 0x9E3779B97F4A7C15ull) ^ (i * 0xC2B2AE3D27D4EB4Full) ^ 0x5555;
}

struct LiveBlock {
  std::uint64_t id;
  std::size_t size;
  StreamHandle stream;
};

class PoolModel {
 public:
  PoolModel(HostDriver::Options o, Config c) : driver(o), pool(driver, c) {}

  Status alloc(std::size_t size, StreamHandle s, DevPtr* out = nullptr) {
    DevPtr p = 0;
    Status r = pool.allocate(size, s, &p);
    if (out != nullptr) *out = p;
    if (r != Status::ok || p == 0) return r;
    EXPECT_EQ(live.count(p), 0u) << "address handed out twice";
    std::uint64_t id = next_id++;
    live[p] = {id, size, s};
    fill(p, id, size);
    return r;
  }
  Status free(DevPtr p, StreamHandle s) {
    Status r = pool.free(p, s);
    if (r == Status::ok) live.erase(p);
    return r;
  }
  static void fill(DevPtr p, std::uint64_t id, std::size_t size) {
    auto* w = reinterpret_cast<std::uint64_t*>(p);
    for (std::size_t i = 0; i < size / 8; ++i) w[i] = pattern_word(id, i);
    for (std::size_t i = size / 8 * 8; i < size; ++i) reinterpret_cast<unsigned char*>(p)[i] = static_cast<unsigned char>(id);
  }
  // Empty if every live block holds its pattern.
  std::string check() const {
    for (const auto& [p, b] : live) {
      const auto* w = reinterpret_cast<const std::uint64_t*>(p);
      for (std::size_t i = 0; i < b.size / 8; ++i)
        if (w[i] != pattern_word(b.id, i))
          return "block " + std::to_string(b.id) + " corrupted at word " + std::to_string(i);
    }
    return {};
  }
  std::size_t live_bytes() const {
    std::size_t n = 0;
    for (const auto& [p, b] : live) n += b.size;
    return n;
  }
  void free_all() {
    while (!live.empty()) ASSERT_EQ(free(live.begin()->first, live.begin()->second.stream), Status::ok);
  }

  HostDriver driver;
  Allocator pool;
  std::map<DevPtr, LiveBlock> live;
  std::uint64_t next_id = 1;
};

// A random workload on two streams: `ops` allocations (sizes up to 10 pages, a fifth of them small) or
// frees (some with work still queued on their stream), a trim to 4 pages every 50 ops. after(op,
// status) runs after each op (status: the allocation's, or ok); a fatal failure in it stops the loop.
template <class After>
void churn(PoolModel& m, std::mt19937_64& rng, std::size_t page, int ops, After after) {
  for (int op = 0; op < ops; ++op) {
    StreamHandle s = 1 + rng() % 2;
    Status r = Status::ok;
    if (rng() % 2 == 0 || m.live.empty()) {
      std::size_t size = rng() % 5 == 0 ? 1 + rng() % 4000 : 1 + rng() % (10 * page);
      r = m.alloc(size, s);
    } else {
      auto it = m.live.begin();
      std::advance(it, static_cast<long>(rng() % m.live.size()));
      if (rng() % 4 == 0) m.driver.enqueue_work(it->second.stream);
      ASSERT_EQ(m.free(it->first, it->second.stream), Status::ok);
      if (rng() % 8 == 0) m.driver.complete_work(s);
    }
    if (op % 50 == 49) m.pool.trim(4 * page);
    after(op, r);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The pool's placement variants that tests run through: the defaults (small requests packed into
// shared one-page chunks), every request among the large blocks (GLAKE_SMALL_LIMIT=0), growth in
// allocations of up to four pages (GLAKE_MAX_CREATE), page tails lent to windows (GLAKE_LEND=1, with
// every request among the large blocks, where most tails arise).
struct Variant {
  const char* name;
  Config config;
};
inline std::vector<Variant> variants(std::size_t page) {
  Config no_pieces, large, lend;
  no_pieces.small_limit = 0;
  large.max_create = 4 * page;
  lend.small_limit = 0;
  lend.lend = true;
  return {{"defaults", Config{}}, {"no pieces", no_pieces}, {"large allocations", large}, {"lent tails", lend}};
}

inline HostDriver::Options small_pages(std::size_t capacity, std::size_t granularity = 64 << 10) {
  HostDriver::Options o;
  o.capacity = capacity;
  o.granularity = granularity;
  return o;
}

}  // namespace glake::pool::testing
