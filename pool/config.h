// pool/config.h: the pool's settings, read from GLAKE_* environment variables.
//
// A bad value never crashes: it is reported once, naming the variable and the accepted values, and
// the default is used instead.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace glake::pool {

struct Config {
  // Requests up to this size are packed into shared one-page chunks (GLAKE_SMALL_LIMIT, bytes, suffixes
  // K/M/G; at most half a page). 0: none are; every request is placed among the large blocks, sharing
  // its end pages with its neighbours, which held less memory over the replays as a whole and costs
  // less per allocation, but is not measured on the GPU yet (README, "2026-12-06, afternoon").
  std::size_t small_limit = std::size_t{1} << 20;
  // Stitch free chunks into new virtual ranges when no cached block fits (GLAKE_STITCH=0|1).
  bool stitch = true;
  // Most physical bytes the pool may hold; 0 means no limit but the device's (GLAKE_LIMIT).
  std::size_t limit = 0;
  // Size of each virtual reservation; 0 means twice the device's memory (GLAKE_VA_RESERVE).
  std::size_t va_reserve = 0;
  // Largest physical allocation the pool makes at once (GLAKE_MAX_CREATE, bytes; 0: the granularity).
  // When it grows by several consecutive granules it creates them as allocations of up to this size,
  // because the GPU streams faster through large ones (tests/gpu/bench_chunk_bandwidth.cu). Such an
  // allocation is mapped, stitched and released only whole, so it costs memory: opt-in (README,
  // "2026-12-06, afternoon").
  std::size_t max_create = 0;
  // Let stitch windows begin with free page tails sandwiched between live blocks, through a second
  // mapping of their page (GLAKE_LEND=0|1; block.h). Opt-in: the replays gain on some traces and lose
  // on others, and aligned requests carved from such a window pay a split and a merge per reuse
  // (README, "2026-12-06, night").
  bool lend = false;
};

// Reads the GLAKE_* variables of the pool. Problems are appended to `errors`, one line each, naming the
// variable and the accepted values; the field keeps its default.
Config config_from_env(std::vector<std::string>* errors);

// Parses a byte count such as "512", "64K", "2M", "1G" (binary units). Returns false on bad input.
bool parse_bytes(const char* text, std::size_t* out);

}  // namespace glake::pool
