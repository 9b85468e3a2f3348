// pool/observer.h: how the tracer (or anything else) watches the pool without the pool knowing it.
//
// The pool calls on_event() after each state change, with the pool's mutex held and no other lock of
// its own: one pool's events are serialised, in the order of the changes (a page's create before its
// map, maps before the allocation they serve). So an observer must be fast, must not call back into the
// pool (it would deadlock) and must not throw.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pool/driver.h"

namespace glake::pool {

enum class EventKind : std::uint8_t {
  alloc,     // address, size (requested), stream
  free,      // address, size (requested), stream
  create,    // physical chunk created: size
  release,   // physical chunk released: size
  map,       // address, size
  unmap,     // address, size
  stitch,    // address, size of the new block; aux = chunks moved into it
  reclaim,   // size = bytes reclaimed
  oom,       // size = the request that failed
  offload,   // reserved for LayerKV
};
const char* event_kind_name(EventKind k);

struct PoolEvent {
  EventKind kind;
  int device;
  StreamHandle stream;
  DevPtr address;
  std::size_t size;
  std::uint64_t aux;
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(const PoolEvent& e) noexcept = 0;
};

}  // namespace glake::pool
