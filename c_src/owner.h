// Who is using a context or a sampler, in one place.
//
// A llama_context and a llama_sampler are not thread-safe: one user at a time.
// Every use is a claim. A short claim (decode, sample, info) waits for another
// short one; a long-running claim (a stream, which holds its objects for as
// long as its consumer takes) makes everyone else get :busy instead of
// waiting on a dirty scheduler. The check and the claim are one step under
// one mutex, so nothing can slip in between. free/1 closes the owner: later
// claims get :closed, the holder is cancelled, and the free runs once nobody
// holds the object.
#ifndef LCX_OWNER_H
#define LCX_OWNER_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>

// The holder of a claim: a generation, a stream or one short call.
typedef struct lcx_claim {
  atomic_int cancel;                 // set by cancel/close: stop as soon as you can
  ErlNifEnv *caller;                 // a NIF call's env: its process dying also stops it (or NULL)
  bool long_running;                 // a stream: others get :busy instead of waiting
  void (*wake)(struct lcx_claim *c); // wakes the holder if it waits for something else (may be NULL)
} lcx_claim;

typedef struct lcx_owner {
  ErlNifMutex *mu;
  ErlNifCond *cv;
  lcx_claim *holder;            // under mu
  _Atomic(lcx_claim *) running; // the same, readable without mu (abort callbacks)
  bool closed, destroyed;       // under mu
} lcx_owner;

typedef enum { LCX_CLAIM_OK, LCX_CLAIM_BUSY, LCX_CLAIM_CLOSED } lcx_claim_result;

// A claim by the NIF call running in `env`, on its stack: it waits for other
// short claims, and stops when its calling process dies.
#define LCX_CALL_CLAIM(env)                                                                                            \
  { .cancel = 0, .caller = (env), .long_running = false, .wake = NULL }

bool lcx_owner_init(lcx_owner *o, const char *name);
void lcx_owner_destroy(lcx_owner *o);

// Claims one object: waits while a short claim holds it; BUSY while a long one does.
lcx_claim_result lcx_owner_claim(lcx_owner *o, lcx_claim *who);
// Claims two objects in order (a context, then a sampler): both or neither.
lcx_claim_result lcx_owner_claim_pair(lcx_owner *first, lcx_owner *second, lcx_claim *who);
void lcx_owner_release(lcx_owner *o, lcx_claim *who);

// Asks a claim to stop (its cancel flag, then its wake function).
void lcx_claim_cancel(lcx_claim *who);
// Whether the claim should stop: cancelled, or its calling process died. Only
// on the claim's own thread (enif_is_current_process_alive).
bool lcx_claim_stopped(lcx_claim *who);
// Whether the current holder was cancelled (any thread: llama.cpp's abort
// callback may run on a compute thread).
bool lcx_owner_cancelled(lcx_owner *o);
// lcx_claim_stopped of the current holder, on the holder's own thread.
bool lcx_owner_stopped(lcx_owner *o);

// free/1: later claims get CLOSED; the holder, if any, is cancelled and waited
// for; then destroy(arg) runs once (a second close returns without running it).
void lcx_owner_close(lcx_owner *o, void (*destroy)(void *), void *arg);

#endif
