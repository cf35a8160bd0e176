// Atoms, term helpers and resource getters shared by every area of the NIF.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lcx.h"

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

ERL_NIF_TERM lcx_error(ErlNifEnv *env, ERL_NIF_TERM reason) { return enif_make_tuple2(env, ATOM_error, reason); }

ERL_NIF_TERM lcx_error2(ErlNifEnv *env, ERL_NIF_TERM tag, ERL_NIF_TERM detail) {
  return lcx_error(env, enif_make_tuple2(env, tag, detail));
}

ERL_NIF_TERM lcx_error_str(ErlNifEnv *env, ERL_NIF_TERM tag, const char *msg) {
  msg = msg ? msg : "";
  return lcx_error2(env, tag, lcx_utf8_binary(env, msg, strlen(msg)));
}

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

bool lcx_get_tokens(ErlNifEnv *env, ERL_NIF_TERM list, int32_t n_vocab, llama_token **out, unsigned *n_out,
                    ERL_NIF_TERM *bad) {
  unsigned n;
  *out = NULL;
  *n_out = 0;
  *bad = 0;
  if (!enif_get_list_length(env, list, &n)) return false;
  llama_token *toks = enif_alloc(sizeof(llama_token) * (n > 0 ? n : 1));
  if (!toks) return false;
  ERL_NIF_TERM head, tail = list;
  for (unsigned i = 0; i < n; i++) {
    int v;
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_int(env, head, &v)) {
      ErlNifSInt64 big;
      if (!enif_get_int64(env, head, &big)) {
        enif_free(toks);
        return false;
      }
      v = -1; // an integer far out of range
    }
    if ((v < 0 || v >= n_vocab) && *bad == 0) *bad = head;
    toks[i] = v;
  }
  *out = toks;
  *n_out = n;
  return true;
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
  return lcx_error2(env, ATOM_invalid_token, enif_make_tuple2(env, token, enif_make_int(env, n_vocab)));
}

bool lcx_map_get(ErlNifEnv *env, ERL_NIF_TERM map, const char *key, ERL_NIF_TERM *out) {
  ERL_NIF_TERM k;
  if (!enif_make_existing_atom(env, key, &k, ERL_NIF_LATIN1)) k = enif_make_atom(env, key);
  return enif_get_map_value(env, map, k, out);
}

lcx_model *lcx_get_model(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_MODEL_RT, &p) ? p : NULL;
}

lcx_context *lcx_get_context(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_CONTEXT_RT, &p) ? p : NULL;
}

lcx_sampler *lcx_get_sampler(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_SAMPLER_RT, &p) ? p : NULL;
}

size_t lcx_utf8_incomplete_tail(const char *buf, size_t len) {
  // Walk back over at most 3 continuation bytes to the lead byte.
  size_t i = len, back = 0;
  while (i > 0 && back < 4) {
    unsigned char c = (unsigned char)buf[i - 1];
    back++;
    if ((c & 0xC0) == 0x80) {
      i--;
      continue;
    }
    size_t need = (c & 0x80) == 0 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return back < need ? back : 0;
  }
  return 0; // only continuation bytes (invalid anyway): nothing to wait for
}

// Length of the valid UTF-8 sequence at s[0..len), or 0 when the bytes there
// do not start one; *maximal is then the length of its longest valid prefix
// (at least 1), which is replaced as a whole (as WHATWG and Python do).
static size_t utf8_seq(const unsigned char *s, size_t len, size_t *maximal) {
  unsigned char c = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF; // range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0; // no overlong forms
    if (c == 0xED) hi = 0x9F; // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F; // nothing above U+10FFFF
  } else {
    *maximal = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < need && i < len; i++) {
    unsigned char b = s[i];
    if (i == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) break;
  }
  if (i == need) return need;
  *maximal = i;
  return 0;
}

char *lcx_utf8_sanitize(const char *src, size_t len, size_t *out_len) {
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0, maximal = 0, n;
  while (i < len && (n = utf8_seq(s + i, len - i, &maximal)) > 0)
    i += n;
  if (i == len) return NULL; // valid: nothing to copy
  // every invalid byte becomes at most 3 bytes (U+FFFD is EF BF BD)
  char *out = enif_alloc(len * 3 + 1);
  if (!out) return NULL;
  memcpy(out, src, i);
  size_t o = i;
  while (i < len) {
    n = utf8_seq(s + i, len - i, &maximal);
    if (n > 0) {
      memcpy(out + o, src + i, n);
      o += n;
      i += n;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i += maximal;
    }
  }
  *out_len = o;
  return out;
}

ERL_NIF_TERM lcx_utf8_binary(ErlNifEnv *env, const char *data, size_t len) {
  size_t clean_len;
  char *clean = lcx_utf8_sanitize(data, len, &clean_len);
  if (!clean) return lcx_binary(env, data, len); // valid (or out of memory: as it is)
  ERL_NIF_TERM t = lcx_binary(env, clean, clean_len);
  enif_free(clean);
  return t;
}
