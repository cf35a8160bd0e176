// Saved state of one sequence, for other areas (the batching server,
// batch.c): the same save and checked load as the NIFs of state.c, on a
// context the caller has claimed.
#ifndef LCX_STATE_H
#define LCX_STATE_H

#include <erl_nif.h>
#include <stdint.h>

#include "context.h"

// {:ok, binary}: sequence seq of c, or {:error, reason}. seq must be in 0..n_seq_max-1.
ERL_NIF_TERM lcx_state_seq_save(ErlNifEnv *env, lcx_context *c, int32_t seq);
// :ok after checking blob against c (see state.c) and loading it into
// sequence seq in place of what it held, or {:error, reason}: an
// {:invalid_state, _} blob leaves the sequence as it was, a
// {:state_load_failed, _} one leaves it empty. seq must be in 0..n_seq_max-1.
ERL_NIF_TERM lcx_state_seq_load(ErlNifEnv *env, lcx_context *c, int32_t seq, ERL_NIF_TERM blob);

#endif
