// tracer/clock.cpp: see clock.h.
#include "tracer/clock.h"

#include <chrono>
#include <fstream>
#include <thread>

namespace glake::tracer {
namespace {

bool kernel_uses_tsc() {
  std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string s;
  return static_cast<bool>(f >> s) && s == "tsc";
}

}  // namespace

TraceClock::TraceClock(const std::string& mode) {
#if defined(__x86_64__)
  // The TSC only when asked for: on virtual machines its rate was seen to disagree with the monotonic
  // clock by a factor of 2.6, and the recorder reads the clock only at checkpoints anyway.
  tsc_ = mode == "tsc" && kernel_uses_tsc();
#else
  (void)mode;
#endif
  start_ns_ = monotonic_ns();
  start_ticks_ = ticks();
  start_unix_us_ = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  if (tsc_) {
    // A first estimate over 2 ms, so that times are sensible before the first calibrate().
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    calibrate();
  }
}

void TraceClock::calibrate() noexcept {
  if (!tsc_) return;
  std::uint64_t ns = monotonic_ns();
  std::uint64_t t = ticks();
  if (t > start_ticks_ && ns > start_ns_)
    ns_per_tick_.store(static_cast<double>(ns - start_ns_) / static_cast<double>(t - start_ticks_),
                       std::memory_order_relaxed);
}

std::uint64_t TraceClock::to_us(std::uint64_t t) const noexcept {
  if (t <= start_ticks_) return 0;
  return static_cast<std::uint64_t>(static_cast<double>(t - start_ticks_) *
                                    ns_per_tick_.load(std::memory_order_relaxed) / 1000.0);
}

}  // namespace glake::tracer
