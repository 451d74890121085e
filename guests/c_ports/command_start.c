// The entry point of the command, replacing wasi-libc's crt1-command.o
// (link with `-nostartfiles`).
//
// Debian 12's wasi-libc (git 2022-05-10) has a `_start` that leaves calling
// the C constructors to the linker: wasm-ld then wraps *every* export of a
// command in `__wasm_call_ctors` ... `__wasm_call_dtors`, `cabi_realloc`
// included. The host calls `cabi_realloc` while lowering a result into the
// guest, where the component may not call out; the wrapper's destructors
// flush stdio through WASI imports and the component traps with "cannot
// leave component instance". A `_start` that calls `__wasm_call_ctors`
// itself (as newer wasi-libc's does) turns that wrapping off.
//
// Not needed with a wasi-libc newer than 2023 (e.g. wasi-sdk 20+), whose
// crt1-command.o does the same: drop this file and `-nostartfiles` there.

#include <stdlib.h>

extern void __wasm_call_ctors(void);
// wasi-libc's: reads argv through `args_get` and calls `main`.
extern int __original_main(void);

__attribute__((export_name("_start"))) void _start(void) {
  __wasm_call_ctors();
  // exit runs the destructors (flushing stdout) and reports the status.
  exit(__original_main());
}
