// LoRA adapters: what other areas (contexts, the batching server) may use of
// a loaded adapter. The struct is lora.c's.
//
// An adapter pins its model (it is a dependant, like a context): llama.cpp
// frees an adapter's tensors with the model, so the model must outlive it.
// A context pins every adapter set on it, for as long as it is set: the
// llama_context keeps pointers to them.
#ifndef LCX_LORA_H
#define LCX_LORA_H

#include <erl_nif.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "llama.h"
#include "model.h"

typedef struct lcx_lora lcx_lora;

// Most adapters one context applies at once.
#define LCX_MAX_LORAS 8

// A set of adapters with their scales, as llama.cpp applies it: entries with
// a zero scale are left out, the rest are ordered by address, so two equal
// sets are equal field by field (lcx_lora_set_equal). Each entry holds a
// resource reference to its adapter.
typedef struct {
  unsigned n;
  lcx_lora *items[LCX_MAX_LORAS];
  float scales[LCX_MAX_LORAS];
} lcx_lora_set;

// Reads [{adapter, scale}] into *out (which it overwrites without releasing):
// ArgumentError for a wrong shape, a scale that is not a finite number within
// the 32-bit float range, a repeated adapter or more than LCX_MAX_LORAS;
// {:error, :model_mismatch} for an adapter of another model than `model`.
// On success the caller releases *out with lcx_lora_set_release.
bool lcx_read_lora_set(ErlNifEnv *env, ERL_NIF_TERM list, const lcx_model *model, lcx_lora_set *out, ERL_NIF_TERM *err);
void lcx_lora_set_release(lcx_lora_set *s);
void lcx_lora_set_copy(lcx_lora_set *dst, const lcx_lora_set *src); // dst gets references of its own
bool lcx_lora_set_equal(const lcx_lora_set *a, const lcx_lora_set *b);
// Applies the set on a llama_context (llama_set_adapters_lora, through the
// barrier); the caller holds a claim on the context. False if llama.cpp threw.
bool lcx_lora_set_apply(struct llama_context *ctx, const lcx_lora_set *s);

extern atomic_long lcx_live_loras;

#endif
