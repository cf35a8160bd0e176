// The batching server's native engine: one llama_context shared by n slots
// (sequences 0..n-1), advanced one step at a time by LlamaCppEx.Server.
//
// A step (batch_step, dirty CPU) builds one llama_batch: one token for every
// generating slot, then prompt chunks of slots still absorbing their prompt,
// oldest admission first, within the step's token budget (n_batch); calls
// llama_decode once; and lets every slot that took part sample its token or
// pool its embedding (slot.h). It returns what happened per slot: text for
// streams, finished jobs with their results, failed ones with their reason.
//
// The engine is used by one process, the server; every call still takes the
// engine's lock and a call claim on the context (owner.h), and each step
// claims the sampler of every slot it samples for, so the ownership rules of
// the rest of the library hold here too.
//
// Prefix reuse: batch_admit may start a job with the first tokens of its
// prompt taken from the cache, kept from the slot's own sequence or copied
// from another one (llama_memory_seq_cp: in a unified KV cache the cells are
// shared, not copied; with one stream per sequence the whole stream is copied
// and cut back to the prefix). The index of what each sequence holds lives in
// Elixir (LlamaCppEx.Server.Cache).
#ifndef LCX_BATCH_H
#define LCX_BATCH_H

#include <erl_nif.h>

int lcx_batch_load_types(ErlNifEnv *env);

#endif
