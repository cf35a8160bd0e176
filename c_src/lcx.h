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

#include "ggml-cpu.h"
#include "llama.h"

// ---- resources ---------------------------------------------------------------

typedef struct lcx_model {
  ErlNifRWLock *lock; // read: use of `model`; write: free
  struct llama_model *model;
  const struct llama_vocab *vocab;
  int32_t n_vocab;
  ErlNifMutex *dep_mu; // guards `dependants`; never held across llama.cpp calls
  int dependants;      // live contexts + samplers
  atomic_bool closed;  // free/1 called; llama_model freed when dependants hit 0
  bool vocab_only;     // no weights: no contexts
  // vocabulary facts read once at load, bounding the work of tokenizer calls
  // (the Elixir side picks normal or dirty schedulers from them)
  uint32_t max_piece;     // longest token piece in bytes (special tokens as text)
  int32_t n_user_defined; // user-defined tokens: matched literally in every tokenize
  int32_t n_special;      // those plus control and unknown tokens (with parse_special)
} lcx_model;

struct lcx_stream;

typedef struct lcx_context {
  ErlNifMutex *lock; // serializes every use of `ctx`
  struct llama_context *ctx;
  struct ggml_threadpool *tp;       // compute threads for single tokens
  struct ggml_threadpool *tp_batch; // and for batches (NULL: same as tp)
  lcx_model *model;                 // kept alive with enif_keep_resource
  atomic_int abort_all;             // set by free/1: abort whatever runs now
  _Atomic(atomic_int *) cancel;     // cancel flag of the running stream, if any
  bool has_logits;                  // the last decode left logits to sample from
  bool embeddings;                  // created with embeddings: true
  ErlNifMutex *owner_mu;            // guards the two fields below (never held across llama.cpp calls)
  struct lcx_stream *stream;        // the stream holding `lock`, kept alive while set
  ErlNifPid stream_consumer;
} lcx_context;

typedef struct lcx_sampler {
  ErlNifMutex *lock;
  struct llama_sampler *chain;
  lcx_model *model;          // kept alive: grammar, DRY and penalties use its vocab
  ErlNifMutex *owner_mu;     // guards `stream` (never held across llama.cpp calls)
  struct lcx_stream *stream; // the stream using this sampler, if any (kept alive while set)
} lcx_sampler;

// A stream: one generation running on a thread of its own (so a slow
// consumer never holds a scheduler), sending text chunks to its consumer.
// Flow control: the loop may compute one token ahead but sends chunk k only
// once the consumer has asked for k chunks (`demanded`), so a consumer that
// stops asking stops generation within one token and never has more than one
// chunk waiting. `cancel` is set by the consumer (halt), by its death (a
// monitor) or by Context.free/1; the loop checks it between tokens and
// llama_decode's abort callback checks it inside a decode.
typedef struct lcx_stream {
  atomic_int cancel;
  ErlNifMutex *mu;
  ErlNifCond *cv;
  long demanded; // under mu
  ErlNifMonitor mon;
  ErlNifPid consumer;
  // the job, owned by the stream
  lcx_context *c; // kept while the thread runs
  lcx_sampler *s; // kept while the thread runs
  llama_token *prompt;
  unsigned n_prompt;
  int max_tokens;
  ErlNifBinary *stops; // owned copies
  unsigned n_stops;
  ErlNifEnv *ref_env; // holds `ref`, the tag of every message
  ERL_NIF_TERM ref;
} lcx_stream;

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
extern ErlNifResourceType *LCX_STREAM_RT;
extern ErlNifResourceType *LCX_LOAD_RT;

// ---- context internals shared by context.c and generate.c ------------------------

#define RC_DECODE_THREW INT32_MIN
#define RC_SAMPLER_THREW (INT32_MIN + 1)
bool lcx_abort_cb(void *data);
// Locks a context for use: NULL (with *err) when the term is wrong, the context
// is closed, or a stream is using it ({:error, :busy}: a stream holds the
// lock for as long as its consumer takes, and a scheduler must not wait that long).
lcx_context *lcx_lock_context(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err);
// Locks the sampler after the context; checks both belong to one model.
lcx_sampler *lcx_lock_sampler(ErlNifEnv *env, lcx_context *c, ERL_NIF_TERM t, ERL_NIF_TERM *err);
int32_t lcx_next_position(lcx_context *c);
// Decodes in n_batch chunks: 0, llama_decode's code (2 = aborted), or RC_DECODE_THREW.
int32_t lcx_decode_tokens(lcx_context *c, llama_token *toks, unsigned n);
ERL_NIF_TERM lcx_decode_error(ErlNifEnv *env, int32_t rc);
ERL_NIF_TERM lcx_overflow_error(ErlNifEnv *env, int32_t pos, unsigned n_prompt, int max_tokens, uint32_t n_ctx);
void lcx_stream_cancel(lcx_stream *st);
// Whether a stream is using the sampler (its lock may be held indefinitely).
bool lcx_sampler_streaming(lcx_sampler *s);

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
bool lcx_get_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                    ERL_NIF_TERM *bad);
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

// ---- freeing ------------------------------------------------------------------

typedef enum { LCX_FREE_MODEL } lcx_free_kind;
// Joins a finished stream thread (from the janitor: a thread cannot join itself).
void lcx_janitor_join(ErlNifTid tid);
// Runs fn(arg) on the janitor thread.
void lcx_janitor_call(void (*fn)(void *), void *arg);
// After freeing large buffers: the janitor returns free heap memory to the
// system when enough has accumulated (glibc; see janitor.c). Never blocks.
void lcx_janitor_trim_soon(void);
// Frees a llama.cpp object and updates the live counts: inline, or, from a
// resource destructor, on the janitor thread (see janitor.c).
void lcx_dispose(lcx_free_kind kind, void *ptr, bool in_destructor);
int lcx_janitor_load(void);
void lcx_janitor_unload(void);

// Read-locks a model for use; NULL (with *err: ArgumentError or {:error, :closed})
// when the term is not a model or the model was freed. Unlock with enif_rwlock_runlock(m->lock).
lcx_model *lcx_read_model(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err);

// Model dependants bookkeeping (contexts and samplers pin the llama_model).
bool lcx_model_acquire(lcx_model *m); // false if the model is closed
void lcx_model_release(lcx_model *m, bool in_destructor);

// ---- UTF-8 -------------------------------------------------------------------

// Number of bytes at the end of buf[0..len) that form an incomplete UTF-8
// sequence (0 when the buffer ends on a character boundary).
size_t lcx_utf8_incomplete_tail(const char *buf, size_t len);
// NULL when src[0..len) is valid UTF-8; otherwise a copy (enif_alloc'ed, caller
// frees; length in *out_len) with each invalid sequence replaced by U+FFFD.
char *lcx_utf8_sanitize(const char *src, size_t len, size_t *out_len);
// A binary of data[0..len) made valid UTF-8 (lcx_utf8_sanitize): for every
// string built from text we do not control (llama.cpp messages, GGUF strings).
ERL_NIF_TERM lcx_utf8_binary(ErlNifEnv *env, const char *data, size_t len);

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
