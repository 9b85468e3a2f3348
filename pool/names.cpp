// pool/names.cpp: printable names of the pool's enums (Status, Call, EventKind).
//
// Names are the enumerators' own spellings, so logs, traces and code read alike; they are stable (the
// tracer writes them to JSON). A value outside its enum (e.g. a CUresult the enum does not list) is
// named "unrecognized", never nullptr.
#include "pool/driver.h"
#include "pool/observer.h"

namespace glake::pool {

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_value: return "invalid_value";
    case Status::out_of_memory: return "out_of_memory";
    case Status::not_initialized: return "not_initialized";
    case Status::deinitialized: return "deinitialized";
    case Status::invalid_context: return "invalid_context";
    case Status::invalid_handle: return "invalid_handle";
    case Status::not_found: return "not_found";
    case Status::not_ready: return "not_ready";
    case Status::not_permitted: return "not_permitted";
    case Status::not_supported: return "not_supported";
    case Status::unknown: return "unknown";
  }
  return "unrecognized";
}

const char* call_name(Call c) {
  switch (c) {
    case Call::reserve: return "reserve";
    case Call::free_reserve: return "free_reserve";
    case Call::create: return "create";
    case Call::release: return "release";
    case Call::map: return "map";
    case Call::unmap: return "unmap";
    case Call::set_access: return "set_access";
    case Call::export_fd: return "export_fd";
    case Call::event_create: return "event_create";
    case Call::event_destroy: return "event_destroy";
    case Call::event_record: return "event_record";
    case Call::event_query: return "event_query";
    case Call::event_synchronize: return "event_synchronize";
    case Call::stream_wait_event: return "stream_wait_event";
    case Call::stream_is_capturing: return "stream_is_capturing";
    case Call::stream_synchronize: return "stream_synchronize";
    case Call::memcpy_async: return "memcpy_async";
    case Call::host_alloc: return "host_alloc";
    case Call::host_free: return "host_free";
    case Call::count_: break;
  }
  return "unrecognized";
}

const char* event_kind_name(EventKind k) {
  switch (k) {
    case EventKind::alloc: return "alloc";
    case EventKind::free: return "free";
    case EventKind::create: return "create";
    case EventKind::release: return "release";
    case EventKind::map: return "map";
    case EventKind::unmap: return "unmap";
    case EventKind::stitch: return "stitch";
    case EventKind::reclaim: return "reclaim";
    case EventKind::oom: return "oom";
    case EventKind::offload: return "offload";
  }
  return "unrecognized";
}

}  // namespace glake::pool
