// Contexts: creation, decode, clear, sampling, and the generation loop used by
// Context.generate/4 and by streams.
//
// A llama_context is not thread-safe: every use holds the context's mutex (and,
// when sampling, the sampler's mutex after it, always in that order). Long work
// runs on dirty CPU schedulers and can be interrupted: free/1 sets `abort_all`,
// and a stream's cancel flag (set by the consumer, or by the consumer's death
// through a monitor) is checked between tokens and, through llama.cpp's abort
// callback, inside llama_decode.
#include <string.h>
#include <unistd.h>

#include "lcx.h"

ErlNifResourceType *LCX_CONTEXT_RT;
ErlNifResourceType *LCX_STREAM_RT;
atomic_long lcx_live_contexts;

// ---- resource lifecycle ----------------------------------------------------------------

static void destroy_context(lcx_context *c, bool in_destructor) {
  if (c->ctx) {
    lcx_dispose(LCX_FREE_CONTEXT, c->ctx, in_destructor);
    c->ctx = NULL;
  }
  if (c->model) {
    lcx_model_release(c->model, in_destructor);
    c->model = NULL;
  }
}

static void context_dtor(ErlNifEnv *env, void *obj) {
  lcx_context *c = obj;
  destroy_context(c, true);
  if (c->lock) enif_mutex_destroy(c->lock);
}

static void stream_cancel(lcx_stream *st) {
  enif_mutex_lock(st->mu);
  atomic_store(&st->cancel, 1);
  enif_cond_broadcast(st->cv);
  enif_mutex_unlock(st->mu);
}

static void stream_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) { stream_cancel(obj); }

static void stream_dtor(ErlNifEnv *env, void *obj) {
  lcx_stream *st = obj;
  if (st->cv) enif_cond_destroy(st->cv);
  if (st->mu) enif_mutex_destroy(st->mu);
}

// Blocks until the consumer has asked for chunk number `n` (1-based) or the
// stream is cancelled. Returns false when cancelled.
static bool stream_wait_demand(lcx_stream *st, long n) {
  enif_mutex_lock(st->mu);
  while (st->demanded < n && !atomic_load(&st->cancel))
    enif_cond_wait(st->cv, st->mu);
  bool ok = !atomic_load(&st->cancel);
  enif_mutex_unlock(st->mu);
  return ok;
}

int lcx_context_load_types(ErlNifEnv *env) {
  LCX_CONTEXT_RT = enif_open_resource_type(env, NULL, "lcx_context", context_dtor, ERL_NIF_RT_CREATE, NULL);
  ErlNifResourceTypeInit init = {.dtor = stream_dtor, .stop = NULL, .down = stream_down};
  LCX_STREAM_RT = enif_open_resource_type_x(env, "lcx_stream", &init, ERL_NIF_RT_CREATE, NULL);
  return LCX_CONTEXT_RT && LCX_STREAM_RT ? 0 : -1;
}

static bool abort_cb(void *data) {
  lcx_context *c = data;
  if (atomic_load(&c->abort_all)) return true;
  atomic_int *flag = atomic_load(&c->cancel);
  return flag && atomic_load(flag);
}

// Locks a context for use. NULL (with *err) when the term is wrong or closed.
static lcx_context *lock_context(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err) {
  lcx_context *c = lcx_get_context(env, t);
  if (!c) {
    *err = lcx_raise(env, "expected a context reference");
    return NULL;
  }
  enif_mutex_lock(c->lock);
  if (!c->ctx) {
    enif_mutex_unlock(c->lock);
    *err = lcx_error(env, ATOM_closed);
    return NULL;
  }
  return c;
}

static int32_t next_position(lcx_context *c) {
  llama_pos p = llama_memory_seq_pos_max(llama_get_memory(c->ctx), 0);
  return p < 0 ? 0 : p + 1;
}

static bool map_int(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, int *out) {
  ERL_NIF_TERM v;
  return lcx_map_get(env, map, key, &v) && enif_get_int(env, v, out);
}

// KV cache element types llama.cpp supports; other ggml types (f64, i8, ...)
// create a context whose first decode crashes.
static bool ggml_type_from_atom(ErlNifEnv *env, ERL_NIF_TERM t, enum ggml_type *out) {
  static const enum ggml_type allowed[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16,
                                           GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
                                           GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_IQ4_NL};
  char name[16];
  if (!enif_get_atom(env, t, name, sizeof name, ERL_NIF_LATIN1)) return false;
  for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
    if (strcmp(ggml_type_name(allowed[i]), name) == 0) {
      *out = allowed[i];
      return true;
    }
  }
  return false;
}

static uint64_t physical_ram(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

// Lower bound of what llama_init_from_model allocates: K and V caches for
// every layer, the attention scores of one micro-batch, and the logits of a
// full batch. (llama.cpp rounds n_ctx up to
// a multiple of 256 and clamps n_batch to n_ctx.)
static uint64_t estimate_bytes(const struct llama_model *model, int32_t n_vocab, const struct llama_context_params *p) {
  uint64_t n_ctx = p->n_ctx ? p->n_ctx : (uint64_t)llama_model_n_ctx_train(model);
  n_ctx = (n_ctx + 255) / 256 * 256;
  uint64_t n_layer = (uint64_t)llama_model_n_layer(model);
  int32_t n_head = llama_model_n_head(model), n_head_kv = llama_model_n_head_kv(model);
  uint64_t n_embd_kv = n_head > 0 ? (uint64_t)llama_model_n_embd(model) * (uint64_t)n_head_kv / (uint64_t)n_head : 0;
  double k = ggml_type_size(p->type_k) / (double)ggml_blck_size(p->type_k);
  double v = ggml_type_size(p->type_v) / (double)ggml_blck_size(p->type_v);
  uint64_t kv = (uint64_t)((double)(n_layer * n_ctx * n_embd_kv) * (k + v));
  uint64_t n_batch = p->n_batch < n_ctx ? p->n_batch : n_ctx;
  uint64_t n_ubatch = p->n_ubatch < n_batch ? p->n_ubatch : n_batch;
  // attention scores of one micro-batch against the whole cache (without flash attention)
  uint64_t kq = n_ctx * n_ubatch * (uint64_t)(n_head > 0 ? n_head : 1) * sizeof(float);
  return kv + kq + n_batch * (uint64_t)n_vocab * sizeof(float);
}

// context_create(model, %{n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch,
//                         embeddings, flash_attn, type_k, type_v, pooling})
LCX_NIF(nif_context_create) {
  lcx_model *m = lcx_get_model(env, argv[0]);
  if (!m) return lcx_raise(env, "expected a model reference");
  if (!enif_is_map(env, argv[1])) return lcx_raise(env, "options must be a map");
  if (m->vocab_only) return lcx_raise(env, "cannot create a context for a vocab_only model");
  struct llama_context_params p = llama_context_default_params();
  int n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch, flash_attn, pooling;
  bool embeddings = false;
  ERL_NIF_TERM v;
  if (!map_int(env, argv[1], "n_ctx", &n_ctx) || n_ctx < 0)
    return lcx_raise(env, "n_ctx must be a non-negative integer");
  if (!map_int(env, argv[1], "n_batch", &n_batch) || n_batch < 1)
    return lcx_raise(env, "n_batch must be a positive integer");
  if (!map_int(env, argv[1], "n_ubatch", &n_ubatch) || n_ubatch < 1)
    return lcx_raise(env, "n_ubatch must be a positive integer");
  if (!map_int(env, argv[1], "n_seq_max", &n_seq_max) || n_seq_max < 1 ||
      (size_t)n_seq_max > llama_max_parallel_sequences())
    return lcx_raise(env, "n_seq_max must be in 1..%zu", llama_max_parallel_sequences());
  if (!map_int(env, argv[1], "n_threads", &n_threads) || n_threads < 1 || n_threads > 1024)
    return lcx_raise(env, "n_threads must be in 1..1024");
  if (!map_int(env, argv[1], "n_threads_batch", &n_threads_batch) || n_threads_batch < 1 || n_threads_batch > 1024)
    return lcx_raise(env, "n_threads_batch must be in 1..1024");
  if (!map_int(env, argv[1], "flash_attn", &flash_attn) || flash_attn < -1 || flash_attn > 1)
    return lcx_raise(env, "flash_attn must be -1, 0 or 1");
  if (!map_int(env, argv[1], "pooling", &pooling) || pooling < -1 || pooling > 4)
    return lcx_raise(env, "pooling must be in -1..4");
  if (lcx_map_get(env, argv[1], "embeddings", &v) && !lcx_get_bool(env, v, &embeddings))
    return lcx_raise(env, "embeddings must be a boolean");
  if (lcx_map_get(env, argv[1], "type_k", &v) && !ggml_type_from_atom(env, v, &p.type_k))
    return lcx_raise(env, "unknown type_k");
  if (lcx_map_get(env, argv[1], "type_v", &v) && !ggml_type_from_atom(env, v, &p.type_v))
    return lcx_raise(env, "unknown type_v");
  p.n_ctx = (uint32_t)n_ctx;
  p.n_batch = (uint32_t)n_batch;
  p.n_ubatch = (uint32_t)(n_ubatch < n_batch ? n_ubatch : n_batch);
  p.n_seq_max = (uint32_t)n_seq_max;
  p.n_threads = n_threads;
  p.n_threads_batch = n_threads_batch;
  p.flash_attn_type = (enum llama_flash_attn_type)flash_attn;
  p.pooling_type = (enum llama_pooling_type)pooling;
  p.embeddings = embeddings;
  p.no_perf = false;

  if (!lcx_model_acquire(m)) return lcx_error(env, ATOM_closed);
  // llama.cpp allocates the KV cache and the logits buffer up front; an absurd
  // n_ctx or n_batch would have the kernel kill the whole VM instead of failing.
  uint64_t need = estimate_bytes(m->model, m->n_vocab, &p);
  uint64_t ram = physical_ram();
  if (ram > 0 && need > ram) {
    lcx_model_release(m, false);
    ERL_NIF_TERM keys[2] = {ATOM_needed, ATOM_available};
    ERL_NIF_TERM vals[2] = {enif_make_uint64(env, need), enif_make_uint64(env, ram)};
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 2, &map);
    return lcx_error2(env, enif_make_atom(env, "context_too_large"), map);
  }
  lcx_context *c = enif_alloc_resource(LCX_CONTEXT_RT, sizeof(lcx_context));
  if (!c) {
    lcx_model_release(m, false);
    return lcx_raise(env, "out of memory");
  }
  memset(c, 0, sizeof *c);
  atomic_init(&c->abort_all, 0);
  atomic_init(&c->cancel, NULL);
  c->lock = enif_mutex_create("lcx_context");
  c->model = m;
  p.abort_callback = abort_cb;
  p.abort_callback_data = c;

  lcx_log_capture_begin();
  c->ctx = lcx_init_from_model(m->model, p);
  const char *why = lcx_log_capture_end();
  if (!c->ctx) {
    ERL_NIF_TERM err = lcx_error_str(env, ATOM_context_failed, why[0] ? why : lcx_last_exception());
    enif_release_resource(c); // dtor releases the model
    return err;
  }
  atomic_fetch_add(&lcx_live_contexts, 1);
  ERL_NIF_TERM t = enif_make_resource(env, c);
  enif_release_resource(c);
  return lcx_ok(env, t);
}

// context_free(ctx): aborts running work, then frees. Dirty: may wait for the lock.
LCX_NIF(nif_context_free) {
  lcx_context *c = lcx_get_context(env, argv[0]);
  if (!c) return lcx_raise(env, "expected a context reference");
  atomic_store(&c->abort_all, 1);
  enif_mutex_lock(c->lock);
  destroy_context(c, false);
  enif_mutex_unlock(c->lock);
  return ATOM_ok;
}

// context_info(ctx) -> %{n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch, embeddings}
LCX_NIF(nif_context_info) {
  ERL_NIF_TERM err;
  lcx_context *c = lock_context(env, argv[0], &err);
  if (!c) return err;
  ERL_NIF_TERM keys[6] = {ATOM_n_ctx,     ATOM_n_batch,   ATOM_n_ubatch,
                          ATOM_n_seq_max, ATOM_n_threads, ATOM_n_threads_batch};
  ERL_NIF_TERM vals[6] = {
      enif_make_uint(env, llama_n_ctx(c->ctx)),    enif_make_uint(env, llama_n_batch(c->ctx)),
      enif_make_uint(env, llama_n_ubatch(c->ctx)), enif_make_uint(env, llama_n_seq_max(c->ctx)),
      enif_make_int(env, llama_n_threads(c->ctx)), enif_make_int(env, llama_n_threads_batch(c->ctx))};
  enif_mutex_unlock(c->lock);
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 6, &map);
  return lcx_ok(env, map);
}

LCX_NIF(nif_context_position) {
  ERL_NIF_TERM err;
  lcx_context *c = lock_context(env, argv[0], &err);
  if (!c) return err;
  int32_t pos = next_position(c);
  enif_mutex_unlock(c->lock);
  return lcx_ok(env, enif_make_int(env, pos));
}

LCX_NIF(nif_context_clear) {
  ERL_NIF_TERM err;
  lcx_context *c = lock_context(env, argv[0], &err);
  if (!c) return err;
  bool ok = lcx_memory_clear(c->ctx);
  c->has_logits = false;
  enif_mutex_unlock(c->lock);
  return ok ? ATOM_ok : lcx_error_str(env, ATOM_exception, lcx_last_exception());
}

static ERL_NIF_TERM overflow_error(ErlNifEnv *env, int32_t pos, unsigned n_prompt, int max_tokens, uint32_t n_ctx) {
  ERL_NIF_TERM keys[4] = {ATOM_position, ATOM_prompt_tokens, ATOM_max_tokens_key, ATOM_n_ctx};
  ERL_NIF_TERM vals[4] = {enif_make_int(env, pos), enif_make_uint(env, n_prompt), enif_make_int(env, max_tokens),
                          enif_make_uint(env, n_ctx)};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 4, &map);
  return lcx_error2(env, ATOM_context_overflow, map);
}

#define RC_DECODE_THREW INT32_MIN
#define RC_SAMPLER_THREW (INT32_MIN + 1)

// Decodes tokens in n_batch chunks. Returns 0, or the llama_decode code
// (2 = aborted), or RC_DECODE_THREW when llama.cpp threw (or asserted).
static int32_t decode_tokens(lcx_context *c, llama_token *toks, unsigned n) {
  uint32_t n_batch = llama_n_batch(c->ctx);
  c->has_logits = false;
  for (unsigned off = 0; off < n; off += n_batch) {
    unsigned len = n - off < n_batch ? n - off : n_batch;
    bool threw;
    llama_pos before = next_position(c);
    lcx_log_quiet_when(abort_cb, c);
    int32_t rc = lcx_decode(c->ctx, llama_batch_get_one(toks + off, (int32_t)len), &threw);
    lcx_log_quiet_when(NULL, NULL);
    if (threw) {
      // the exception skipped llama_decode's own clean-up of the failed batch
      llama_memory_seq_rm(llama_get_memory(c->ctx), -1, before, -1);
      return RC_DECODE_THREW;
    }
    if (rc != 0) return rc;
  }
  c->has_logits = n > 0;
  return 0;
}

static ERL_NIF_TERM decode_error(ErlNifEnv *env, int32_t rc) {
  if (rc == RC_DECODE_THREW) return lcx_error_str(env, ATOM_decode_failed, lcx_last_exception());
  if (rc == RC_SAMPLER_THREW) return lcx_error_str(env, ATOM_sampler_failed, lcx_last_exception());
  if (rc == 1) return lcx_error(env, ATOM_no_kv_slot);
  if (rc == 2) return lcx_error(env, ATOM_aborted);
  return lcx_error2(env, ATOM_decode_failed, enif_make_int(env, rc));
}

// Reads and validates a token list against the context's model.
static bool get_prompt(ErlNifEnv *env, lcx_context *c, ERL_NIF_TERM list, llama_token **toks, unsigned *n,
                       ERL_NIF_TERM *err) {
  ERL_NIF_TERM bad;
  if (!lcx_get_tokens(env, list, c->model->n_vocab, toks, n, &bad)) {
    *err = lcx_raise(env, "tokens must be a list of integers");
    return false;
  }
  if (bad) {
    *err = lcx_invalid_token(env, bad, c->model->n_vocab);
    enif_free(*toks);
    *toks = NULL;
    return false;
  }
  return true;
}

// context_decode(ctx, tokens) -> :ok | {:error, reason}
LCX_NIF(nif_context_decode) {
  ERL_NIF_TERM err;
  lcx_context *c = lock_context(env, argv[0], &err);
  if (!c) return err;
  llama_token *toks;
  unsigned n;
  if (!get_prompt(env, c, argv[1], &toks, &n, &err)) {
    enif_mutex_unlock(c->lock);
    return err;
  }
  ERL_NIF_TERM r;
  int32_t pos = next_position(c);
  uint32_t n_ctx = llama_n_ctx(c->ctx);
  if (n == 0)
    r = lcx_error(env, ATOM_empty_prompt);
  else if ((uint64_t)pos + n > n_ctx)
    r = overflow_error(env, pos, n, 0, n_ctx);
  else {
    int32_t rc = decode_tokens(c, toks, n);
    r = rc == 0 ? ATOM_ok : decode_error(env, rc);
  }
  enif_mutex_unlock(c->lock);
  enif_free(toks);
  return r;
}

// Locks the sampler after the context; checks that both belong to one model.
static lcx_sampler *lock_sampler(ErlNifEnv *env, lcx_context *c, ERL_NIF_TERM t, ERL_NIF_TERM *err) {
  lcx_sampler *s = lcx_get_sampler(env, t);
  if (!s) {
    *err = lcx_raise(env, "expected a sampler reference");
    return NULL;
  }
  enif_mutex_lock(s->lock);
  if (!s->chain)
    *err = lcx_error(env, ATOM_closed);
  else if (s->model != c->model)
    *err = lcx_error(env, ATOM_model_mismatch);
  else
    return s;
  enif_mutex_unlock(s->lock);
  return NULL;
}

// sampler_sample(sampler, ctx) -> {:ok, token} | {:error, reason}
LCX_NIF(nif_sampler_sample) {
  ERL_NIF_TERM err;
  lcx_context *c = lock_context(env, argv[1], &err);
  if (!c) return err;
  lcx_sampler *s = lock_sampler(env, c, argv[0], &err);
  if (!s) {
    enif_mutex_unlock(c->lock);
    return err;
  }
  ERL_NIF_TERM r;
  // llama_sampler_sample asserts that logits exist: check first.
  if (!c->has_logits || llama_get_logits_ith(c->ctx, -1) == NULL)
    r = lcx_error(env, enif_make_atom(env, "no_logits"));
  else {
    bool threw;
    llama_token t = lcx_sampler_sample(s->chain, c->ctx, -1, &threw);
    r = threw ? lcx_error_str(env, ATOM_sampler_failed, lcx_last_exception()) : lcx_ok(env, enif_make_int(env, t));
  }
  enif_mutex_unlock(s->lock);
  enif_mutex_unlock(c->lock);
  return r;
}

// ---- streams -------------------------------------------------------------------------------

// stream_new(consumer_pid) -> stream handle; the consumer's death cancels it
LCX_NIF(nif_stream_new) {
  ErlNifPid pid;
  if (!enif_get_local_pid(env, argv[0], &pid)) return lcx_raise(env, "expected a local pid");
  lcx_stream *st = enif_alloc_resource(LCX_STREAM_RT, sizeof(lcx_stream));
  if (!st) return lcx_raise(env, "out of memory");
  memset(st, 0, sizeof *st);
  atomic_init(&st->cancel, 0);
  st->mu = enif_mutex_create("lcx_stream");
  st->cv = enif_cond_create("lcx_stream");
  int rc = enif_monitor_process(env, st, &pid, &st->mon);
  if (rc != 0) atomic_store(&st->cancel, 1); // already dead (or monitors unsupported)
  ERL_NIF_TERM t = enif_make_resource(env, st);
  enif_release_resource(st);
  return t;
}

LCX_NIF(nif_stream_cancel) {
  void *p;
  if (!enif_get_resource(env, argv[0], LCX_STREAM_RT, &p)) return lcx_raise(env, "expected a stream handle");
  stream_cancel(p);
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

// ---- generation -----------------------------------------------------------------------------

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
  ErlNifBinary *stops;
  unsigned n_stops;
  size_t max_stop;
} stops_t;

// Earliest occurrence of any stop string starting at or after `from`.
static bool find_stop(const stops_t *st, const buf_t *text, size_t from, size_t *at) {
  bool found = false;
  for (unsigned i = 0; i < st->n_stops; i++) {
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
  for (unsigned i = 0; i < st->n_stops; i++) {
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

static void send_chunk(ErlNifEnv *env, const ErlNifPid *to, ErlNifEnv *msg_env, ERL_NIF_TERM ref, const char *data,
                       size_t len) {
  if (len == 0) return;
  ERL_NIF_TERM msg = enif_make_tuple2(msg_env, enif_make_copy(msg_env, ref),
                                      enif_make_tuple2(msg_env, ATOM_chunk, lcx_binary(msg_env, data, len)));
  enif_send(env, to, msg_env, msg);
  enif_clear_env(msg_env);
}

// generate(ctx, sampler, tokens, %{max_tokens, stop}, stream | nil, pid | nil, ref)
//   -> {:ok, %{text, tokens, finish_reason, prompt_tokens, generated_tokens, prompt_ms, generation_ms}}
// With a stream handle and pid, text chunks are sent as {ref, {:chunk, binary}} as they are
// produced: never ending inside a UTF-8 character or inside a possible stop string.
LCX_NIF(nif_generate) {
  ERL_NIF_TERM err, v;
  int max_tokens;
  if (!enif_is_map(env, argv[3]) || !map_int(env, argv[3], "max_tokens", &max_tokens) || max_tokens < 1)
    return lcx_raise(env, "max_tokens must be a positive integer");
  stops_t stops = {0};
  if (lcx_map_get(env, argv[3], "stop", &v)) {
    unsigned n;
    if (!enif_get_list_length(env, v, &n) || n > 64)
      return lcx_raise(env, "stop must be a list of at most 64 binaries");
    if (n > 0) {
      stops.stops = enif_alloc(sizeof(ErlNifBinary) * n);
      ERL_NIF_TERM head, tail = v;
      for (unsigned i = 0; i < n; i++) {
        enif_get_list_cell(env, tail, &head, &tail);
        if (!enif_inspect_binary(env, head, &stops.stops[i]) || stops.stops[i].size == 0) {
          enif_free(stops.stops);
          return lcx_raise(env, "stop strings must be non-empty binaries");
        }
        if (stops.stops[i].size > stops.max_stop) stops.max_stop = stops.stops[i].size;
      }
      stops.n_stops = n;
    }
  }
  lcx_stream *stream = NULL;
  ErlNifPid dest;
  bool streaming = false;
  void *sp;
  if (enif_get_resource(env, argv[4], LCX_STREAM_RT, &sp)) {
    stream = sp;
    if (!enif_get_local_pid(env, argv[5], &dest)) {
      if (stops.stops) enif_free(stops.stops);
      return lcx_raise(env, "a stream needs a destination pid");
    }
    streaming = true;
  } else if (!enif_is_identical(argv[4], ATOM_nil)) {
    if (stops.stops) enif_free(stops.stops);
    return lcx_raise(env, "expected a stream handle or nil");
  }

  lcx_context *c = lock_context(env, argv[0], &err);
  if (!c) {
    if (stops.stops) enif_free(stops.stops);
    return err;
  }
  lcx_sampler *s = lock_sampler(env, c, argv[1], &err);
  if (!s) {
    enif_mutex_unlock(c->lock);
    if (stops.stops) enif_free(stops.stops);
    return err;
  }
  llama_token *prompt = NULL, *out = NULL;
  unsigned n_prompt = 0, n_out = 0;
  buf_t text = {0};
  ErlNifEnv *msg_env = NULL;
  ERL_NIF_TERM result;
  if (!get_prompt(env, c, argv[2], &prompt, &n_prompt, &err)) {
    result = err;
    goto done;
  }
  int32_t pos = next_position(c);
  uint32_t n_ctx = llama_n_ctx_seq(c->ctx); // what one sequence can hold
  if (n_prompt == 0) {
    result = lcx_error(env, ATOM_empty_prompt);
    goto done;
  }
  if ((uint64_t)pos + n_prompt + (uint64_t)max_tokens > n_ctx) {
    result = overflow_error(env, pos, n_prompt, max_tokens, n_ctx);
    goto done;
  }
  out = enif_alloc(sizeof(llama_token) * (size_t)max_tokens);
  if (streaming) msg_env = enif_alloc_env();
  if (stream) atomic_store(&c->cancel, &stream->cancel);

  const struct llama_vocab *vocab = c->model->vocab;
  ERL_NIF_TERM finish = ATOM_max_tokens;
  ErlNifTime t0 = enif_monotonic_time(ERL_NIF_USEC);
  int32_t rc = abort_cb(c) ? 2 : decode_tokens(c, prompt, n_prompt);
  ErlNifTime t1 = enif_monotonic_time(ERL_NIF_USEC);
  size_t emitted = 0;
  long n_sent = 0;
  ErlNifTime decode_us = 0; // time in llama_decode during the token loop
  char piece_buf[256];
  while (rc == 0) {
    bool threw;
    llama_token tok = lcx_sampler_sample(s->chain, c->ctx, -1, &threw);
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
    if (n > 0)
      buf_append(&text, piece_buf, (size_t)n);
    else if (n < 0) {
      char *big = enif_alloc((size_t)-n);
      int32_t n2 = lcx_token_to_piece(vocab, tok, big, -n, 0, false, &threw);
      if (!threw && n2 > 0) buf_append(&text, big, (size_t)n2);
      enif_free(big);
    }
    if (stops.n_stops > 0) {
      size_t from = before >= stops.max_stop ? before - stops.max_stop + 1 : 0;
      size_t at = 0;
      if (find_stop(&stops, &text, from, &at)) {
        text.len = at;
        finish = ATOM_stop;
        break;
      }
    }
    if (streaming) {
      size_t safe = text.len - stop_prefix_hold(&stops, &text, emitted);
      safe -= lcx_utf8_incomplete_tail(text.data, safe);
      if (safe > emitted) {
        if (!stream_wait_demand(stream, n_sent + 1)) {
          rc = 2;
          break;
        }
        send_chunk(env, &dest, msg_env, argv[6], text.data + emitted, safe - emitted);
        n_sent++;
        emitted = safe;
      }
    }
    if (n_out >= (unsigned)max_tokens) break;
    if (abort_cb(c)) {
      rc = 2;
      break;
    }
    ErlNifTime td = enif_monotonic_time(ERL_NIF_USEC);
    rc = decode_tokens(c, &out[n_out - 1], 1);
    decode_us += enif_monotonic_time(ERL_NIF_USEC) - td;
  }
  ErlNifTime t2 = enif_monotonic_time(ERL_NIF_USEC);
  atomic_store(&c->cancel, NULL);
  if (rc == 2) {
    finish = ATOM_cancelled;
    rc = 0;
  }
  if (rc != 0) {
    result = decode_error(env, rc);
    goto done;
  }
  if (streaming && text.len > emitted && finish != ATOM_cancelled && stream_wait_demand(stream, n_sent + 1))
    send_chunk(env, &dest, msg_env, argv[6], text.data + emitted, text.len - emitted);
  {
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
                            enif_make_uint(env, n_prompt),
                            enif_make_uint(env, n_out),
                            enif_make_double(env, (double)(t1 - t0) / 1000.0),
                            enif_make_double(env, (double)(t2 - t1) / 1000.0),
                            enif_make_double(env, (double)(t2 - t1 - decode_us) / 1000.0)};
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 8, &map);
    result = lcx_ok(env, map);
  }
done:
  enif_mutex_unlock(s->lock);
  enif_mutex_unlock(c->lock);
  if (prompt) enif_free(prompt);
  if (out) enif_free(out);
  if (text.data) enif_free(text.data);
  if (msg_env) enif_free_env(msg_env);
  if (stops.stops) enif_free(stops.stops);
  return result;
}
