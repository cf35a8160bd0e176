// Generation: the native decode/sample loop behind Context.generate/4 (on a
// dirty scheduler) and behind streams (on a thread of their own).
//
// One loop serves both, in named steps: check the job, decode the prompt,
// then per token: sample (which accepts the token into the chain), append its
// text (text.h: UTF-8 and stop strings), deliver what is ready to a stream's
// consumer, check for max_tokens and a full context, decode the token.
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <time.h>

#include "context.h"
#include "grammar_stack.h"
#include "lcx.h"
#include "logprobs.h"
#include "shift.h"
#include "text.h"

// ---- streams: the resource ---------------------------------------------------------------
//
// A stream owns its context and sampler through one long-running claim from
// stream_start until its thread ends. Flow control: the consumer asks for
// chunks (stream_demand); the loop sends a chunk whenever one was asked for,
// coalescing all the text ready since the last one, and otherwise runs on, at
// most STREAM_WINDOW tokens past the last chunk it sent, before it waits. So a
// consumer that keeps up never makes the loop wait, a slow one wakes once per
// burst, and one that stops asking stops generation within STREAM_WINDOW + 1
// tokens of the text it received.

#define STREAM_WINDOW 16
// A consumer that keeps up would otherwise get one message (and one wake-up)
// per token; with tokens faster than this, ready text is held until this long
// after the previous chunk (or until the window is full). Slower tokens go out
// one by one, at once.
#define STREAM_MIN_INTERVAL_US 1000

// What a job asks for, besides its prompt (read_options).
typedef struct {
  int max_tokens;
  int n_logprobs; // -1: off
  bool shift;     // context shift instead of :context_full
  bool special;   // special tokens in the text
  int n_keep;     // positions a shift keeps
  lcx_stops stops;
} job_opts;

typedef struct stream {
  lcx_claim claim; // first: wake() gets back from the claim to the stream
  ErlNifMutex *mu;
  ErlNifCond *cv;
  long demanded, sent; // chunks asked for and sent, under mu
  ErlNifMonitor mon;
  ErlNifPid consumer;
  lcx_context *c; // kept while the thread runs
  lcx_sampler *s; // kept while the thread runs
  llama_token *prompt;
  unsigned n_prompt;
  job_opts opts;
  ErlNifEnv *ref_env; // holds `ref`, the tag of every message
  ERL_NIF_TERM ref;
} stream_t;

static ErlNifResourceType *STREAM_RT;

// What Elixir holds: a handle on the stream. The thread keeps the stream
// itself alive; when the handle goes (a consumer that dropped a suspended
// stream), its destructor cancels the stream, so nothing runs for nobody.
typedef struct {
  struct stream *st;
} handle_t;

static ErlNifResourceType *HANDLE_RT;

static void stream_wake(lcx_claim *claim) {
  stream_t *st = (stream_t *)claim;
  if (!st->mu || !st->cv) return; // never started (out of memory)
  enif_mutex_lock(st->mu);
  enif_cond_broadcast(st->cv);
  enif_mutex_unlock(st->mu);
}

static void stream_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) {
  lcx_claim_cancel(&((stream_t *)obj)->claim);
}

static void stream_dtor(ErlNifEnv *env, void *obj) {
  stream_t *st = obj;
  if (st->cv) enif_cond_destroy(st->cv);
  if (st->mu) enif_mutex_destroy(st->mu);
  if (st->prompt) enif_free(st->prompt);
  lcx_stops_free(&st->opts.stops);
  if (st->ref_env) enif_free_env(st->ref_env);
}

static void handle_dtor(ErlNifEnv *env, void *obj) {
  handle_t *h = obj;
  if (!h->st) return;
  lcx_claim_cancel(&h->st->claim);
  enif_release_resource(h->st);
}

int lcx_generate_load_types(ErlNifEnv *env) {
  ErlNifResourceTypeInit init = {.dtor = stream_dtor, .stop = NULL, .down = stream_down};
  STREAM_RT = enif_open_resource_type_x(env, "lcx_stream", &init, ERL_NIF_RT_CREATE, NULL);
  HANDLE_RT = enif_open_resource_type(env, NULL, "lcx_stream_handle", handle_dtor, ERL_NIF_RT_CREATE, NULL);
  return STREAM_RT && HANDLE_RT ? 0 : -1;
}

typedef enum { TURN_NOT_YET, TURN_SEND, TURN_CANCELLED } turn_t;

static int64_t now_us(void);

// Whether a chunk may go now; with `wait`, blocks until one may (or the stream
// is cancelled), adding the time waited to *waited_us.
static turn_t stream_turn(stream_t *st, bool wait, int64_t *waited_us) {
  enif_mutex_lock(st->mu);
  if (wait && st->demanded <= st->sent && !atomic_load(&st->claim.cancel)) {
    int64_t t = now_us();
    while (st->demanded <= st->sent && !atomic_load(&st->claim.cancel))
      enif_cond_wait(st->cv, st->mu);
    *waited_us += now_us() - t;
  }
  turn_t t = atomic_load(&st->claim.cancel) ? TURN_CANCELLED : st->demanded > st->sent ? TURN_SEND : TURN_NOT_YET;
  enif_mutex_unlock(st->mu);
  return t;
}

// {ref, {:chunk, text}} to the consumer, from the stream's own thread.
// {ref, {:chunk, text}}, or {ref, {:chunk, text, logprobs}} when they are
// asked for (logprobs: the tokens generated since the previous chunk).
static void send_chunk(stream_t *st, ErlNifEnv *msg_env, const char *data, size_t len, lcx_logprobs *lp,
                       const struct llama_vocab *vocab) {
  bool with_lp = lcx_logprobs_on(lp);
  if (len == 0 && (!with_lp || lp->taken == lp->n)) return;
  enif_mutex_lock(st->mu);
  st->sent++;
  enif_mutex_unlock(st->mu);
  ERL_NIF_TERM text = lcx_binary(msg_env, data, len);
  ERL_NIF_TERM chunk = with_lp ? enif_make_tuple3(msg_env, ATOM_chunk, text, lcx_logprobs_take(msg_env, lp, vocab))
                               : enif_make_tuple2(msg_env, ATOM_chunk, text);
  ERL_NIF_TERM msg = enif_make_tuple2(msg_env, enif_make_copy(msg_env, st->ref), chunk);
  enif_send(NULL, &st->consumer, msg_env, msg);
  enif_clear_env(msg_env);
}

// enif_monotonic_time only works on scheduler threads; streams run on their own.
static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

// ---- one generation --------------------------------------------------------------------------

typedef enum { FINISH_MAX_TOKENS, FINISH_EOG, FINISH_STOP, FINISH_CONTEXT_FULL, FINISH_CANCELLED } finish_t;

typedef enum {
  FAIL_NONE,
  FAIL_DECODE,  // llama_decode failed (dst, dcode)
  FAIL_SAMPLER, // llama.cpp threw while sampling
  FAIL_TEXT,    // llama.cpp could not render a token
  FAIL_NOMEM,
} fail_t;

typedef struct {
  // the job
  lcx_context *c;
  lcx_sampler *s;
  lcx_claim *claim;
  const llama_token *prompt;
  unsigned n_prompt;
  const job_opts *opts;
  stream_t *stream; // NULL for Context.generate/4
  // progress
  lcx_text text;
  lcx_logprobs lp;
  llama_token *out;
  unsigned n_out;
  unsigned max_room;    // most tokens this job can produce (max_tokens, or a full context)
  unsigned cap;         // room in out
  int32_t shifted;      // positions dropped by context shifts
  int32_t pos0;         // where the prompt starts
  uint32_t n_seq;       // cells one sequence can hold
  unsigned unsent;      // tokens since the last chunk (streams)
  int64_t last_sent_us; // when the last chunk went (streams)
  ErlNifEnv *msg_env;
  finish_t finish;
  fail_t fail;
  lcx_decode_status dst;
  int32_t dcode;
  int64_t t0, t1, t2, decode_us, waited_us; // waited: for a stream's consumer
} gen_t;

static ERL_NIF_TERM finish_atom(finish_t f) {
  switch (f) {
  case FINISH_EOG:
    return ATOM_eog;
  case FINISH_STOP:
    return ATOM_stop;
  case FINISH_CONTEXT_FULL:
    return ATOM_context_full;
  case FINISH_CANCELLED:
    return ATOM_cancelled;
  default:
    return ATOM_max_tokens;
  }
}

// Generated tokens are kept in an array grown in steps (a shifting job may ask
// for more tokens than its context holds).
#define OUT_CHUNK 4096u

// Only a prompt that does not fit is an error; generation itself ends when
// the context is full (FINISH_CONTEXT_FULL).
static bool check_job(ErlNifEnv *env, gen_t *g, ERL_NIF_TERM *err) {
  const int32_t n_vocab = lcx_model_n_vocab(lcx_context_model(g->c));
  for (unsigned i = 0; i < g->n_prompt; i++) {
    if (g->prompt[i] < 0 || g->prompt[i] >= n_vocab) {
      *err = lcx_invalid_token(env, enif_make_int(env, g->prompt[i]), n_vocab);
      return false;
    }
  }
  if (g->n_prompt == 0) {
    *err = lcx_err(env, LCX_E_empty_prompt);
    return false;
  }
  g->pos0 = lcx_next_position(g->c);
  g->n_seq = lcx_context_seq_size(g->c);
  if ((uint64_t)g->pos0 + g->n_prompt > g->n_seq) {
    *err = lcx_overflow_error(env, g->pos0, g->n_prompt, g->opts->max_tokens, g->n_seq);
    return false;
  }
  if (g->opts->shift && !lcx_can_shift(lcx_context_llama(g->c))) {
    *err = lcx_err(env, LCX_E_shift_unsupported);
    return false;
  }
  // without shifts a full context ends generation first: at most n_seq - pos0 - n_prompt + 1 tokens
  uint64_t room = (uint64_t)g->n_seq - (uint64_t)g->pos0 - g->n_prompt + 1;
  if ((uint64_t)g->opts->max_tokens > room && !g->opts->shift)
    g->max_room = (unsigned)room;
  else
    g->max_room = (unsigned)g->opts->max_tokens;
  g->cap = g->max_room < OUT_CHUNK ? g->max_room : OUT_CHUNK;
  g->out = enif_alloc(sizeof(llama_token) * (size_t)g->cap);
  g->msg_env = g->stream ? enif_alloc_env() : NULL;
  if (!g->out || (g->stream && !g->msg_env)) {
    *err = lcx_err(env, LCX_E_out_of_memory);
    return false;
  }
  return true;
}

static bool stopped(gen_t *g) {
  if (!lcx_claim_stopped(g->claim)) return false;
  g->finish = FINISH_CANCELLED;
  return true;
}

// A failed decode; one that was cancelled ends the generation normally.
static bool decode_failed(gen_t *g, lcx_decode_status st, int32_t code) {
  if (st == LCX_DECODE_ABORTED) {
    g->finish = FINISH_CANCELLED;
  } else {
    g->fail = FAIL_DECODE;
    g->dst = st;
    g->dcode = code;
  }
  return false;
}

static bool decode_prompt(gen_t *g) {
  int32_t code;
  lcx_decode_status st = lcx_decode_tokens(g->c, g->prompt, g->n_prompt, &code);
  return st == LCX_DECODE_OK || decode_failed(g, st, code);
}

// Samples the next token; false at the end of generation or on failure.
static bool sample_next(gen_t *g, llama_token *tok) {
  bool threw;
  // on a thread with enough stack for grammar matching (grammar_stack.h)
  *tok = lcx_chain_sample(lcx_sampler_chain(g->s), lcx_model_max_piece(lcx_context_model(g->c)),
                          lcx_context_llama(g->c), -1, &threw);
  if (threw) {
    g->fail = FAIL_SAMPLER;
    return false;
  }
  if (llama_vocab_is_eog(lcx_model_vocab(lcx_context_model(g->c)), *tok)) {
    g->finish = FINISH_EOG;
    return false;
  }
  return true;
}

static bool append_token(gen_t *g, llama_token tok) {
  if (g->n_out == g->cap) {
    unsigned cap = g->max_room - g->cap < g->cap ? g->max_room : 2 * g->cap;
    llama_token *out = enif_realloc(g->out, sizeof(llama_token) * (size_t)cap);
    if (!out) {
      g->fail = FAIL_NOMEM;
      return false;
    }
    g->out = out;
    g->cap = cap;
  }
  g->out[g->n_out++] = tok;
  if (lcx_logprobs_on(&g->lp)) {
    const float *logits = llama_get_logits_ith(lcx_context_llama(g->c), -1);
    if (!lcx_logprobs_push(&g->lp, logits, lcx_model_n_vocab(lcx_context_model(g->c)), tok)) {
      g->fail = FAIL_NOMEM;
      return false;
    }
  }
  switch (lcx_text_push(&g->text, lcx_model_vocab(lcx_context_model(g->c)), tok)) {
  case LCX_TEXT_MORE:
    return true;
  case LCX_TEXT_STOP:
    g->finish = FINISH_STOP;
    return false;
  case LCX_TEXT_NOMEM:
    g->fail = FAIL_NOMEM;
    return false;
  default:
    g->fail = FAIL_TEXT;
    return false;
  }
}

// Streams: sends the ready text if a chunk was asked for. Once STREAM_WINDOW
// tokens went unsent it waits to be asked, whether or not text is ready
// (tokens with empty pieces, a held-back stop prefix), so a consumer that
// stopped asking stops the loop. False when the stream was cancelled.
static bool deliver(gen_t *g) {
  stream_t *st = g->stream;
  if (!st) return true;
  g->unsent++;
  bool ready = lcx_text_ready(&g->text) > 0;
  if (!ready && g->unsent < STREAM_WINDOW) return true;
  // the first chunk goes at once; later ones at most every STREAM_MIN_INTERVAL_US
  bool soon = g->last_sent_us != 0 && now_us() - g->last_sent_us < STREAM_MIN_INTERVAL_US;
  if (soon && g->unsent < STREAM_WINDOW) return true;
  switch (stream_turn(st, g->unsent >= STREAM_WINDOW, &g->waited_us)) {
  case TURN_CANCELLED:
    g->finish = FINISH_CANCELLED;
    return false;
  case TURN_SEND:
    if (ready) {
      size_t len;
      const char *data = lcx_text_take(&g->text, &len);
      send_chunk(st, g->msg_env, data, len, &g->lp, lcx_model_vocab(lcx_context_model(g->c)));
      g->unsent = 0;
      g->last_sent_us = now_us();
    }
    return true;
  default:
    return true;
  }
}

// Positions a shift keeps, as llama.cpp's CLI counts them: n_keep, at most up
// to the end of the prompt, or by default (-1) the BOS token when the
// sequence starts with one.
static int32_t n_keep(const gen_t *g) {
  int64_t prompt_end = (int64_t)g->pos0 + g->n_prompt;
  if (g->opts->n_keep >= 0) return g->opts->n_keep < prompt_end ? g->opts->n_keep : (int32_t)prompt_end;
  const struct llama_vocab *vocab = lcx_model_vocab(lcx_context_model(g->c));
  return g->pos0 == 0 && g->prompt[0] == llama_vocab_bos(vocab) ? 1 : 0;
}

// The newest token goes to position pos0 + n_prompt + n_out - 1 - shifted.
// Without shifts it may take the last cell; a shifting job makes room when
// it would (shift.h), at the point llama.cpp's CLI and llama-server do.
static bool room_for_next(gen_t *g) {
  int64_t pos = (int64_t)g->pos0 + g->n_prompt + g->n_out - 1 - g->shifted;
  if (pos + (g->opts->shift ? 1 : 0) < (int64_t)g->n_seq) return true;
  if (g->opts->shift) {
    int32_t keep = n_keep(g), drop = lcx_shift_amount((int32_t)pos, keep);
    if (drop > 0 && lcx_shift(lcx_context_llama(g->c), 0, keep, drop, (int32_t)pos)) {
      lcx_context_shifted(g->c);
      g->shifted += drop;
      return true;
    }
  }
  g->finish = FINISH_CONTEXT_FULL;
  return false;
}

static bool decode_next(gen_t *g) {
  int32_t code;
  int64_t t = now_us();
  lcx_decode_status st = lcx_decode_tokens(g->c, &g->out[g->n_out - 1], 1, &code);
  g->decode_us += now_us() - t;
  return st == LCX_DECODE_OK || decode_failed(g, st, code);
}

static void run(gen_t *g) {
  llama_token tok;
  g->t0 = now_us();
  bool go = !stopped(g) && decode_prompt(g);
  g->t1 = now_us();
  while (go && sample_next(g, &tok) && append_token(g, tok) && deliver(g)) {
    if (g->n_out >= (unsigned)g->opts->max_tokens) break; // FINISH_MAX_TOKENS
    // stopped first: a shift made by room_for_next is applied by decode_next
    go = !stopped(g) && room_for_next(g) && decode_next(g);
  }
  g->t2 = now_us();
  if (g->fail == FAIL_NONE) {
    lcx_text_status ts = lcx_text_finish(&g->text);
    if (ts == LCX_TEXT_NOMEM) g->fail = FAIL_NOMEM;
    if (ts == LCX_TEXT_STOP) g->finish = FINISH_STOP;
  }
  // The rest of the text, without waiting to be asked: it is the last chunk.
  // Also when cancelled: a consumer that halted flushes it, and one whose
  // context was freed under it still gets all of the completion's text.
  if (g->stream && g->fail == FAIL_NONE) {
    size_t len;
    const char *data = lcx_text_take(&g->text, &len);
    send_chunk(g->stream, g->msg_env, data, len, &g->lp, lcx_model_vocab(lcx_context_model(g->c)));
  }
}

static ERL_NIF_TERM result(ErlNifEnv *env, gen_t *g) {
  switch (g->fail) {
  case FAIL_DECODE:
    return lcx_decode_error(env, g->dst, g->dcode);
  case FAIL_SAMPLER:
    return lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception());
  case FAIL_TEXT:
    return lcx_err_msg(env, LCX_E_detokenize_failed, lcx_last_exception());
  case FAIL_NOMEM:
    return lcx_err(env, LCX_E_out_of_memory);
  default:
    break;
  }
  ERL_NIF_TERM keys[10] = {
      ATOM_text,      ATOM_tokens,        ATOM_finish_reason, ATOM_prompt_tokens, ATOM_generated_tokens,
      ATOM_prompt_ms, ATOM_generation_ms, ATOM_sample_ms,     ATOM_logprobs,      ATOM_discarded_tokens};
  ERL_NIF_TERM vals[10] = {
      lcx_binary(env, g->text.data ? g->text.data : "", g->text.len),
      lcx_make_tokens(env, g->out, g->n_out),
      finish_atom(g->finish),
      enif_make_uint(env, g->n_prompt),
      enif_make_uint(env, g->n_out),
      enif_make_double(env, (double)(g->t1 - g->t0) / 1000.0),
      enif_make_double(env, (double)(g->t2 - g->t1) / 1000.0),
      enif_make_double(env, (double)(g->t2 - g->t1 - g->decode_us - g->waited_us) / 1000.0),
      lcx_logprobs_on(&g->lp) ? lcx_logprobs_all(env, &g->lp, lcx_model_vocab(lcx_context_model(g->c))) : ATOM_nil,
      enif_make_int(env, g->shifted)};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 10, &map);
  return lcx_ok(env, map);
}

// Runs a claimed job to its end; the result is built in env.
static ERL_NIF_TERM generate(ErlNifEnv *env, gen_t *g) {
  ERL_NIF_TERM err, r;
  lcx_text_init(&g->text, &g->opts->stops);
  g->text.special = g->opts->special;
  lcx_logprobs_init(&g->lp, g->opts->n_logprobs);
  if (check_job(env, g, &err)) {
    run(g);
    r = result(env, g);
  } else {
    r = err;
  }
  lcx_text_free(&g->text);
  lcx_logprobs_free(&g->lp);
  if (g->out) enif_free(g->out);
  if (g->msg_env) enif_free_env(g->msg_env);
  return r;
}

// ---- reading a job from Elixir ----------------------------------------------------------------

// %{max_tokens, stop, logprobs, context_shift, n_keep} (checked in Elixir
// too; logprobs: -1 for off; n_keep: -1 for the default). Only max_tokens is
// required.
static bool read_options(ErlNifEnv *env, ERL_NIF_TERM opts, job_opts *o, ERL_NIF_TERM *err) {
  ERL_NIF_TERM v;
  *o = (job_opts){.n_logprobs = -1, .n_keep = -1};
  if (!enif_is_map(env, opts) || !lcx_map_get(env, opts, "max_tokens", &v) || !enif_get_int(env, v, &o->max_tokens) ||
      o->max_tokens < 1) {
    *err = lcx_raise(env, "max_tokens must be a positive integer");
    return false;
  }
  if (lcx_map_get(env, opts, "logprobs", &v) &&
      (!enif_get_int(env, v, &o->n_logprobs) || o->n_logprobs < -1 || o->n_logprobs > LCX_MAX_LOGPROBS)) {
    *err = lcx_raise(env, "logprobs must be an integer in 0..%d", LCX_MAX_LOGPROBS);
    return false;
  }
  if (lcx_map_get(env, opts, "context_shift", &v) && !lcx_get_bool(env, v, &o->shift)) {
    *err = lcx_raise(env, "context_shift must be a boolean");
    return false;
  }
  if (lcx_map_get(env, opts, "n_keep", &v) && (!enif_get_int(env, v, &o->n_keep) || o->n_keep < -1)) {
    *err = lcx_raise(env, "n_keep must be a non-negative integer");
    return false;
  }
  if (lcx_map_get(env, opts, "special", &v) && !enif_is_identical(v, ATOM_nil) && !lcx_get_bool(env, v, &o->special)) {
    *err = lcx_raise(env, "special must be a boolean");
    return false;
  }
  if (!lcx_map_get(env, opts, "stop", &v)) return true;
  switch (lcx_stops_read(env, v, &o->stops)) {
  case LCX_STOPS_OK:
    return true;
  case LCX_STOPS_NOMEM:
    *err = lcx_err(env, LCX_E_out_of_memory);
    return false;
  default:
    *err = lcx_raise(env, "stop must be a list of at most %d non-empty binaries", LCX_MAX_STOPS);
    return false;
  }
}

// A list of token ids (the range check against the vocabulary is check_job's).
static bool read_prompt(ErlNifEnv *env, ERL_NIF_TERM list, llama_token **toks, unsigned *n, ERL_NIF_TERM *err) {
  return lcx_read_tokens(env, list, INT32_MAX, toks, n, err);
}

// generate(ctx, sampler, tokens, %{max_tokens, stop, logprobs, context_shift, n_keep})
//   -> {:ok, %{text, tokens, finish_reason, prompt_tokens, generated_tokens, prompt_ms, generation_ms, sample_ms,
//              logprobs, discarded_tokens}}
// The calling process dying, Context.free/1 or Sampler.free/1 cancel it.
LCX_NIF(nif_generate) {
  gen_t g = {0};
  job_opts opts;
  llama_token *prompt = NULL;
  ERL_NIF_TERM r;
  if (!read_options(env, argv[3], &opts, &r)) return r;
  if (read_prompt(env, argv[2], &prompt, &g.n_prompt, &r)) {
    lcx_claim me = LCX_CALL_CLAIM(env);
    if (lcx_claim_context_sampler(env, argv[0], argv[1], &me, &g.c, &g.s, &r)) {
      g.claim = &me;
      g.prompt = prompt;
      g.opts = &opts;
      r = generate(env, &g);
      lcx_release_context_sampler(g.c, g.s, &me);
    }
  }
  if (prompt) enif_free(prompt);
  lcx_stops_free(&opts.stops);
  return r;
}

// ---- streams: the thread -------------------------------------------------------------------

static void *stream_thread(void *arg) {
  stream_t *st = arg;
  ErlNifEnv *env = enif_alloc_env();
  gen_t g = {.c = st->c,
             .s = st->s,
             .claim = &st->claim,
             .prompt = st->prompt,
             .n_prompt = st->n_prompt,
             .opts = &st->opts,
             .stream = st};
  ERL_NIF_TERM r = generate(env, &g);
  // let go first: the consumer may use the context as soon as it hears of the end
  lcx_release_context_sampler(st->c, st->s, &st->claim);

  ERL_NIF_TERM msg = enif_make_tuple2(env, enif_make_copy(env, st->ref), enif_make_tuple2(env, ATOM_done, r));
  enif_send(NULL, &st->consumer, env, msg);
  enif_free_env(env);

  ErlNifTid self = enif_thread_self();
  enif_release_resource(st->c);
  enif_release_resource(st->s);
  enif_release_resource(st);
  lcx_janitor_join(self);
  return NULL;
}

static stream_t *stream_new(ErlNifPid consumer) {
  stream_t *st = enif_alloc_resource(STREAM_RT, sizeof(stream_t));
  if (!st) return NULL;
  memset(st, 0, sizeof *st);
  atomic_init(&st->claim.cancel, 0);
  st->claim.long_running = true;
  st->claim.wake = stream_wake;
  st->mu = enif_mutex_create("lcx_stream");
  st->cv = enif_cond_create("lcx_stream");
  st->ref_env = enif_alloc_env();
  st->consumer = consumer;
  return st;
}

// stream_start(ctx, sampler, tokens, %{max_tokens, stop}, consumer_pid, ref) -> {:ok, handle}
// Claims the context and the sampler, starts the generation on its own thread
// and returns at once. The consumer receives {ref, {:chunk, text}} for chunks
// it asked for (stream_demand/1), a last chunk unasked, and finally
// {ref, {:done, {:ok, map} | {:error, reason}}}. With logprobs, chunks are
// {ref, {:chunk, text, logprobs}}.
LCX_NIF(nif_stream_start) {
  ErlNifPid consumer;
  ERL_NIF_TERM err;
  if (!enif_get_local_pid(env, argv[4], &consumer)) return lcx_raise(env, "expected a local pid");
  stream_t *st = stream_new(consumer);
  handle_t *h = st ? enif_alloc_resource(HANDLE_RT, sizeof(handle_t)) : NULL;
  if (!h) {
    if (st) enif_release_resource(st);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  h->st = st; // the handle (and, below, the thread) keep the stream
  ERL_NIF_TERM handle = enif_make_resource(env, h);
  enif_release_resource(h);
  if (!st->mu || !st->cv || !st->ref_env) return lcx_err(env, LCX_E_out_of_memory);
  if (!read_options(env, argv[3], &st->opts, &err)) return err;
  if (!read_prompt(env, argv[2], &st->prompt, &st->n_prompt, &err)) return err;
  st->ref = enif_make_copy(st->ref_env, argv[5]);
  if (!lcx_claim_context_sampler(env, argv[0], argv[1], &st->claim, &st->c, &st->s, &err)) return err;
  if (enif_monitor_process(env, st, &consumer, &st->mon) != 0) atomic_store(&st->claim.cancel, 1);
  enif_keep_resource(st->c);
  enif_keep_resource(st->s);
  enif_keep_resource(st);
  ErlNifTid tid;
  if (enif_thread_create("lcx_stream", &tid, stream_thread, st, NULL) != 0) {
    lcx_release_context_sampler(st->c, st->s, &st->claim);
    enif_release_resource(st->c);
    enif_release_resource(st->s);
    enif_release_resource(st);
    return lcx_err(env, LCX_E_thread_failed);
  }
  return lcx_ok(env, handle);
}

static stream_t *get_stream(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, HANDLE_RT, &p) ? ((handle_t *)p)->st : NULL;
}

LCX_NIF(nif_stream_cancel) {
  stream_t *st = get_stream(env, argv[0]);
  if (!st) return lcx_raise(env, "expected a stream handle");
  lcx_claim_cancel(&st->claim);
  return ATOM_ok;
}

// stream_demand(handle): the consumer asks for one more chunk
LCX_NIF(nif_stream_demand) {
  stream_t *st = get_stream(env, argv[0]);
  if (!st) return lcx_raise(env, "expected a stream handle");
  enif_mutex_lock(st->mu);
  st->demanded++;
  enif_cond_signal(st->cv);
  enif_mutex_unlock(st->mu);
  return ATOM_ok;
}
