// Contexts: what other areas (the generation loop, and later the batching
// server) may use of a context. The struct is context.c's.
#ifndef LCX_CONTEXT_H
#define LCX_CONTEXT_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "llama.h"
#include "lora.h"
#include "model.h"
#include "owner.h"
#include "sampler.h"

typedef struct lcx_context lcx_context;

// Claims a context for a NIF call: NULL with *err (ArgumentError, :busy, :closed).
lcx_context *lcx_context_claim(ErlNifEnv *env, ERL_NIF_TERM t, lcx_claim *who, ERL_NIF_TERM *err);
void lcx_context_release(lcx_context *c, lcx_claim *who);
// The one lock-pair helper: claims a context, then a sampler of the same
// model, or neither (ArgumentError, :busy, :closed, :model_mismatch).
bool lcx_claim_context_sampler(ErlNifEnv *env, ERL_NIF_TERM ct, ERL_NIF_TERM st, lcx_claim *who, lcx_context **c,
                               lcx_sampler **s, ERL_NIF_TERM *err);
void lcx_release_context_sampler(lcx_context *c, lcx_sampler *s, lcx_claim *who);

// llama.cpp's abort callback of every context (data: the context): whether
// its holder was cancelled.
bool lcx_abort_cb(void *data);

// Who uses the context (the batching engine claims it for its life).
lcx_owner *lcx_context_owner(lcx_context *c);
bool lcx_context_embeddings(lcx_context *c); // created with embeddings: true
// Whether llama_decode may split a batch into n_ubatch micro-batches: the
// context has a memory and the model's attention is causal. Otherwise
// llama.cpp asserts that a batch fits in one micro-batch.
bool lcx_context_splits_batches(lcx_context *c);
bool lcx_context_kv_unified(lcx_context *c); // one KV stream for all sequences

// With a claim held:
struct llama_context *lcx_context_llama(lcx_context *c);
lcx_model *lcx_context_model(lcx_context *c);
int32_t lcx_next_position(lcx_context *c); // of sequence 0
// Sets the adapters the context applies (the context keeps references of its
// own to them); a set equal to the current one changes nothing. False if
// llama.cpp threw (lcx_last_exception); the current set stays. *changed
// (if given): whether the set differed.
bool lcx_context_apply_lora(lcx_context *c, const lcx_lora_set *set, bool *changed);
uint32_t lcx_context_seq_size(lcx_context *c); // cells one sequence can hold
// The KV cache was replaced (a state load): the last decode's logits no longer
// describe it, so sampling needs a decode first.
void lcx_context_forget_logits(lcx_context *c);

typedef enum {
  LCX_DECODE_OK,
  LCX_DECODE_ABORTED,    // cancelled (abort callback), or the caller died
  LCX_DECODE_NO_KV_SLOT, // no room in the KV cache
  LCX_DECODE_ERROR,      // another llama_decode code (in *code)
  LCX_DECODE_THREW,      // llama.cpp threw or asserted (lcx_last_exception)
} lcx_decode_status;

// llama_decode through the barrier (lcx_decode), holding the model's adapter
// lock when the context's adapters changed since its last decode.
int32_t lcx_context_decode(lcx_context *c, struct llama_batch batch, bool *threw);
// Sequence 0's positions were shifted (shift.h): the next lcx_decode_tokens
// calls llama_decode, which applies it, even if the claim was cancelled.
void lcx_context_shifted(lcx_context *c);

// Decodes tokens into sequence 0 in n_ubatch chunks.
lcx_decode_status lcx_decode_tokens(lcx_context *c, const llama_token *toks, unsigned n, int32_t *code);
ERL_NIF_TERM lcx_decode_error(ErlNifEnv *env, lcx_decode_status st, int32_t code);
// {:error, {:context_overflow, %{position, prompt_tokens, max_tokens, n_ctx}}}: the
// prompt does not fit (max_tokens is the request's, for information)
ERL_NIF_TERM lcx_overflow_error(ErlNifEnv *env, int32_t pos, unsigned n_prompt, int max_tokens, uint32_t n_ctx);

extern atomic_long lcx_live_contexts;

#endif
