// See janitor.h. Explicit free/1 calls run on dirty schedulers and free inline.
#include <string.h>

#include "janitor.h"

typedef struct job {
  struct job *next;
  void (*fn)(void *); // NULL: join `tid`
  void *arg;
  bool free_arg; // arg is a heap copy made by lcx_dispose
  ErlNifTid tid;
} job;

static ErlNifMutex *mu;
static ErlNifCond *cv;
static ErlNifTid tid;
static bool started, stopping;
static job *head, *tail;

static void run_job(job *j) {
  if (!j->fn) {
    enif_thread_join(j->tid, NULL);
    return;
  }
  j->fn(j->arg);
  if (j->free_arg) enif_free(j->arg);
}

static void *janitor_main(void *arg) {
  enif_mutex_lock(mu);
  for (;;) {
    while (!head && !stopping)
      enif_cond_wait(cv, mu);
    if (!head) break;
    job *j = head;
    head = j->next;
    if (!head) tail = NULL;
    enif_mutex_unlock(mu);
    run_job(j);
    enif_free(j);
    enif_mutex_lock(mu);
  }
  enif_mutex_unlock(mu);
  return NULL;
}

// false when the job cannot be queued (not started, or out of memory)
static bool enqueue(job proto) {
  job *j = started ? enif_alloc(sizeof(job)) : NULL;
  if (!j) return false;
  *j = proto;
  j->next = NULL;
  enif_mutex_lock(mu);
  if (tail)
    tail->next = j;
  else
    head = j;
  tail = j;
  enif_cond_signal(cv);
  enif_mutex_unlock(mu);
  return true;
}

void lcx_janitor_run(void (*fn)(void *), void *arg) {
  if (!enqueue((job){.fn = fn, .arg = arg})) fn(arg);
}

void lcx_dispose(void (*fn)(void *), const void *native, size_t size, bool from_destructor) {
  void *copy = from_destructor && started ? enif_alloc(size) : NULL;
  if (copy) {
    memcpy(copy, native, size);
    if (enqueue((job){.fn = fn, .arg = copy, .free_arg = true})) return;
    enif_free(copy);
  }
  fn((void *)native);
}

void lcx_janitor_join(ErlNifTid t) {
  // on failure a finished thread's stack leaks rather than anything blocking
  enqueue((job){.fn = NULL, .tid = t});
}

int lcx_janitor_load(void) {
  mu = enif_mutex_create("lcx_janitor");
  cv = enif_cond_create("lcx_janitor");
  if (!mu || !cv) return -1;
  if (enif_thread_create("lcx_janitor", &tid, janitor_main, NULL, NULL) != 0) return -1;
  started = true;
  return 0;
}

void lcx_janitor_unload(void) {
  if (started) {
    enif_mutex_lock(mu);
    stopping = true;
    enif_cond_signal(cv);
    enif_mutex_unlock(mu);
    enif_thread_join(tid, NULL); // runs what is still queued first
    started = false;
  }
  if (cv) enif_cond_destroy(cv);
  if (mu) enif_mutex_destroy(mu);
}
