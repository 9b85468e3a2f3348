// tracer/clock.h: the recorder's clock: cheap ticks on the hot path, microseconds at dump time.
//
// On x86-64, when the kernel's clocksource is "tsc" (the kernel checked that the TSC is invariant and
// synchronised across CPUs), a tick is one TSC count (rdtsc, ~10 ns against ~25 ns for clock_gettime);
// elsewhere, or with GLAKE_TRACE_CLOCK=monotonic, a tick is one nanosecond of CLOCK_MONOTONIC.
// Ticks become microseconds since the clock's start by a line through two points (start, and the
// moment of conversion), so the conversion is monotonic in the ticks; its precision grows with the
// trace's length.
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>
#include <string>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace glake::tracer {

inline std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

class TraceClock {
 public:
  // mode: "auto", "tsc" (falls back if unavailable) or "monotonic".
  explicit TraceClock(const std::string& mode = "auto");

  std::uint64_t ticks() const noexcept {
#if defined(__x86_64__)
    if (tsc_) return __rdtsc();
#endif
    return monotonic_ns();
  }
  // Microseconds from the clock's start to `ticks` (0 for ticks before the start).
  std::uint64_t to_us(std::uint64_t ticks) const noexcept;
  std::uint64_t now_us() const noexcept { return to_us(ticks()); }
  // Re-fits ticks per microsecond on [start, now]; the dump calls it once before converting.
  void calibrate() noexcept;
  bool tsc() const { return tsc_; }
  const char* name() const { return tsc_ ? "tsc" : "monotonic"; }
  std::uint64_t start_unix_us() const { return start_unix_us_; }

 private:
  bool tsc_ = false;
  std::uint64_t start_ticks_ = 0, start_ns_ = 0, start_unix_us_ = 0;
  std::atomic<double> ns_per_tick_{1.0};  // calibrate() may run while other threads convert
};

}  // namespace glake::tracer
