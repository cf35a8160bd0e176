// Contexts: creation (with a ggml thread pool each), free, introspection,
// decode, sampling and embeddings. The generation loop is in generate.c.
//
// A llama_context is not thread-safe: every use is a claim on the context's
// owner (owner.h), and sampling claims the sampler after the context, always
// in that order. Long work runs on dirty CPU schedulers and can be interrupted:
// free/1 cancels the holder, a stream's consumer cancels its stream, and a NIF
// call stops when its calling process dies; llama.cpp's abort callback checks
// all of it inside llama_decode.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "context.h"
#include "grammar_stack.h"
#include "lcx.h"
#include "logprobs.h"
#include "lora.h"

struct lcx_context {
  lcx_owner owner; // who uses `ctx` (owner.h)
  struct llama_context *ctx;
  struct ggml_threadpool *tp;       // compute threads for single tokens
  struct ggml_threadpool *tp_batch; // and for batches (NULL: same as tp)
  lcx_model *model;                 // kept alive with enif_keep_resource
  bool has_logits;                  // the last decode left logits to sample from
  bool shift_pending;               // positions were shifted; the next decode applies it
  bool embeddings;                  // created with embeddings: true
  bool kv_unified;                  // one KV stream for all sequences
  lcx_lora_set loras;               // the adapters set on ctx, pinned while set
  bool loras_changed;               // the next decode reserves the graph: it reads the model's adapters
};

static ErlNifResourceType *LCX_CONTEXT_RT;

static lcx_context *get_context(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_CONTEXT_RT, &p) ? p : NULL;
}

struct llama_context *lcx_context_llama(lcx_context *c) {
  return c->ctx;
}
lcx_model *lcx_context_model(lcx_context *c) { return c->model; }
atomic_long lcx_live_contexts;

// ---- resource lifecycle ----------------------------------------------------------------

typedef struct {
  struct llama_context *ctx;
  struct ggml_threadpool *tp, *tp_batch;
  lcx_model *model;   // released after the context is gone
  lcx_lora_set loras; // likewise (the context points at them)
} native_ctx;

// Frees the llama_context, its pools, and then lets go of the model, in that
// order: llama_free reads the model.
static void free_native(void *arg) {
  native_ctx *n = arg;
  if (n->ctx) {
    llama_free(n->ctx); // before the pools it uses and the model it reads
    atomic_fetch_sub(&lcx_live_contexts, 1);
  }
  if (n->tp) ggml_threadpool_free(n->tp);
  if (n->tp_batch) ggml_threadpool_free(n->tp_batch);
  lcx_lora_set_release(&n->loras); // before the model: each pins it too
  if (n->model) lcx_model_release(n->model, false);
  if (n->ctx) lcx_janitor_trim_soon();
}

static void destroy_context(lcx_context *c, bool from_destructor) {
  native_ctx n = {c->ctx, c->tp, c->tp_batch, c->model, c->loras};
  c->ctx = NULL;
  c->tp = c->tp_batch = NULL;
  c->model = NULL;
  c->loras.n = 0;
  if (n.ctx || n.tp || n.tp_batch || n.model || n.loras.n) lcx_dispose(free_native, &n, sizeof n, from_destructor);
}

static void destroy_now(void *c) { destroy_context(c, false); }

static void context_dtor(ErlNifEnv *env, void *obj) {
  lcx_context *c = obj;
  destroy_context(c, true); // nobody holds it: users keep references
  lcx_owner_destroy(&c->owner);
}

int lcx_context_load_types(ErlNifEnv *env) {
  LCX_CONTEXT_RT = enif_open_resource_type(env, NULL, "lcx_context", context_dtor, ERL_NIF_RT_CREATE, NULL);
  return LCX_CONTEXT_RT ? 0 : -1;
}

bool lcx_abort_cb(void *data) { return lcx_owner_cancelled(&((lcx_context *)data)->owner); }

static bool embeds_stepwise(lcx_context *c);

bool lcx_context_splits_batches(lcx_context *c) { return embeds_stepwise(c); }

void lcx_context_shifted(lcx_context *c) { c->shift_pending = true; }

// ---- claims ---------------------------------------------------------------------------------

static ERL_NIF_TERM claim_error(ErlNifEnv *env, lcx_claim_result r) {
  return lcx_err(env, r == LCX_CLAIM_BUSY ? LCX_E_busy : LCX_E_closed);
}

lcx_context *lcx_context_claim(ErlNifEnv *env, ERL_NIF_TERM t, lcx_claim *who, ERL_NIF_TERM *err) {
  lcx_context *c = get_context(env, t);
  if (!c) {
    *err = lcx_raise(env, "expected a context reference");
    return NULL;
  }
  lcx_claim_result r = lcx_owner_claim(&c->owner, who);
  if (r != LCX_CLAIM_OK) {
    *err = claim_error(env, r);
    return NULL;
  }
  return c;
}

void lcx_context_release(lcx_context *c, lcx_claim *who) { lcx_owner_release(&c->owner, who); }

bool lcx_claim_context_sampler(ErlNifEnv *env, ERL_NIF_TERM ct, ERL_NIF_TERM st, lcx_claim *who, lcx_context **cp,
                               lcx_sampler **sp, ERL_NIF_TERM *err) {
  lcx_context *c = get_context(env, ct);
  lcx_sampler *s = lcx_get_sampler(env, st);
  if (!c) {
    *err = lcx_raise(env, "expected a context reference");
    return false;
  }
  if (!s) {
    *err = lcx_raise(env, "expected a sampler reference");
    return false;
  }
  lcx_claim_result r = lcx_owner_claim_pair(&c->owner, lcx_sampler_owner(s), who);
  if (r != LCX_CLAIM_OK) {
    *err = claim_error(env, r);
    return false;
  }
  if (lcx_sampler_model(s) != c->model) {
    lcx_release_context_sampler(c, s, who);
    *err = lcx_err(env, LCX_E_model_mismatch);
    return false;
  }
  *cp = c;
  *sp = s;
  return true;
}

void lcx_release_context_sampler(lcx_context *c, lcx_sampler *s, lcx_claim *who) {
  lcx_owner_release(lcx_sampler_owner(s), who);
  lcx_owner_release(&c->owner, who);
}

// ---- positions and decoding ----------------------------------------------------------------

int32_t lcx_next_position(lcx_context *c) {
  llama_pos p = llama_memory_seq_pos_max(llama_get_memory(c->ctx), 0);
  return p < 0 ? 0 : p + 1;
}

uint32_t lcx_context_seq_size(lcx_context *c) { return llama_n_ctx_seq(c->ctx); }
lcx_owner *lcx_context_owner(lcx_context *c) { return &c->owner; }
bool lcx_context_embeddings(lcx_context *c) { return c->embeddings; }
bool lcx_context_kv_unified(lcx_context *c) { return c->kv_unified; }
void lcx_context_forget_logits(lcx_context *c) { c->has_logits = false; }

int32_t lcx_context_decode(lcx_context *c, struct llama_batch batch, bool *threw) {
  if (!c->loras_changed) return lcx_decode(c->ctx, batch, threw);
  // llama.cpp reserves the graph again in this decode, reading the model's
  // list of adapters, which an adapter load or free elsewhere may be changing
  lcx_model_adapters_lock(c->model);
  int32_t rc = lcx_decode(c->ctx, batch, threw);
  lcx_model_adapters_unlock(c->model);
  if (!*threw && rc == 0) c->loras_changed = false;
  return rc;
}

// Decodes tokens into sequence 0 in n_ubatch chunks (what llama_decode would
// split them into anyway), so that a cancelled claim or a dead caller stops it
// between chunks as well as inside one (the abort callback).
lcx_decode_status lcx_decode_tokens(lcx_context *c, const llama_token *toks, unsigned n, int32_t *code) {
  uint32_t step = llama_n_ubatch(c->ctx);
  c->has_logits = false;
  *code = 0;
  for (unsigned off = 0; off < n; off += step) {
    unsigned len = n - off < step ? n - off : step;
    bool threw;
    // a shift (shift.h) rotates the K cache at the next llama_decode: that one
    // runs, or the cache would keep moved positions with unrotated keys
    if (!c->shift_pending && lcx_owner_stopped(&c->owner)) return LCX_DECODE_ABORTED;
    c->shift_pending = false;
    llama_pos before = lcx_next_position(c);
    lcx_log_quiet_when(lcx_abort_cb, c);
    int32_t rc = lcx_context_decode(c, llama_batch_get_one((llama_token *)toks + off, (int32_t)len), &threw);
    lcx_log_quiet_when(NULL, NULL);
    if (threw) {
      // the exception skipped llama_decode's own clean-up of the failed batch
      llama_memory_seq_rm(llama_get_memory(c->ctx), -1, before, -1);
      return LCX_DECODE_THREW;
    }
    if (rc == 1) return LCX_DECODE_NO_KV_SLOT;
    if (rc == 2) return LCX_DECODE_ABORTED;
    if (rc != 0) {
      *code = rc;
      return LCX_DECODE_ERROR;
    }
  }
  c->has_logits = n > 0;
  return LCX_DECODE_OK;
}

ERL_NIF_TERM lcx_decode_error(ErlNifEnv *env, lcx_decode_status st, int32_t code) {
  switch (st) {
  case LCX_DECODE_THREW:
    return lcx_err_msg(env, LCX_E_decode_failed, lcx_last_exception());
  case LCX_DECODE_NO_KV_SLOT:
    return lcx_err(env, LCX_E_no_kv_slot);
  case LCX_DECODE_ABORTED:
    return lcx_err(env, LCX_E_aborted);
  default:
    return lcx_err_detail(env, LCX_E_decode_failed, enif_make_int(env, code));
  }
}

ERL_NIF_TERM lcx_overflow_error(ErlNifEnv *env, int32_t pos, unsigned n_prompt, int max_tokens, uint32_t n_ctx) {
  ERL_NIF_TERM keys[4] = {ATOM_position, ATOM_prompt_tokens, ATOM_max_tokens_key, ATOM_n_ctx};
  ERL_NIF_TERM vals[4] = {enif_make_int(env, pos), enif_make_uint(env, n_prompt), enif_make_int(env, max_tokens),
                          enif_make_uint(env, n_ctx)};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 4, &map);
  return lcx_err_detail(env, LCX_E_context_overflow, map);
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

// A model's head size for K or V ("key" or "value"): <arch>.attention.<kind>_length,
// else n_embd / n_head, as llama.cpp reads it; *swa the size for sliding-window
// layers (<kind>_length_swa, else the same).
static uint32_t head_size(const struct llama_model *model, const char *kind, uint32_t *swa) {
  char arch[64] = "", key[128], val[32];
  llama_model_meta_val_str(model, "general.architecture", arch, sizeof arch);
  int32_t n_head = llama_model_n_head(model);
  uint32_t full = n_head > 0 ? (uint32_t)(llama_model_n_embd(model) / n_head) : 0;
  snprintf(key, sizeof key, "%s.attention.%s_length", arch, kind);
  if (llama_model_meta_val_str(model, key, val, sizeof val) > 0) full = (uint32_t)strtoul(val, NULL, 10);
  *swa = full;
  snprintf(key, sizeof key, "%s.attention.%s_length_swa", arch, kind);
  if (llama_model_meta_val_str(model, key, val, sizeof val) > 0) *swa = (uint32_t)strtoul(val, NULL, 10);
  return full;
}

// A quantized KV cache stores each head's vector in blocks of ggml_blck_size
// values: a head size the block does not divide makes every attention read
// straddle blocks and gives garbage. llama.cpp refuses it only with flash
// attention on; here it is refused whatever the setting. Returns true, or
// false with {:error, {:unsupported_kv_type, info}} in *err.
static bool check_kv_type(ErlNifEnv *env, const struct llama_model *model, enum ggml_type type, const char *cache,
                          ERL_NIF_TERM *err) {
  int64_t block = ggml_blck_size(type);
  if (block <= 1 || llama_model_n_layer(model) == 0) return true;
  uint32_t swa, full = head_size(model, cache[0] == 'k' ? "key" : "value", &swa);
  uint32_t bad = full % block != 0 ? full : swa % block != 0 ? swa : 0;
  if (full == 0 || bad == 0) return true;
  const char *keys[] = {"cache", "type", "block_size", "head_size"};
  ERL_NIF_TERM vals[] = {enif_make_atom(env, cache), enif_make_atom(env, ggml_type_name(type)),
                         enif_make_int64(env, block), enif_make_uint(env, bad)};
  *err = lcx_err_detail(env, LCX_E_unsupported_kv_type, lcx_make_map(env, keys, vals, 4));
  return false;
}

static uint64_t physical_ram(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

// What llama_init_from_model allocates, mirrored from the pinned llama.cpp
// (llama_context's constructor in src/llama-context.cpp, llama_kv_cache's in
// src/llama-kv-cache.cpp, output_reserve):
//  * cells: n_ctx (0: the training length) is padded to a multiple of 256.
//    The cache is not unified (kv_unified, never set here), so each of the
//    n_seq_max sequences gets a stream of its own of n_ctx_seq =
//    pad(n_ctx / n_seq_max, 256) cells, and the cache holds n_ctx_seq *
//    n_seq_max cells: n_ctx 256 with 256 sequences is 65,536 cells, not 256.
//    Sliding-window layers get full-size caches too (swa_full, llama.cpp's
//    default, is kept).
//  * KV: per layer and cell, a K row of n_embd_head_k * n_head_kv values of
//    type_k and a V row of n_embd_head_v * n_head_kv values of type_v.
//  * outputs: logits of the last token of each sequence; with embeddings on,
//    logits and embeddings of every token of a batch (decodes here ask for
//    all outputs then).
//  * compute: the logits of one micro-batch, a few activations per token,
//    the attention mask of a micro-batch against a sequence's cells and,
//    unless flash attention is forced on, its f32 attention scores (auto
//    counts them: it may resolve to off).
// Not counted: the weights (loaded already). Layers without a KV cache
// (recurrent, shared) are counted as if they had one: an over-estimate.
typedef struct {
  uint64_t kv, output, compute;
} ctx_estimate;

static ctx_estimate estimate_bytes(const struct llama_model *model, int32_t n_vocab,
                                   const struct llama_context_params *p) {
  uint64_t n_ctx = p->n_ctx ? p->n_ctx : (uint64_t)llama_model_n_ctx_train(model);
  n_ctx = (n_ctx + 255) / 256 * 256;
  uint64_t n_seq = p->n_seq_max ? p->n_seq_max : 1;
  uint64_t n_ctx_seq = (n_ctx / n_seq + 255) / 256 * 256;
  uint64_t cells = n_ctx_seq * n_seq;
  uint64_t n_layer = (uint64_t)llama_model_n_layer(model);
  uint64_t n_head = (uint64_t)(llama_model_n_head(model) > 0 ? llama_model_n_head(model) : 0);
  uint64_t n_head_kv = (uint64_t)(llama_model_n_head_kv(model) > 0 ? llama_model_n_head_kv(model) : 0);
  uint64_t n_embd = (uint64_t)llama_model_n_embd(model);
  uint32_t swa_k, swa_v;
  uint64_t head_k = n_head ? head_size(model, "key", &swa_k) : 0,
           head_v = n_head ? head_size(model, "value", &swa_v) : 0;
  if (n_head && swa_k > head_k) head_k = swa_k;
  if (n_head && swa_v > head_v) head_v = swa_v;
  ctx_estimate e;
  e.kv = n_layer * cells *
         (ggml_row_size(p->type_k, (int64_t)(head_k * n_head_kv)) +
          ggml_row_size(p->type_v, (int64_t)(head_v * n_head_kv)));
  // the batch is clamped to the context before n_ctx is padded
  uint64_t n_batch = p->n_batch < (p->n_ctx ? p->n_ctx : n_ctx) ? p->n_batch : (p->n_ctx ? p->n_ctx : n_ctx);
  uint64_t n_ubatch = p->n_ubatch < n_batch ? p->n_ubatch : n_batch;
  uint64_t n_out = p->embeddings ? (n_batch > n_seq ? n_batch : n_seq) : n_seq;
  e.output = n_out * ((uint64_t)n_vocab + (p->embeddings ? n_embd : 0)) * sizeof(float);
  bool fa = p->flash_attn_type == LLAMA_FLASH_ATTN_TYPE_ENABLED;
  uint64_t kq = fa ? 0 : n_ctx_seq * n_ubatch * n_head * sizeof(float);
  uint64_t mask = n_ctx_seq * n_ubatch * (fa ? 2 : sizeof(float)); // the KQ mask: f16 with flash attention
  e.compute = n_ubatch * ((uint64_t)n_vocab + 16 * n_embd) * sizeof(float) + kq + mask;
  return e;
}

// context_create(model, %{n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch,
//                         embeddings, flash_attn, type_k, type_v, pooling[, max_memory]})
LCX_NIF(nif_context_create) {
  lcx_model *m = lcx_get_model(env, argv[0]);
  if (!m) return lcx_raise(env, "expected a model reference");
  if (!enif_is_map(env, argv[1])) return lcx_raise(env, "options must be a map");
  if (lcx_model_vocab_only(m)) return lcx_raise(env, "cannot create a context for a vocab_only model");
  struct llama_context_params p = llama_context_default_params();
  int n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch, flash_attn, pooling;
  bool embeddings = false;
  ERL_NIF_TERM v, kv_err;
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
  ErlNifSInt64 max_memory = 0;
  if (lcx_map_get(env, argv[1], "max_memory", &v) && !enif_is_identical(v, ATOM_nil) &&
      (!enif_get_int64(env, v, &max_memory) || max_memory < 1))
    return lcx_raise(env, "max_memory must be a positive integer or nil");
  if (lcx_map_get(env, argv[1], "kv_unified", &v) && !lcx_get_bool(env, v, &p.kv_unified))
    return lcx_raise(env, "kv_unified must be a boolean");
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

  if (!lcx_model_acquire(m)) return lcx_err(env, LCX_E_closed);
  // llama.cpp reserves an output row per sequence within n_batch, which it
  // clamps to n_ctx, and asserts
  int32_t n_ctx_eff = n_ctx ? n_ctx : llama_model_n_ctx_train(lcx_model_llama(m));
  int32_t n_batch_eff = n_ctx_eff > 0 && n_ctx_eff < n_batch ? n_ctx_eff : n_batch;
  if (n_seq_max > n_batch_eff) {
    lcx_model_release(m, false);
    return lcx_raise(env, "n_seq_max (%d) must be at most n_batch (%d, clamped to n_ctx)", n_seq_max, n_batch_eff);
  }
  if (!check_kv_type(env, lcx_model_llama(m), p.type_k, "k", &kv_err) ||
      !check_kv_type(env, lcx_model_llama(m), p.type_v, "v", &kv_err)) {
    lcx_model_release(m, false);
    return kv_err;
  }
  // llama.cpp allocates the KV cache and the buffers up front; an absurd
  // n_ctx, n_seq_max or n_batch would have the kernel kill the whole VM
  // instead of failing. The limit is physical RAM, or max_memory if given.
  ctx_estimate est = estimate_bytes(lcx_model_llama(m), lcx_model_n_vocab(m), &p);
  uint64_t need = est.kv + est.output + est.compute;
  uint64_t ram = max_memory > 0 ? (uint64_t)max_memory : physical_ram();
  if (ram > 0 && need > ram) {
    lcx_model_release(m, false);
    ERL_NIF_TERM keys[3] = {ATOM_needed, ATOM_available, enif_make_atom(env, "kv_cache")};
    ERL_NIF_TERM vals[3] = {enif_make_uint64(env, need), enif_make_uint64(env, ram), enif_make_uint64(env, est.kv)};
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 3, &map);
    return lcx_err_detail(env, LCX_E_context_too_large, map);
  }
  lcx_context *c = enif_alloc_resource(LCX_CONTEXT_RT, sizeof(lcx_context));
  if (!c) {
    lcx_model_release(m, false);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  memset(c, 0, sizeof *c);
  c->model = m;
  if (!lcx_owner_init(&c->owner, "lcx_context")) {
    enif_release_resource(c); // dtor releases the model
    return lcx_err(env, LCX_E_out_of_memory);
  }
  // the adapters to apply, pinned by the context (ArgumentError, :model_mismatch)
  if (lcx_map_get(env, argv[1], "lora", &v) && !lcx_read_lora_set(env, v, m, &c->loras, &kv_err)) {
    enif_release_resource(c);
    return kv_err;
  }
  p.abort_callback = lcx_abort_cb;
  p.abort_callback_data = c;

  lcx_log_capture_begin();
  lcx_model_adapters_lock(m); // creation reserves the graph: it reads the model's adapters
  c->ctx = lcx_init_from_model(lcx_model_llama(m), p);
  lcx_model_adapters_unlock(m);
  const char *why = lcx_log_capture_end();
  if (!c->ctx) {
    ERL_NIF_TERM err = lcx_err_msg(env, LCX_E_context_failed, why[0] ? why : lcx_last_exception());
    enif_release_resource(c); // dtor releases the model
    return err;
  }
  atomic_fetch_add(&lcx_live_contexts, 1);
  // A pool of compute threads per context (as llama.cpp's own tools do), and
  // a second one for batches when their thread count differs. Both start
  // paused: an unpaused pool's workers busy-poll for work from the moment
  // they start, and with llama.cpp's default poll level (50: 1024 * 128 * 50
  // pause instructions, about a second here) a hundred freshly created
  // contexts kept every core spinning, so creating the next one took 20-60 ms
  // instead of 1. The first graph computed resumes a pool. Poll level 1 keeps
  // the workers spinning for ~20 ms after each graph (enough for back-to-back
  // tokens) instead of a second of CPU burnt after every use.
  struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
  tpp.paused = true;
  tpp.poll = 1;
  if (n_threads_batch != n_threads) {
    struct ggml_threadpool_params tpp_batch = ggml_threadpool_params_default(n_threads_batch);
    tpp_batch.paused = true;
    tpp_batch.poll = 1;
    c->tp_batch = lcx_threadpool_new(&tpp_batch);
  }
  c->tp = lcx_threadpool_new(&tpp);
  if (!c->tp || (n_threads_batch != n_threads && !c->tp_batch)) {
    enif_release_resource(c); // dtor frees the context and any pool
    return lcx_err_msg(env, LCX_E_context_failed, "could not start the compute threads");
  }
  llama_attach_threadpool(c->ctx, c->tp, c->tp_batch);
  c->loras_changed = c->loras.n > 0;
  if (c->loras.n && !lcx_lora_set_apply(c->ctx, &c->loras)) {
    ERL_NIF_TERM err = lcx_err_msg(env, LCX_E_context_failed, lcx_last_exception());
    enif_release_resource(c);
    return err;
  }
  c->embeddings = embeddings;
  c->kv_unified = p.kv_unified;
  ERL_NIF_TERM t = enif_make_resource(env, c);
  enif_release_resource(c);
  return lcx_ok(env, t);
}

// context_free(ctx): cancels whatever runs on the context, waits for it to
// let go, then frees. Dirty: the wait is one token or one decode.
LCX_NIF(nif_context_free) {
  lcx_context *c = get_context(env, argv[0]);
  if (!c) return lcx_raise(env, "expected a context reference");
  lcx_owner_close(&c->owner, destroy_now, c);
  return ATOM_ok;
}

// context_set_lora(ctx, [{adapter, scale}]): the adapters the context applies
// from its next decode on (what it holds stays as computed). llama.cpp only
// rebuilds its graph when the set differs from the current one.
LCX_NIF(nif_context_set_lora) {
  lcx_context *c = get_context(env, argv[0]);
  if (!c) return lcx_raise(env, "expected a context reference");
  lcx_lora_set set;
  ERL_NIF_TERM err;
  lcx_claim who = LCX_CALL_CLAIM(env);
  if (!lcx_context_claim(env, argv[0], &who, &err)) return err;
  if (!lcx_read_lora_set(env, argv[1], c->model, &set, &err)) { // c->model is set while claimed
    lcx_context_release(c, &who);
    return err;
  }
  ERL_NIF_TERM result =
      lcx_context_apply_lora(c, &set, NULL) ? ATOM_ok : lcx_err_msg(env, LCX_E_exception, lcx_last_exception());
  lcx_context_release(c, &who);
  lcx_lora_set_release(&set);
  return result;
}

bool lcx_context_apply_lora(lcx_context *c, const lcx_lora_set *set, bool *changed) {
  if (changed) *changed = false;
  if (lcx_lora_set_equal(&c->loras, set)) return true;
  if (!lcx_lora_set_apply(c->ctx, set)) return false;
  c->loras_changed = true;
  if (changed) *changed = true;
  lcx_lora_set old = c->loras;
  lcx_lora_set_copy(&c->loras, set);
  lcx_lora_set_release(&old); // after the context let go of them
  return true;
}

// context_info(ctx) -> %{n_ctx, n_batch, n_ubatch, n_seq_max, n_threads, n_threads_batch}
LCX_NIF(nif_context_info) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  ERL_NIF_TERM keys[7] = {ATOM_n_ctx,
                          ATOM_n_batch,
                          ATOM_n_ubatch,
                          ATOM_n_seq_max,
                          ATOM_n_threads,
                          ATOM_n_threads_batch,
                          enif_make_atom(env, "stepwise_embeddings")};
  ERL_NIF_TERM vals[7] = {
      enif_make_uint(env, llama_n_ctx(c->ctx)),    enif_make_uint(env, llama_n_batch(c->ctx)),
      enif_make_uint(env, llama_n_ubatch(c->ctx)), enif_make_uint(env, llama_n_seq_max(c->ctx)),
      enif_make_int(env, llama_n_threads(c->ctx)), enif_make_int(env, llama_n_threads_batch(c->ctx)),
      embeds_stepwise(c) ? ATOM_true : ATOM_false};
  lcx_context_release(c, &me);
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 7, &map);
  return lcx_ok(env, map);
}

LCX_NIF(nif_context_position) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  int32_t pos = lcx_next_position(c);
  lcx_context_release(c, &me);
  return lcx_ok(env, enif_make_int(env, pos));
}

LCX_NIF(nif_context_clear) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  bool ok = lcx_memory_clear(c->ctx);
  c->has_logits = false;
  lcx_context_release(c, &me);
  return ok ? ATOM_ok : lcx_err_msg(env, LCX_E_exception, lcx_last_exception());
}

// Reads and validates a token list against the context's model.
static bool get_tokens(ErlNifEnv *env, lcx_context *c, ERL_NIF_TERM list, llama_token **toks, unsigned *n,
                       ERL_NIF_TERM *err) {
  return lcx_read_tokens(env, list, lcx_model_n_vocab(c->model), toks, n, err);
}

// context_decode(ctx, tokens) -> :ok | {:error, reason}
LCX_NIF(nif_context_decode) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  llama_token *toks = NULL;
  unsigned n;
  ERL_NIF_TERM r;
  if (!get_tokens(env, c, argv[1], &toks, &n, &err)) {
    r = err;
  } else {
    int32_t pos = lcx_next_position(c), code;
    uint32_t n_ctx = lcx_context_seq_size(c); // what one sequence can hold
    if (n == 0) {
      r = lcx_err(env, LCX_E_empty_prompt);
    } else if ((uint64_t)pos + n > n_ctx) {
      r = lcx_overflow_error(env, pos, n, 0, n_ctx);
    } else {
      lcx_decode_status st = lcx_decode_tokens(c, toks, n, &code);
      r = st == LCX_DECODE_OK ? ATOM_ok : lcx_decode_error(env, st, code);
    }
  }
  lcx_context_release(c, &me);
  if (toks) enif_free(toks);
  return r;
}

// sampler_sample(sampler, ctx) -> {:ok, token} | {:error, reason}
LCX_NIF(nif_sampler_sample) {
  ERL_NIF_TERM err, r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c;
  lcx_sampler *s;
  if (!lcx_claim_context_sampler(env, argv[1], argv[0], &me, &c, &s, &err)) return err;
  // llama_sampler_sample asserts that logits exist: check first.
  if (!c->has_logits || llama_get_logits_ith(c->ctx, -1) == NULL) {
    r = lcx_err(env, LCX_E_no_logits);
  } else {
    bool threw;
    llama_token t = lcx_chain_sample(lcx_sampler_chain(s), lcx_model_max_piece(c->model), c->ctx, -1, &threw);
    r = threw ? lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception()) : lcx_ok(env, enif_make_int(env, t));
  }
  lcx_release_context_sampler(c, s, &me);
  return r;
}

// context_logprobs(ctx) -> {:ok, [logprob]}: log p of every token of the
// vocabulary at the last position decoded (logprobs.h), or {:error, :no_logits}.
LCX_NIF(nif_context_logprobs) {
  ERL_NIF_TERM err, r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  const float *logits = c->has_logits ? llama_get_logits_ith(c->ctx, -1) : NULL;
  int32_t n = lcx_model_n_vocab(c->model);
  double *lp = logits ? enif_alloc(sizeof(double) * (size_t)n) : NULL;
  if (!logits) {
    r = lcx_err(env, LCX_E_no_logits);
  } else if (!lp) {
    r = lcx_err(env, LCX_E_out_of_memory);
  } else {
    lcx_log_softmax(logits, n, lp);
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (int32_t i = n; i > 0; i--)
      list = enif_make_list_cell(env, lcx_logprob_term(env, lp[i - 1]), list);
    r = lcx_ok(env, list);
  }
  if (lp) enif_free(lp);
  lcx_context_release(c, &me);
  return r;
}

// ---- embeddings ----------------------------------------------------------------------------

// A vector as a list of floats; false if an element is not finite (a broken
// model or input), which enif_make_double cannot represent.
static bool make_vector(ErlNifEnv *env, const float *v, int32_t n, ERL_NIF_TERM *out) {
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (int32_t i = n; i > 0; i--) {
    if (!isfinite(v[i - 1])) return false;
    list = enif_make_list_cell(env, enif_make_double(env, v[i - 1]), list);
  }
  *out = list;
  return true;
}

static ERL_NIF_TERM vector_result(ErlNifEnv *env, const float *v, int32_t n) {
  ERL_NIF_TERM list;
  if (!make_vector(env, v, n, &list)) return lcx_err(env, LCX_E_non_finite_embedding);
  return lcx_ok(env, list);
}

// A context with its own pooling (mean, cls, last): the whole sequence in one micro-batch.
static ERL_NIF_TERM embed_pooled(ErlNifEnv *env, lcx_context *c, const llama_token *toks, unsigned n) {
  int32_t code;
  lcx_decode_status st = lcx_decode_tokens(c, toks, n, &code);
  const float *emb = st == LCX_DECODE_OK ? llama_get_embeddings_seq(c->ctx, 0) : NULL;
  if (st != LCX_DECODE_OK) return lcx_decode_error(env, st, code);
  if (!emb) return lcx_err(env, LCX_E_no_embeddings);
  return vector_result(env, emb, llama_model_n_embd_out(lcx_model_llama(c->model)));
}

// Whether a text may be embedded in n_ubatch steps: the context has a memory
// (a KV cache the steps attend to; llama.cpp gives BERT-like models none and
// encodes each batch alone) and the model's attention is causal (a token's
// embedding then does not depend on what follows it).
static bool embeds_stepwise(lcx_context *c) {
  if (!llama_get_memory(c->ctx)) return false;
  char arch[64], key[96], val[16];
  if (llama_model_meta_val_str(lcx_model_llama(c->model), "general.architecture", arch, sizeof arch) < 0) return true;
  snprintf(key, sizeof key, "%s.attention.causal", arch);
  if (llama_model_meta_val_str(lcx_model_llama(c->model), key, val, sizeof val) < 0) return true;
  return strcmp(val, "false") != 0;
}

// A context without pooling (per-token embeddings) where embeds_stepwise: the
// text is decoded in n_ubatch steps and pooled here, so a long text never makes
// one huge micro-batch, and every step can be interrupted.
static ERL_NIF_TERM embed_stepwise(ErlNifEnv *env, lcx_context *c, const llama_token *toks, unsigned n,
                                   enum llama_pooling_type pooling) {
  int32_t n_embd = llama_model_n_embd_out(lcx_model_llama(c->model)), code;
  uint32_t step = llama_n_ubatch(c->ctx);
  double *acc = enif_alloc(sizeof(double) * (size_t)n_embd);
  float *out = enif_alloc(sizeof(float) * (size_t)n_embd);
  if (!acc || !out) {
    if (acc) enif_free(acc);
    if (out) enif_free(out);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  memset(acc, 0, sizeof(double) * (size_t)n_embd);
  ERL_NIF_TERM r = 0;
  for (unsigned off = 0; off < n && !r; off += step) {
    unsigned len = n - off < step ? n - off : step;
    lcx_decode_status st = lcx_decode_tokens(c, toks + off, len, &code);
    if (st != LCX_DECODE_OK) {
      r = lcx_decode_error(env, st, code);
      break;
    }
    for (unsigned i = 0; i < len; i++) {
      unsigned at = off + i;
      bool wanted = pooling == LLAMA_POOLING_TYPE_MEAN || (pooling == LLAMA_POOLING_TYPE_CLS && at == 0) ||
                    (pooling == LLAMA_POOLING_TYPE_LAST && at == n - 1);
      if (!wanted) continue;
      const float *e = llama_get_embeddings_ith(c->ctx, (int32_t)i);
      if (!e) {
        r = lcx_err(env, LCX_E_no_embeddings);
        break;
      }
      for (int32_t k = 0; k < n_embd; k++)
        acc[k] += e[k];
    }
  }
  if (!r) {
    double div = pooling == LLAMA_POOLING_TYPE_MEAN ? (double)n : 1.0;
    for (int32_t k = 0; k < n_embd; k++)
      out[k] = (float)(acc[k] / div);
    r = vector_result(env, out, n_embd);
  }
  enif_free(acc);
  enif_free(out);
  return r;
}

static bool pooling_from_atom(ErlNifEnv *env, ERL_NIF_TERM t, enum llama_pooling_type *out) {
  char name[16];
  if (!enif_get_atom(env, t, name, sizeof name, ERL_NIF_LATIN1)) return false;
  if (strcmp(name, "nil") == 0)
    *out = LLAMA_POOLING_TYPE_UNSPECIFIED;
  else if (strcmp(name, "mean") == 0)
    *out = LLAMA_POOLING_TYPE_MEAN;
  else if (strcmp(name, "cls") == 0)
    *out = LLAMA_POOLING_TYPE_CLS;
  else if (strcmp(name, "last") == 0)
    *out = LLAMA_POOLING_TYPE_LAST;
  else
    return false;
  return true;
}

// context_embed(ctx, tokens, pooling) -> {:ok, [float]}: the pooled embedding of
// one sequence. `pooling` (nil, :mean, :cls, :last) is for a context made with
// pooling: :none; nil uses the context's own. The memory is cleared before and after.
LCX_NIF(nif_context_embed) {
  ERL_NIF_TERM err, r;
  enum llama_pooling_type asked;
  if (!pooling_from_atom(env, argv[2], &asked)) return lcx_raise(env, "pooling must be nil, :mean, :cls or :last");
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  llama_token *toks = NULL;
  unsigned n = 0;
  enum llama_pooling_type own = llama_pooling_type(c->ctx);
  bool stepwise = own == LLAMA_POOLING_TYPE_NONE && asked != LLAMA_POOLING_TYPE_UNSPECIFIED;
  bool causal = embeds_stepwise(c);
  uint32_t n_seq = lcx_context_seq_size(c), n_ubatch = llama_n_ubatch(c->ctx);
  if (!get_tokens(env, c, argv[1], &toks, &n, &err)) {
    r = err;
  } else if (!c->embeddings) {
    r = lcx_err(env, LCX_E_embeddings_disabled);
  } else if (!stepwise && own != LLAMA_POOLING_TYPE_MEAN && own != LLAMA_POOLING_TYPE_CLS &&
             own != LLAMA_POOLING_TYPE_LAST) {
    r = lcx_err_detail(env, LCX_E_unsupported_pooling, enif_make_int(env, (int)own));
  } else if (n == 0) {
    r = lcx_err(env, LCX_E_empty_prompt);
  } else if (n > n_seq || (!(stepwise && causal) && n > n_ubatch)) {
    // a pooled (or non-causal) sequence must fit in one micro-batch
    r = lcx_overflow_error(env, 0, n, 0, stepwise && causal ? n_seq : (n_ubatch < n_seq ? n_ubatch : n_seq));
  } else if (!lcx_memory_clear(c->ctx)) {
    r = lcx_err_msg(env, LCX_E_exception, lcx_last_exception());
  } else {
    r = stepwise ? embed_stepwise(env, c, toks, n, asked) : embed_pooled(env, c, toks, n);
    lcx_memory_clear(c->ctx);
    c->has_logits = false;
  }
  lcx_context_release(c, &me);
  if (toks) enif_free(toks);
  return r;
}
