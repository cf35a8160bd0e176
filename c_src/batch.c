// See batch.h.
#include <string.h>

#include "batch.h"
#include "context.h"
#include "lcx.h"
#include "lora.h"
#include "shift.h"
#include "slot.h"
#include "state.h"

typedef struct {
  ErlNifMutex *mu; // one call at a time
  lcx_context *c;  // kept with enif_keep_resource
  struct llama_batch batch;
  bool has_batch;
  uint32_t n_batch;    // tokens per step
  uint32_t n_ctx_slot; // cells one slot may use
  unsigned n_slots;
  lcx_slot *slots; // slot i runs on sequence i
  uint64_t next_order;
  bool unified;   // one KV stream for all sequences: seq_cp shares cells
  bool embedding; // a pooling: :none embeddings context
  int32_t n_embd;
  // The LoRA adapters under which each sequence's cells were computed (its
  // job's, set at admission). llama.cpp applies adapters per context, so a
  // step decodes only slots of one set (choose_adapters).
  lcx_lora_set *seq_loras;
  uint64_t lora_switches; // steps that changed the context's adapters
} engine_t;

static ErlNifResourceType *ENGINE_RT;

static void engine_dtor(ErlNifEnv *env, void *obj) {
  engine_t *e = obj;
  if (e->slots) {
    for (unsigned i = 0; i < e->n_slots; i++)
      lcx_slot_reset(&e->slots[i]);
    enif_free(e->slots);
  }
  if (e->seq_loras) {
    for (unsigned i = 0; i < e->n_slots; i++)
      lcx_lora_set_release(&e->seq_loras[i]);
    enif_free(e->seq_loras);
  }
  if (e->has_batch) llama_batch_free(e->batch);
  if (e->mu) enif_mutex_destroy(e->mu);
  if (e->c) enif_release_resource(e->c); // its destructor hands the context to the janitor
}

int lcx_batch_load_types(ErlNifEnv *env) {
  ENGINE_RT = enif_open_resource_type(env, NULL, "lcx_batch_engine", engine_dtor, ERL_NIF_RT_CREATE, NULL);
  return ENGINE_RT ? 0 : -1;
}

static engine_t *get_engine(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, ENGINE_RT, &p) ? p : NULL;
}

static bool map_uint(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, unsigned *out) {
  ERL_NIF_TERM v;
  return lcx_map_get(env, map, key, &v) && enif_get_uint(env, v, out);
}

// ---- taking the engine and its context -------------------------------------------------------

// Locks the engine and claims its context for this NIF call; NULL with *err.
static engine_t *enter(ErlNifEnv *env, ERL_NIF_TERM t, lcx_claim *me, ERL_NIF_TERM *err) {
  engine_t *e = get_engine(env, t);
  if (!e) {
    *err = lcx_raise(env, "expected a batch engine");
    return NULL;
  }
  enif_mutex_lock(e->mu);
  lcx_claim_result r = lcx_owner_claim(lcx_context_owner(e->c), me);
  if (r != LCX_CLAIM_OK) {
    enif_mutex_unlock(e->mu);
    *err = lcx_err(env, r == LCX_CLAIM_BUSY ? LCX_E_busy : LCX_E_closed);
    return NULL;
  }
  return e;
}

static void leave(engine_t *e, lcx_claim *me) {
  lcx_context_release(e->c, me);
  enif_mutex_unlock(e->mu);
}

static struct llama_context *llama(engine_t *e) { return lcx_context_llama(e->c); }

// Removes a sequence's cells from position p0 on; false when llama.cpp refuses.
static bool seq_rm(engine_t *e, llama_seq_id seq, llama_pos p0) { return lcx_memory_seq_rm(llama(e), seq, p0, -1); }

static unsigned seq_n_past(engine_t *e, llama_seq_id seq) {
  llama_pos p = llama_memory_seq_pos_max(llama_get_memory(llama(e)), seq);
  return p < 0 ? 0 : (unsigned)p + 1;
}

// ---- batch_new -----------------------------------------------------------------------------

// batch_new(ctx, %{n_slots, n_batch, n_ctx_slot, embedding}) -> {:ok, engine}
// The context must have at least n_slots sequences and n_batch >= n_slots.
LCX_NIF(nif_batch_new) {
  unsigned n_slots, n_batch, n_ctx_slot;
  bool embedding = false;
  ERL_NIF_TERM v, err;
  if (!enif_is_map(env, argv[1]) || !map_uint(env, argv[1], "n_slots", &n_slots) ||
      !map_uint(env, argv[1], "n_batch", &n_batch) || !map_uint(env, argv[1], "n_ctx_slot", &n_ctx_slot) ||
      !lcx_map_get(env, argv[1], "embedding", &v) || !lcx_get_bool(env, v, &embedding))
    return lcx_raise(env, "options must be %%{n_slots, n_batch, n_ctx_slot, embedding}");
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  struct llama_context *ctx = lcx_context_llama(c);
  uint32_t n_seq_max = llama_n_seq_max(ctx), n_ctx = llama_n_ctx(ctx), n_ctx_seq = llama_n_ctx_seq(ctx);
  uint32_t llama_batch_max = llama_n_batch(ctx);
  enum llama_pooling_type pooling = llama_pooling_type(ctx);
  int32_t n_embd = llama_model_n_embd_out(lcx_model_llama(lcx_context_model(c)));
  bool has_embeddings = lcx_context_embeddings(c), splits = lcx_context_splits_batches(c);
  uint32_t n_ubatch = llama_n_ubatch(ctx);
  lcx_context_release(c, &me);

  if (n_slots < 1 || n_slots > n_seq_max) return lcx_raise(env, "n_slots must be in 1..%u (n_seq_max)", n_seq_max);
  if (n_batch < n_slots || n_batch > llama_batch_max)
    return lcx_raise(env, "n_batch must be in %u..%u (n_slots..the context's n_batch)", n_slots, llama_batch_max);
  if (!splits && n_batch > n_ubatch)
    return lcx_raise(env,
                     "n_batch must be at most n_ubatch (%u): this model's batches cannot be split (no KV cache or "
                     "non-causal attention)",
                     n_ubatch);
  if (n_ctx_slot < 1 || n_ctx_slot > n_ctx_seq)
    return lcx_raise(env, "n_ctx_slot must be in 1..%u (the context's n_ctx_seq)", n_ctx_seq);
  if (embedding && (!has_embeddings || pooling != LLAMA_POOLING_TYPE_NONE))
    return lcx_raise(env, "an embedding engine needs a context with embeddings: true, pooling: :none");
  if (!embedding && has_embeddings) return lcx_raise(env, "a generation engine needs a context without embeddings");

  engine_t *e = enif_alloc_resource(ENGINE_RT, sizeof(engine_t));
  if (!e) return lcx_err(env, LCX_E_out_of_memory);
  memset(e, 0, sizeof *e);
  enif_keep_resource(c);
  e->c = c;
  ERL_NIF_TERM t = enif_make_resource(env, e);
  enif_release_resource(e); // the term keeps it
  e->mu = enif_mutex_create("lcx_batch_engine");
  e->slots = enif_alloc(sizeof(lcx_slot) * n_slots);
  e->seq_loras = enif_alloc(sizeof(lcx_lora_set) * n_slots);
  if (e->seq_loras) memset(e->seq_loras, 0, sizeof(lcx_lora_set) * n_slots);
  if (!e->mu || !e->slots || !e->seq_loras) return lcx_err(env, LCX_E_out_of_memory);
  e->n_slots = n_slots;
  for (unsigned i = 0; i < n_slots; i++)
    lcx_slot_init(&e->slots[i], (llama_seq_id)i);
  e->batch = llama_batch_init((int32_t)n_batch, 0, 1);
  if (!e->batch.token) return lcx_err(env, LCX_E_out_of_memory);
  e->has_batch = true;
  e->n_batch = n_batch;
  e->n_ctx_slot = n_ctx_slot;
  // one stream per sequence splits the cells evenly; a unified cache gives each all of them
  e->unified = n_seq_max == 1 || n_ctx_seq == n_ctx;
  e->embedding = embedding;
  e->n_embd = n_embd;
  return lcx_ok(env, t);
}

// ---- batch_admit ------------------------------------------------------------------------------

static lcx_slot *free_slot(ErlNifEnv *env, engine_t *e, ERL_NIF_TERM t, ERL_NIF_TERM *err) {
  unsigned i;
  if (!enif_get_uint(env, t, &i) || i >= e->n_slots) {
    *err = lcx_raise(env, "slot must be in 0..%u", e->n_slots - 1);
    return NULL;
  }
  if (e->slots[i].state != LCX_SLOT_FREE) {
    *err = lcx_raise(env, "slot %u is busy", i);
    return NULL;
  }
  return &e->slots[i];
}

// The prompt of a job, checked against the vocabulary and the slot size.
static bool read_prompt(ErlNifEnv *env, engine_t *e, ERL_NIF_TERM list, int max_tokens, llama_token **toks, unsigned *n,
                        ERL_NIF_TERM *err) {
  if (!lcx_read_tokens(env, list, lcx_model_n_vocab(lcx_context_model(e->c)), toks, n, err)) return false;
  if (*n == 0)
    *err = lcx_err(env, LCX_E_empty_prompt);
  else if (*n > e->n_ctx_slot)
    *err = lcx_overflow_error(env, 0, *n, max_tokens, e->n_ctx_slot);
  else
    return true;
  enif_free(*toks);
  *toks = NULL;
  return false;
}

// Puts the first `reuse` tokens of sequence `src` (the slot's own or another's)
// at the start of the slot's sequence and drops the rest of what it held.
// Returns how many were reused: at most what src holds.
static unsigned reuse_prefix(engine_t *e, lcx_slot *s, unsigned src, unsigned reuse) {
  struct llama_context *ctx = llama(e);
  unsigned held = seq_n_past(e, (llama_seq_id)src);
  if (reuse > held) reuse = held;
  // a running job that shifted its context holds its prompt only up to n_keep
  const lcx_slot *from = &e->slots[src];
  if (from->state != LCX_SLOT_FREE && from->shifted > 0 && reuse > (unsigned)from->n_keep)
    reuse = (unsigned)from->n_keep;
  if (src == (unsigned)s->seq) {
    if (seq_rm(e, s->seq, (llama_pos)reuse)) return reuse;
  } else if (seq_rm(e, s->seq, 0) && reuse > 0) {
    bool ok = e->unified ? lcx_memory_seq_cp(ctx, (llama_seq_id)src, s->seq, 0, (llama_pos)reuse)
                         : lcx_memory_seq_cp(ctx, (llama_seq_id)src, s->seq, -1, -1) && seq_rm(e, s->seq, reuse);
    if (ok) return reuse;
  }
  seq_rm(e, s->seq, 0); // a whole sequence can always be removed
  return 0;
}

static bool sampler_busy(const engine_t *e, const lcx_sampler *sampler) {
  for (unsigned i = 0; i < e->n_slots; i++)
    if (e->slots[i].state != LCX_SLOT_FREE && e->slots[i].sampler == sampler) return true;
  return false;
}

// batch_admit(engine, slot, sampler, tokens,
//             %{max_tokens, stop, stream, src, reuse, logprobs, context_shift, n_keep[, lora]})
//   -> {:ok, reused} | {:error, reason}
// Starts a generation in a free slot. `src` is the sequence whose first
// `reuse` tokens equal the prompt's (the slot's own sequence, or another one);
// at most n_prompt - 1 are reused, so the last prompt token is decoded for
// its logits, and none when src's cells were computed under other LoRA
// adapters than the job's (`lora`: [{adapter, scale}], default none).
LCX_NIF(nif_batch_admit) {
  ERL_NIF_TERM v, err, r;
  unsigned src, reuse, n;
  lcx_slot_opts o = {.n_logprobs = -1, .n_keep = -1};
  lcx_stops stops = {0};
  ERL_NIF_TERM opts = argv[4];
  if (!enif_is_map(env, opts) || !lcx_map_get(env, opts, "max_tokens", &v) || !enif_get_int(env, v, &o.max_tokens) ||
      o.max_tokens < 1 || !map_uint(env, opts, "src", &src) || !map_uint(env, opts, "reuse", &reuse) ||
      !lcx_map_get(env, opts, "stream", &v) || !lcx_get_bool(env, v, &o.stream))
    return lcx_raise(env, "options must be %%{max_tokens, stop, stream, src, reuse}");
  if (lcx_map_get(env, opts, "logprobs", &v) &&
      (!enif_get_int(env, v, &o.n_logprobs) || o.n_logprobs < -1 || o.n_logprobs > LCX_MAX_LOGPROBS))
    return lcx_raise(env, "logprobs must be an integer in -1..%d", LCX_MAX_LOGPROBS);
  if (lcx_map_get(env, opts, "context_shift", &v) && !lcx_get_bool(env, v, &o.shift))
    return lcx_raise(env, "context_shift must be a boolean");
  if (lcx_map_get(env, opts, "n_keep", &v) && (!enif_get_int(env, v, &o.n_keep) || o.n_keep < -1))
    return lcx_raise(env, "n_keep must be a non-negative integer");
  if (lcx_map_get(env, opts, "special", &v) && !enif_is_identical(v, ATOM_nil) && !lcx_get_bool(env, v, &o.special))
    return lcx_raise(env, "special must be a boolean");
  if (!lcx_map_get(env, opts, "stop", &v)) return lcx_raise(env, "options must have stop");
  switch (lcx_stops_read(env, v, &stops)) {
  case LCX_STOPS_OK:
    break;
  case LCX_STOPS_NOMEM:
    return lcx_err(env, LCX_E_out_of_memory);
  default:
    return lcx_raise(env, "stop must be a list of at most %d non-empty binaries", LCX_MAX_STOPS);
  }
  lcx_sampler *sampler = lcx_get_sampler(env, argv[2]);
  if (!sampler) {
    lcx_stops_free(&stops);
    return lcx_raise(env, "expected a sampler reference");
  }
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) {
    lcx_stops_free(&stops);
    return err;
  }
  llama_token *toks = NULL;
  lcx_lora_set loras = {0};
  bool has_loras = false;
  lcx_slot *s = free_slot(env, e, argv[1], &err);
  if (s && lcx_map_get(env, opts, "lora", &v)) {
    has_loras = lcx_read_lora_set(env, v, lcx_context_model(e->c), &loras, &err);
    if (!has_loras) s = NULL; // err says why
  }
  if (!s || e->embedding) {
    r = s ? lcx_raise(env, "an embedding engine runs no generations") : err;
  } else if (src >= e->n_slots) {
    r = lcx_raise(env, "src must be a slot of the engine (0..%u)", e->n_slots - 1);
  } else if (sampler_busy(e, sampler)) {
    // the step claims each slot's sampler: one held twice would wait on itself
    r = lcx_raise(env, "the sampler is in use by another slot");
  } else if (lcx_sampler_model(sampler) != lcx_context_model(e->c)) {
    r = lcx_err(env, LCX_E_model_mismatch);
  } else if (o.shift && ((e->unified && llama_n_seq_max(llama(e)) > 1) || !lcx_can_shift(llama(e)))) {
    // a unified cache shares cells between sequences: moving one's would move the others'
    r = lcx_err(env, LCX_E_shift_unsupported);
  } else if (!read_prompt(env, e, argv[3], o.max_tokens, &toks, &n, &err)) {
    r = err;
  } else {
    // cells computed under other adapters are of no use
    if (src >= e->n_slots || !lcx_lora_set_equal(&e->seq_loras[src], &loras)) reuse = 0;
    unsigned reused = reuse_prefix(e, s, src, reuse < n ? reuse : n - 1);
    lcx_lora_set_release(&e->seq_loras[s->seq]);
    e->seq_loras[s->seq] = loras; // the sequence's cells are now the job's
    has_loras = false;
    r = lcx_slot_begin_generate(s, sampler, toks, n, reused, e->n_ctx_slot, &o, &stops, e->next_order++)
            ? lcx_ok(env, enif_make_uint(env, reused))
            : lcx_err(env, LCX_E_out_of_memory);
    toks = NULL; // the slot owns it now
  }
  leave(e, &me);
  if (has_loras) lcx_lora_set_release(&loras);
  if (toks) enif_free(toks);
  lcx_stops_free(&stops);
  return r;
}

// batch_admit_embed(engine, slot, tokens, pooling) -> :ok | {:error, reason}
// pooling: :mean, :cls or :last.
LCX_NIF(nif_batch_admit_embed) {
  ERL_NIF_TERM err, r;
  char name[8];
  lcx_pool pool;
  if (!enif_get_atom(env, argv[3], name, sizeof name, ERL_NIF_LATIN1)) name[0] = '\0';
  if (strcmp(name, "mean") == 0)
    pool = LCX_POOL_MEAN;
  else if (strcmp(name, "cls") == 0)
    pool = LCX_POOL_CLS;
  else if (strcmp(name, "last") == 0)
    pool = LCX_POOL_LAST;
  else
    return lcx_raise(env, "pooling must be :mean, :cls or :last");
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  llama_token *toks = NULL;
  unsigned n;
  lcx_slot *s = free_slot(env, e, argv[1], &err);
  if (!s || !e->embedding) {
    r = s ? lcx_err(env, LCX_E_embeddings_disabled) : err;
  } else if (!read_prompt(env, e, argv[2], 0, &toks, &n, &err)) {
    r = err;
  } else {
    seq_rm(e, s->seq, 0);
    lcx_lora_set_release(&e->seq_loras[s->seq]);
    r = lcx_slot_begin_embed(s, toks, n, pool, e->n_embd, e->next_order++) ? ATOM_ok
                                                                           : lcx_err(env, LCX_E_out_of_memory);
  }
  leave(e, &me);
  return r;
}

// ---- batch_step ---------------------------------------------------------------------------------

typedef struct {
  engine_t *e;
  lcx_claim *me;
  bool *skip;      // slots left out of this step (streams waiting for their consumer)
  bool *sampling;  // slots whose sampler this step claimed
  unsigned *order; // busy slots, prefill by admission order
  ERL_NIF_TERM events;
  ErlNifEnv *env;
} step_t;

static void push_event(step_t *st, ERL_NIF_TERM ev) { st->events = enif_make_list_cell(st->env, ev, st->events); }

// Ends a slot's job with an error: its cells are dropped, the slot is free.
static void fail_slot(step_t *st, lcx_slot *s, ERL_NIF_TERM reason) {
  if (st->sampling[s->seq]) lcx_owner_release(lcx_sampler_owner(s->sampler), st->me);
  st->sampling[s->seq] = false;
  push_event(st, enif_make_tuple3(st->env, ATOM_error, enif_make_uint(st->env, (unsigned)s->seq), reason));
  seq_rm(st->e, s->seq, 0);
  lcx_slot_reset(s);
}

// Claims the sampler of every generation taking part; a slot whose sampler
// was freed fails alone.
static void claim_samplers(step_t *st) {
  engine_t *e = st->e;
  for (unsigned i = 0; i < e->n_slots; i++) {
    lcx_slot *s = &e->slots[i];
    if (s->state == LCX_SLOT_FREE || st->skip[i] || s->kind != LCX_JOB_GENERATE) continue;
    lcx_claim_result r = lcx_owner_claim(lcx_sampler_owner(s->sampler), st->me);
    if (r == LCX_CLAIM_OK)
      st->sampling[i] = true;
    else
      fail_slot(st, s, lcx_err(st->env, r == LCX_CLAIM_BUSY ? LCX_E_busy : LCX_E_closed));
  }
}

static void release_samplers(step_t *st) {
  for (unsigned i = 0; i < st->e->n_slots; i++)
    if (st->sampling[i]) lcx_owner_release(lcx_sampler_owner(st->e->slots[i].sampler), st->me);
}

// The step's LoRA adapters: those of the oldest busy slot (admission order)
// taking part. Slots whose adapters differ sit this step out (they are added
// to skip); they run once every older slot of another set has finished, so
// none waits forever. The context switches adapters only when the set
// changes. If llama.cpp refuses the set, the slots of that set fail.
static void choose_adapters(step_t *st) {
  engine_t *e = st->e;
  lcx_slot *oldest = NULL;
  for (unsigned i = 0; i < e->n_slots; i++) {
    lcx_slot *s = &e->slots[i];
    if (s->state != LCX_SLOT_FREE && !st->skip[i] && (!oldest || s->order < oldest->order)) oldest = s;
  }
  if (!oldest) return;
  lcx_lora_set set;
  lcx_lora_set_copy(&set, &e->seq_loras[oldest->seq]);
  bool changed = false;
  bool applied = lcx_context_apply_lora(e->c, &set, &changed);
  if (changed) e->lora_switches++;
  ERL_NIF_TERM reason = applied ? 0 : lcx_err_msg(st->env, LCX_E_exception, lcx_last_exception());
  for (unsigned i = 0; i < e->n_slots; i++) {
    lcx_slot *s = &e->slots[i];
    if (s->state == LCX_SLOT_FREE || st->skip[i]) continue;
    if (!lcx_lora_set_equal(&e->seq_loras[i], &set))
      st->skip[i] = true;
    else if (!applied)
      fail_slot(st, s, reason);
  }
  lcx_lora_set_release(&set);
}

// One token per generating slot first, then prompt chunks, oldest admission
// first, within the step's budget. Returns the tokens added.
static unsigned build_batch(step_t *st) {
  engine_t *e = st->e;
  struct llama_batch *b = &e->batch;
  unsigned n_busy = 0;
  b->n_tokens = 0;
  for (unsigned i = 0; i < e->n_slots; i++) {
    lcx_slot *s = &e->slots[i];
    s->idx = -1;
    s->n_added = 0;
    if (s->state == LCX_SLOT_FREE || st->skip[i]) continue;
    if (s->state == LCX_SLOT_GENERATE)
      lcx_slot_add(s, b, e->n_batch - (unsigned)b->n_tokens);
    else
      st->order[n_busy++] = i;
  }
  // insertion sort by admission order (a few slots)
  for (unsigned i = 1; i < n_busy; i++) {
    unsigned k = st->order[i], j = i;
    for (; j > 0 && e->slots[st->order[j - 1]].order > e->slots[k].order; j--)
      st->order[j] = st->order[j - 1];
    st->order[j] = k;
  }
  for (unsigned i = 0; i < n_busy; i++)
    lcx_slot_add(&e->slots[st->order[i]], b, e->n_batch - (unsigned)b->n_tokens);
  return (unsigned)b->n_tokens;
}

static ERL_NIF_TERM slot_event(step_t *st, ERL_NIF_TERM tag, lcx_slot *s, ERL_NIF_TERM payload) {
  return enif_make_tuple3(st->env, tag, enif_make_uint(st->env, (unsigned)s->seq), payload);
}

// What each slot that took part made of the decode.
static void after_decode(step_t *st) {
  engine_t *e = st->e;
  const struct llama_vocab *vocab = lcx_model_vocab(lcx_context_model(e->c));
  for (unsigned i = 0; i < e->n_slots; i++) {
    lcx_slot *s = &e->slots[i];
    if (s->idx < 0) continue;
    struct llama_sampler *chain = st->sampling[i] ? lcx_sampler_chain(s->sampler) : NULL;
    switch (lcx_slot_decoded(s, llama(e), vocab, chain)) {
    case LCX_SLOT_ABSORBED:
      break;
    case LCX_SLOT_TOKEN:
      if (s->opts.stream) push_event(st, slot_event(st, ATOM_text, s, lcx_slot_take_text(st->env, s, vocab)));
      break;
    case LCX_SLOT_DONE:
      if (s->kind == LCX_JOB_EMBED) {
        push_event(st, slot_event(st, ATOM_done, s, lcx_ok(st->env, lcx_slot_vector(st->env, s))));
        seq_rm(e, s->seq, 0);
      } else {
        push_event(st, slot_event(st, ATOM_done, s, lcx_slot_result(st->env, s, vocab)));
      }
      if (st->sampling[i]) lcx_owner_release(lcx_sampler_owner(s->sampler), st->me);
      st->sampling[i] = false;
      lcx_slot_reset(s);
      break;
    case LCX_SLOT_FAILED:
      fail_slot(st, s, lcx_slot_result(st->env, s, vocab));
      break;
    }
  }
}

static ERL_NIF_TERM step_stats(ErlNifEnv *env, unsigned n_tokens, unsigned n_gen, int64_t decode_us, int64_t step_us) {
  static const char *const keys[] = {"tokens", "generating", "decode_us", "step_us"};
  ERL_NIF_TERM vals[] = {enif_make_uint(env, n_tokens), enif_make_uint(env, n_gen), enif_make_int64(env, decode_us),
                         enif_make_int64(env, step_us)};
  return lcx_make_map(env, keys, vals, 4);
}

static bool read_skip(ErlNifEnv *env, ERL_NIF_TERM list, bool *skip, unsigned n_slots) {
  ERL_NIF_TERM head;
  unsigned i;
  while (enif_get_list_cell(env, list, &head, &list)) {
    if (!enif_get_uint(env, head, &i) || i >= n_slots) return false;
    skip[i] = true;
  }
  return enif_is_empty_list(env, list);
}

// batch_step(engine, skip) -> {:ok, events, stats} | {:no_kv_slot, events}
//   events: [{:text, slot, binary} | {:done, slot, {:ok, map} | {:ok, vector}} | {:error, slot, reason}]
//   stats: %{tokens, generating, decode_us, step_us}
// `skip` lists slots to leave out of this step. {:no_kv_slot, _}: the KV cache
// had no room for the batch; nothing was decoded or sampled (the server frees
// cells and steps again). A failed decode fails every slot that took part.
LCX_NIF(nif_batch_step) {
  int64_t t0 = lcx_slot_now_us();
  ERL_NIF_TERM err;
  engine_t *e0 = get_engine(env, argv[0]);
  if (!e0) return lcx_raise(env, "expected a batch engine");
  unsigned n_slots = e0->n_slots; // fixed at creation
  bool *flags = enif_alloc(2 * sizeof(bool) * n_slots);
  unsigned *order = enif_alloc(sizeof(unsigned) * n_slots);
  if (!flags || !order) {
    if (flags) enif_free(flags);
    if (order) enif_free(order);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  memset(flags, 0, 2 * sizeof(bool) * n_slots);
  step_t st = {.skip = flags, .sampling = flags + n_slots, .order = order, .env = env};
  st.events = enif_make_list(env, 0);
  ERL_NIF_TERM r;
  if (!read_skip(env, argv[1], st.skip, n_slots)) {
    r = lcx_raise(env, "skip must be a list of slots");
    goto out;
  }
  lcx_claim me = LCX_CALL_CLAIM(env);
  st.me = &me;
  st.e = enter(env, argv[0], &me, &err);
  if (!st.e) {
    r = err;
    goto out;
  }
  choose_adapters(&st);
  claim_samplers(&st);
  unsigned n_tokens = build_batch(&st), n_gen = 0;
  for (unsigned i = 0; i < n_slots; i++)
    n_gen += st.e->slots[i].state == LCX_SLOT_GENERATE && st.e->slots[i].idx >= 0;
  int64_t decode_us = 0;
  if (n_tokens > 0) {
    bool threw;
    int64_t td = lcx_slot_now_us();
    lcx_log_quiet_when(lcx_abort_cb, st.e->c);
    int32_t rc = lcx_context_decode(st.e->c, st.e->batch, &threw);
    lcx_log_quiet_when(NULL, NULL);
    decode_us = lcx_slot_now_us() - td;
    if (!threw && rc == 1) {
      release_samplers(&st);
      leave(st.e, &me);
      r = enif_make_tuple2(env, lcx_reason_atom(LCX_E_no_kv_slot), st.events);
      goto out;
    }
    if (threw || rc != 0) {
      ERL_NIF_TERM reason = threw     ? lcx_err_msg(env, LCX_E_decode_failed, lcx_last_exception())
                            : rc == 2 ? lcx_err(env, LCX_E_aborted)
                                      : lcx_err_detail(env, LCX_E_decode_failed, enif_make_int(env, rc));
      for (unsigned i = 0; i < n_slots; i++)
        if (st.e->slots[i].idx >= 0) fail_slot(&st, &st.e->slots[i], reason);
    } else {
      after_decode(&st);
    }
  }
  release_samplers(&st);
  leave(st.e, &me);
  r = enif_make_tuple3(env, ATOM_ok, st.events, step_stats(env, n_tokens, n_gen, decode_us, lcx_slot_now_us() - t0));
out:
  enif_free(flags);
  enif_free(order);
  return r;
}

// ---- release, cache, info ----------------------------------------------------------------------

// batch_release(engine, slot, keep) -> {:ok, map | nil}
// Ends the slot's job now (cancelled): the result of a generation so far, or
// nil for a free slot or an embedding. With keep, the slot's cells stay (the
// prefix cache); otherwise they are dropped.
LCX_NIF(nif_batch_release) {
  ERL_NIF_TERM err, r = ATOM_nil;
  unsigned i;
  bool keep;
  if (!lcx_get_bool(env, argv[2], &keep)) return lcx_raise(env, "keep must be a boolean");
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  if (!enif_get_uint(env, argv[1], &i) || i >= e->n_slots) {
    r = lcx_raise(env, "slot must be in 0..%u", e->n_slots - 1);
    leave(e, &me);
    return r;
  }
  lcx_slot *s = &e->slots[i];
  if (s->state != LCX_SLOT_FREE) {
    lcx_slot_cancel(s);
    if (s->kind == LCX_JOB_GENERATE)
      r = lcx_slot_result(env, s, lcx_model_vocab(lcx_context_model(e->c))); // {:ok, map}
    lcx_slot_reset(s);
  }
  if (!keep || e->embedding) seq_rm(e, (llama_seq_id)i, 0);
  leave(e, &me);
  return enif_is_identical(r, ATOM_nil) ? lcx_ok(env, ATOM_nil) : r;
}

// batch_purge(engine, seq, from) -> :ok
// Drops the cells of a free slot's sequence from position `from` on (the prefix cache's eviction).
LCX_NIF(nif_batch_purge) {
  ERL_NIF_TERM err, r = ATOM_ok;
  unsigned i, from;
  if (!enif_get_uint(env, argv[2], &from)) return lcx_raise(env, "from must be a non-negative integer");
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  if (!enif_get_uint(env, argv[1], &i) || i >= e->n_slots)
    r = lcx_raise(env, "slot must be in 0..%u", e->n_slots - 1);
  else if (e->slots[i].state != LCX_SLOT_FREE)
    r = lcx_raise(env, "slot %u is busy", i);
  else if (!seq_rm(e, (llama_seq_id)i, (llama_pos)from))
    seq_rm(e, (llama_seq_id)i, 0);
  leave(e, &me);
  return r;
}

// ---- saved sequences ---------------------------------------------------------------------------

// batch_seq_save(engine, slot) -> {:ok, binary, n_past} | {:error, reason}
// The cells of a free slot's sequence (state.h), and the positions it holds.
LCX_NIF(nif_batch_seq_save) {
  ERL_NIF_TERM err, r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  lcx_slot *s = free_slot(env, e, argv[1], &err);
  if (!s) {
    r = err;
  } else if (e->embedding) {
    r = lcx_raise(env, "an embedding engine keeps no sequences");
  } else if (e->seq_loras[s->seq].n > 0) {
    // a restored sequence is taken as computed without adapters
    r = lcx_err_msg(env, LCX_E_invalid_state, "the sequence was computed with LoRA adapters");
  } else {
    unsigned n = seq_n_past(e, s->seq);
    r = n == 0 ? lcx_err_msg(env, LCX_E_invalid_state, "the sequence is empty") : lcx_state_seq_save(env, e->c, s->seq);
    const ERL_NIF_TERM *t;
    int arity;
    if (enif_get_tuple(env, r, &arity, &t) && arity == 2 && enif_is_identical(t[0], ATOM_ok))
      r = enif_make_tuple3(env, ATOM_ok, t[1], enif_make_uint(env, n));
  }
  leave(e, &me);
  return r;
}

// batch_seq_load(engine, slot, binary, n_tokens) -> :ok | {:error, reason}
// Replaces a free slot's sequence with a saved one (checked by state.h) that
// must hold exactly positions 0..n_tokens-1, within the slot's cells;
// otherwise the sequence is left empty and the reason says why.
LCX_NIF(nif_batch_seq_load) {
  ERL_NIF_TERM err, r;
  unsigned want;
  if (!enif_get_uint(env, argv[3], &want) || want == 0) return lcx_raise(env, "n_tokens must be a positive integer");
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  lcx_slot *s = free_slot(env, e, argv[1], &err);
  if (!s) {
    r = err;
  } else if (e->embedding) {
    r = lcx_raise(env, "an embedding engine keeps no sequences");
  } else if (want > e->n_ctx_slot) {
    r = lcx_err_msg(env, LCX_E_invalid_state, "more tokens than a slot holds");
  } else {
    lcx_lora_set_release(&e->seq_loras[s->seq]); // the cells are now the session's, made without adapters
    r = lcx_state_seq_load(env, e->c, s->seq, argv[2]);
    unsigned n = seq_n_past(e, s->seq);
    if (enif_is_identical(r, ATOM_ok) && n != want) {
      char msg[96];
      snprintf(msg, sizeof msg, "the state holds %u positions, the session %u tokens", n, want);
      r = lcx_err_msg(env, LCX_E_invalid_state, msg);
    }
    if (!enif_is_identical(r, ATOM_ok)) seq_rm(e, s->seq, 0); // neither half of a session stays
  }
  leave(e, &me);
  return r;
}

// batch_info(engine) -> %{n_slots, n_batch, n_ctx_slot, n_ctx, unified, kv_tokens: [per slot], lora_switches}
LCX_NIF(nif_batch_info) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  engine_t *e = enter(env, argv[0], &me, &err);
  if (!e) return err;
  ERL_NIF_TERM held = enif_make_list(env, 0);
  for (unsigned i = e->n_slots; i > 0; i--)
    held = enif_make_list_cell(env, enif_make_uint(env, seq_n_past(e, (llama_seq_id)(i - 1))), held);
  static const char *const keys[] = {"n_slots", "n_batch",   "n_ctx_slot",   "n_ctx",
                                     "unified", "kv_tokens", "lora_switches"};
  ERL_NIF_TERM vals[] = {enif_make_uint(env, e->n_slots),        enif_make_uint(env, e->n_batch),
                         enif_make_uint(env, e->n_ctx_slot),     enif_make_uint(env, llama_n_ctx(llama(e))),
                         e->unified ? ATOM_true : ATOM_false,    held,
                         enif_make_uint64(env, e->lora_switches)};
  leave(e, &me);
  return lcx_ok(env, lcx_make_map(env, keys, vals, 7));
}
