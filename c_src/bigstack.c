// Stacks of a known size. A dirty scheduler's stack is what the VM was
// started with (+sssdcpu: 40 kilowords, 320 KiB, by default; 20 at least),
// and threads from enif_thread_create get the platform default (8 MiB on
// Linux, 512 KiB on macOS): code whose recursion depth the input decides
// asks for the stack it needs here, and gets it.
#define _GNU_SOURCE // pthread_getattr_np
#include "bigstack.h"

#include <pthread.h>
#include <stdint.h>

#include "lcx.h"

// The lowest usable address of this thread's stack (stacks grow down on every
// platform we build for), found once per thread; 0 when unknown.
static _Thread_local uintptr_t stack_low;
static _Thread_local bool stack_low_known;

static uintptr_t find_stack_low(void) {
#if defined(__linux__)
  pthread_attr_t attr;
  void *addr = NULL;
  size_t size = 0, guard = 0;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return 0;
  bool ok = pthread_attr_getstack(&attr, &addr, &size) == 0;
  if (ok) pthread_attr_getguardsize(&attr, &guard);
  pthread_attr_destroy(&attr);
  return ok ? (uintptr_t)addr + guard : 0;
#elif defined(__APPLE__)
  pthread_t self = pthread_self();
  return (uintptr_t)pthread_get_stackaddr_np(self) - pthread_get_stacksize_np(self); // stackaddr is the top
#else
  return 0;
#endif
}

size_t lcx_stack_left(void) {
  if (!stack_low_known) {
    stack_low = find_stack_low();
    stack_low_known = true;
  }
  // the frame address, not a local's: AddressSanitizer may keep locals elsewhere
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  return stack_low && here > stack_low ? here - stack_low : 0;
}

typedef struct {
  void (*fn)(void *);
  void *arg;
} call_t;

static void *trampoline(void *p) {
  call_t *c = p;
  c->fn(c->arg);
  return NULL;
}

bool lcx_run_with_stack(size_t bytes, void (*fn)(void *), void *arg) {
  if (lcx_stack_left() >= bytes) {
    fn(arg);
    return true;
  }
  if (bytes > LCX_MAX_THREAD_STACK) return false;
  ErlNifThreadOpts *opts = enif_thread_opts_create("lcx_bigstack");
  if (!opts) return false;
  size_t kilowords = (bytes + 1024 * sizeof(void *) - 1) / (1024 * sizeof(void *));
  opts->suggested_stack_size = (int)kilowords;
  call_t c = {fn, arg};
  ErlNifTid tid;
  int rc = enif_thread_create("lcx_bigstack", &tid, trampoline, &c, opts);
  enif_thread_opts_destroy(opts);
  if (rc != 0) return false;
  enif_thread_join(tid, NULL);
  return true;
}
