// shim/dlsym_stub.cpp: libglake.so's dlsym.
//
// glibc resolves RTLD_DEFAULT and RTLD_NEXT relative to the calling object, which it finds from its
// return address. So dlsym is an assembly stub that jumps (never calls) to glibc's dlsym for those
// pseudo-handles, keeping the caller's return address, and jumps to glake_dlsym_explicit
// (hooks_driver.cpp) for real handles, whose answer does not depend on the caller. RTLD_DEFAULT is 0
// and RTLD_NEXT is -1 on glibc.
//
// glibc's dlsym is found on first use, by glake_resolve_real_dlsym (the stub saves the two argument
// registers around it). That can be before anything else in the process has initialised: the
// sanitizers' runtimes call dlsym(RTLD_NEXT, ...) while they set themselves up. So this file is
// compiled without sanitizer instrumentation (shim/meson.build) and calls nothing but dlvsym.
#include <dlfcn.h>

namespace {
void* no_dlsym(void*, const char*) { return nullptr; }
}  // namespace

extern "C" {

__attribute__((visibility("hidden"))) void* glake_real_dlsym_ptr = nullptr;

__attribute__((visibility("hidden"))) void* glake_resolve_real_dlsym() {
  void* p = __atomic_load_n(&glake_real_dlsym_ptr, __ATOMIC_ACQUIRE);
  if (p != nullptr) return p;
  // RTLD_NEXT from here: the definition after libglake.so's own, i.e. glibc's.
  static const char* const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
  for (const char* version : versions) {
    p = dlvsym(RTLD_NEXT, "dlsym", version);
    if (p != nullptr) break;
  }
  if (p == nullptr) p = reinterpret_cast<void*>(&no_dlsym);
  __atomic_store_n(&glake_real_dlsym_ptr, p, __ATOMIC_RELEASE);
  return p;
}

}  // extern "C"

#if defined(__x86_64__)
asm(R"(
  .text
  .globl dlsym
  .type dlsym, @function
  .p2align 4
dlsym:
  .cfi_startproc
  testq %rdi, %rdi
  je 1f
  cmpq $-1, %rdi
  je 1f
  jmp glake_dlsym_explicit
1:
  movq glake_real_dlsym_ptr(%rip), %rax
  testq %rax, %rax
  je 2f
  jmp *%rax
2:
  pushq %rdi
  .cfi_adjust_cfa_offset 8
  pushq %rsi
  .cfi_adjust_cfa_offset 8
  subq $8, %rsp
  .cfi_adjust_cfa_offset 8
  call glake_resolve_real_dlsym
  addq $8, %rsp
  .cfi_adjust_cfa_offset -8
  popq %rsi
  .cfi_adjust_cfa_offset -8
  popq %rdi
  .cfi_adjust_cfa_offset -8
  jmp *%rax
  .cfi_endproc
  .size dlsym, .-dlsym
)");
#elif defined(__aarch64__)
asm(R"(
  .text
  .globl dlsym
  .type dlsym, %function
  .p2align 4
dlsym:
  .cfi_startproc
  cbz x0, 1f
  cmn x0, #1
  b.eq 1f
  b glake_dlsym_explicit
1:
  adrp x16, glake_real_dlsym_ptr
  ldr x16, [x16, :lo12:glake_real_dlsym_ptr]
  cbz x16, 2f
  br x16
2:
  stp x29, x30, [sp, #-32]!
  .cfi_def_cfa_offset 32
  .cfi_offset 29, -32
  .cfi_offset 30, -24
  mov x29, sp
  stp x0, x1, [sp, #16]
  bl glake_resolve_real_dlsym
  mov x16, x0
  ldp x0, x1, [sp, #16]
  ldp x29, x30, [sp], #32
  .cfi_def_cfa_offset 0
  .cfi_restore 29
  .cfi_restore 30
  br x16
  .cfi_endproc
  .size dlsym, .-dlsym
)");
#else
#error "libglake.so's dlsym stub is written for x86-64 and aarch64 only"
#endif
