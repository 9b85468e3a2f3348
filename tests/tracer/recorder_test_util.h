// tests/tracer/recorder_test_util.h: helpers of the recorder tests: events made short, a pool on the
// host driver with the tracer attached, and an allocation site outside glake's namespaces (stack
// frames in glake:: are trimmed as glake's own).
#pragma once

#include <cstdint>
#include <memory>

#include "pool/allocator.h"
#include "pool/host_driver.h"
#include "tracer/pool_trace.h"
#include "tracer/recorder.h"

namespace glake::tracer::testing_util {

inline RecordEvent ev(Op op, std::uint64_t addr, std::uint64_t size, std::uint64_t stream = 0,
                      std::uint32_t device = 0, std::uint64_t aux = 0) {
  RecordEvent e;
  e.op = op;
  e.addr = addr;
  e.size = size;
  e.stream = stream;
  e.device = device;
  e.aux = aux;
  return e;
}

// A pool over a host driver, with a recorder watching it.
struct TracedPool {
  explicit TracedPool(RecorderOptions ro = {}, std::size_t capacity = std::size_t{1} << 36,
                      pool::Config config = {}, int device = 0)
      : driver(driver_options(capacity, device)), pool(driver, config), recorder(ro), observer(&recorder) {
    pool.set_observer(&observer);
  }
  ~TracedPool() { pool.set_observer(nullptr); }
  static pool::HostDriver::Options driver_options(std::size_t capacity, int device) {
    pool::HostDriver::Options o;
    o.capacity = capacity;
    o.cost_model = false;
    o.device = device;
    return o;
  }
  pool::HostDriver driver;
  pool::Allocator pool;
  Recorder recorder;
  PoolTraceObserver observer;
};

}  // namespace glake::tracer::testing_util

// Outside glake's namespaces, so that a stack keeps it (see symbolize.h).
extern "C" __attribute__((noinline)) inline void glake_test_alloc_site(glake::tracer::Recorder* r, std::uint64_t addr) {
  r->record(glake::tracer::testing_util::ev(glake::tracer::Op::alloc, addr, 4096));
  asm volatile("" ::: "memory");
}
extern "C" __attribute__((noinline)) inline void glake_test_lane_site(glake::tracer::Recorder::Lane* l, std::uint64_t addr) {
  l->record(glake::tracer::Op::alloc, 0, addr, 4096, 0);
  asm volatile("" ::: "memory");
}
extern "C" __attribute__((noinline)) inline void glake_test_other_site(glake::tracer::Recorder* r, std::uint64_t addr) {
  r->record(glake::tracer::testing_util::ev(glake::tracer::Op::alloc, addr, 8192));
  asm volatile("" ::: "memory");
}
