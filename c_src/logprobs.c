// See logprobs.h.
#include <math.h>
#include <string.h>

#include "lcx.h"
#include "logprobs.h"

void lcx_logprobs_init(lcx_logprobs *lp, int n_top) {
  memset(lp, 0, sizeof *lp);
  lp->n_top = n_top;
}

void lcx_logprobs_free(lcx_logprobs *lp) {
  if (lp->ids) enif_free(lp->ids);
  if (lp->lps) enif_free(lp->lps);
  lcx_logprobs_init(lp, -1);
}

// log(sum(exp(logits))), in two passes: the maximum first, so no term
// overflows. Single-precision exponentials (each term within a few ulp; the
// sum, kept in double, within ~1e-7 relative) run several times faster than
// double ones over a 32k-150k vocabulary.
static double log_sum_exp(const float *logits, int32_t n_vocab) {
  float max = -INFINITY;
  for (int32_t i = 0; i < n_vocab; i++)
    if (logits[i] > max) max = logits[i];
  if (!isfinite(max)) return max;
  double sum = 0.0;
  for (int32_t i = 0; i < n_vocab; i++)
    sum += (double)expf(logits[i] - max);
  return max + log(sum);
}

void lcx_log_softmax(const float *logits, int32_t n_vocab, double *out) {
  double lse = log_sum_exp(logits, n_vocab);
  for (int32_t i = 0; i < n_vocab; i++)
    out[i] = (double)logits[i] - lse;
}

// The k highest logits, highest first; ties keep the lower id first (as
// llama.cpp's greedy sampler picks the first maximum).
static void top_k(const float *logits, int32_t n_vocab, int k, llama_token *ids) {
  if (k <= 0) return;
  int have = 0;
  for (int32_t i = 0; i < n_vocab; i++) {
    float l = logits[i];
    if (have == k && !(l > logits[ids[k - 1]])) continue;
    int j = have < k ? have++ : k - 1;
    while (j > 0 && l > logits[ids[j - 1]]) {
      ids[j] = ids[j - 1];
      j--;
    }
    ids[j] = i;
  }
}

static bool grow(lcx_logprobs *lp) {
  if (lp->n < lp->cap) return true;
  size_t cap = lp->cap ? lp->cap * 2 : 64;
  size_t stride = (size_t)lp->n_top + 1;
  llama_token *ids = enif_realloc(lp->ids, sizeof(llama_token) * stride * cap);
  if (!ids) return false;
  lp->ids = ids;
  float *lps = enif_realloc(lp->lps, sizeof(float) * stride * cap);
  if (!lps) return false;
  lp->lps = lps;
  lp->cap = cap;
  return true;
}

bool lcx_logprobs_push(lcx_logprobs *lp, const float *logits, int32_t n_vocab, llama_token chosen) {
  if (!lcx_logprobs_on(lp)) return true;
  if (!grow(lp)) return false;
  size_t stride = (size_t)lp->n_top + 1;
  llama_token *ids = lp->ids + lp->n * stride;
  float *lps = lp->lps + lp->n * stride;
  double lse = log_sum_exp(logits, n_vocab);
  int k = lp->n_top < n_vocab ? lp->n_top : n_vocab;
  ids[0] = chosen;
  top_k(logits, n_vocab, k, ids + 1);
  for (int i = k + 1; i < (int)stride; i++)
    ids[i] = -1;
  for (size_t i = 0; i < stride; i++)
    lps[i] = ids[i] < 0 ? -INFINITY : (float)((double)logits[ids[i]] - lse);
  lp->n++;
  return true;
}

// A log-probability: a float, or :neg_infinity for a token the model rules
// out (a logit of -inf), which a float term cannot hold.
ERL_NIF_TERM lcx_logprob_term(ErlNifEnv *env, double lp) {
  if (isfinite(lp)) return enif_make_double(env, lp);
  return enif_make_atom(env, lp < 0 ? "neg_infinity" : "nan");
}

static ERL_NIF_TERM entry(ErlNifEnv *env, const struct llama_vocab *vocab, llama_token id, float lp, ERL_NIF_TERM top,
                          bool with_top) {
  char buf[256];
  int32_t n = llama_token_to_piece(vocab, id, buf, sizeof buf, 0, true);
  if (n < 0) n = 0; // a piece longer than any real token's: left out
  static const char *const keys[] = {"token", "text", "bytes", "logprob", "top"};
  ERL_NIF_TERM vals[5] = {enif_make_int(env, id), lcx_utf8_binary(env, buf, (size_t)n), lcx_binary(env, buf, (size_t)n),
                          lcx_logprob_term(env, lp), top};
  return lcx_make_map(env, keys, vals, with_top ? 5 : 4);
}

static ERL_NIF_TERM record(ErlNifEnv *env, const lcx_logprobs *lp, size_t r, const struct llama_vocab *vocab) {
  size_t stride = (size_t)lp->n_top + 1;
  const llama_token *ids = lp->ids + r * stride;
  const float *lps = lp->lps + r * stride;
  ERL_NIF_TERM top = enif_make_list(env, 0);
  for (size_t i = stride; i > 1; i--)
    if (ids[i - 1] >= 0) top = enif_make_list_cell(env, entry(env, vocab, ids[i - 1], lps[i - 1], 0, false), top);
  return entry(env, vocab, ids[0], lps[0], top, true);
}

static ERL_NIF_TERM records(ErlNifEnv *env, const lcx_logprobs *lp, size_t from, const struct llama_vocab *vocab) {
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (size_t r = lp->n; r > from; r--)
    list = enif_make_list_cell(env, record(env, lp, r - 1, vocab), list);
  return list;
}

ERL_NIF_TERM lcx_logprobs_take(ErlNifEnv *env, lcx_logprobs *lp, const struct llama_vocab *vocab) {
  ERL_NIF_TERM list = records(env, lp, lp->taken, vocab);
  lp->taken = lp->n;
  return list;
}

ERL_NIF_TERM lcx_logprobs_all(ErlNifEnv *env, const lcx_logprobs *lp, const struct llama_vocab *vocab) {
  return records(env, lp, 0, vocab);
}
