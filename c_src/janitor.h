// The janitor: a thread that frees native objects whose last reference the
// garbage collector dropped (resource destructors may run on a normal
// scheduler, and a free can take long: large buffers, munmap, GPU memory) and
// joins finished stream threads. Jobs run in order, so a context queued before
// its model is always freed first.
#ifndef LCX_JANITOR_H
#define LCX_JANITOR_H

#include <erl_nif.h>
#include <stdbool.h>
#include <stddef.h>

int lcx_janitor_load(void);
void lcx_janitor_unload(void);

// Runs fn(arg) on the janitor thread (inline when it is not running or memory is short).
void lcx_janitor_run(void (*fn)(void *), void *arg);

// The one way native objects are freed: fn(native) runs now, or, from a
// resource destructor, on the janitor thread with a heap copy of the `size`
// bytes at `native` (so the resource's memory may go at once).
void lcx_dispose(void (*fn)(void *), const void *native, size_t size, bool from_destructor);

// After freeing large buffers: the janitor returns free heap memory to the
// system when enough has accumulated (glibc; see janitor.c). Never blocks.
void lcx_janitor_trim_soon(void);

// Joins a finished thread (a thread cannot join itself).
void lcx_janitor_join(ErlNifTid tid);

#endif
