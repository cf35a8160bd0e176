// Running a function on a stack of a known size: on the calling thread when
// enough of its stack is left, else on a thread of our own, created with that
// stack, while the caller waits.
#ifndef LCX_BIGSTACK_H
#define LCX_BIGSTACK_H

#include <stdbool.h>
#include <stddef.h>

// The largest stack a thread can get (ERTS caps suggested_stack_size at 8M words).
#define LCX_MAX_THREAD_STACK ((size_t)64 << 20)

// Bytes of stack left below the caller's frame on this thread, or 0 where the
// platform cannot tell (then lcx_run_with_stack always uses a thread).
size_t lcx_stack_left(void);

// Runs fn(arg) with at least `bytes` of stack. False when that needed a
// thread and none could be created (or `bytes` exceeds LCX_MAX_THREAD_STACK):
// fn has not run.
bool lcx_run_with_stack(size_t bytes, void (*fn)(void *), void *arg);

#endif
