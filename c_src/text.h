// The text of one generated sequence: token pieces appended as they come,
// always valid UTF-8 (a character cut between tokens waits for the rest; bytes
// that can never form one become U+FFFD), searched for stop strings in the new
// tail only, and handed out in chunks that never end inside a character and
// never hold what may be the start of a stop string. generate.c's loop and the
// batching server's per-sequence loop both use it.
#ifndef LCX_TEXT_H
#define LCX_TEXT_H

#include <erl_nif.h>
#include <stdbool.h>
#include <stddef.h>

#include "llama.h"

// Stop strings, owned copies.
typedef struct {
  ErlNifBinary *items;
  unsigned n;
  size_t max_len;
} lcx_stops;

#define LCX_MAX_STOPS 64

typedef enum {
  LCX_STOPS_OK,
  LCX_STOPS_BADARG, // not a list of at most LCX_MAX_STOPS non-empty UTF-8 binaries
  LCX_STOPS_NOMEM,
} lcx_stops_result;

// Stop strings must be valid UTF-8 (the text they are searched in is).
lcx_stops_result lcx_stops_read(ErlNifEnv *env, ERL_NIF_TERM list, lcx_stops *out);
void lcx_stops_free(lcx_stops *s);

typedef struct {
  char *data; // valid UTF-8
  size_t len, cap;
  size_t emitted;           // bytes of data already handed out
  unsigned char pending[4]; // the start of a character not yet complete
  size_t n_pending;
  const lcx_stops *stops; // not owned
  bool finished;          // nothing more comes: nothing is held back
  bool special;           // special tokens render as their text (a chat's tool-call markers)
} lcx_text;

typedef enum {
  LCX_TEXT_MORE,   // appended; generation goes on
  LCX_TEXT_STOP,   // a stop string appeared: the text now ends before it
  LCX_TEXT_NOMEM,  // an allocation failed
  LCX_TEXT_FAILED, // llama.cpp could not render the token
} lcx_text_status;

void lcx_text_init(lcx_text *t, const lcx_stops *stops);
void lcx_text_free(lcx_text *t);

// Appends the token's piece (as llama_token_to_piece renders it; special
// tokens as "" unless t->special is set).
lcx_text_status lcx_text_push(lcx_text *t, const struct llama_vocab *vocab, llama_token tok);

// Bytes that may be handed out now (after what was handed out already).
size_t lcx_text_ready(const lcx_text *t);
// Hands out the ready bytes: returns where they start, with their length in *len.
const char *lcx_text_take(lcx_text *t, size_t *len);

// Generation ended: an unfinished character becomes U+FFFD (which may complete
// a stop string: LCX_TEXT_STOP) and text held back for a possible stop string
// is released.
lcx_text_status lcx_text_finish(lcx_text *t);

#endif
