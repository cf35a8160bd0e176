// Atoms, term helpers and resource getters shared by every area of the NIF.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lcx.h"
#include "utf8.h"

#define LCX_DEFINE_ATOM(name) ERL_NIF_TERM ATOM_##name;
LCX_ATOMS(LCX_DEFINE_ATOM)
#undef LCX_DEFINE_ATOM

void lcx_init_atoms(ErlNifEnv *env) {
#define LCX_MAKE_ATOM(name) ATOM_##name = enif_make_atom(env, #name);
  LCX_ATOMS(LCX_MAKE_ATOM)
#undef LCX_MAKE_ATOM
  // atoms whose C names differ from their Elixir names
  ATOM_max_tokens_key = enif_make_atom(env, "max_tokens");
}

ERL_NIF_TERM lcx_ok(ErlNifEnv *env, ERL_NIF_TERM t) { return enif_make_tuple2(env, ATOM_ok, t); }

ERL_NIF_TERM lcx_binary(ErlNifEnv *env, const char *data, size_t len) {
  ERL_NIF_TERM t;
  unsigned char *buf = enif_make_new_binary(env, len, &t);
  if (len > 0) memcpy(buf, data, len);
  return t;
}

ERL_NIF_TERM lcx_cstr(ErlNifEnv *env, const char *s) { return lcx_binary(env, s, strlen(s)); }

ERL_NIF_TERM lcx_raise(ErlNifEnv *env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ERL_NIF_TERM keys[3] = {enif_make_atom(env, "__struct__"), enif_make_atom(env, "__exception__"),
                          enif_make_atom(env, "message")};
  ERL_NIF_TERM vals[3] = {enif_make_atom(env, "Elixir.ArgumentError"), ATOM_true,
                          lcx_utf8_binary(env, msg, strlen(msg))};
  ERL_NIF_TERM exc;
  enif_make_map_from_arrays(env, keys, vals, 3, &exc);
  return enif_raise_exception(env, exc);
}

bool lcx_get_bool(ErlNifEnv *env, ERL_NIF_TERM t, bool *out) {
  if (enif_is_identical(t, ATOM_true)) {
    *out = true;
    return true;
  }
  if (enif_is_identical(t, ATOM_false)) {
    *out = false;
    return true;
  }
  return false;
}

bool lcx_get_double(ErlNifEnv *env, ERL_NIF_TERM t, double *out) {
  if (enif_get_double(env, t, out)) return true;
  ErlNifSInt64 i;
  if (enif_get_int64(env, t, &i)) {
    *out = (double)i;
    return true;
  }
  return false;
}

lcx_tokens_result lcx_get_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                                 ERL_NIF_TERM *bad) {
  unsigned n;
  *out = NULL;
  *n_out = 0;
  *bad = 0;
  if (!enif_get_list_length(env, list, &n)) return LCX_TOKENS_BADARG;
  llama_token *toks = enif_alloc(sizeof(llama_token) * (n > 0 ? n : 1));
  if (!toks) return LCX_TOKENS_NOMEM;
  ERL_NIF_TERM head, tail = list;
  for (unsigned i = 0; i < n; i++) {
    int v;
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_int(env, head, &v)) {
      ErlNifSInt64 big;
      if (!enif_get_int64(env, head, &big)) {
        enif_free(toks);
        return LCX_TOKENS_BADARG;
      }
      v = -1; // an integer far out of range
    }
    if ((v < 0 || v >= n_vocab) && *bad == 0) *bad = head;
    toks[i] = v;
  }
  *out = toks;
  *n_out = n;
  return LCX_TOKENS_OK;
}

bool lcx_read_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                     ERL_NIF_TERM *err) {
  ERL_NIF_TERM bad;
  switch (lcx_get_tokens(env, list, n_vocab, out, n_out, &bad)) {
  case LCX_TOKENS_OK:
    break;
  case LCX_TOKENS_NOMEM:
    *err = lcx_err(env, LCX_E_out_of_memory);
    return false;
  default:
    *err = lcx_raise(env, "tokens must be a list of integers");
    return false;
  }
  if (!bad) return true;
  *err = lcx_invalid_token(env, bad, n_vocab == INT32_MAX ? 0 : n_vocab);
  enif_free(*out);
  *out = NULL;
  return false;
}

ERL_NIF_TERM lcx_make_tokens(ErlNifEnv *env, const llama_token *toks, size_t n) {
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (size_t i = n; i > 0; i--)
    list = enif_make_list_cell(env, enif_make_int(env, toks[i - 1]), list);
  return list;
}

ERL_NIF_TERM lcx_make_map(ErlNifEnv *env, const char *const *keys, const ERL_NIF_TERM *vals, unsigned n) {
  ERL_NIF_TERM kt[32], vt[32], map;
  if (n > 32) n = 32;
  for (unsigned i = 0; i < n; i++) {
    kt[i] = enif_make_atom(env, keys[i]);
    vt[i] = vals[i];
  }
  enif_make_map_from_arrays(env, kt, vt, n, &map);
  return map;
}

ERL_NIF_TERM lcx_invalid_token(ErlNifEnv *env, ERL_NIF_TERM token, int32_t n_vocab) {
  return lcx_err_detail(env, LCX_E_invalid_token, enif_make_tuple2(env, token, enif_make_int(env, n_vocab)));
}

bool lcx_map_get(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, ERL_NIF_TERM *out) {
  ERL_NIF_TERM k;
  if (!enif_make_existing_atom(env, key, &k, ERL_NIF_LATIN1)) k = enif_make_atom(env, key);
  return enif_get_map_value(env, map, k, out);
}

ERL_NIF_TERM lcx_utf8_binary(ErlNifEnv *env, const char *data, size_t len) {
  const unsigned char *s = (const unsigned char *)data;
  size_t clean = lcx_utf8_sanitized_len(s, len);
  ERL_NIF_TERM t;
  unsigned char *buf = enif_make_new_binary(env, clean, &t);
  if (clean) lcx_utf8_sanitize(s, len, buf);
  return t;
}
