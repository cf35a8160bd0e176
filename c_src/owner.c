// Claims on contexts and samplers (see owner.h).
#include "owner.h"

bool lcx_owner_init(lcx_owner *o, const char *name) {
  o->mu = enif_mutex_create((char *)name);
  o->cv = enif_cond_create((char *)name);
  o->holder = NULL;
  atomic_init(&o->running, NULL);
  o->closed = o->destroyed = false;
  return o->mu && o->cv;
}

void lcx_owner_destroy(lcx_owner *o) {
  if (o->cv) enif_cond_destroy(o->cv);
  if (o->mu) enif_mutex_destroy(o->mu);
  o->cv = NULL;
  o->mu = NULL;
}

lcx_claim_result lcx_owner_claim(lcx_owner *o, lcx_claim *who) {
  lcx_claim_result r = LCX_CLAIM_OK;
  enif_mutex_lock(o->mu);
  for (;;) {
    if (o->closed) {
      r = LCX_CLAIM_CLOSED;
      break;
    }
    if (!o->holder) break;
    if (o->holder->long_running) {
      r = LCX_CLAIM_BUSY;
      break;
    }
    enif_cond_wait(o->cv, o->mu);
  }
  if (r == LCX_CLAIM_OK) {
    o->holder = who;
    atomic_store(&o->running, who);
  }
  enif_mutex_unlock(o->mu);
  return r;
}

lcx_claim_result lcx_owner_claim_pair(lcx_owner *first, lcx_owner *second, lcx_claim *who) {
  lcx_claim_result r = lcx_owner_claim(first, who);
  if (r != LCX_CLAIM_OK) return r;
  r = lcx_owner_claim(second, who);
  if (r != LCX_CLAIM_OK) lcx_owner_release(first, who);
  return r;
}

void lcx_owner_release(lcx_owner *o, lcx_claim *who) {
  enif_mutex_lock(o->mu);
  if (o->holder == who) {
    o->holder = NULL;
    atomic_store(&o->running, NULL);
    enif_cond_broadcast(o->cv);
  }
  enif_mutex_unlock(o->mu);
}

void lcx_claim_cancel(lcx_claim *who) {
  atomic_store(&who->cancel, 1);
  if (who->wake) who->wake(who);
}

bool lcx_claim_stopped(lcx_claim *who) {
  return atomic_load(&who->cancel) || (who->caller && !enif_is_current_process_alive(who->caller));
}

bool lcx_owner_cancelled(lcx_owner *o) {
  lcx_claim *c = atomic_load(&o->running);
  return c && atomic_load(&c->cancel);
}

bool lcx_owner_stopped(lcx_owner *o) {
  lcx_claim *c = atomic_load(&o->running);
  return c && lcx_claim_stopped(c);
}

void lcx_owner_close(lcx_owner *o, void (*destroy)(void *), void *arg) {
  enif_mutex_lock(o->mu);
  o->closed = true;
  // The holder's wake function takes only its own lock, never an owner's,
  // so calling it under o->mu cannot deadlock.
  while (o->holder) {
    lcx_claim_cancel(o->holder);
    enif_cond_wait(o->cv, o->mu);
  }
  if (!o->destroyed) {
    o->destroyed = true;
    destroy(arg);
  }
  enif_mutex_unlock(o->mu);
}
