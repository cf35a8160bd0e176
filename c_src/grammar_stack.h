// llama.cpp's grammar code recurses as deep as its input: once per nested
// group and once per rule of a chain while parsing, and once per code point
// of a candidate token's text while sampling. These wrappers run it on a stack
// sized for the bounds we enforce (see grammar_stack.c for the numbers).
#ifndef LCX_GRAMMAR_STACK_H
#define LCX_GRAMMAR_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llama.h"

// Models with a token whose text is longer than this (in bytes) are refused at
// load: sampling with a grammar would recurse once per byte of it. Real
// vocabularies stay at or below 512 (runs of spaces in GPT-NeoX and others).
#define LCX_MAX_TOKEN_PIECE 8192

typedef enum {
  LCX_PIECES_OK,
  LCX_PIECE_TOO_LONG,   // longer than LCX_MAX_TOKEN_PIECE
  LCX_PIECE_UNREADABLE, // llama_token_to_piece threw
} lcx_pieces_rc;

// Finds the longest token text of a vocabulary in bytes, as llama.cpp's grammar
// matcher sees it (special tokens rendered). Not OK: why[0..why_len) names the
// first offending token.
lcx_pieces_rc lcx_vocab_check_pieces(const struct llama_vocab *vocab, int32_t *longest, char *why, size_t why_len);

// llama_sampler_init_grammar on a stack sized for grammar_check.h's limits
// (check the text with lcx_grammar_check first). NULL on failure, with why
// llama.cpp refused it in why[0..why_len).
struct llama_sampler *lcx_grammar_sampler_init(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                               char *why, size_t why_len);

// llama_sampler_reset of a chain; a grammar stage parses its grammar again,
// so chains with one are reset on that same sized stack. False if it threw.
bool lcx_chain_reset(struct llama_sampler *chain);

// llama_sampler_sample for a chain of a model whose longest token text is
// `longest_piece` bytes: on the calling thread when its stack has room for a
// grammar stage's recursion, else on a thread with a stack that does. Failures
// are reported as lcx_sampler_sample's (*threw, lcx_last_exception()).
llama_token lcx_chain_sample(struct llama_sampler *chain, int32_t longest_piece, struct llama_context *ctx, int32_t idx,
                             bool *threw);

#endif
