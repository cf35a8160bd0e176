// Samplers: what other areas may use of a sampler chain. The struct is sampler.c's.
#ifndef LCX_SAMPLER_H
#define LCX_SAMPLER_H

#include <erl_nif.h>
#include <stdatomic.h>

#include "llama.h"
#include "model.h"
#include "owner.h"

typedef struct lcx_sampler lcx_sampler;

// NULL when the term is not a sampler.
lcx_sampler *lcx_get_sampler(ErlNifEnv *env, ERL_NIF_TERM t);
// Who uses the chain (claim it before lcx_sampler_chain).
lcx_owner *lcx_sampler_owner(lcx_sampler *s);
struct llama_sampler *lcx_sampler_chain(lcx_sampler *s);
lcx_model *lcx_sampler_model(lcx_sampler *s);

extern atomic_long lcx_live_samplers;

#endif
