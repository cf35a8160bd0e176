// Tokenizer: text <-> tokens, pieces, special tokens. Runs under the model's
// read lock. The Elixir side sends large inputs to the dirty variant.
#include <limits.h>
#include <string.h>

#include "lcx.h"
#include "model.h"

// tokenize(model, text, add_special, parse_special)
LCX_NIF(nif_tokenize) {
  ErlNifBinary text;
  bool add_special, parse_special;
  if (!enif_inspect_binary(env, argv[1], &text)) return lcx_raise(env, "text must be a binary");
  if (text.size > (size_t)INT32_MAX / 2) return lcx_raise(env, "text is too large to tokenize");
  if (!lcx_get_bool(env, argv[2], &add_special) || !lcx_get_bool(env, argv[3], &parse_special))
    return lcx_raise(env, "add_special and parse_special must be booleans");
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  int32_t cap = (int32_t)text.size + 8;
  llama_token stack_buf[512];
  llama_token *toks = cap <= 512 ? stack_buf : enif_alloc(sizeof(llama_token) * (size_t)cap);
  bool threw = false;
  int32_t n = toks ? lcx_tokenize(lcx_model_vocab(m), (const char *)text.data, (int32_t)text.size, toks, cap,
                                  add_special, parse_special, &threw)
                   : 0;
  if (toks && !threw && n < 0 && n != INT32_MIN) {
    if (toks != stack_buf) enif_free(toks);
    cap = -n;
    toks = enif_alloc(sizeof(llama_token) * (size_t)cap);
    n = toks ? lcx_tokenize(lcx_model_vocab(m), (const char *)text.data, (int32_t)text.size, toks, cap, add_special,
                            parse_special, &threw)
             : 0;
  }
  lcx_model_unlock(m);
  ERL_NIF_TERM result;
  if (!toks)
    result = lcx_err(env, LCX_E_out_of_memory);
  else if (threw)
    result = lcx_err_msg(env, LCX_E_tokenize_failed, lcx_last_exception());
  else if (n < 0)
    result = lcx_err_msg(env, LCX_E_tokenize_failed, "too many tokens");
  else
    result = lcx_ok(env, lcx_make_tokens(env, toks, (size_t)n));
  if (toks && toks != stack_buf) enif_free(toks);
  return result;
}

// detokenize(model, tokens, remove_special, unparse_special)
LCX_NIF(nif_detokenize) {
  bool remove_special, unparse_special;
  if (!lcx_get_bool(env, argv[2], &remove_special) || !lcx_get_bool(env, argv[3], &unparse_special))
    return lcx_raise(env, "remove_special and unparse_special must be booleans");
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  llama_token *toks;
  unsigned n;
  ERL_NIF_TERM bad;
  lcx_tokens_result tr = lcx_get_tokens(env, argv[1], lcx_model_n_vocab(m), &toks, &n, &bad);
  if (tr != LCX_TOKENS_OK) {
    lcx_model_unlock(m);
    return tr == LCX_TOKENS_NOMEM ? lcx_err(env, LCX_E_out_of_memory)
                                  : lcx_raise(env, "tokens must be a list of integers");
  }
  if (bad) {
    int32_t n_vocab = lcx_model_n_vocab(m);
    lcx_model_unlock(m);
    enif_free(toks);
    return lcx_invalid_token(env, bad, n_vocab);
  }
  if (n > (unsigned)(INT32_MAX / 64)) {
    lcx_model_unlock(m);
    enif_free(toks);
    return lcx_raise(env, "too many tokens");
  }
  int32_t cap = (int32_t)n * 8 + 16;
  char *text = enif_alloc((size_t)cap);
  bool threw = false;
  int32_t len =
      text ? lcx_detokenize(lcx_model_vocab(m), toks, (int32_t)n, text, cap, remove_special, unparse_special, &threw)
           : 0;
  if (text && !threw && len < 0) {
    enif_free(text);
    cap = -len;
    text = enif_alloc((size_t)cap);
    len = text
              ? lcx_detokenize(lcx_model_vocab(m), toks, (int32_t)n, text, cap, remove_special, unparse_special, &threw)
              : 0;
  }
  lcx_model_unlock(m);
  enif_free(toks);
  ERL_NIF_TERM result;
  if (!text) return lcx_err(env, LCX_E_out_of_memory);
  if (threw)
    result = lcx_err_msg(env, LCX_E_tokenize_failed, lcx_last_exception());
  else if (len < 0)
    result = lcx_err_msg(env, LCX_E_detokenize_failed, "detokenize failed");
  else
    result = lcx_ok(env, lcx_binary(env, text, (size_t)len));
  enif_free(text);
  return result;
}

// token_to_piece(model, token, special)
LCX_NIF(nif_token_to_piece) {
  int token;
  bool special;
  if (!enif_get_int(env, argv[1], &token)) return lcx_raise(env, "token must be an integer");
  if (!lcx_get_bool(env, argv[2], &special)) return lcx_raise(env, "special must be a boolean");
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  if (token < 0 || token >= lcx_model_n_vocab(m)) {
    int32_t n_vocab = lcx_model_n_vocab(m);
    lcx_model_unlock(m);
    return lcx_invalid_token(env, enif_make_int(env, token), n_vocab);
  }
  char buf[256];
  bool threw = false;
  int32_t n = lcx_token_to_piece(lcx_model_vocab(m), token, buf, sizeof buf, 0, special, &threw);
  ERL_NIF_TERM result;
  if (threw)
    result = lcx_err_msg(env, LCX_E_tokenize_failed, lcx_last_exception());
  else if (n < 0) {
    char *big = enif_alloc((size_t)-n);
    int32_t n2 = big ? lcx_token_to_piece(lcx_model_vocab(m), token, big, -n, 0, special, &threw) : -1;
    result = (big && !threw && n2 >= 0) ? lcx_ok(env, lcx_binary(env, big, (size_t)n2))
                                        : lcx_err_msg(env, LCX_E_detokenize_failed, "token_to_piece failed");
    if (big) enif_free(big);
  } else
    result = lcx_ok(env, lcx_binary(env, buf, (size_t)n));
  lcx_model_unlock(m);
  return result;
}

static ERL_NIF_TERM tok_or_nil(ErlNifEnv *env, llama_token t) {
  return t == LLAMA_TOKEN_NULL ? ATOM_nil : enif_make_int(env, t);
}

// vocab_info(model) -> %{bos:, eos:, eot:, sep:, nl:, pad:, n_vocab:, add_bos:, add_eos:, type:}
LCX_NIF(nif_vocab_info) {
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  const struct llama_vocab *v = lcx_model_vocab(m);
  const char *keys[] = {"bos",     "eos",     "eot",     "sep",     "nl",      "pad", "fim_pre",
                        "fim_suf", "fim_mid", "n_vocab", "add_bos", "add_eos", "type"};
  ERL_NIF_TERM vals[13] = {
      tok_or_nil(env, llama_vocab_bos(v)),
      tok_or_nil(env, llama_vocab_eos(v)),
      tok_or_nil(env, llama_vocab_eot(v)),
      tok_or_nil(env, llama_vocab_sep(v)),
      tok_or_nil(env, llama_vocab_nl(v)),
      tok_or_nil(env, llama_vocab_pad(v)),
      tok_or_nil(env, llama_vocab_fim_pre(v)),
      tok_or_nil(env, llama_vocab_fim_suf(v)),
      tok_or_nil(env, llama_vocab_fim_mid(v)),
      enif_make_int(env, lcx_model_n_vocab(m)),
      llama_vocab_get_add_bos(v) ? ATOM_true : ATOM_false,
      llama_vocab_get_add_eos(v) ? ATOM_true : ATOM_false,
      enif_make_int(env, (int)llama_vocab_type(v)),
  };
  lcx_model_unlock(m);
  return lcx_ok(env, lcx_make_map(env, keys, vals, 13));
}

// token_is_eog(model, token) -> {:ok, boolean}
LCX_NIF(nif_token_is_eog) {
  int token;
  if (!enif_get_int(env, argv[1], &token)) return lcx_raise(env, "token must be an integer");
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  ERL_NIF_TERM r;
  if (token < 0 || token >= lcx_model_n_vocab(m))
    r = lcx_invalid_token(env, enif_make_int(env, token), lcx_model_n_vocab(m));
  else
    r = lcx_ok(env, llama_vocab_is_eog(lcx_model_vocab(m), token) ? ATOM_true : ATOM_false);
  lcx_model_unlock(m);
  return r;
}
