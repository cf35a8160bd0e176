// Shared declarations for the LlamaCppEx NIF: resource types, term helpers and
// the C++ exception barrier. Each area (model, context, sampler, tokenizer,
// chat, log) lives in its own .c file and registers its functions here.
#ifndef LCX_H
#define LCX_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "ggml-cpu.h"
#include "janitor.h"
#include "llama.h"
#include "owner.h"
#include "text.h"

// ---- resources ---------------------------------------------------------------

typedef struct lcx_model {
  ErlNifRWLock *lock; // read: use of `model`; write: free
  struct llama_model *model;
  const struct llama_vocab *vocab;
  int32_t n_vocab;
  int32_t max_piece;   // longest token text in bytes (grammar sampling recurses once per byte)
  ErlNifMutex *dep_mu; // guards `dependants`; never held across llama.cpp calls
  int dependants;      // live contexts + samplers
  atomic_bool closed;  // free/1 called; llama_model freed when dependants hit 0
  bool vocab_only;     // no weights: no contexts
} lcx_model;

typedef struct lcx_context {
  lcx_owner owner; // who uses `ctx` (owner.h)
  struct llama_context *ctx;
  struct ggml_threadpool *tp;       // compute threads for single tokens
  struct ggml_threadpool *tp_batch; // and for batches (NULL: same as tp)
  lcx_model *model;                 // kept alive with enif_keep_resource
  bool has_logits;                  // the last decode left logits to sample from
  bool embeddings;                  // created with embeddings: true
} lcx_context;

typedef struct lcx_sampler {
  lcx_owner owner; // who uses `chain`
  struct llama_sampler *chain;
  lcx_model *model; // kept alive: grammar, DRY and penalties use its vocab
} lcx_sampler;

// A model load in progress. With a progress function, each progress report
// waits for the function's answer (continue or cancel), so cancelling is exact;
// the process running the function is monitored, and its death cancels.
typedef struct lcx_load {
  atomic_int cancel;
  ErlNifMutex *mu;
  ErlNifCond *cv;
  long answered; // under mu
  ErlNifMonitor mon;
} lcx_load;

extern ErlNifResourceType *LCX_MODEL_RT;
extern ErlNifResourceType *LCX_CONTEXT_RT;
extern ErlNifResourceType *LCX_SAMPLER_RT;
extern ErlNifResourceType *LCX_LOAD_RT;

// ---- contexts and samplers, as generate.c (and later the server) uses them ----------

bool lcx_abort_cb(void *data);
// Claims a context for a NIF call: NULL with *err (ArgumentError, :busy, :closed).
lcx_context *lcx_context_claim(ErlNifEnv *env, ERL_NIF_TERM t, lcx_claim *who, ERL_NIF_TERM *err);
void lcx_context_release(lcx_context *c, lcx_claim *who);
// The one lock-pair helper: claims a context, then a sampler of the same model, or neither.
bool lcx_claim_context_sampler(ErlNifEnv *env, ERL_NIF_TERM ct, ERL_NIF_TERM st, lcx_claim *who, lcx_context **c,
                               lcx_sampler **s, ERL_NIF_TERM *err);
void lcx_release_context_sampler(lcx_context *c, lcx_sampler *s, lcx_claim *who);
int32_t lcx_next_position(lcx_context *c);
uint32_t lcx_context_seq_size(lcx_context *c); // cells one sequence can hold
typedef enum {
  LCX_DECODE_OK,
  LCX_DECODE_ABORTED,    // cancelled (abort callback)
  LCX_DECODE_NO_KV_SLOT, // no room in the KV cache
  LCX_DECODE_ERROR,      // another llama_decode code (in *code)
  LCX_DECODE_THREW,      // llama.cpp threw or asserted (lcx_last_exception)
} lcx_decode_status;
// Decodes tokens into sequence 0 in n_batch chunks.
lcx_decode_status lcx_decode_tokens(lcx_context *c, const llama_token *toks, unsigned n, int32_t *code);
ERL_NIF_TERM lcx_decode_error(ErlNifEnv *env, lcx_decode_status st, int32_t code);
// {:error, {:context_overflow, %{position, prompt_tokens, max_tokens, n_ctx}}}: the
// prompt does not fit (max_tokens is the request's, for information)
ERL_NIF_TERM lcx_overflow_error(ErlNifEnv *env, int32_t pos, unsigned n_prompt, int max_tokens, uint32_t n_ctx);
lcx_owner *lcx_sampler_owner(lcx_sampler *s);
struct llama_sampler *lcx_sampler_chain(lcx_sampler *s);
lcx_model *lcx_sampler_model(lcx_sampler *s);

// live object counts (for tests and leak checks)
extern atomic_long lcx_live_models, lcx_live_contexts, lcx_live_samplers;

// ---- atoms -------------------------------------------------------------------

#define LCX_ATOMS(X)                                                                                                   \
  X(ok)                                                                                                                \
  X(error)                                                                                                             \
  X(true)                                                                                                              \
  X(false)                                                                                                             \
  X(nil)                                                                                                               \
  X(closed)                                                                                                            \
                                                                                                                       \
  X(eog)                                                                                                               \
  X(max_tokens)                                                                                                        \
  X(stop)                                                                                                              \
  X(cancelled)                                                                                                         \
  X(context_full)                                                                                                      \
  X(done)                                                                                                              \
  X(sample_ms)                                                                                                         \
  X(chunk)                                                                                                             \
  X(context_overflow)                                                                                                  \
  X(prompt_tokens)                                                                                                     \
  X(n_ctx) X(max_tokens_key) X(invalid_token) X(decode_failed) X(no_kv_slot) X(aborted) X(empty_prompt)                \
      X(model_mismatch) X(invalid_grammar) X(load_failed) X(load_cancelled) X(context_failed) X(sampler_failed)        \
          X(exception) X(template_failed) X(unknown_template) X(invalid_utf8) X(tokenize_failed) X(llama_log) X(debug) \
              X(info) X(warn) X(cont) X(text) X(tokens) X(finish_reason) X(generated_tokens) X(prompt_ms)              \
                  X(generation_ms) X(models) X(contexts) X(samplers) X(load_progress) X(n_batch) X(n_ubatch)           \
                      X(n_seq_max) X(n_threads) X(n_threads_batch) X(position) X(available) X(needed)

#define LCX_DECLARE_ATOM(name) extern ERL_NIF_TERM ATOM_##name;
LCX_ATOMS(LCX_DECLARE_ATOM)
#undef LCX_DECLARE_ATOM

void lcx_init_atoms(ErlNifEnv *env);

// ---- term helpers -------------------------------------------------------------

ERL_NIF_TERM lcx_ok(ErlNifEnv *env, ERL_NIF_TERM t);
ERL_NIF_TERM lcx_error(ErlNifEnv *env, ERL_NIF_TERM reason);
ERL_NIF_TERM lcx_error2(ErlNifEnv *env, ERL_NIF_TERM tag, ERL_NIF_TERM detail);
ERL_NIF_TERM lcx_error_str(ErlNifEnv *env, ERL_NIF_TERM tag, const char *msg);
// Raises ArgumentError(message) in Elixir (see LlamaCppEx.NIF).
ERL_NIF_TERM lcx_raise(ErlNifEnv *env, const char *fmt, ...);
ERL_NIF_TERM lcx_binary(ErlNifEnv *env, const char *data, size_t len);
ERL_NIF_TERM lcx_cstr(ErlNifEnv *env, const char *s);

bool lcx_get_bool(ErlNifEnv *env, ERL_NIF_TERM t, bool *out);
bool lcx_get_double(ErlNifEnv *env, ERL_NIF_TERM t, double *out); // int or float
// Reads a list of token ids into a freshly enif_alloc'ed array (caller frees).
// Returns false on a type error; *bad is set to the first id outside
// [0, n_vocab) as the caller passed it (or 0 if all are in range).
typedef enum { LCX_TOKENS_OK, LCX_TOKENS_BADARG, LCX_TOKENS_NOMEM } lcx_tokens_result;
lcx_tokens_result lcx_get_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out,
                                 unsigned *n_out, ERL_NIF_TERM *bad);
ERL_NIF_TERM lcx_make_tokens(ErlNifEnv *env, const llama_token *toks, size_t n);
// A map with atom keys (at most 32).
ERL_NIF_TERM lcx_make_map(ErlNifEnv *env, const char *const *keys, const ERL_NIF_TERM *vals, unsigned n);
// {:error, {:invalid_token, {token_term, n_vocab}}}
ERL_NIF_TERM lcx_invalid_token(ErlNifEnv *env, ERL_NIF_TERM token, int32_t n_vocab);

// Map option lookup (options arrive as maps built in Elixir after validation).
bool lcx_map_get(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, ERL_NIF_TERM *out);

// Resource getters: return NULL when the term is not the expected resource.
lcx_model *lcx_get_model(ErlNifEnv *env, ERL_NIF_TERM t);
lcx_context *lcx_get_context(ErlNifEnv *env, ERL_NIF_TERM t);
lcx_sampler *lcx_get_sampler(ErlNifEnv *env, ERL_NIF_TERM t);

// Read-locks a model for use; NULL (with *err: ArgumentError or {:error, :closed})
// when the term is not a model or the model was freed. Unlock with enif_rwlock_runlock(m->lock).
lcx_model *lcx_read_model(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err);

// Model dependants bookkeeping (contexts and samplers pin the llama_model).
bool lcx_model_acquire(lcx_model *m); // false if the model is closed
void lcx_model_release(lcx_model *m, bool in_destructor);

// ---- logging --------------------------------------------------------------------

int lcx_log_load(void);
// Until reset with (NULL, NULL): lines logged on this thread while fn(data)
// returns true are demoted to debug (used for decodes we abort on purpose).
void lcx_log_quiet_when(bool (*fn)(void *), void *data);
void lcx_log_unload(void);
// Capture the last error logged on this thread (used to explain load failures).
void lcx_log_capture_begin(void);
const char *lcx_log_capture_end(void);

#include "barrier.h"

// ---- NIF function tables of each area --------------------------------------------

#define LCX_NIF(name) ERL_NIF_TERM name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])

#endif
