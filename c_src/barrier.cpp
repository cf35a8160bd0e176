// The C++ exception barrier: the only C++ in the NIF.
//
// llama.cpp is C++ behind a C header. Some of its entry points throw (grammar
// parsing and grammar accept, std::bad_alloc, std::out_of_range from vocab
// lookups), and an exception unwinding into the C NIF frames would abort the
// VM. Every such call goes through `guarded` below, which turns an exception
// into a failure value and keeps its message.
//
// The same barrier also catches llama.cpp's internal assertions when they fire
// on the calling thread: GGML_ASSERT/GGML_ABORT call ggml_abort(), which calls
// our abort callback before abort(). Inside a guarded call the callback throws
// instead, so the assertion unwinds (running llama.cpp's destructors) to the
// barrier and becomes an {:error, ...} instead of killing the VM. This is what
// keeps a corrupt GGUF file whose vocabulary trips an assert from taking the
// node down. Outside a guarded call (e.g. a ggml worker thread) there is
// nothing to unwind to, and the process aborts as llama.cpp intends.
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

#include "barrier.h"

namespace {

thread_local char last_exception[512];
thread_local int guard_depth = 0;

struct ggml_assertion : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void remember(const char *what) {
  std::snprintf(last_exception, sizeof last_exception, "%s", what ? what : "unknown C++ exception");
}

void on_ggml_abort(const char *message) {
  if (guard_depth > 0) throw ggml_assertion(std::string("llama.cpp assertion failed: ") + message);
  std::fprintf(stderr, "%s\n", message); // abort() follows in ggml_abort
}

template <typename R, typename F> R guarded(R fail, bool *threw, F body) {
  ++guard_depth;
  try {
    R r = body();
    --guard_depth;
    if (threw) *threw = false;
    return r;
  } catch (const std::exception &e) {
    remember(e.what());
  } catch (...) {
    remember("unknown C++ exception");
  }
  --guard_depth;
  if (threw) *threw = true;
  return fail;
}

} // namespace

extern "C" {

void lcx_barrier_init(void) { ggml_set_abort_callback(on_ggml_abort); }

const char *lcx_last_exception(void) { return last_exception; }

void lcx_clear_exception(void) { last_exception[0] = '\0'; }

void lcx_set_exception(const char *what) { remember(what); }

int32_t lcx_tokenize(const struct llama_vocab *vocab, const char *text, int32_t len, llama_token *tokens, int32_t n_max,
                     bool add_special, bool parse_special, bool *threw) {
  return guarded<int32_t>(0, threw,
                          [&] { return llama_tokenize(vocab, text, len, tokens, n_max, add_special, parse_special); });
}

int32_t lcx_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf, int32_t len, int32_t lstrip,
                           bool special, bool *threw) {
  return guarded<int32_t>(0, threw, [&] { return llama_token_to_piece(vocab, token, buf, len, lstrip, special); });
}

int32_t lcx_detokenize(const struct llama_vocab *vocab, const llama_token *tokens, int32_t n, char *text, int32_t len,
                       bool remove_special, bool unparse_special, bool *threw) {
  return guarded<int32_t>(
      0, threw, [&] { return llama_detokenize(vocab, tokens, n, text, len, remove_special, unparse_special); });
}

int32_t lcx_decode(struct llama_context *ctx, struct llama_batch batch, bool *threw) {
  return guarded<int32_t>(-1, threw, [&] { return llama_decode(ctx, batch); });
}

llama_token lcx_sampler_sample(struct llama_sampler *smpl, struct llama_context *ctx, int32_t idx, bool *threw) {
  return guarded<llama_token>(-1, threw, [&] { return llama_sampler_sample(smpl, ctx, idx); });
}

bool lcx_sampler_accept(struct llama_sampler *smpl, llama_token token) {
  return guarded<bool>(false, nullptr, [&] {
    llama_sampler_accept(smpl, token);
    return true;
  });
}

bool lcx_sampler_reset(struct llama_sampler *smpl) {
  return guarded<bool>(false, nullptr, [&] {
    llama_sampler_reset(smpl);
    return true;
  });
}

struct llama_sampler *lcx_sampler_init_grammar(const struct llama_vocab *vocab, const char *grammar, const char *root) {
  return guarded<struct llama_sampler *>(nullptr, nullptr,
                                         [&] { return llama_sampler_init_grammar(vocab, grammar, root); });
}

struct llama_sampler *lcx_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                 float present) {
  return guarded<struct llama_sampler *>(
      nullptr, nullptr, [&] { return llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, present); });
}

struct llama_sampler *lcx_sampler_init_dry(const struct llama_vocab *vocab, float mult, float base, int32_t allowed_len,
                                           int32_t last_n, const char **breakers, size_t n_breakers) {
  return guarded<struct llama_sampler *>(nullptr, nullptr, [&] {
    return llama_sampler_init_dry(vocab, mult, base, allowed_len, last_n, breakers, n_breakers);
  });
}

int32_t lcx_chat_apply_template(const char *tmpl, const struct llama_chat_message *chat, size_t n, bool add_ass,
                                char *buf, int32_t len, bool *threw) {
  return guarded<int32_t>(-1, threw, [&] { return llama_chat_apply_template(tmpl, chat, n, add_ass, buf, len); });
}

struct llama_model *lcx_model_load(const char *path, struct llama_model_params params) {
  return guarded<struct llama_model *>(nullptr, nullptr, [&] { return llama_model_load_from_file(path, params); });
}

struct llama_context *lcx_init_from_model(struct llama_model *model, struct llama_context_params params) {
  return guarded<struct llama_context *>(nullptr, nullptr, [&] { return llama_init_from_model(model, params); });
}

bool lcx_memory_clear(struct llama_context *ctx) {
  return guarded<bool>(false, nullptr, [&] {
    llama_memory_clear(llama_get_memory(ctx), true);
    return true;
  });
}

bool lcx_memory_seq_rm(struct llama_context *ctx, llama_seq_id seq, llama_pos p0, llama_pos p1) {
  return guarded<bool>(false, nullptr, [&] { return llama_memory_seq_rm(llama_get_memory(ctx), seq, p0, p1); });
}

bool lcx_memory_seq_cp(struct llama_context *ctx, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) {
  return guarded<bool>(false, nullptr, [&] {
    llama_memory_seq_cp(llama_get_memory(ctx), src, dst, p0, p1);
    return true;
  });
}

size_t lcx_state_get_size(struct llama_context *ctx, bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_get_size(ctx); });
}

size_t lcx_state_get_data(struct llama_context *ctx, uint8_t *dst, size_t size, bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_get_data(ctx, dst, size); });
}

size_t lcx_state_set_data(struct llama_context *ctx, const uint8_t *src, size_t size, bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_set_data(ctx, src, size); });
}

size_t lcx_state_seq_get_size(struct llama_context *ctx, llama_seq_id seq, bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_seq_get_size(ctx, seq); });
}

size_t lcx_state_seq_get_data(struct llama_context *ctx, uint8_t *dst, size_t size, llama_seq_id seq, bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_seq_get_data(ctx, dst, size, seq); });
}

size_t lcx_state_seq_set_data(struct llama_context *ctx, const uint8_t *src, size_t size, llama_seq_id seq,
                              bool *threw) {
  return guarded<size_t>(0, threw, [&] { return llama_state_seq_set_data(ctx, src, size, seq); });
}

struct llama_adapter_lora *lcx_adapter_lora_init(struct llama_model *model, FILE *file) {
  return guarded<struct llama_adapter_lora *>(nullptr, nullptr,
                                              [&] { return llama_adapter_lora_init_from_file_ptr(model, file); });
}

bool lcx_set_adapters_lora(struct llama_context *ctx, struct llama_adapter_lora **adapters, size_t n, float *scales) {
  return guarded<bool>(false, nullptr, [&] { return llama_set_adapters_lora(ctx, adapters, n, scales) == 0; });
}

struct ggml_threadpool *lcx_threadpool_new(struct ggml_threadpool_params *params) {
  return guarded<struct ggml_threadpool *>(nullptr, nullptr, [&] { return ggml_threadpool_new(params); });
}

} // extern "C"
