// Context shift: when a sequence reaches the end of its cells, drop the
// oldest half of what follows its first n_keep positions and move the rest
// back (llama_memory_seq_rm + llama_memory_seq_add, as llama.cpp's CLI and
// llama-server do), so generation goes on with a sliding window. Used by
// generate.c's loop and by the batching server's slots.
//
// Whether a context can shift is llama.cpp's own answer
// (llama_memory_can_shift: false for M-RoPE models, sliding-window caches of
// unequal sizes and the like; checked before llama_memory_seq_add, which
// asserts it); a job that asks to shift on one that cannot is refused before
// it starts. Recurrent memories answer yes but cannot drop a middle range
// (llama_memory_seq_rm fails): there generation ends with :context_full.
#ifndef LCX_SHIFT_H
#define LCX_SHIFT_H

#include <stdbool.h>
#include <stdint.h>

#include "llama.h"

bool lcx_can_shift(struct llama_context *ctx);

// Positions to drop from a sequence holding n_past positions: half of those
// after n_keep (at least one), or 0 when nothing can go (n_keep covers all
// but the newest position).
int32_t lcx_shift_amount(int32_t n_past, int32_t n_keep);

// Drops positions [n_keep, n_keep + n_discard) of seq and moves those after
// them back by n_discard; false (nothing changed) when the memory cannot drop them.
bool lcx_shift(struct llama_context *ctx, llama_seq_id seq, int32_t n_keep, int32_t n_discard, int32_t n_past);

#endif
