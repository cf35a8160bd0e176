// Models: what other areas may use of a loaded model. The struct is model.c's.
//
// A model is pinned by every context and sampler made from it (its
// dependants, lcx_model_acquire/release). Model.free/1 marks it closed at once;
// the llama_model itself is freed when the last dependant goes.
#ifndef LCX_MODEL_H
#define LCX_MODEL_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "llama.h"

typedef struct lcx_model lcx_model;

// NULL when the term is not a model.
lcx_model *lcx_get_model(ErlNifEnv *env, ERL_NIF_TERM t);
// Read-locks a model for use; NULL (with *err: ArgumentError or {:error, :closed})
// when the term is not a model or the model was freed. Unlock with lcx_model_unlock.
lcx_model *lcx_read_model(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err);
void lcx_model_unlock(lcx_model *m);

// Dependants (contexts and samplers pin the llama_model).
bool lcx_model_acquire(lcx_model *m); // false if the model is closed
void lcx_model_release(lcx_model *m, bool in_destructor);

// llama.cpp keeps a model's LoRA adapters in a std::set that adapter load
// and free write and that a context reads when it reserves its graph (at
// creation, and at the first decode after its adapters changed). Those three
// hold this lock; it is never held while waiting for anything else.
void lcx_model_adapters_lock(lcx_model *m);
void lcx_model_adapters_unlock(lcx_model *m);

// Facts read once at load. The llama.cpp objects are valid while the caller
// holds the read lock or is a dependant.
struct llama_model *lcx_model_llama(const lcx_model *m);
const struct llama_vocab *lcx_model_vocab(const lcx_model *m);
int32_t lcx_model_n_vocab(const lcx_model *m);
int32_t lcx_model_max_piece(const lcx_model *m); // longest token text in bytes
bool lcx_model_vocab_only(const lcx_model *m);

// Opens a GGUF file for reading without blocking (regular files only, magic
// checked): the fd, or -1 with *err ({:error, {:file_not_found, path}},
// {:file_error, posix, path}, {:not_regular_file, type, path}, {:not_gguf, path}).
struct stat;
int lcx_open_gguf(ErlNifEnv *env, const char *path, ERL_NIF_TERM path_term, struct stat *st, ERL_NIF_TERM *err);

extern atomic_long lcx_live_models;

#endif
