// The C++ exception barrier (barrier.cpp), usable from C and C++.
#ifndef LCX_BARRIER_H
#define LCX_BARRIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ggml-cpu.h"
#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Every llama.cpp entry point that can throw is called through one of these.
// On exception they return the documented failure value and copy e.what() into
// a thread-local buffer readable with lcx_last_exception().

// Installs the ggml abort callback that turns assertions inside guarded
// calls into exceptions (call once at load).
void lcx_barrier_init(void);
const char *lcx_last_exception(void);
void lcx_clear_exception(void);
// Sets this thread's message (relaying one from a thread that ran a call for it).
void lcx_set_exception(const char *what);
int32_t lcx_tokenize(const struct llama_vocab *vocab, const char *text, int32_t len, llama_token *tokens, int32_t n_max,
                     bool add_special, bool parse_special, bool *threw);
int32_t lcx_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf, int32_t len, int32_t lstrip,
                           bool special, bool *threw);
int32_t lcx_detokenize(const struct llama_vocab *vocab, const llama_token *tokens, int32_t n, char *text, int32_t len,
                       bool remove_special, bool unparse_special, bool *threw);
int32_t lcx_decode(struct llama_context *ctx, struct llama_batch batch, bool *threw);
llama_token lcx_sampler_sample(struct llama_sampler *smpl, struct llama_context *ctx, int32_t idx, bool *threw);
bool lcx_sampler_accept(struct llama_sampler *smpl, llama_token token);
bool lcx_sampler_reset(struct llama_sampler *smpl);
struct llama_sampler *lcx_sampler_init_grammar(const struct llama_vocab *vocab, const char *grammar, const char *root);
struct llama_sampler *lcx_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                 float present);
struct llama_sampler *lcx_sampler_init_dry(const struct llama_vocab *vocab, float mult, float base, int32_t allowed_len,
                                           int32_t last_n, const char **breakers, size_t n_breakers);
int32_t lcx_chat_apply_template(const char *tmpl, const struct llama_chat_message *chat, size_t n, bool add_ass,
                                char *buf, int32_t len, bool *threw);
struct llama_model *lcx_model_load(const char *path, struct llama_model_params params);
struct llama_context *lcx_init_from_model(struct llama_model *model, struct llama_context_params params);
bool lcx_memory_clear(struct llama_context *ctx);
// llama_memory_seq_rm / llama_memory_seq_cp (false if llama.cpp threw or, for rm, refused)
bool lcx_memory_seq_rm(struct llama_context *ctx, llama_seq_id seq, llama_pos p0, llama_pos p1);
bool lcx_memory_seq_cp(struct llama_context *ctx, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1);
// Saved state (state.c): the llama_state_* functions; 0 when llama.cpp
// threw, asserted, or refused (it returns 0 for a failure too).
size_t lcx_state_get_size(struct llama_context *ctx, bool *threw);
size_t lcx_state_get_data(struct llama_context *ctx, uint8_t *dst, size_t size, bool *threw);
size_t lcx_state_set_data(struct llama_context *ctx, const uint8_t *src, size_t size, bool *threw);
size_t lcx_state_seq_get_size(struct llama_context *ctx, llama_seq_id seq, bool *threw);
size_t lcx_state_seq_get_data(struct llama_context *ctx, uint8_t *dst, size_t size, llama_seq_id seq, bool *threw);
size_t lcx_state_seq_set_data(struct llama_context *ctx, const uint8_t *src, size_t size, llama_seq_id seq,
                              bool *threw);
// llama_adapter_lora_init_from_file_ptr (catches what it throws itself; the
// barrier turns gguf's assertions on odd metadata types into exceptions) and
// llama_set_adapters_lora (false if it threw).
struct llama_adapter_lora *lcx_adapter_lora_init(struct llama_model *model, FILE *file);
bool lcx_set_adapters_lora(struct llama_context *ctx, struct llama_adapter_lora **adapters, size_t n, float *scales);
// ggml_threadpool_new asserts when a thread cannot be created.
struct ggml_threadpool *lcx_threadpool_new(struct ggml_threadpool_params *params);

#ifdef __cplusplus
}
#endif

#endif
