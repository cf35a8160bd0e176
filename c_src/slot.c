// See slot.h.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "grammar_stack.h"
#include "lcx.h"
#include "shift.h"
#include "slot.h"

// enif_monotonic_time only works on scheduler threads; this is CLOCK_MONOTONIC everywhere.
int64_t lcx_slot_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void lcx_slot_init(lcx_slot *s, llama_seq_id seq) {
  memset(s, 0, sizeof *s);
  s->seq = seq;
  s->idx = -1;
  lcx_text_init(&s->text, NULL);
  lcx_logprobs_init(&s->lp, -1);
}

void lcx_slot_reset(lcx_slot *s) {
  llama_seq_id seq = s->seq;
  if (s->sampler) enif_release_resource(s->sampler);
  if (s->prompt) enif_free(s->prompt);
  if (s->out) enif_free(s->out);
  if (s->acc) enif_free(s->acc);
  if (s->vector) enif_free(s->vector);
  lcx_text_free(&s->text);
  lcx_logprobs_free(&s->lp);
  lcx_stops_free(&s->stops);
  lcx_slot_init(s, seq);
}

static void begin(lcx_slot *s, lcx_job_kind kind, llama_token *prompt, unsigned n_prompt, uint64_t order) {
  s->kind = kind;
  s->state = LCX_SLOT_PREFILL;
  s->prompt = prompt;
  s->n_prompt = n_prompt;
  s->order = order;
  s->idx = -1;
  s->t_admit = lcx_slot_now_us();
}

// Generated tokens are kept in an array grown in steps (a shifting job may ask
// for more tokens than its cells hold).
#define OUT_CHUNK 4096u

bool lcx_slot_begin_generate(lcx_slot *s, struct lcx_sampler *sampler, llama_token *prompt, unsigned n_prompt,
                             unsigned n_cached, uint32_t limit, const lcx_slot_opts *opts, lcx_stops *stops,
                             uint64_t order) {
  begin(s, LCX_JOB_GENERATE, prompt, n_prompt, order);
  s->stops = *stops;
  *stops = (lcx_stops){0};
  lcx_text_init(&s->text, &s->stops);
  s->text.special = opts->special;
  lcx_logprobs_init(&s->lp, opts->n_logprobs);
  // without shifts, at most one token per free cell, plus the last one, which needs none
  uint64_t room = (uint64_t)limit - n_prompt + 1;
  unsigned most = (uint64_t)opts->max_tokens < room || opts->shift ? (unsigned)opts->max_tokens : (unsigned)room;
  s->cap = most < OUT_CHUNK ? most : OUT_CHUNK;
  s->out = enif_alloc(sizeof(llama_token) * s->cap);
  if (!s->out) {
    lcx_slot_reset(s);
    return false;
  }
  enif_keep_resource(sampler);
  s->sampler = sampler;
  s->n_cached = s->n_done = s->n_past = n_cached;
  s->limit = limit;
  s->opts = *opts;
  // as llama.cpp's CLI: at most the prompt; by default the BOS token
  s->n_keep = opts->n_keep >= 0 && (unsigned)opts->n_keep < n_prompt ? opts->n_keep : (int32_t)n_prompt;
  if (opts->n_keep < 0) s->n_keep = prompt[0] == llama_vocab_bos(lcx_model_vocab(lcx_sampler_model(sampler))) ? 1 : 0;
  return true;
}

bool lcx_slot_begin_embed(lcx_slot *s, llama_token *prompt, unsigned n_prompt, lcx_pool pool, int32_t n_embd,
                          uint64_t order) {
  begin(s, LCX_JOB_EMBED, prompt, n_prompt, order);
  s->pool = pool;
  s->n_embd = n_embd;
  s->acc = enif_alloc(sizeof(double) * (size_t)n_embd);
  s->vector = enif_alloc(sizeof(float) * (size_t)n_embd);
  if (!s->acc || !s->vector) {
    lcx_slot_reset(s);
    return false;
  }
  memset(s->acc, 0, sizeof(double) * (size_t)n_embd);
  s->limit = n_prompt;
  return true;
}

unsigned lcx_slot_n_past(const lcx_slot *s) { return s->n_past; }

// ---- adding to the step's batch -----------------------------------------------------------

static void batch_add(struct llama_batch *b, llama_token tok, llama_pos pos, llama_seq_id seq, bool output) {
  int32_t i = b->n_tokens++;
  b->token[i] = tok;
  b->pos[i] = pos;
  b->n_seq_id[i] = 1;
  b->seq_id[i][0] = seq;
  b->logits[i] = output;
}

// Which prompt positions an embedding reads.
static bool embed_output(const lcx_slot *s, unsigned pos) {
  switch (s->pool) {
  case LCX_POOL_CLS:
    return pos == 0;
  case LCX_POOL_LAST:
    return pos == s->n_prompt - 1;
  default:
    return true;
  }
}

unsigned lcx_slot_add(lcx_slot *s, struct llama_batch *b, unsigned room) {
  s->idx = -1;
  s->n_added = 0;
  if (room == 0 || s->state == LCX_SLOT_FREE) return 0;
  s->idx = b->n_tokens;
  if (s->state == LCX_SLOT_GENERATE) {
    batch_add(b, s->next, (llama_pos)(s->n_prompt + s->n_out - 1) - s->shifted, s->seq, true);
    s->n_added = 1;
    return 1;
  }
  unsigned left = s->n_prompt - s->n_done, n = left < room ? left : room;
  for (unsigned i = 0; i < n; i++) {
    unsigned pos = s->n_done + i;
    bool output = s->kind == LCX_JOB_EMBED ? embed_output(s, pos) : pos == s->n_prompt - 1;
    batch_add(b, s->prompt[pos], (llama_pos)pos, s->seq, output);
  }
  s->n_added = n;
  return n;
}

// ---- after the decode: generations ----------------------------------------------------------

static lcx_slot_outcome done(lcx_slot *s, lcx_finish f) {
  s->t_end = lcx_slot_now_us();
  switch (lcx_text_finish(&s->text)) {
  case LCX_TEXT_NOMEM:
    s->fail = LCX_SLOT_FAIL_NOMEM;
    return LCX_SLOT_FAILED;
  case LCX_TEXT_STOP: // the final U+FFFD completed a stop string
    s->finish = LCX_FINISH_STOP;
    return LCX_SLOT_DONE;
  default:
    s->finish = f;
    return LCX_SLOT_DONE;
  }
}

static lcx_slot_outcome failed(lcx_slot *s, lcx_slot_fail f) {
  s->fail = f;
  s->t_end = lcx_slot_now_us();
  return LCX_SLOT_FAILED;
}

// Samples the next token from the logits at batch index `at`.
static lcx_slot_outcome sample_next(lcx_slot *s, struct llama_context *ctx, const struct llama_vocab *vocab,
                                    struct llama_sampler *chain, int32_t at, llama_token *tok) {
  bool threw;
  // on a stack with room for a grammar stage's recursion (grammar_stack.h), as generate.c
  *tok = lcx_chain_sample(chain, lcx_model_max_piece(lcx_sampler_model(s->sampler)), ctx, at, &threw);
  if (!s->t_first) s->t_first = lcx_slot_now_us();
  if (threw) return failed(s, LCX_SLOT_FAIL_SAMPLER);
  if (llama_vocab_is_eog(vocab, *tok)) return done(s, LCX_FINISH_EOG);
  return LCX_SLOT_TOKEN;
}

static lcx_slot_outcome append_token(lcx_slot *s, struct llama_context *ctx, const struct llama_vocab *vocab,
                                     int32_t at, llama_token tok) {
  if (s->n_out == s->cap) {
    unsigned most = (unsigned)s->opts.max_tokens, cap = most - s->cap < s->cap ? most : 2 * s->cap;
    llama_token *out = enif_realloc(s->out, sizeof(llama_token) * cap);
    if (!out) return failed(s, LCX_SLOT_FAIL_NOMEM);
    s->out = out;
    s->cap = cap;
  }
  s->out[s->n_out++] = tok;
  if (lcx_logprobs_on(&s->lp) &&
      !lcx_logprobs_push(&s->lp, llama_get_logits_ith(ctx, at), llama_vocab_n_tokens(vocab), tok))
    return failed(s, LCX_SLOT_FAIL_NOMEM);
  switch (lcx_text_push(&s->text, vocab, tok)) {
  case LCX_TEXT_MORE:
    return LCX_SLOT_TOKEN;
  case LCX_TEXT_STOP:
    return done(s, LCX_FINISH_STOP);
  case LCX_TEXT_NOMEM:
    return failed(s, LCX_SLOT_FAIL_NOMEM);
  default:
    return failed(s, LCX_SLOT_FAIL_TEXT);
  }
}

// The newest token goes to position n_prompt + n_out - 1 - shifted. Without
// shifts it may take the last cell; a shifting job makes room when it would
// (shift.h), at the point llama-server does.
static bool room_for_next(lcx_slot *s, struct llama_context *ctx) {
  int64_t pos = (int64_t)s->n_prompt + s->n_out - 1 - s->shifted;
  if (pos + (s->opts.shift ? 1 : 0) < (int64_t)s->limit) return true;
  if (!s->opts.shift) return false;
  int32_t drop = lcx_shift_amount((int32_t)pos, s->n_keep);
  if (drop == 0 || !lcx_shift(ctx, s->seq, s->n_keep, drop, (int32_t)pos)) return false;
  s->shifted += drop;
  s->n_past -= (unsigned)drop;
  return true;
}

static lcx_slot_outcome generation_decoded(lcx_slot *s, struct llama_context *ctx, const struct llama_vocab *vocab,
                                           struct llama_sampler *chain) {
  if (s->state == LCX_SLOT_PREFILL) {
    s->n_done += s->n_added;
    if (s->n_done < s->n_prompt) return LCX_SLOT_ABSORBED;
    s->state = LCX_SLOT_GENERATE;
  }
  int64_t t0 = lcx_slot_now_us();
  llama_token tok;
  int32_t at = s->idx + (int32_t)s->n_added - 1;
  lcx_slot_outcome o = sample_next(s, ctx, vocab, chain, at, &tok);
  if (o == LCX_SLOT_TOKEN) o = append_token(s, ctx, vocab, at, tok);
  if (o == LCX_SLOT_TOKEN && s->n_out >= (unsigned)s->opts.max_tokens) o = done(s, LCX_FINISH_MAX_TOKENS);
  if (o == LCX_SLOT_TOKEN && !room_for_next(s, ctx)) o = done(s, LCX_FINISH_CONTEXT_FULL);
  if (o == LCX_SLOT_TOKEN) s->next = tok;
  s->sample_us += lcx_slot_now_us() - t0;
  return o;
}

// ---- after the decode: embeddings ------------------------------------------------------------

static lcx_slot_outcome embedding_decoded(lcx_slot *s, struct llama_context *ctx) {
  for (unsigned i = 0; i < s->n_added; i++) {
    if (!embed_output(s, s->n_done + i)) continue;
    const float *e = llama_get_embeddings_ith(ctx, s->idx + (int32_t)i);
    if (!e) return failed(s, LCX_SLOT_FAIL_NO_EMBEDDINGS);
    for (int32_t k = 0; k < s->n_embd; k++)
      s->acc[k] += e[k];
  }
  s->n_done += s->n_added;
  if (s->n_done < s->n_prompt) return LCX_SLOT_ABSORBED;
  double div = s->pool == LCX_POOL_MEAN ? (double)s->n_prompt : 1.0;
  for (int32_t k = 0; k < s->n_embd; k++) {
    s->vector[k] = (float)(s->acc[k] / div);
    if (!isfinite(s->vector[k])) return failed(s, LCX_SLOT_FAIL_NO_EMBEDDINGS);
  }
  s->t_first = s->t_end = lcx_slot_now_us();
  return LCX_SLOT_DONE;
}

lcx_slot_outcome lcx_slot_decoded(lcx_slot *s, struct llama_context *ctx, const struct llama_vocab *vocab,
                                  struct llama_sampler *chain) {
  s->n_past += s->n_added;
  s->n_steps++;
  return s->kind == LCX_JOB_EMBED ? embedding_decoded(s, ctx) : generation_decoded(s, ctx, vocab, chain);
}

void lcx_slot_cancel(lcx_slot *s) {
  if (s->kind == LCX_JOB_GENERATE)
    done(s, LCX_FINISH_CANCELLED);
  else
    s->finish = LCX_FINISH_CANCELLED;
}

// ---- results -------------------------------------------------------------------------------------

ERL_NIF_TERM lcx_slot_take_text(ErlNifEnv *env, lcx_slot *s, const struct llama_vocab *vocab) {
  size_t len;
  const char *data = lcx_text_take(&s->text, &len);
  ERL_NIF_TERM text = lcx_binary(env, data, len);
  if (!lcx_logprobs_on(&s->lp)) return text;
  return enif_make_tuple2(env, text, lcx_logprobs_take(env, &s->lp, vocab));
}

static ERL_NIF_TERM finish_atom(lcx_finish f) {
  switch (f) {
  case LCX_FINISH_EOG:
    return ATOM_eog;
  case LCX_FINISH_STOP:
    return ATOM_stop;
  case LCX_FINISH_CONTEXT_FULL:
    return ATOM_context_full;
  case LCX_FINISH_CANCELLED:
    return ATOM_cancelled;
  default:
    return ATOM_max_tokens;
  }
}

static ERL_NIF_TERM ms(ErlNifEnv *env, int64_t us) { return enif_make_double(env, us > 0 ? (double)us / 1000.0 : 0.0); }

ERL_NIF_TERM lcx_slot_result(ErlNifEnv *env, lcx_slot *s, const struct llama_vocab *vocab) {
  switch (s->fail) {
  case LCX_SLOT_FAIL_SAMPLER:
  case LCX_SLOT_FAIL_TEXT:
    return lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception());
  case LCX_SLOT_FAIL_NOMEM:
    return lcx_err(env, LCX_E_out_of_memory);
  case LCX_SLOT_FAIL_NO_EMBEDDINGS:
    return lcx_err(env, LCX_E_no_embeddings);
  default:
    break;
  }
  int64_t first = s->t_first ? s->t_first : s->t_end;
  static const char *const keys[] = {
      "text", "tokens",    "finish_reason", "prompt_tokens", "cached_tokens", "generated_tokens", "kv_tokens",
      "rest", "prompt_ms", "generation_ms", "sample_ms",     "steps",         "logprobs",         "discarded_tokens"};
  ERL_NIF_TERM rest = s->opts.stream ? lcx_slot_take_text(env, s, vocab) : lcx_binary(env, "", 0);
  ERL_NIF_TERM vals[] = {lcx_binary(env, s->text.data ? s->text.data : "", s->text.len),
                         lcx_make_tokens(env, s->out, s->n_out),
                         finish_atom(s->finish),
                         enif_make_uint(env, s->n_prompt),
                         enif_make_uint(env, s->n_cached),
                         enif_make_uint(env, s->n_out),
                         enif_make_uint(env, s->n_past),
                         rest,
                         ms(env, first - s->t_admit),
                         ms(env, s->t_end - first),
                         ms(env, s->sample_us),
                         enif_make_uint(env, s->n_steps),
                         lcx_logprobs_on(&s->lp) ? lcx_logprobs_all(env, &s->lp, vocab) : ATOM_nil,
                         enif_make_int(env, s->shifted)};
  return lcx_ok(env, lcx_make_map(env, keys, vals, sizeof vals / sizeof vals[0]));
}

ERL_NIF_TERM lcx_slot_vector(ErlNifEnv *env, lcx_slot *s) {
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (int32_t i = s->n_embd; i > 0; i--)
    list = enif_make_list_cell(env, enif_make_double(env, s->vector[i - 1]), list);
  return list;
}
