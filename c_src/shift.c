// See shift.h.
#include "shift.h"

bool lcx_can_shift(struct llama_context *ctx) {
  llama_memory_t mem = llama_get_memory(ctx);
  return mem != NULL && llama_memory_can_shift(mem);
}

int32_t lcx_shift_amount(int32_t n_past, int32_t n_keep) {
  int32_t n_left = n_past - n_keep;
  if (n_left < 2) return 0; // keep at least the newest position
  return n_left / 2;
}

bool lcx_shift(struct llama_context *ctx, llama_seq_id seq, int32_t n_keep, int32_t n_discard, int32_t n_past) {
  llama_memory_t mem = llama_get_memory(ctx);
  if (!llama_memory_seq_rm(mem, seq, n_keep, n_keep + n_discard)) return false;
  llama_memory_seq_add(mem, seq, n_keep + n_discard, n_past, -n_discard);
  return true;
}
