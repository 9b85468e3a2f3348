// shim/api.cpp: the public C API of glake.h; forwards to the router.
#include "shim/glake.h"

#include "shim/router.h"

#define GLAKE_API extern "C" __attribute__((visibility("default")))

using glake::shim::router;

GLAKE_API const char* glake_version(void) { return GLAKE_VERSION_STRING; }
GLAKE_API int glake_status(void) { return router().status(); }
GLAKE_API int glake_stats(int device, glake_stats_t* out, size_t out_size) {
  return router().stats(device, out, out_size);
}
GLAKE_API int glake_trim(int device, size_t keep) {
  try {
    return router().trim(device, keep);
  } catch (...) {
    return -1;
  }
}
GLAKE_API int glake_reset_peaks(int device) { return router().reset_peaks(device); }
GLAKE_API int glake_validate(int device, char* msg, size_t msg_size) { return router().validate(device, msg, msg_size); }
GLAKE_API int glake_device_of(const void* ptr) { return router().device_of(ptr); }
GLAKE_API int glake_owns(const void* ptr) { return router().device_of(ptr) >= 0 ? 1 : 0; }
GLAKE_API int glake_trace_dump(const char* path) { return router().trace_dump(path); }
