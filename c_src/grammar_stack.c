// llama.cpp's grammar recursions and the stacks they run on.
//
// Stack per level, measured on the pinned llama.cpp (Release build, gcc,
// x86-64): each recursion was run on a thread whose stack had been filled
// with a pattern, at two depths, and the deepest byte written was found:
//   parse_alternates + parse_sequence, per nested group         448 bytes
//   llama_grammar_detect_left_recursion, per rule of a chain    128 bytes
//   llama_grammar_reject_candidates(_for_stack), per code point 400 bytes
// with under 12 KiB below the recursion (test/native/grammar_stack_probe.c;
// measure again after a llama.cpp upgrade). We count twice each, so another
// compiler's frames may be up to twice as large.
#include "grammar_stack.h"

#include <string.h>

#include "bigstack.h"
#include "grammar_check.h"
#include "lcx.h"

#define STACK_PER_GROUP 896
#define STACK_PER_RULE 256
#define STACK_PER_CODE_POINT 800
#define STACK_BASE ((size_t)64 << 10)

// Parsing (and the left-recursion check after it) at grammar_check.h's limits
// needs 64 KiB + 128 * 896 + 16384 * 256 bytes, 4.2 MiB. Parsing runs on a
// 16 MiB stack (address space: only the pages it touches are memory), so a
// grammar that got past the check with 3 times the limits would still fit.
#define PARSE_STACK ((size_t)16 << 20)
_Static_assert(PARSE_STACK >= 3 * (STACK_BASE + (size_t)LCX_GRAMMAR_MAX_NESTING * STACK_PER_GROUP +
                                   (size_t)LCX_GRAMMAR_MAX_RULES * STACK_PER_RULE),
               "the parse stack must hold three times the limits");
// Sampling recurses once per code point of the longest candidate, at most one
// per byte, plus one for a partial character carried over from the last token:
// 64 KiB + (8192 + 2) * 800 bytes, 6.3 MiB, for the longest token we load.
static size_t sample_stack(int32_t longest_piece) {
  return STACK_BASE + ((size_t)longest_piece + 2) * STACK_PER_CODE_POINT;
}
_Static_assert(STACK_BASE + ((size_t)LCX_MAX_TOKEN_PIECE + 2) * STACK_PER_CODE_POINT <= LCX_MAX_THREAD_STACK,
               "a thread can get the stack that sampling the longest token needs");

#define NO_THREAD "could not start a thread with a stack large enough for the grammar"

lcx_pieces_rc lcx_vocab_check_pieces(const struct llama_vocab *vocab, int32_t *longest, char *why, size_t why_len) {
  char buf[LCX_MAX_TOKEN_PIECE];
  int32_t n = llama_vocab_n_tokens(vocab), best = 0;
  for (llama_token t = 0; t < n; t++) {
    bool threw;
    // special: true is how llama.cpp caches the pieces its grammar matcher reads
    int32_t len = lcx_token_to_piece(vocab, t, buf, sizeof buf, 0, true, &threw);
    if (threw) {
      snprintf(why, why_len, "token %d's text cannot be read: %s", t, lcx_last_exception());
      return LCX_PIECE_UNREADABLE;
    }
    if (len < 0) {
      snprintf(why, why_len, "token %d's text is longer than %d bytes (%d)", t, LCX_MAX_TOKEN_PIECE, -len);
      return LCX_PIECE_TOO_LONG;
    }
    if (len > best) best = len;
  }
  *longest = best;
  return LCX_PIECES_OK;
}

static bool has_grammar(struct llama_sampler *chain) {
  for (int32_t i = 0, n = llama_sampler_chain_n(chain); i < n; i++)
    if (strcmp(llama_sampler_name(llama_sampler_chain_get(chain, i)), "grammar") == 0) return true;
  return false;
}

// ---- init --------------------------------------------------------------------------

typedef struct {
  const struct llama_vocab *vocab;
  const char *grammar, *root;
  struct llama_sampler *result;
  char why[512];
} init_job;

static void run_init(void *arg) {
  init_job *j = arg;
  lcx_log_capture_begin(); // per thread: llama.cpp's error lines land on the thread that parses
  lcx_clear_exception();
  j->result = lcx_sampler_init_grammar(j->vocab, j->grammar, j->root);
  const char *logged = lcx_log_capture_end();
  if (!j->result) snprintf(j->why, sizeof j->why, "%s", logged[0] ? logged : lcx_last_exception());
}

struct llama_sampler *lcx_grammar_sampler_init(const struct llama_vocab *vocab, const char *grammar, const char *root,
                                               char *why, size_t why_len) {
  init_job j = {.vocab = vocab, .grammar = grammar, .root = root};
  if (!lcx_run_with_stack(PARSE_STACK, run_init, &j)) snprintf(j.why, sizeof j.why, "%s", NO_THREAD);
  if (!j.result) snprintf(why, why_len, "%s", j.why);
  return j.result;
}

// ---- reset and sample --------------------------------------------------------------
// Failures are reported on the caller's thread as lcx_last_exception().

typedef struct {
  struct llama_sampler *chain;
  struct llama_context *ctx;
  int32_t idx;
  llama_token token;
  bool threw;
  char why[512];
} chain_job;

static void keep_why(chain_job *j) {
  if (j->threw) snprintf(j->why, sizeof j->why, "%s", lcx_last_exception());
}

static void run_reset(void *arg) {
  chain_job *j = arg;
  j->threw = !lcx_sampler_reset(j->chain);
  keep_why(j);
}

static void run_sample(void *arg) {
  chain_job *j = arg;
  j->token = lcx_sampler_sample(j->chain, j->ctx, j->idx, &j->threw);
  keep_why(j);
}

static void run_job(size_t stack, void (*fn)(void *), chain_job *j) {
  if (!lcx_run_with_stack(stack, fn, j)) {
    j->threw = true;
    snprintf(j->why, sizeof j->why, "%s", NO_THREAD);
  }
  if (j->threw) lcx_set_exception(j->why);
}

bool lcx_chain_reset(struct llama_sampler *chain) {
  if (!has_grammar(chain)) return lcx_sampler_reset(chain);
  chain_job j = {.chain = chain};
  run_job(PARSE_STACK, run_reset, &j);
  return !j.threw;
}

llama_token lcx_chain_sample(struct llama_sampler *chain, int32_t longest_piece, struct llama_context *ctx, int32_t idx,
                             bool *threw) {
  if (!has_grammar(chain)) return lcx_sampler_sample(chain, ctx, idx, threw);
  chain_job j = {.chain = chain, .ctx = ctx, .idx = idx, .token = -1};
  run_job(sample_stack(longest_piece), run_sample, &j);
  *threw = j.threw;
  return j.token;
}
