// shim/pytorch.h: what the shim did about PyTorch's allocator choice (pytorch.cpp), for the router to
// report once CUDA is in use.
#pragma once

namespace glake::shim {

// A line to print once on the first CUDA call, or null: what glake can and cannot do under the
// PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF the user chose (e.g. expandable_segments).
const char* pytorch_note();

}  // namespace glake::shim
