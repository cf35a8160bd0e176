// gen_model.c - deterministic synthetic LLaMA-architecture benchmark model.
//
// Writes a ~134M-parameter llama model (n_embd 768, 12 layers, 12 heads,
// n_ff 2048, ctx 2048) with random weights drawn from a fixed-seed PRNG and
// the 32,000-token LLaMA SentencePiece vocabulary copied from llama.cpp's
// models/ggml-vocab-llama-spm.gguf, first as F16 (norms F32), then quantizes
// it to Q8_0 with llama_model_quantize and deletes the intermediate file.
//
//   gen_model OUTPUT.gguf [SEED]
//
// The vocabulary file is taken from $GEN_MODEL_VOCAB, else from the path
// compiled in as GEN_MODEL_DEFAULT_VOCAB (bench/gen_model.sh sets it).
//
// Determinism: weights come from splitmix64 seeded per tensor from
// (SEED, tensor name); each weight is the sum of the four 16-bit lanes of one
// 64-bit draw (Irwin-Hall, n=4), centred and scaled to std 0.02 with integer
// arithmetic plus one float multiply, so the bytes do not depend on libm.
// Q8_0 quantization is row-wise and deterministic, so the same seed gives a
// byte-identical file.

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GEN_MODEL_DEFAULT_VOCAB
#define GEN_MODEL_DEFAULT_VOCAB "models/ggml-vocab-llama-spm.gguf"
#endif

#define MODEL_NAME     "llamacppex-synthetic-130m"
#define N_EMBD         768
#define N_LAYER        12
#define N_HEAD         12
#define N_HEAD_KV      12
#define N_FF           2048
#define N_CTX_TRAIN    2048
#define ROPE_FREQ_BASE 10000.0f
#define RMS_EPS        1e-5f
#define N_VOCAB        32000
#define WEIGHT_STD     0.02
#define DEFAULT_SEED   42ULL
#define MAX_TENSORS    (3 + 9 * N_LAYER)

static void die(const char * msg) {
    fprintf(stderr, "gen_model: error: %s\n", msg);
    exit(1);
}

// ---------------------------------------------------------------- PRNG

static uint64_t splitmix64(uint64_t * state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char * s) {
    uint64_t h = 0xCBF29CE484222325ULL;
    for (; *s; s++) {
        h ^= (uint8_t) *s;
        h *= 0x100000001B3ULL;
    }
    return h;
}

// approximately N(0, WEIGHT_STD): Irwin-Hall sum of four 16-bit uniforms
static float weight_scale;

static float next_weight(uint64_t * state) {
    const uint64_t x = splitmix64(state);
    const int32_t s = (int32_t) (x & 0xFFFF) + (int32_t) ((x >> 16) & 0xFFFF) +
                      (int32_t) ((x >> 32) & 0xFFFF) + (int32_t) ((x >> 48) & 0xFFFF);
    // mean of the sum is 4 * 32767.5 = 131070; work in half units to stay integral
    return (float) (2 * s - 262140) * weight_scale;
}

// ---------------------------------------------------------------- vocab copy

static size_t gguf_type_size(enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8:   case GGUF_TYPE_INT8:  case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16:  case GGUF_TYPE_INT16:                      return 2;
        case GGUF_TYPE_UINT32:  case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64:  case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

// copy every tokenizer.* KV pair of src into dst; returns the token count
static size_t copy_tokenizer_kv(struct gguf_context * dst, const struct gguf_context * src) {
    size_t n_tokens = 0;
    const int64_t n_kv = gguf_get_n_kv(src);
    for (int64_t i = 0; i < n_kv; i++) {
        const char * key = gguf_get_key(src, i);
        if (strncmp(key, "tokenizer.", 10) != 0) {
            continue;
        }
        const enum gguf_type t = gguf_get_kv_type(src, i);
        switch (t) {
            case GGUF_TYPE_UINT8:   gguf_set_val_u8  (dst, key, gguf_get_val_u8  (src, i)); break;
            case GGUF_TYPE_INT8:    gguf_set_val_i8  (dst, key, gguf_get_val_i8  (src, i)); break;
            case GGUF_TYPE_UINT16:  gguf_set_val_u16 (dst, key, gguf_get_val_u16 (src, i)); break;
            case GGUF_TYPE_INT16:   gguf_set_val_i16 (dst, key, gguf_get_val_i16 (src, i)); break;
            case GGUF_TYPE_UINT32:  gguf_set_val_u32 (dst, key, gguf_get_val_u32 (src, i)); break;
            case GGUF_TYPE_INT32:   gguf_set_val_i32 (dst, key, gguf_get_val_i32 (src, i)); break;
            case GGUF_TYPE_FLOAT32: gguf_set_val_f32 (dst, key, gguf_get_val_f32 (src, i)); break;
            case GGUF_TYPE_UINT64:  gguf_set_val_u64 (dst, key, gguf_get_val_u64 (src, i)); break;
            case GGUF_TYPE_INT64:   gguf_set_val_i64 (dst, key, gguf_get_val_i64 (src, i)); break;
            case GGUF_TYPE_FLOAT64: gguf_set_val_f64 (dst, key, gguf_get_val_f64 (src, i)); break;
            case GGUF_TYPE_BOOL:    gguf_set_val_bool(dst, key, gguf_get_val_bool(src, i)); break;
            case GGUF_TYPE_STRING:  gguf_set_val_str (dst, key, gguf_get_val_str (src, i)); break;
            case GGUF_TYPE_ARRAY: {
                const enum gguf_type at = gguf_get_arr_type(src, i);
                const size_t n = gguf_get_arr_n(src, i);
                if (at == GGUF_TYPE_STRING) {
                    const char ** strs = malloc((n ? n : 1) * sizeof(char *));
                    if (!strs) die("out of memory");
                    for (size_t j = 0; j < n; j++) {
                        strs[j] = gguf_get_arr_str(src, i, j);
                    }
                    gguf_set_arr_str(dst, key, strs, n);
                    free(strs);
                } else if (gguf_type_size(at) > 0) {
                    gguf_set_arr_data(dst, key, at, gguf_get_arr_data(src, i), n);
                } else {
                    fprintf(stderr, "gen_model: error: unsupported nested array in %s\n", key);
                    exit(1);
                }
                if (strcmp(key, "tokenizer.ggml.tokens") == 0) {
                    n_tokens = n;
                }
                break;
            }
            default:
                fprintf(stderr, "gen_model: error: unsupported KV type %d for %s\n", (int) t, key);
                exit(1);
        }
    }
    return n_tokens;
}

// ---------------------------------------------------------------- tensors

struct tensor_spec {
    struct ggml_tensor * t;
    bool is_norm; // 1-D F32 all ones
};

static struct tensor_spec specs[MAX_TENSORS];
static int n_specs = 0;

static void add_tensor(struct ggml_context * ctx, struct gguf_context * gctx, const char * name,
                       int64_t ne0, int64_t ne1) {
    if (n_specs >= MAX_TENSORS) die("too many tensors");
    struct ggml_tensor * t = ne1 == 0 ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, ne0)
                                      : ggml_new_tensor_2d(ctx, GGML_TYPE_F16, ne0, ne1);
    ggml_set_name(t, name);
    gguf_add_tensor(gctx, t);
    specs[n_specs].t = t;
    specs[n_specs].is_norm = ne1 == 0;
    n_specs++;
}

static void write_tensor_data(FILE * f, const struct tensor_spec * s, uint64_t seed, size_t alignment) {
    const struct ggml_tensor * t = s->t;
    const int64_t ne0 = t->ne[0];
    const int64_t nrows = ggml_nelements(t) / ne0;
    float * row = malloc(ne0 * sizeof(float));
    ggml_fp16_t * row16 = malloc(ne0 * sizeof(ggml_fp16_t));
    if (!row || !row16) die("out of memory");

    uint64_t state = seed ^ fnv1a64(ggml_get_name(t));
    (void) splitmix64(&state);

    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t j = 0; j < ne0; j++) {
            row[j] = s->is_norm ? 1.0f : next_weight(&state);
        }
        if (t->type == GGML_TYPE_F32) {
            if (fwrite(row, sizeof(float), ne0, f) != (size_t) ne0) die("write failed");
        } else {
            ggml_fp32_to_fp16_row(row, row16, ne0);
            if (fwrite(row16, sizeof(ggml_fp16_t), ne0, f) != (size_t) ne0) die("write failed");
        }
    }
    const size_t nbytes = ggml_nbytes(t);
    static const char zeros[64] = {0};
    size_t pad = GGML_PAD(nbytes, alignment) - nbytes;
    while (pad > 0) {
        const size_t k = pad < sizeof(zeros) ? pad : sizeof(zeros);
        if (fwrite(zeros, 1, k, f) != k) die("write failed");
        pad -= k;
    }
    free(row);
    free(row16);
}

// ---------------------------------------------------------------- logging

static void quiet_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

// ---------------------------------------------------------------- main

int main(int argc, char ** argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s OUTPUT.gguf [SEED]\n", argv[0]);
        return 2;
    }
    const char * out_path = argv[1];
    uint64_t seed = DEFAULT_SEED;
    if (argc == 3) {
        char * end = NULL;
        seed = strtoull(argv[2], &end, 0);
        if (!end || *end != '\0' || argv[2][0] == '\0' || argv[2][0] == '-') die("SEED must be a non-negative integer");
    }
    const char * vocab_path = getenv("GEN_MODEL_VOCAB");
    if (!vocab_path || !*vocab_path) vocab_path = GEN_MODEL_DEFAULT_VOCAB;

    weight_scale = (float) (WEIGHT_STD / (2.0 * sqrt((65536.0 * 65536.0 - 1.0) / 3.0)));

    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    // vocabulary source (metadata only)
    struct gguf_init_params vparams = { /*no_alloc =*/ true, /*ctx =*/ NULL };
    struct gguf_context * vocab = gguf_init_from_file(vocab_path, vparams);
    if (!vocab) {
        fprintf(stderr, "gen_model: error: cannot read vocabulary %s\n", vocab_path);
        return 1;
    }

    struct gguf_context * gctx = gguf_init_empty();
    gguf_set_val_str(gctx, "general.architecture", "llama");
    gguf_set_val_str(gctx, "general.name", MODEL_NAME);
    gguf_set_val_u32(gctx, "general.file_type", LLAMA_FTYPE_MOSTLY_F16);
    gguf_set_val_u32(gctx, "llama.vocab_size", N_VOCAB);
    gguf_set_val_u32(gctx, "llama.context_length", N_CTX_TRAIN);
    gguf_set_val_u32(gctx, "llama.embedding_length", N_EMBD);
    gguf_set_val_u32(gctx, "llama.block_count", N_LAYER);
    gguf_set_val_u32(gctx, "llama.feed_forward_length", N_FF);
    gguf_set_val_u32(gctx, "llama.attention.head_count", N_HEAD);
    gguf_set_val_u32(gctx, "llama.attention.head_count_kv", N_HEAD_KV);
    gguf_set_val_u32(gctx, "llama.rope.dimension_count", N_EMBD / N_HEAD);
    gguf_set_val_f32(gctx, "llama.rope.freq_base", ROPE_FREQ_BASE);
    gguf_set_val_f32(gctx, "llama.attention.layer_norm_rms_epsilon", RMS_EPS);

    const size_t n_tokens = copy_tokenizer_kv(gctx, vocab);
    gguf_free(vocab);
    if (n_tokens != N_VOCAB) {
        fprintf(stderr, "gen_model: error: vocabulary has %zu tokens, expected %d\n", n_tokens, N_VOCAB);
        return 1;
    }

    // tensor metadata (no data allocated; data is streamed to the file)
    struct ggml_init_params iparams = {
        /*.mem_size   =*/ (MAX_TENSORS + 1) * ggml_tensor_overhead(),
        /*.mem_buffer =*/ NULL,
        /*.no_alloc   =*/ true,
    };
    struct ggml_context * ctx = ggml_init(iparams);
    if (!ctx) die("ggml_init failed");

    char name[64];
    add_tensor(ctx, gctx, "token_embd.weight", N_EMBD, N_VOCAB);
    add_tensor(ctx, gctx, "output_norm.weight", N_EMBD, 0);
    add_tensor(ctx, gctx, "output.weight", N_EMBD, N_VOCAB);
    for (int il = 0; il < N_LAYER; il++) {
#define LAYER_TENSOR(suffix, ne0, ne1) \
        snprintf(name, sizeof(name), "blk.%d." suffix ".weight", il); \
        add_tensor(ctx, gctx, name, ne0, ne1)
        LAYER_TENSOR("attn_norm",   N_EMBD, 0);
        LAYER_TENSOR("attn_q",      N_EMBD, N_EMBD);
        LAYER_TENSOR("attn_k",      N_EMBD, N_EMBD / N_HEAD * N_HEAD_KV);
        LAYER_TENSOR("attn_v",      N_EMBD, N_EMBD / N_HEAD * N_HEAD_KV);
        LAYER_TENSOR("attn_output", N_EMBD, N_EMBD);
        LAYER_TENSOR("ffn_norm",    N_EMBD, 0);
        LAYER_TENSOR("ffn_gate",    N_EMBD, N_FF);
        LAYER_TENSOR("ffn_down",    N_FF,   N_EMBD);
        LAYER_TENSOR("ffn_up",      N_EMBD, N_FF);
#undef LAYER_TENSOR
    }

    int64_t n_params = 0;
    for (int i = 0; i < n_specs; i++) {
        n_params += ggml_nelements(specs[i].t);
    }

    // write the F16 intermediate: metadata, then the tensor data in order
    const size_t tmp_len = strlen(out_path) + 16;
    char * tmp_path = malloc(tmp_len);
    if (!tmp_path) die("out of memory");
    snprintf(tmp_path, tmp_len, "%s.f16.tmp", out_path);

    if (!gguf_write_to_file(gctx, tmp_path, /*only_meta =*/ true)) die("writing the metadata failed");
    FILE * f = fopen(tmp_path, "ab");
    if (!f) die("cannot reopen the intermediate file");
    const size_t alignment = gguf_get_alignment(gctx);
    const size_t data_offset = gguf_get_meta_size(gctx);
    for (int i = 0; i < n_specs; i++) {
        const int64_t id = gguf_find_tensor(gctx, ggml_get_name(specs[i].t));
        const long pos = ftell(f);
        if (id < 0 || pos < 0 || (size_t) pos != data_offset + gguf_get_tensor_offset(gctx, id)) {
            fclose(f);
            remove(tmp_path);
            die("tensor data offset mismatch");
        }
        write_tensor_data(f, &specs[i], seed, alignment);
    }
    if (fclose(f) != 0) {
        remove(tmp_path);
        die("closing the intermediate file failed");
    }
    ggml_free(ctx);
    gguf_free(gctx);

    // quantize to Q8_0
    struct llama_model_quantize_params qparams = llama_model_quantize_default_params();
    qparams.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    qparams.nthread = 2;
    const uint32_t rc = llama_model_quantize(tmp_path, out_path, &qparams);
    remove(tmp_path);
    free(tmp_path);
    if (rc != 0) {
        remove(out_path);
        die("llama_model_quantize failed");
    }
    llama_backend_free();

    fprintf(stderr, "gen_model: wrote %s (seed %" PRIu64 ", %" PRId64 " parameters, %d tensors, Q8_0)\n",
            out_path, seed, n_params, n_specs);
    return 0;
}
