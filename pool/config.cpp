// pool/config.cpp: GLAKE_* variables of the pool. Each bad value is reported once by the caller and
// replaced by the default.
#include "pool/config.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace glake::pool {

bool parse_bytes(const char* text, std::size_t* out) {
  // A digit first: strtoull would skip white space and take a sign (" -1" is 2^64-1).
  if (text == nullptr || *text < '0' || *text > '9') return false;
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text) return false;
  unsigned shift = 0;
  switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; ++end; break;
    case 'm': case 'M': shift = 20; ++end; break;
    case 'g': case 'G': shift = 30; ++end; break;
    case 't': case 'T': shift = 40; ++end; break;
    default: return false;
  }
  if (*end == 'i' || *end == 'I') ++end;          // "MiB" style
  if (*end == 'b' || *end == 'B') ++end;
  if (*end != '\0') return false;
  if (shift != 0 && v > (~0ull >> shift)) return false;
  *out = static_cast<std::size_t>(v << shift);
  return true;
}

namespace {

// `zero`: what 0 means for this variable.
void read_bytes(const char* name, std::size_t* field, std::size_t min, std::vector<std::string>* errors,
                const char* zero = "the default") {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return;  // empty is unset, as for the shim's and the tracer's variables
  std::size_t parsed = 0;
  if (!parse_bytes(v, &parsed) || (parsed != 0 && parsed < min)) {
    errors->push_back(std::string(name) + "='" + v + "' is not a byte count (accepted: an integer with an " +
                      "optional K, M, G or T suffix" + (min > 1 ? ", at least " + std::to_string(min) : "") +
                      ", or 0 for " + zero + "); using the default");
    return;
  }
  *field = parsed;
}

void read_bool(const char* name, bool* field, std::vector<std::string>* errors) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return;  // empty is unset (GLAKE_STITCH= in a script turns nothing off)
  std::string s(v);
  if (s == "1" || s == "true" || s == "on" || s == "yes") {
    *field = true;
  } else if (s == "0" || s == "false" || s == "off" || s == "no") {
    *field = false;
  } else {
    errors->push_back(std::string(name) + "='" + s + "' is not a switch (accepted: 0, 1, on, off, true, false, " +
                      "yes, no); using the default");
  }
}

}  // namespace

Config config_from_env(std::vector<std::string>* errors) {
  Config c;
  read_bytes("GLAKE_SMALL_LIMIT", &c.small_limit, 512, errors, "none");
  read_bool("GLAKE_STITCH", &c.stitch, errors);
  read_bool("GLAKE_LEND", &c.lend, errors);
  read_bytes("GLAKE_LIMIT", &c.limit, 1, errors);
  read_bytes("GLAKE_VA_RESERVE", &c.va_reserve, std::size_t{1} << 30, errors);
  read_bytes("GLAKE_MAX_CREATE", &c.max_create, 1, errors);
  return c;
}

}  // namespace glake::pool
