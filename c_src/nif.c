// NIF entry point: loads llama.cpp's backends once, opens the resource types
// and lists every native function with the scheduler it runs on and why.
#include "lcx.h"

int lcx_model_load_types(ErlNifEnv *env);
int lcx_context_load_types(ErlNifEnv *env);
int lcx_sampler_load_types(ErlNifEnv *env);
int lcx_generate_load_types(ErlNifEnv *env);
int lcx_batch_load_types(ErlNifEnv *env);
int lcx_lora_load_types(ErlNifEnv *env);
void lcx_model_init_system_info(void);

LCX_NIF(nif_load_handle);
LCX_NIF(nif_load_cancel);
LCX_NIF(nif_load_answer);
LCX_NIF(nif_model_load);
LCX_NIF(nif_model_free);
LCX_NIF(nif_model_info);
LCX_NIF(nif_model_metadata);
LCX_NIF(nif_model_chat_template);
LCX_NIF(nif_live_counts);
LCX_NIF(nif_system_info);
LCX_NIF(nif_tokenize);
LCX_NIF(nif_detokenize);
LCX_NIF(nif_token_to_piece);
LCX_NIF(nif_vocab_info);
LCX_NIF(nif_token_is_eog);
LCX_NIF(nif_sampler_create);
LCX_NIF(nif_sampler_accept);
LCX_NIF(nif_sampler_reset);
LCX_NIF(nif_sampler_free);
LCX_NIF(nif_sampler_sample);
LCX_NIF(nif_context_logprobs);
LCX_NIF(nif_context_create);
LCX_NIF(nif_context_free);
LCX_NIF(nif_context_info);
LCX_NIF(nif_context_position);
LCX_NIF(nif_context_clear);
LCX_NIF(nif_context_decode);
LCX_NIF(nif_context_embed);
LCX_NIF(nif_context_state_save);
LCX_NIF(nif_context_state_load);
LCX_NIF(nif_context_seq_save);
LCX_NIF(nif_context_seq_load);
LCX_NIF(nif_context_set_lora);
LCX_NIF(nif_lora_load);
LCX_NIF(nif_lora_info);
LCX_NIF(nif_stream_start);
LCX_NIF(nif_stream_cancel);
LCX_NIF(nif_stream_demand);
LCX_NIF(nif_generate);
LCX_NIF(nif_batch_new);
LCX_NIF(nif_batch_admit);
LCX_NIF(nif_batch_admit_embed);
LCX_NIF(nif_batch_step);
LCX_NIF(nif_batch_release);
LCX_NIF(nif_batch_purge);
LCX_NIF(nif_batch_info);
LCX_NIF(nif_batch_seq_save);
LCX_NIF(nif_batch_seq_load);
LCX_NIF(nif_chat_apply_template);
LCX_NIF(nif_chat_builtin_templates);
LCX_NIF(nif_set_log_handler);

#define DIRTY_IO ERL_NIF_DIRTY_JOB_IO_BOUND
#define DIRTY_CPU ERL_NIF_DIRTY_JOB_CPU_BOUND

static ErlNifFunc nif_funcs[] = {
    // Reads a (possibly multi-GB) file: dirty IO.
    {"model_load", 5, nif_model_load, DIRTY_IO},
    // May wait on the write lock while a long tokenize holds the read lock,
    // and munmap/free of large weights: dirty IO.
    {"model_free", 1, nif_model_free, DIRTY_IO},
    // O(1) reads under a read lock: normal.
    {"load_handle", 1, nif_load_handle, 0},
    {"load_cancel", 1, nif_load_cancel, 0},
    {"load_answer", 2, nif_load_answer, 0},
    {"live_counts", 0, nif_live_counts, 0},
    {"system_info", 0, nif_system_info, 0},
    {"vocab_info", 1, nif_vocab_info, 0},
    {"token_is_eog", 2, nif_token_is_eog, 0},
    // Copies a chat template, which a file can make any size: dirty CPU.
    {"model_info", 1, nif_model_info, DIRTY_CPU},
    {"model_chat_template", 2, nif_model_chat_template, DIRTY_CPU},
    // Copies one piece: normal, unless the model's longest piece is large
    // (max_piece_bytes, read at load): the Elixir side then uses the dirty one.
    {"token_to_piece", 3, nif_token_to_piece, 0},
    {"token_to_piece_dirty", 3, nif_token_to_piece, DIRTY_CPU},
    // Hundreds of keys on large models, some with big values (templates): dirty CPU.
    {"model_metadata", 1, nif_model_metadata, DIRTY_CPU},
    // Tokenizing is linear in the input times the tokens matched literally
    // (user-defined, and with parse_special control tokens), detokenizing in
    // the tokens times the longest piece: the Elixir side uses the normal
    // variant when that bound is small (well under 1 ms) and the dirty one
    // otherwise, from vocabulary facts read at load.
    {"tokenize", 4, nif_tokenize, 0},
    {"tokenize_dirty", 4, nif_tokenize, DIRTY_CPU},
    {"detokenize", 4, nif_detokenize, 0},
    {"detokenize_dirty", 4, nif_detokenize, DIRTY_CPU},
    // Grammar parsing and DRY set-up scale with the grammar and the vocabulary,
    // and accept/reset wait for the sampler lock, which generation holds for
    // its whole run: all dirty CPU. Grammar parsing (create, and reset of a
    // chain with a grammar) runs on a thread with a 16 MiB stack that the
    // scheduler waits for (grammar_stack.c): llama.cpp's parser recurses.
    {"sampler_create", 2, nif_sampler_create, DIRTY_CPU},
    {"sampler_accept", 2, nif_sampler_accept, DIRTY_CPU},
    {"sampler_reset", 1, nif_sampler_reset, DIRTY_CPU},
    // Takes the sampler lock, which generation holds for long: dirty CPU.
    {"sampler_free", 1, nif_sampler_free, DIRTY_CPU},
    // Sampling touches the whole vocabulary (and the grammar), and waits for the
    // context lock: dirty CPU. With a grammar, it moves to a thread with a
    // larger stack when the model's longest token needs more than is left here.
    {"sampler_sample", 2, nif_sampler_sample, DIRTY_CPU},
    // Touches the whole vocabulary and waits for the context lock: dirty CPU.
    {"context_logprobs", 1, nif_context_logprobs, DIRTY_CPU},
    // Allocates the KV cache and compute buffers (GPU memory too): dirty CPU.
    {"context_create", 2, nif_context_create, DIRTY_CPU},
    // Everything that takes a context lock may wait for a running decode: dirty CPU.
    {"context_free", 1, nif_context_free, DIRTY_CPU},
    {"context_info", 1, nif_context_info, DIRTY_CPU},
    {"context_position", 1, nif_context_position, DIRTY_CPU},
    {"context_clear", 1, nif_context_clear, DIRTY_CPU},
    // Forward passes: dirty CPU.
    {"context_decode", 2, nif_context_decode, DIRTY_CPU},
    // Waits for the context's claim (a generation may hold it): dirty CPU.
    {"context_set_lora", 2, nif_context_set_lora, DIRTY_CPU},
    // Reads the adapter file and decodes one token with it (its check): dirty IO.
    {"lora_load", 2, nif_lora_load, DIRTY_IO},
    // A few metadata lookups in a small map: normal.
    {"lora_info", 1, nif_lora_info, 0},
    {"context_embed", 3, nif_context_embed, DIRTY_CPU},
    {"generate", 4, nif_generate, DIRTY_CPU},
    // Saved state (state.c): copies the whole KV cache (tens of MB) and, for
    // a load, checks every cell of the blob first: dirty CPU.
    {"context_state_save", 1, nif_context_state_save, DIRTY_CPU},
    {"context_state_load", 2, nif_context_state_load, DIRTY_CPU},
    {"context_seq_save", 2, nif_context_seq_save, DIRTY_CPU},
    {"context_seq_load", 3, nif_context_seq_load, DIRTY_CPU},
    // Copies the prompt and starts the stream's own thread (a long prompt
    // list takes a while to copy): dirty CPU.
    {"stream_start", 6, nif_stream_start, DIRTY_CPU},
    // Set a flag or bump a counter: normal.
    {"stream_cancel", 1, nif_stream_cancel, 0},
    {"stream_demand", 1, nif_stream_demand, 0},
    // The batching server's engine (batch.c). A step is a forward pass plus
    // sampling for every slot: dirty CPU. Admitting copies the prompt and
    // edits the KV cache (a pass over its cells), releasing and purging edit
    // it too, and every call waits for the engine lock: all dirty CPU. The
    // engine is created once per server, from a context: dirty CPU (waits for
    // the context lock).
    {"batch_new", 2, nif_batch_new, DIRTY_CPU},
    {"batch_admit", 5, nif_batch_admit, DIRTY_CPU},
    {"batch_admit_embed", 4, nif_batch_admit_embed, DIRTY_CPU},
    {"batch_step", 2, nif_batch_step, DIRTY_CPU},
    {"batch_release", 3, nif_batch_release, DIRTY_CPU},
    {"batch_purge", 3, nif_batch_purge, DIRTY_CPU},
    {"batch_info", 1, nif_batch_info, DIRTY_CPU},
    // Saving or loading a slot's sequence copies its KV cells (megabytes) and
    // checks every cell of a blob: dirty CPU, as context_seq_save/load.
    {"batch_seq_save", 2, nif_batch_seq_save, DIRTY_CPU},
    {"batch_seq_load", 4, nif_batch_seq_load, DIRTY_CPU},
    // Template rendering is linear in the conversation: dirty CPU.
    {"chat_apply_template", 3, nif_chat_apply_template, DIRTY_CPU},
    {"chat_builtin_templates", 0, nif_chat_builtin_templates, 0},
    {"set_log_handler", 2, nif_set_log_handler, 0},
};

static int load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info) {
  lcx_init_atoms(env);
  lcx_init_reasons(env);
  if (lcx_model_load_types(env) || lcx_context_load_types(env) || lcx_sampler_load_types(env) ||
      lcx_generate_load_types(env) || lcx_batch_load_types(env) || lcx_lora_load_types(env))
    return -1;
  if (lcx_log_load() || lcx_janitor_load()) return -1;
  lcx_barrier_init();
  llama_backend_init();
  lcx_model_init_system_info();
  return 0;
}

static void unload(ErlNifEnv *env, void *priv) {
  lcx_janitor_unload();
  ggml_set_abort_callback(NULL);
  llama_backend_free();
  lcx_log_unload();
}

ERL_NIF_INIT(Elixir.LlamaCppEx.NIF, nif_funcs, load, NULL, NULL, unload)
