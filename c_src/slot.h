// One sequence of the batching server: the job a slot runs (a generation or
// an embedding), its place in the shared llama_context (sequence id,
// positions, the prompt still to absorb), its sampler chain and its text.
//
// A slot does not decode: each step, batch.c asks every busy slot to add its
// tokens to the one llama_batch of the step (lcx_slot_add), calls llama_decode
// once, and then lets each slot that took part read its outputs
// (lcx_slot_decoded): a generation samples its next token with its own chain
// and pushes it through the same per-sequence text code as generate.c
// (text.h: UTF-8 hold-back, stop strings); an embedding accumulates its
// pooled vector. The step names of generate.c's loop are kept: sample_next,
// append_token, the max_tokens check, room_for_next.
#ifndef LCX_SLOT_H
#define LCX_SLOT_H

#include <erl_nif.h>
#include <stdbool.h>
#include <stdint.h>

#include "llama.h"
#include "logprobs.h"
#include "sampler.h"
#include "text.h"

struct lcx_sampler;

typedef enum {
  LCX_SLOT_FREE,     // no job
  LCX_SLOT_PREFILL,  // absorbing its prompt, a chunk per step
  LCX_SLOT_GENERATE, // one token per step
} lcx_slot_state;

typedef enum { LCX_JOB_GENERATE, LCX_JOB_EMBED } lcx_job_kind;

typedef enum {
  LCX_FINISH_MAX_TOKENS,
  LCX_FINISH_EOG,
  LCX_FINISH_STOP,
  LCX_FINISH_CONTEXT_FULL,
  LCX_FINISH_CANCELLED,
} lcx_finish;

typedef enum {
  LCX_SLOT_FAIL_NONE,
  LCX_SLOT_FAIL_SAMPLER, // llama.cpp threw while sampling
  LCX_SLOT_FAIL_TEXT,    // llama.cpp could not render a token
  LCX_SLOT_FAIL_NOMEM,
  LCX_SLOT_FAIL_NO_EMBEDDINGS, // llama.cpp returned no (or non-finite) embeddings
} lcx_slot_fail;

typedef enum { LCX_POOL_MEAN, LCX_POOL_CLS, LCX_POOL_LAST } lcx_pool;

// What a slot's outputs of one step gave.
typedef enum {
  LCX_SLOT_ABSORBED, // prompt tokens went into the cache; nothing to report
  LCX_SLOT_TOKEN,    // a token was sampled and appended; generation goes on
  LCX_SLOT_DONE,     // finished (see finish)
  LCX_SLOT_FAILED,   // failed (see fail)
} lcx_slot_outcome;

// What a generation asks for besides its prompt and sampler.
typedef struct {
  int max_tokens;
  int n_logprobs; // -1: off
  bool shift;     // context shift (shift.h) instead of :context_full
  int32_t n_keep; // positions a shift keeps; -1: the BOS token if the prompt starts with it
  bool stream;    // hand out text every step
  bool special;   // special tokens in the text
} lcx_slot_opts;

typedef struct lcx_slot {
  lcx_slot_state state;
  lcx_job_kind kind;
  llama_seq_id seq;
  uint64_t order; // admission order: prompts are absorbed first come, first served
  // the job
  struct lcx_sampler *sampler; // generations: kept (enif_keep_resource) while the job lives
  llama_token *prompt;         // the whole prompt, cached prefix included
  unsigned n_prompt;
  unsigned n_cached; // prompt tokens reused from the prefix cache
  unsigned n_done;   // prompt tokens in the cache (n_cached included)
  unsigned n_past;   // positions of the sequence in the cache
  uint32_t limit;    // cells this sequence may use
  lcx_slot_opts opts;
  int32_t n_keep;  // resolved
  int32_t shifted; // positions dropped by context shifts
  unsigned cap;    // room in out
  lcx_stops stops;
  lcx_text text;
  lcx_logprobs lp; // off unless asked for
  llama_token *out;
  unsigned n_out;
  llama_token next; // sampled, decoded at the next step
  // this step
  int32_t idx;      // batch index of the first token added (-1: not in this step)
  unsigned n_added; // tokens added
  // embeddings
  lcx_pool pool;
  int32_t n_embd;
  double *acc;
  float *vector; // the result
  // timings, µs on CLOCK_MONOTONIC
  int64_t t_admit, t_first, t_end, sample_us;
  unsigned n_steps; // steps this job took part in
  lcx_finish finish;
  lcx_slot_fail fail;
} lcx_slot;

void lcx_slot_init(lcx_slot *s, llama_seq_id seq);
// Ends the job (frees its memory, lets go of its sampler): the slot is FREE.
void lcx_slot_reset(lcx_slot *s);

// Starts a generation. Takes ownership of prompt and stops (freed on failure
// too). The first n_cached prompt tokens are already in the cache.
bool lcx_slot_begin_generate(lcx_slot *s, struct lcx_sampler *sampler, llama_token *prompt, unsigned n_prompt,
                             unsigned n_cached, uint32_t limit, const lcx_slot_opts *opts, lcx_stops *stops,
                             uint64_t order);
// Starts an embedding of prompt (owned, freed on failure too).
bool lcx_slot_begin_embed(lcx_slot *s, llama_token *prompt, unsigned n_prompt, lcx_pool pool, int32_t n_embd,
                          uint64_t order);

// Adds this step's tokens (at most room) to the batch; returns how many.
unsigned lcx_slot_add(lcx_slot *s, struct llama_batch *b, unsigned room);
// After a successful decode of a batch the slot took part in.
lcx_slot_outcome lcx_slot_decoded(lcx_slot *s, struct llama_context *ctx, const struct llama_vocab *vocab,
                                  struct llama_sampler *chain);
// Positions of the sequence that are in the cache.
unsigned lcx_slot_n_past(const lcx_slot *s);
// Ends a job early (cancel): finish is CANCELLED.
void lcx_slot_cancel(lcx_slot *s);

// Text ready to hand out now (streams): a binary, or {binary, logprobs} with
// the log-probabilities of the tokens since the last time, when asked for.
ERL_NIF_TERM lcx_slot_take_text(ErlNifEnv *env, lcx_slot *s, const struct llama_vocab *vocab);
// %{text, tokens, finish_reason, prompt_tokens, cached_tokens, generated_tokens,
//   kv_tokens, rest, prompt_ms, generation_ms, sample_ms, steps, logprobs,
//   discarded_tokens} of a
// finished generation, or the {:error, reason} of a failed job.
// (rest: what lcx_slot_take_text would give now; logprobs: all of them, or nil).
ERL_NIF_TERM lcx_slot_result(ErlNifEnv *env, lcx_slot *s, const struct llama_vocab *vocab);
// [float] of a finished embedding.
ERL_NIF_TERM lcx_slot_vector(ErlNifEnv *env, lcx_slot *s);

int64_t lcx_slot_now_us(void);

#endif
