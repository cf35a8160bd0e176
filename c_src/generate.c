// Generation: the native decode/sample loop behind Context.generate/4 (on a
// dirty scheduler) and behind streams (on a thread of their own).
//
// One loop serves both: decode the prompt in n_batch chunks, then sample
// (which accepts the token into the chain), stop on end-of-generation, append
// the token's text, look for stop strings in the new tail only, decode the
// token. Streams also send text chunks as they become safe to send: never
// ending inside a UTF-8 character, never holding what may be the start of a
// stop string, and only when the consumer has asked for them.
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <time.h>

#include "grammar_stack.h"
#include "lcx.h"

ErlNifResourceType *LCX_STREAM_RT;

// ---- text buffer and stop strings ------------------------------------------------------

typedef struct {
  char *data;
  size_t len, cap;
} buf_t;

static bool buf_append(buf_t *b, const char *s, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
      cap *= 2;
    char *d = enif_realloc(b->data, cap);
    if (!d) return false;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return true;
}

typedef struct {
  const ErlNifBinary *stops;
  unsigned n;
  size_t max_len;
} stops_t;

// Earliest occurrence of any stop string starting at or after `from`.
static bool find_stop(const stops_t *st, const buf_t *text, size_t from, size_t *at) {
  bool found = false;
  for (unsigned i = 0; i < st->n; i++) {
    const ErlNifBinary *s = &st->stops[i];
    if (s->size == 0 || s->size > text->len) continue;
    for (size_t p = from; p + s->size <= text->len; p++) {
      if (memcmp(text->data + p, s->data, s->size) == 0) {
        if (!found || p < *at) *at = p;
        found = true;
        break;
      }
    }
  }
  return found;
}

// Bytes at the end of text that could be the start of a stop string.
static size_t stop_prefix_hold(const stops_t *st, const buf_t *text, size_t emitted) {
  size_t hold = 0;
  for (unsigned i = 0; i < st->n; i++) {
    const ErlNifBinary *s = &st->stops[i];
    size_t kmax = s->size > 0 ? s->size - 1 : 0;
    if (kmax > text->len - emitted) kmax = text->len - emitted;
    for (size_t k = kmax; k > hold; k--) {
      if (memcmp(text->data + text->len - k, s->data, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

// ---- streams: resource, flow control ------------------------------------------------------

void lcx_stream_cancel(lcx_stream *st) {
  enif_mutex_lock(st->mu);
  atomic_store(&st->cancel, 1);
  enif_cond_broadcast(st->cv);
  enif_mutex_unlock(st->mu);
}

static void stream_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) { lcx_stream_cancel(obj); }

static void stream_dtor(ErlNifEnv *env, void *obj) {
  lcx_stream *st = obj;
  if (st->cv) enif_cond_destroy(st->cv);
  if (st->mu) enif_mutex_destroy(st->mu);
  if (st->prompt) enif_free(st->prompt);
  for (unsigned i = 0; i < st->n_stops; i++)
    enif_free(st->stops[i].data);
  if (st->stops) enif_free(st->stops);
  if (st->ref_env) enif_free_env(st->ref_env);
}

int lcx_generate_load_types(ErlNifEnv *env) {
  ErlNifResourceTypeInit init = {.dtor = stream_dtor, .stop = NULL, .down = stream_down};
  LCX_STREAM_RT = enif_open_resource_type_x(env, "lcx_stream", &init, ERL_NIF_RT_CREATE, NULL);
  return LCX_STREAM_RT ? 0 : -1;
}

// Blocks until the consumer has asked for chunk number `n` (1-based) or the
// stream is cancelled. Returns false when cancelled.
static bool wait_demand(lcx_stream *st, long n) {
  enif_mutex_lock(st->mu);
  while (st->demanded < n && !atomic_load(&st->cancel))
    enif_cond_wait(st->cv, st->mu);
  bool ok = !atomic_load(&st->cancel);
  enif_mutex_unlock(st->mu);
  return ok;
}

// {ref, {:chunk, text}} to the consumer, from the stream's own thread.
static void send_chunk(lcx_stream *st, ErlNifEnv *msg_env, const char *data, size_t len) {
  if (len == 0) return;
  ERL_NIF_TERM msg = enif_make_tuple2(msg_env, enif_make_copy(msg_env, st->ref),
                                      enif_make_tuple2(msg_env, ATOM_chunk, lcx_binary(msg_env, data, len)));
  enif_send(NULL, &st->consumer, msg_env, msg);
  enif_clear_env(msg_env);
}

// enif_monotonic_time only works on scheduler threads; streams run on their own.
static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

// ---- the loop ------------------------------------------------------------------------------------

typedef struct {
  llama_token *prompt;
  unsigned n_prompt;
  int max_tokens;
  stops_t stops;
  lcx_stream *stream; // NULL for Context.generate/4
} job_t;

// Runs one generation with c->lock and s->lock held; builds the result in env.
static ERL_NIF_TERM run_locked(ErlNifEnv *env, lcx_context *c, lcx_sampler *s, const job_t *job) {
  const int32_t n_vocab = c->model->n_vocab;
  for (unsigned i = 0; i < job->n_prompt; i++)
    if (job->prompt[i] < 0 || job->prompt[i] >= n_vocab)
      return lcx_invalid_token(env, enif_make_int(env, job->prompt[i]), n_vocab);
  int32_t pos = lcx_next_position(c);
  uint32_t n_ctx = llama_n_ctx_seq(c->ctx); // what one sequence can hold
  if (job->n_prompt == 0) return lcx_error(env, ATOM_empty_prompt);
  if ((uint64_t)pos + job->n_prompt + (uint64_t)job->max_tokens > n_ctx)
    return lcx_overflow_error(env, pos, job->n_prompt, job->max_tokens, n_ctx);

  llama_token *out = enif_alloc(sizeof(llama_token) * (size_t)job->max_tokens);
  ErlNifEnv *msg_env = job->stream ? enif_alloc_env() : NULL;
  if (!out || (job->stream && !msg_env)) {
    if (out) enif_free(out);
    if (msg_env) enif_free_env(msg_env);
    return lcx_error(env, enif_make_atom(env, "out_of_memory"));
  }
  buf_t text = {0};
  unsigned n_out = 0;
  size_t emitted = 0;
  long n_sent = 0;
  const struct llama_vocab *vocab = c->model->vocab;
  ERL_NIF_TERM finish = ATOM_max_tokens;
  int64_t decode_us = 0; // time in llama_decode during the token loop
  char piece_buf[256];

  int64_t t0 = now_us();
  int32_t rc = lcx_abort_cb(c) ? 2 : lcx_decode_tokens(c, job->prompt, job->n_prompt);
  int64_t t1 = now_us();
  while (rc == 0) {
    bool threw;
    llama_token tok = lcx_chain_sample(s->chain, s->model->max_piece, c->ctx, -1, &threw); // grammar_stack.h
    if (threw) {
      rc = RC_SAMPLER_THREW;
      break;
    }
    if (llama_vocab_is_eog(vocab, tok)) {
      finish = ATOM_eog;
      break;
    }
    out[n_out++] = tok;
    int32_t n = lcx_token_to_piece(vocab, tok, piece_buf, sizeof piece_buf, 0, false, &threw);
    if (threw) {
      rc = RC_SAMPLER_THREW;
      break;
    }
    size_t before = text.len;
    bool ok = true;
    if (n > 0)
      ok = buf_append(&text, piece_buf, (size_t)n);
    else if (n < 0) {
      char *big = enif_alloc((size_t)-n);
      int32_t n2 = big ? lcx_token_to_piece(vocab, tok, big, -n, 0, false, &threw) : -1;
      ok = big && !threw && n2 >= 0 && buf_append(&text, big, (size_t)n2);
      if (big) enif_free(big);
    }
    if (!ok) {
      rc = RC_SAMPLER_THREW;
      break;
    }
    if (job->stops.n > 0) {
      size_t from = before >= job->stops.max_len ? before - job->stops.max_len + 1 : 0;
      size_t at = 0;
      if (find_stop(&job->stops, &text, from, &at)) {
        text.len = at;
        finish = ATOM_stop;
        break;
      }
    }
    if (job->stream) {
      size_t safe = text.len - stop_prefix_hold(&job->stops, &text, emitted);
      safe -= lcx_utf8_incomplete_tail(text.data, safe);
      if (safe > emitted) {
        if (!wait_demand(job->stream, n_sent + 1)) {
          rc = 2;
          break;
        }
        send_chunk(job->stream, msg_env, text.data + emitted, safe - emitted);
        n_sent++;
        emitted = safe;
      }
    }
    if (n_out >= (unsigned)job->max_tokens) break;
    if (lcx_abort_cb(c)) {
      rc = 2;
      break;
    }
    int64_t td = now_us();
    rc = lcx_decode_tokens(c, &out[n_out - 1], 1);
    decode_us += now_us() - td;
  }
  int64_t t2 = now_us();
  if (rc == 2) {
    finish = ATOM_cancelled;
    rc = 0;
  }
  ERL_NIF_TERM result;
  if (rc != 0) {
    result = lcx_decode_error(env, rc);
  } else {
    if (job->stream && text.len > emitted && finish != ATOM_cancelled && wait_demand(job->stream, n_sent + 1))
      send_chunk(job->stream, msg_env, text.data + emitted, text.len - emitted);
    ERL_NIF_TERM keys[8] = {ATOM_text,
                            ATOM_tokens,
                            ATOM_finish_reason,
                            ATOM_prompt_tokens,
                            ATOM_generated_tokens,
                            ATOM_prompt_ms,
                            ATOM_generation_ms,
                            enif_make_atom(env, "sample_ms")};
    ERL_NIF_TERM vals[8] = {lcx_binary(env, text.data, text.len),
                            lcx_make_tokens(env, out, n_out),
                            finish,
                            enif_make_uint(env, job->n_prompt),
                            enif_make_uint(env, n_out),
                            enif_make_double(env, (double)(t1 - t0) / 1000.0),
                            enif_make_double(env, (double)(t2 - t1) / 1000.0),
                            enif_make_double(env, (double)(t2 - t1 - decode_us) / 1000.0)};
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 8, &map);
    result = lcx_ok(env, map);
  }
  enif_free(out);
  if (text.data) enif_free(text.data);
  if (msg_env) enif_free_env(msg_env);
  return result;
}

// Reads options shared by generate and stream_start: max_tokens and stops.
// Stops point into the caller's binaries (generate) until copied (streams).
static bool read_options(ErlNifEnv *env, ERL_NIF_TERM opts, job_t *job, ERL_NIF_TERM *err) {
  ERL_NIF_TERM v;
  int max_tokens;
  if (!enif_is_map(env, opts) || !lcx_map_get(env, opts, "max_tokens", &v) || !enif_get_int(env, v, &max_tokens) ||
      max_tokens < 1) {
    *err = lcx_raise(env, "max_tokens must be a positive integer");
    return false;
  }
  job->max_tokens = max_tokens;
  if (lcx_map_get(env, opts, "stop", &v)) {
    unsigned n;
    if (!enif_get_list_length(env, v, &n) || n > 64) {
      *err = lcx_raise(env, "stop must be a list of at most 64 binaries");
      return false;
    }
    ErlNifBinary *stops = n ? enif_alloc(sizeof(ErlNifBinary) * n) : NULL;
    ERL_NIF_TERM head, tail = v;
    for (unsigned i = 0; i < n; i++) {
      enif_get_list_cell(env, tail, &head, &tail);
      if (!enif_inspect_binary(env, head, &stops[i]) || stops[i].size == 0) {
        enif_free(stops);
        *err = lcx_raise(env, "stop strings must be non-empty binaries");
        return false;
      }
      if (stops[i].size > job->stops.max_len) job->stops.max_len = stops[i].size;
    }
    job->stops.stops = stops;
    job->stops.n = n;
  }
  return true;
}

static bool read_prompt(ErlNifEnv *env, ERL_NIF_TERM list, job_t *job, ERL_NIF_TERM *err) {
  ERL_NIF_TERM bad;
  // the range check against the vocabulary happens under the context lock
  if (!lcx_get_tokens(env, list, INT32_MAX, &job->prompt, &job->n_prompt, &bad)) {
    *err = lcx_raise(env, "tokens must be a list of integers");
    return false;
  }
  if (bad) {
    *err = lcx_invalid_token(env, bad, 0);
    enif_free(job->prompt);
    job->prompt = NULL;
    return false;
  }
  return true;
}

// generate(ctx, sampler, tokens, %{max_tokens, stop})
//   -> {:ok, %{text, tokens, finish_reason, prompt_tokens, generated_tokens, prompt_ms, generation_ms, sample_ms}}
LCX_NIF(nif_generate) {
  job_t job = {0};
  ERL_NIF_TERM err, result;
  if (!read_options(env, argv[3], &job, &err)) return err;
  if (!read_prompt(env, argv[2], &job, &err)) {
    if (job.stops.stops) enif_free((void *)job.stops.stops);
    return err;
  }
  lcx_context *c = lcx_lock_context(env, argv[0], &err);
  lcx_sampler *s = c ? lcx_lock_sampler(env, c, argv[1], &err) : NULL;
  if (c && s) {
    result = run_locked(env, c, s, &job);
    enif_mutex_unlock(s->lock);
  } else {
    result = err;
  }
  if (c) enif_mutex_unlock(c->lock);
  enif_free(job.prompt);
  if (job.stops.stops) enif_free((void *)job.stops.stops);
  return result;
}

// ---- streams: ownership ----------------------------------------------------------------
// From stream_start until its thread lets go, a stream owns its context and
// sampler: other users get {:error, :busy} instead of waiting on locks the
// stream may hold for as long as its consumer takes; free/1 cancels it.

static bool register_stream(lcx_stream *st) {
  lcx_context *c = st->c;
  lcx_sampler *s = st->s;
  enif_mutex_lock(c->owner_mu);
  bool ok = c->stream == NULL;
  if (ok) c->stream = st;
  enif_mutex_unlock(c->owner_mu);
  if (!ok) return false;
  enif_mutex_lock(s->owner_mu);
  ok = s->stream == NULL;
  if (ok) s->stream = st;
  enif_mutex_unlock(s->owner_mu);
  if (!ok) {
    enif_mutex_lock(c->owner_mu);
    c->stream = NULL;
    enif_mutex_unlock(c->owner_mu);
  }
  return ok;
}

static void unregister(lcx_stream *st) {
  enif_mutex_lock(st->c->owner_mu);
  if (st->c->stream == st) st->c->stream = NULL;
  enif_mutex_unlock(st->c->owner_mu);
  enif_mutex_lock(st->s->owner_mu);
  if (st->s->stream == st) st->s->stream = NULL;
  enif_mutex_unlock(st->s->owner_mu);
}

// ---- streams: the thread -------------------------------------------------------------------

static void *stream_thread(void *arg) {
  lcx_stream *st = arg;
  lcx_context *c = st->c;
  lcx_sampler *s = st->s;
  ErlNifEnv *env = enif_alloc_env();
  ERL_NIF_TERM result;

  enif_mutex_lock(c->lock);
  if (!c->ctx) {
    result = lcx_error(env, ATOM_closed);
  } else {
    atomic_store(&c->cancel, &st->cancel);

    enif_mutex_lock(s->lock);
    if (!s->chain)
      result = lcx_error(env, ATOM_closed);
    else if (s->model != c->model)
      result = lcx_error(env, ATOM_model_mismatch);
    else {
      job_t job = {.prompt = st->prompt,
                   .n_prompt = st->n_prompt,
                   .max_tokens = st->max_tokens,
                   .stops = {.stops = st->stops, .n = st->n_stops},
                   .stream = st};
      for (unsigned i = 0; i < st->n_stops; i++)
        if (st->stops[i].size > job.stops.max_len) job.stops.max_len = st->stops[i].size;
      result = run_locked(env, c, s, &job);
    }
    enif_mutex_unlock(s->lock);

    atomic_store(&c->cancel, NULL);
  }
  enif_mutex_unlock(c->lock);
  unregister(st);

  ERL_NIF_TERM msg =
      enif_make_tuple2(env, enif_make_copy(env, st->ref), enif_make_tuple2(env, enif_make_atom(env, "done"), result));
  enif_send(NULL, &st->consumer, env, msg);
  enif_free_env(env);

  ErlNifTid self = enif_thread_self();
  enif_release_resource(c);
  enif_release_resource(s);
  enif_release_resource(st);
  lcx_janitor_join(self);
  return NULL;
}

// stream_start(ctx, sampler, tokens, %{max_tokens, stop}, consumer_pid, ref) -> {:ok, handle}
// Starts the generation on its own thread and returns at once. The consumer
// receives {ref, {:chunk, text}} for each chunk it asked for (stream_demand/1)
// and finally {ref, {:done, {:ok, map} | {:error, reason}}}.
LCX_NIF(nif_stream_start) {
  lcx_context *c = lcx_get_context(env, argv[0]);
  lcx_sampler *s = lcx_get_sampler(env, argv[1]);
  ErlNifPid consumer;
  if (!c) return lcx_raise(env, "expected a context reference");
  if (!s) return lcx_raise(env, "expected a sampler reference");
  if (!enif_get_local_pid(env, argv[4], &consumer)) return lcx_raise(env, "expected a local pid");
  job_t job = {0};
  ERL_NIF_TERM err;
  if (!read_options(env, argv[3], &job, &err)) return err;
  if (!read_prompt(env, argv[2], &job, &err)) {
    if (job.stops.stops) enif_free((void *)job.stops.stops);
    return err;
  }

  lcx_stream *st = enif_alloc_resource(LCX_STREAM_RT, sizeof(lcx_stream));
  if (!st) {
    enif_free(job.prompt);
    if (job.stops.stops) enif_free((void *)job.stops.stops);
    return lcx_raise(env, "out of memory");
  }
  memset(st, 0, sizeof *st);
  atomic_init(&st->cancel, 0);
  st->mu = enif_mutex_create("lcx_stream");
  st->cv = enif_cond_create("lcx_stream");
  st->ref_env = enif_alloc_env();
  st->prompt = job.prompt;
  st->n_prompt = job.n_prompt;
  st->max_tokens = job.max_tokens;
  st->consumer = consumer;
  if (job.stops.n > 0) { // the caller's binaries do not outlive this call
    st->stops = enif_alloc(sizeof(ErlNifBinary) * job.stops.n);
    for (unsigned i = 0; st->stops && i < job.stops.n; i++) {
      st->stops[i].size = job.stops.stops[i].size;
      st->stops[i].data = enif_alloc(job.stops.stops[i].size);
      if (st->stops[i].data) memcpy(st->stops[i].data, job.stops.stops[i].data, job.stops.stops[i].size);
      st->n_stops = i + 1;
    }
    enif_free((void *)job.stops.stops);
  }
  ERL_NIF_TERM handle = enif_make_resource(env, st);
  enif_release_resource(st); // the term (and, below, the thread) keep it
  bool ok = st->mu && st->cv && st->ref_env && (job.stops.n == 0 || st->n_stops == job.stops.n);
  for (unsigned i = 0; ok && i < st->n_stops; i++)
    ok = st->stops[i].data != NULL;
  if (!ok) return lcx_raise(env, "out of memory");
  st->ref = enif_make_copy(st->ref_env, argv[5]);
  if (enif_monitor_process(env, st, &consumer, &st->mon) != 0) atomic_store(&st->cancel, 1);

  st->c = c;
  st->s = s;
  if (!register_stream(st)) return lcx_error(env, enif_make_atom(env, "busy"));
  enif_keep_resource(c);
  enif_keep_resource(s);
  enif_keep_resource(st);
  ErlNifTid tid;
  if (enif_thread_create("lcx_stream", &tid, stream_thread, st, NULL) != 0) {
    unregister(st);
    enif_release_resource(c);
    enif_release_resource(s);
    enif_release_resource(st);
    return lcx_error(env, enif_make_atom(env, "thread_failed"));
  }
  return lcx_ok(env, handle);
}

LCX_NIF(nif_stream_cancel) {
  void *p;
  if (!enif_get_resource(env, argv[0], LCX_STREAM_RT, &p)) return lcx_raise(env, "expected a stream handle");
  lcx_stream_cancel(p);
  return ATOM_ok;
}

// stream_demand(handle): the consumer asks for one more chunk
LCX_NIF(nif_stream_demand) {
  void *p;
  if (!enif_get_resource(env, argv[0], LCX_STREAM_RT, &p)) return lcx_raise(env, "expected a stream handle");
  lcx_stream *st = p;
  enif_mutex_lock(st->mu);
  st->demanded++;
  enif_cond_signal(st->cv);
  enif_mutex_unlock(st->mu);
  return ATOM_ok;
}
