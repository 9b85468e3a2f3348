// tracer/format_util.h: how the trace tools print bytes, times and ratios for people.
#pragma once

#include <cstdint>
#include <string>

namespace glake::tracer {

// "512 B", "1.50 KiB", "7.24 GiB" (binary units, two decimals).
std::string fmt_bytes(std::uint64_t bytes);
// Signed: "-1.50 MiB".
std::string fmt_bytes_signed(std::int64_t bytes);
// "850 us", "12.3 ms", "4.56 s", "2m03.4s".
std::string fmt_time_us(std::uint64_t t_us);
// "12.34%", "n/a" for NaN.
std::string fmt_pct(double fraction);

}  // namespace glake::tracer
