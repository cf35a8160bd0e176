// The janitor: frees llama.cpp objects whose last reference was dropped by
// the garbage collector. Resource destructors run on whatever scheduler did
// the GC, often a normal one, and freeing a context or a model can take a
// while (large buffers, munmap, GPU memory), so destructors hand the object to
// this thread instead. Jobs run in order, so a context queued before its
// model is always freed first. Explicit free/1 calls run on dirty schedulers
// and free inline.
#include "lcx.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

typedef struct job {
  struct job *next;
  int kind; // an lcx_free_kind, or JOIN_THREAD
  void *ptr;
  ErlNifTid tid;
  void (*fn)(void *);
} job;

#define JOIN_THREAD -1
#define CALL -2
#define TRIM -3

static ErlNifMutex *mu;
static ErlNifCond *cv;
static ErlNifTid tid;
static bool started, stopping;
static job *head, *tail;

// ---- returning freed memory to the system ------------------------------------------
//
// glibc keeps what is freed in its arenas for reuse, and a context's buffers
// (KV cache, compute and output buffers) are below the mmap threshold, which
// glibc raises up to 32 MiB after the first large free: after llama_free they
// stay resident. With allocations spread over many threads' arenas (dirty
// schedulers, stream threads) the heap grew by ~55 MiB each time 200 contexts
// were created and freed, while nothing was alive. So after frees the janitor
// gives free heap memory back with malloc_trim(0), once the free bytes in the
// arenas (mallinfo2) have grown by TRIM_STEP since the lowest count seen:
// at most one trim per TRIM_STEP freed, and none while freed memory is being
// reused. glibc only.
#define TRIM_STEP ((size_t)4 << 20)

static atomic_bool trim_queued;
static size_t trim_floor = (size_t)-1; // janitor thread only

static void trim_if_worth_it(void) {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 33)
  size_t free_now = mallinfo2().fordblks;
  if (free_now < trim_floor) trim_floor = free_now;
  if (free_now - trim_floor < TRIM_STEP) return;
  malloc_trim(0);
  trim_floor = mallinfo2().fordblks; // trimmed pages still count as free
#elif defined(__GLIBC__)
  malloc_trim(0);
#endif
}

static void run_job(job *j) {
  switch (j->kind) {
  case TRIM:
    atomic_store(&trim_queued, false);
    trim_if_worth_it();
    break;
  case JOIN_THREAD:
    enif_thread_join(j->tid, NULL);
    break;
  case CALL:
    j->fn(j->ptr);
    break;
  case LCX_FREE_MODEL:
    llama_model_free(j->ptr);
    atomic_fetch_sub(&lcx_live_models, 1);
    lcx_janitor_trim_soon();
    break;
  }
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

static void enqueue(job *j) {
  enif_mutex_lock(mu);
  if (tail)
    tail->next = j;
  else
    head = j;
  tail = j;
  enif_cond_signal(cv);
  enif_mutex_unlock(mu);
}

void lcx_dispose(lcx_free_kind kind, void *ptr, bool in_destructor) {
  if (!ptr) return;
  job *j = in_destructor && started ? enif_alloc(sizeof(job)) : NULL;
  if (!j) {
    job now = {.kind = (int)kind, .ptr = ptr};
    run_job(&now);
    return;
  }
  *j = (job){.kind = (int)kind, .ptr = ptr};
  enqueue(j);
}

void lcx_janitor_join(ErlNifTid tid) {
  job *j = enif_alloc(sizeof(job));
  if (!j) return; // leaks a finished thread's stack rather than blocking
  *j = (job){.kind = JOIN_THREAD, .tid = tid};
  enqueue(j);
}

void lcx_janitor_trim_soon(void) {
#ifdef __GLIBC__
  if (!started || atomic_exchange(&trim_queued, true)) return; // one is queued: it will see this free too
  job *j = enif_alloc(sizeof(job));
  if (!j) {
    atomic_store(&trim_queued, false);
    return;
  }
  *j = (job){.kind = TRIM};
  enqueue(j);
#endif
}

void lcx_janitor_call(void (*fn)(void *), void *arg) {
  job *j = started ? enif_alloc(sizeof(job)) : NULL;
  if (!j) {
    fn(arg);
    return;
  }
  *j = (job){.kind = CALL, .fn = fn, .ptr = arg};
  enqueue(j);
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
