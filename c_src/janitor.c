// See janitor.h. Explicit free/1 calls run on dirty schedulers and free inline.
#include <stdatomic.h>
#include <string.h>

#include "janitor.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

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

static void trim_job(void *arg) {
  atomic_store(&trim_queued, false);
  trim_if_worth_it();
}

void lcx_janitor_trim_soon(void) {
#ifdef __GLIBC__
  if (!started || atomic_exchange(&trim_queued, true)) return; // one is queued: it will see this free too
  if (!enqueue((job){.fn = trim_job})) atomic_store(&trim_queued, false);
#endif
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
