// gen_lora.c - deterministic LoRA adapter for a GGUF base model (tests).
//
//   gen_lora BASE.gguf OUTPUT.gguf [SEED] [RANK] [STD]
//
// Reads the base model's tensor shapes with the gguf API (no data is loaded)
// and writes a GGUF LoRA adapter in the layout llama.cpp's loader expects
// (src/llama-adapter.cpp): general.type = "adapter", adapter.type = "lora",
// adapter.lora.alpha = RANK (so the effective scale is the user's scale),
// general.architecture copied from the base, and for every attention and
// feed-forward matrix W of shape (ggml ne) [n_in, n_out] a pair
//   W.lora_a  F32 [n_in, RANK]
//   W.lora_b  F32 [RANK, n_out]
// so that W' = W + scale * (alpha / RANK) * B A.
//
// Determinism: values come from splitmix64 seeded per tensor from (SEED,
// tensor name), uniform in [-STD*sqrt(3), STD*sqrt(3)) through integer
// arithmetic and one float multiply: the same arguments give the same bytes.
// Defaults: SEED 7, RANK 4, STD 0.15 (enough to change stories260K's greedy
// text at scale 1).

#include "ggml.h"
#include "gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *msg) {
  fprintf(stderr, "gen_lora: error: %s\n", msg);
  exit(1);
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 0x100000001B3ULL;
  }
  return h;
}

static const char *const TARGETS[] = {".attn_q.weight",   ".attn_k.weight", ".attn_v.weight", ".attn_output.weight",
                                      ".ffn_gate.weight", ".ffn_up.weight", ".ffn_down.weight"};

static int is_target(const char *name) {
  if (strncmp(name, "blk.", 4) != 0) return 0;
  size_t n = strlen(name);
  for (size_t i = 0; i < sizeof TARGETS / sizeof TARGETS[0]; i++) {
    size_t k = strlen(TARGETS[i]);
    if (n > k && strcmp(name + n - k, TARGETS[i]) == 0) return 1;
  }
  return 0;
}

static void fill(struct ggml_tensor *t, uint64_t seed, float std) {
  uint64_t state = seed ^ fnv1a64(ggml_get_name(t));
  // uniform with the given standard deviation: half-width std * sqrt(3)
  const float scale = std * 1.7320508f / 2147483648.0f;
  float *d = t->data;
  for (int64_t i = 0; i < ggml_nelements(t); i++) {
    int64_t v = (int64_t)(splitmix64(&state) >> 32) - 2147483648LL; // [-2^31, 2^31)
    d[i] = (float)v * scale;
  }
}

int main(int argc, char **argv) {
  if (argc < 3) die("usage: gen_lora BASE.gguf OUTPUT.gguf [SEED] [RANK] [STD]");
  const uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 7;
  const int64_t rank = argc > 4 ? strtoll(argv[4], NULL, 10) : 4;
  const float std = argc > 5 ? strtof(argv[5], NULL) : 0.15f;
  if (rank <= 0 || rank > 4096) die("RANK must be in 1..4096");

  struct gguf_init_params bp = {/*no_alloc =*/true, /*ctx =*/NULL};
  struct ggml_context *meta = NULL;
  bp.ctx = &meta;
  struct gguf_context *base = gguf_init_from_file(argv[1], bp);
  if (!base) die("cannot read the base model");
  int64_t arch_id = gguf_find_key(base, "general.architecture");
  if (arch_id < 0 || gguf_get_kv_type(base, arch_id) != GGUF_TYPE_STRING) die("base has no general.architecture");

  // sizes first: one context holds every pair with its data
  size_t bytes = 0, n_pairs = 0;
  for (struct ggml_tensor *w = ggml_get_first_tensor(meta); w; w = ggml_get_next_tensor(meta, w)) {
    if (!is_target(ggml_get_name(w)) || ggml_n_dims(w) != 2) continue;
    bytes += (size_t)(w->ne[0] + w->ne[1]) * (size_t)rank * sizeof(float);
    n_pairs++;
  }
  if (n_pairs == 0) die("no attention or feed-forward matrices in the base model");
  struct ggml_init_params ip = {bytes + 2 * n_pairs * ggml_tensor_overhead() + 1024, NULL, false};
  struct ggml_context *ctx = ggml_init(ip);
  if (!ctx) die("ggml_init failed");

  struct gguf_context *out = gguf_init_empty();
  gguf_set_val_str(out, "general.type", "adapter");
  gguf_set_val_str(out, "general.architecture", gguf_get_val_str(base, arch_id));
  gguf_set_val_str(out, "general.name", "llamacppex-test-lora");
  gguf_set_val_str(out, "adapter.type", "lora");
  gguf_set_val_f32(out, "adapter.lora.alpha", (float)rank);

  char name[GGML_MAX_NAME];
  for (struct ggml_tensor *w = ggml_get_first_tensor(meta); w; w = ggml_get_next_tensor(meta, w)) {
    if (!is_target(ggml_get_name(w)) || ggml_n_dims(w) != 2) continue;
    struct ggml_tensor *a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], rank);
    struct ggml_tensor *b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, rank, w->ne[1]);
    if ((size_t)snprintf(name, sizeof name, "%s.lora_a", ggml_get_name(w)) >= sizeof name) die("name too long");
    ggml_set_name(a, name);
    snprintf(name, sizeof name, "%s.lora_b", ggml_get_name(w));
    ggml_set_name(b, name);
    fill(a, seed, std);
    fill(b, seed, std);
    gguf_add_tensor(out, a);
    gguf_add_tensor(out, b);
  }
  if (!gguf_write_to_file(out, argv[2], /*only_meta =*/false)) die("writing the adapter failed");
  fprintf(stderr, "gen_lora: wrote %zu pairs (rank %lld) to %s\n", n_pairs, (long long)rank, argv[2]);
  gguf_free(out);
  ggml_free(ctx);
  gguf_free(base);
  ggml_free(meta);
  return 0;
}
