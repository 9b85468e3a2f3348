// tracer/format_util.cpp: see format_util.h.
#include "tracer/format_util.h"

#include <cmath>

#include <fmt/format.h>

namespace glake::tracer {

std::string fmt_bytes(std::uint64_t b) {
  constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string fmt_bytes_signed(std::int64_t b) {
  if (b >= 0) return fmt_bytes(static_cast<std::uint64_t>(b));
  return "-" + fmt_bytes(static_cast<std::uint64_t>(-(b + 1)) + 1);
}

std::string fmt_time_us(std::uint64_t t) {
  if (t < 1000) return fmt::format("{} us", t);
  if (t < 1000000) return fmt::format("{:.1f} ms", static_cast<double>(t) / 1e3);
  double s = static_cast<double>(t) / 1e6;
  if (s < 60) return fmt::format("{:.2f} s", s);
  auto m = static_cast<std::uint64_t>(s / 60);
  return fmt::format("{}m{:04.1f}s", m, s - static_cast<double>(m) * 60);
}

std::string fmt_pct(double f) { return std::isnan(f) ? std::string("n/a") : fmt::format("{:.2f}%", f * 100); }

}  // namespace glake::tracer
