// The C++ exception barrier. llama.cpp is C++ behind a C header; several of its
// entry points can throw (grammar parsing and grammar accept, std::bad_alloc,
// std::out_of_range from vocab lookups). An exception unwinding into the C NIF
// frames, and from there into the BEAM, would abort the VM, so every such call
// goes through a wrapper here that converts it into a failure value. Nothing
// else in the NIF is C++.
#include <cstdio>
#include <cstring>
#include <exception>

#include "barrier.h"

static thread_local char last_exception[256];

static void remember(const char *what) {
  std::snprintf(last_exception, sizeof last_exception, "%s", what ? what : "unknown C++ exception");
}

#define BARRIER(fail, body)                                                                        \
  try {                                                                                            \
    body                                                                                           \
  } catch (const std::exception &e) {                                                              \
    remember(e.what());                                                                            \
  } catch (...) {                                                                                  \
    remember("unknown C++ exception");                                                             \
  }                                                                                                \
  return fail;

extern "C" {

const char *lcx_last_exception(void) { return last_exception; }

int32_t lcx_tokenize(const struct llama_vocab *vocab, const char *text, int32_t len,
                     llama_token *tokens, int32_t n_max, bool add_special, bool parse_special,
                     bool *threw) {
  *threw = false;
  try {
    return llama_tokenize(vocab, text, len, tokens, n_max, add_special, parse_special);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return 0;
}

int32_t lcx_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf,
                           int32_t len, int32_t lstrip, bool special, bool *threw) {
  *threw = false;
  try {
    return llama_token_to_piece(vocab, token, buf, len, lstrip, special);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return 0;
}

int32_t lcx_detokenize(const struct llama_vocab *vocab, const llama_token *tokens, int32_t n,
                       char *text, int32_t len, bool remove_special, bool unparse_special,
                       bool *threw) {
  *threw = false;
  try {
    return llama_detokenize(vocab, tokens, n, text, len, remove_special, unparse_special);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return 0;
}

int32_t lcx_decode(struct llama_context *ctx, struct llama_batch batch, bool *threw) {
  *threw = false;
  try {
    return llama_decode(ctx, batch);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return -1;
}

llama_token lcx_sampler_sample(struct llama_sampler *smpl, struct llama_context *ctx, int32_t idx,
                               bool *threw) {
  *threw = false;
  try {
    return llama_sampler_sample(smpl, ctx, idx);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return -1;
}

bool lcx_sampler_accept(struct llama_sampler *smpl, llama_token token) {
  BARRIER(false, llama_sampler_accept(smpl, token); return true;)
}

bool lcx_sampler_reset(struct llama_sampler *smpl) {
  BARRIER(false, llama_sampler_reset(smpl); return true;)
}

struct llama_sampler *lcx_sampler_init_grammar(const struct llama_vocab *vocab, const char *grammar,
                                               const char *root) {
  BARRIER(nullptr, return llama_sampler_init_grammar(vocab, grammar, root);)
}

struct llama_sampler *lcx_sampler_init_dry(const struct llama_vocab *vocab, float mult, float base,
                                           int32_t allowed_len, int32_t last_n,
                                           const char **breakers, size_t n_breakers) {
  BARRIER(nullptr, return llama_sampler_init_dry(vocab, mult, base, allowed_len, last_n, breakers,
                                                 n_breakers);)
}

int32_t lcx_chat_apply_template(const char *tmpl, const struct llama_chat_message *chat, size_t n,
                                bool add_ass, char *buf, int32_t len, bool *threw) {
  *threw = false;
  try {
    return llama_chat_apply_template(tmpl, chat, n, add_ass, buf, len);
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  *threw = true;
  return -1;
}

struct llama_model *lcx_model_load(const char *path, struct llama_model_params params) {
  BARRIER(nullptr, return llama_model_load_from_file(path, params);)
}

struct llama_context *lcx_init_from_model(struct llama_model *model,
                                          struct llama_context_params params) {
  BARRIER(nullptr, return llama_init_from_model(model, params);)
}

bool lcx_memory_clear(struct llama_context *ctx) {
  BARRIER(false, llama_memory_clear(llama_get_memory(ctx), true); return true;)
}

} // extern "C"
