// The reason table of errors.h, as atoms.
#include <string.h>

#include "errors.h"
#include "utf8.h"

static ERL_NIF_TERM reason_atoms[LCX_N_REASONS];

void lcx_init_reasons(ErlNifEnv *env) {
#define LCX_REASON_ATOM(name) reason_atoms[LCX_E_##name] = enif_make_atom(env, #name);
  LCX_REASONS(LCX_REASON_ATOM)
#undef LCX_REASON_ATOM
}

ERL_NIF_TERM lcx_reason_atom(lcx_reason r) { return reason_atoms[r]; }

ERL_NIF_TERM lcx_err(ErlNifEnv *env, lcx_reason r) {
  return enif_make_tuple2(env, enif_make_atom(env, "error"), reason_atoms[r]);
}

ERL_NIF_TERM lcx_err_detail(ErlNifEnv *env, lcx_reason r, ERL_NIF_TERM detail) {
  return enif_make_tuple2(env, enif_make_atom(env, "error"), enif_make_tuple2(env, reason_atoms[r], detail));
}

ERL_NIF_TERM lcx_err_detail2(ErlNifEnv *env, lcx_reason r, ERL_NIF_TERM a, ERL_NIF_TERM b) {
  return enif_make_tuple2(env, enif_make_atom(env, "error"), enif_make_tuple3(env, reason_atoms[r], a, b));
}

ERL_NIF_TERM lcx_err_msg(ErlNifEnv *env, lcx_reason r, const char *msg) {
  const unsigned char *m = (const unsigned char *)(msg ? msg : "");
  size_t n = strlen((const char *)m), len = lcx_utf8_sanitized_len(m, n);
  ERL_NIF_TERM t;
  unsigned char *buf = enif_make_new_binary(env, len, &t);
  if (len) lcx_utf8_sanitize(m, n, buf);
  return lcx_err_detail(env, r, t);
}
