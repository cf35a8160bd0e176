// What every area of the NIF shares: atoms, term helpers, the NIF macro, and
// the headers nearly every file needs (errors, the barrier, logging). Each
// area (model, context, sampler, ...) has a header of its own with a few
// functions; its struct is private to its .c file.
#ifndef LCX_H
#define LCX_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "janitor.h"
#include "llama.h"

// ---- atoms -------------------------------------------------------------------

// Atoms other than error reasons (those are errors.h's table).
#define LCX_ATOMS(X)                                                                                                   \
  X(ok)                                                                                                                \
  X(error)                                                                                                             \
  X(true)                                                                                                              \
  X(false)                                                                                                             \
  X(nil)                                                                                                               \
  X(eog)                                                                                                               \
  X(max_tokens)                                                                                                        \
  X(stop)                                                                                                              \
  X(cancelled)                                                                                                         \
  X(context_full)                                                                                                      \
  X(done)                                                                                                              \
  X(sample_ms)                                                                                                         \
  X(chunk)                                                                                                             \
  X(prompt_tokens)                                                                                                     \
  X(n_ctx)                                                                                                             \
  X(max_tokens_key)                                                                                                    \
  X(llama_log)                                                                                                         \
  X(debug)                                                                                                             \
  X(info)                                                                                                              \
  X(warn)                                                                                                              \
  X(cont)                                                                                                              \
  X(text)                                                                                                              \
  X(tokens)                                                                                                            \
  X(finish_reason)                                                                                                     \
  X(generated_tokens)                                                                                                  \
  X(prompt_ms)                                                                                                         \
  X(generation_ms)                                                                                                     \
  X(models)                                                                                                            \
  X(contexts)                                                                                                          \
  X(samplers)                                                                                                          \
  X(loras)                                                                                                             \
  X(load_progress)                                                                                                     \
  X(n_batch)                                                                                                           \
  X(n_ubatch)                                                                                                          \
  X(n_seq_max)                                                                                                         \
  X(n_threads)                                                                                                         \
  X(n_threads_batch)                                                                                                   \
  X(position)                                                                                                          \
  X(available)                                                                                                         \
  X(needed)                                                                                                            \
  X(logprobs)                                                                                                          \
  X(discarded_tokens)

#define LCX_DECLARE_ATOM(name) extern ERL_NIF_TERM ATOM_##name;
LCX_ATOMS(LCX_DECLARE_ATOM)
#undef LCX_DECLARE_ATOM

void lcx_init_atoms(ErlNifEnv *env);

// ---- term helpers -------------------------------------------------------------

ERL_NIF_TERM lcx_ok(ErlNifEnv *env, ERL_NIF_TERM t);
// Raises ArgumentError(message) in Elixir (see LlamaCppEx.NIF).
ERL_NIF_TERM lcx_raise(ErlNifEnv *env, const char *fmt, ...);
ERL_NIF_TERM lcx_binary(ErlNifEnv *env, const char *data, size_t len);
// A binary of data[0..len) made valid UTF-8 (U+FFFD for what is not): for
// strings from llama.cpp (log lines, metadata, messages).
ERL_NIF_TERM lcx_utf8_binary(ErlNifEnv *env, const char *data, size_t len);
ERL_NIF_TERM lcx_cstr(ErlNifEnv *env, const char *s);

bool lcx_get_bool(ErlNifEnv *env, ERL_NIF_TERM t, bool *out);
bool lcx_get_double(ErlNifEnv *env, ERL_NIF_TERM t, double *out); // int or float
// Reads a list of token ids into a freshly enif_alloc'ed array (caller frees
// it when the result is LCX_TOKENS_OK). *bad is set to the first id outside
// [0, n_vocab) as the caller passed it (or 0 if all are in range).
typedef enum { LCX_TOKENS_OK, LCX_TOKENS_BADARG, LCX_TOKENS_NOMEM } lcx_tokens_result;
lcx_tokens_result lcx_get_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                                 ERL_NIF_TERM *bad);
// lcx_get_tokens with its errors as terms: ArgumentError for a wrong type,
// {:error, :out_of_memory}, {:error, {:invalid_token, {id, n_vocab}}}. On
// success the caller frees *out.
bool lcx_read_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                     ERL_NIF_TERM *err);
ERL_NIF_TERM lcx_make_tokens(ErlNifEnv *env, const llama_token *toks, size_t n);
// A map with atom keys (at most 32).
ERL_NIF_TERM lcx_make_map(ErlNifEnv *env, const char *const *keys, const ERL_NIF_TERM *vals, unsigned n);
// {:error, {:invalid_token, {token_term, n_vocab}}}
ERL_NIF_TERM lcx_invalid_token(ErlNifEnv *env, ERL_NIF_TERM token, int32_t n_vocab);

// Map option lookup (options arrive as maps built in Elixir after validation).
bool lcx_map_get(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, ERL_NIF_TERM *out);

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
