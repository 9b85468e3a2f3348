// pool/stats.h: what the pool reports about itself, current and peak.
#pragma once

#include <cstdint>

namespace glake::pool {

struct Gauge {
  std::uint64_t current = 0;
  std::uint64_t peak = 0;
  void add(std::uint64_t n) noexcept {
    current += n;
    if (current > peak) peak = current;
  }
  void sub(std::uint64_t n) noexcept { current -= n; }
  void reset_peak() noexcept { peak = current; }
};

struct Stats {
  Gauge requested;  // bytes the callers asked for, of live allocations
  Gauge blocks;     // bytes of live blocks (requests rounded up to the pool's units)
  Gauge physical;   // bytes of physical memory the pool holds (created, not yet released)
  Gauge mapped;     // bytes of virtual address space backed by a mapping
  std::uint64_t allocs = 0;
  std::uint64_t frees = 0;
  std::uint64_t creates = 0;   // physical chunks created
  std::uint64_t releases = 0;  // physical chunks released
  std::uint64_t maps = 0;
  std::uint64_t unmaps = 0;
  std::uint64_t stitches = 0;  // blocks formed by moving free chunks into a new virtual range
  std::uint64_t reclaims = 0;  // times cached memory was reclaimed before out-of-memory
  std::uint64_t ooms = 0;      // out-of-memory errors returned to a caller
  std::uint64_t driver_ns = 0; // driver time (modeled on the host driver, measured on CUDA)
  std::uint64_t slow_allocs = 0;  // allocations that found no cached block at once (the slow path)
  std::uint64_t slow_ns = 0;      // host time in that slow path (settle, stitch, growth; driver included)
};

}  // namespace glake::pool
