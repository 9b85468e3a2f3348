// tracer/trace.cpp: the names of trace ops (the file format's spelling; see FORMAT.md).
#include "tracer/trace.h"

#include <string_view>

namespace glake::tracer {
namespace {
constexpr const char* kOpNames[kOps] = {"a", "f", "create", "release", "map", "unmap", "stitch", "reclaim", "oom",
                                        "offload"};
}  // namespace

const char* op_name(Op op) {
  auto i = static_cast<unsigned>(op);
  return i < static_cast<unsigned>(kOps) ? kOpNames[i] : nullptr;
}

std::optional<Op> op_from_name(std::string_view name) {
  for (int i = 0; i < kOps; ++i)
    if (name == kOpNames[i]) return static_cast<Op>(i);
  return std::nullopt;
}

}  // namespace glake::tracer
