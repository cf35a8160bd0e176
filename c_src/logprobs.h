// Log-probabilities of generated tokens: for each token, its log-probability
// and the n most likely alternatives with theirs, from the model's
// distribution at that position before sampling (the log-softmax of the raw
// logits: no temperature, penalties, bias or grammar applied). Collected by
// generate.c's loop and by a batching-server slot, one record per token
// appended to the text; nothing is computed when off.
#ifndef LCX_LOGPROBS_H
#define LCX_LOGPROBS_H

#include <erl_nif.h>
#include <stdbool.h>
#include <stddef.h>

#include "llama.h"

#define LCX_MAX_LOGPROBS 20

typedef struct {
  int n_top;        // alternatives per token; -1: off
  size_t n, cap;    // records
  llama_token *ids; // per record: the chosen token, then n_top alternatives
  float *lps;       // their log-probabilities, same layout
  size_t taken;     // records already handed out (streams)
} lcx_logprobs;

// n_top in 0..LCX_MAX_LOGPROBS, or -1 for off.
void lcx_logprobs_init(lcx_logprobs *lp, int n_top);
void lcx_logprobs_free(lcx_logprobs *lp);
static inline bool lcx_logprobs_on(const lcx_logprobs *lp) { return lp->n_top >= 0; }

// Records the chosen token against the logits it was sampled from. False when
// out of memory.
bool lcx_logprobs_push(lcx_logprobs *lp, const float *logits, int32_t n_vocab, llama_token chosen);

// [%{token, text, bytes, logprob, top: [%{token, text, bytes, logprob}]}] for
// the records not handed out yet (they count as handed out), or for all of them.
ERL_NIF_TERM lcx_logprobs_take(ErlNifEnv *env, lcx_logprobs *lp, const struct llama_vocab *vocab);
ERL_NIF_TERM lcx_logprobs_all(ErlNifEnv *env, const lcx_logprobs *lp, const struct llama_vocab *vocab);

// A float, or :neg_infinity (:nan for a broken model's logits).
ERL_NIF_TERM lcx_logprob_term(ErlNifEnv *env, double lp);

// The whole distribution: out[i] = log p(i) for i in [0, n_vocab).
void lcx_log_softmax(const float *logits, int32_t n_vocab, double *out);

#endif
