// llama.cpp / ggml log output → Elixir Logger.
//
// llama.cpp logs from whatever thread it runs on: dirty schedulers, ggml worker
// threads, and sometimes normal schedulers. enif_send needs the caller's env on
// scheduler threads and NULL elsewhere, which a log callback cannot know
// reliably, so the callback only filters by level and queues the line; one
// thread of our own sends queued lines to the registered handler process
// (LlamaCppEx.Log), which forwards them to Logger.
#include <stdio.h>
#include <string.h>

#include "lcx.h"
#include "utf8.h"

typedef struct log_line {
  struct log_line *next;
  enum ggml_log_level level;
  size_t len;
  char text[];
} log_line;

static ErlNifMutex *log_mutex;
static ErlNifCond *log_cond;
static ErlNifTid log_tid;
static bool log_thread_started, log_stopping;
static log_line *queue_head, *queue_tail;
static size_t queue_len;
static ErlNifPid handler_pid;
static bool has_handler;
static atomic_int min_level = GGML_LOG_LEVEL_WARN;

#define MAX_QUEUED 10000

static _Thread_local enum ggml_log_level last_level = GGML_LOG_LEVEL_INFO;
static _Thread_local bool capturing;
static _Thread_local char captured[1024];

static ERL_NIF_TERM level_atom(enum ggml_log_level level) {
  switch (level) {
  case GGML_LOG_LEVEL_DEBUG:
    return ATOM_debug;
  case GGML_LOG_LEVEL_INFO:
    return ATOM_info;
  case GGML_LOG_LEVEL_WARN:
    return ATOM_warn;
  case GGML_LOG_LEVEL_ERROR:
    return ATOM_error;
  case GGML_LOG_LEVEL_CONT:
    return ATOM_cont;
  default:
    return ATOM_info;
  }
}

static void *log_thread(void *arg) {
  ErlNifEnv *env = enif_alloc_env();
  enif_mutex_lock(log_mutex);
  for (;;) {
    while (!queue_head && !log_stopping)
      enif_cond_wait(log_cond, log_mutex);
    if (!queue_head && log_stopping) break;
    log_line *line = queue_head;
    queue_head = line->next;
    if (!queue_head) queue_tail = NULL;
    queue_len--;
    ErlNifPid pid = handler_pid;
    bool send = has_handler;
    enif_mutex_unlock(log_mutex);
    if (send) {
      ERL_NIF_TERM msg =
          enif_make_tuple3(env, ATOM_llama_log, level_atom(line->level), lcx_utf8_binary(env, line->text, line->len));
      enif_send(NULL, &pid, env, msg);
      enif_clear_env(env);
    }
    enif_free(line);
    enif_mutex_lock(log_mutex);
  }
  enif_mutex_unlock(log_mutex);
  enif_free_env(env);
  return NULL;
}

// While a decode that we are aborting on purpose runs on this thread, its
// "failed to compute graph" complaints are expected: log them at debug level.
static _Thread_local bool (*quiet_when)(void *);
static _Thread_local void *quiet_data;

void lcx_log_quiet_when(bool (*fn)(void *), void *data) {
  quiet_when = fn;
  quiet_data = data;
}

static void log_callback(enum ggml_log_level level, const char *text, void *user_data) {
  if (quiet_when && level != GGML_LOG_LEVEL_CONT && level != GGML_LOG_LEVEL_DEBUG && quiet_when(quiet_data))
    level = GGML_LOG_LEVEL_DEBUG;
  enum ggml_log_level effective = level == GGML_LOG_LEVEL_CONT ? last_level : level;
  if (level != GGML_LOG_LEVEL_CONT) last_level = level;
  if (capturing && effective == GGML_LOG_LEVEL_ERROR && text) {
    // keep every error line of the operation, most specific (first) first
    size_t have = strlen(captured);
    if (level != GGML_LOG_LEVEL_CONT && have > 0 && captured[have - 1] == '\n' && have + 2 < sizeof captured) {
      captured[have - 1] = ';';
      captured[have++] = ' ';
      captured[have] = '\0';
    }
    snprintf(captured + have, sizeof captured - have, "%s", text);
  }
  if (!text || (int)effective < atomic_load(&min_level) || effective == GGML_LOG_LEVEL_NONE) return;
  size_t len = strlen(text);
  log_line *line = enif_alloc(sizeof(log_line) + len);
  if (!line) return;
  line->next = NULL;
  line->level = level;
  line->len = len;
  memcpy(line->text, text, len);
  enif_mutex_lock(log_mutex);
  if (!has_handler || queue_len >= MAX_QUEUED || log_stopping) {
    enif_mutex_unlock(log_mutex);
    enif_free(line);
    return;
  }
  if (queue_tail)
    queue_tail->next = line;
  else
    queue_head = line;
  queue_tail = line;
  queue_len++;
  enif_cond_signal(log_cond);
  enif_mutex_unlock(log_mutex);
}

int lcx_log_load(void) {
  log_mutex = enif_mutex_create("lcx_log");
  log_cond = enif_cond_create("lcx_log");
  if (!log_mutex || !log_cond) return -1;
  if (enif_thread_create("lcx_log", &log_tid, log_thread, NULL, NULL) != 0) return -1;
  log_thread_started = true;
  llama_log_set(log_callback, NULL);
  return 0;
}

void lcx_log_unload(void) {
  llama_log_set(NULL, NULL);
  if (log_thread_started) {
    enif_mutex_lock(log_mutex);
    log_stopping = true;
    has_handler = false;
    enif_cond_signal(log_cond);
    enif_mutex_unlock(log_mutex);
    enif_thread_join(log_tid, NULL);
  }
  while (queue_head) {
    log_line *next = queue_head->next;
    enif_free(queue_head);
    queue_head = next;
  }
  if (log_cond) enif_cond_destroy(log_cond);
  if (log_mutex) enif_mutex_destroy(log_mutex);
}

void lcx_log_capture_begin(void) {
  capturing = true;
  captured[0] = '\0';
}

const char *lcx_log_capture_end(void) {
  capturing = false;
  size_t n = strlen(captured);
  if (n == sizeof captured - 1)
    n -= lcx_utf8_cut_tail((const unsigned char *)captured, n); // cut mid-character by the buffer
  captured[n] = '\0';
  while (n > 0 && (captured[n - 1] == '\n' || captured[n - 1] == ' '))
    captured[--n] = '\0';
  return captured;
}

// set_log_handler(pid | nil, min_level :: 0..5)
LCX_NIF(nif_set_log_handler) {
  int level;
  ErlNifPid pid;
  bool is_nil = enif_is_identical(argv[0], ATOM_nil);
  if (!is_nil && !enif_get_local_pid(env, argv[0], &pid)) return lcx_raise(env, "expected a pid or nil");
  if (!enif_get_int(env, argv[1], &level) || level < GGML_LOG_LEVEL_DEBUG || level > GGML_LOG_LEVEL_ERROR + 1)
    return lcx_raise(env, "log level must be an integer in 1..5");
  atomic_store(&min_level, level);
  enif_mutex_lock(log_mutex);
  has_handler = !is_nil;
  if (!is_nil) handler_pid = pid;
  enif_mutex_unlock(log_mutex);
  return ATOM_ok;
}
