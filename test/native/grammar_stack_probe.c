// Measures the stack llama.cpp's grammar recursions use per level (the
// numbers in c_src/grammar_stack.c): runs each on a thread whose stack was
// filled with a pattern, at two depths, and finds the deepest byte written.
//
//   probe MODEL.gguf 0 DEPTH   nested groups, root ::= ((( "a" )))
//   probe MODEL.gguf 1 DEPTH   a left chain of DEPTH rules (left-recursion check)
//   probe MODEL.gguf 2 0       sampling with root ::= [x]*, whatever the vocabulary has
//
// For kind 2 build models with a long token (test/support/gguf.ex) and compare.
// Build like scripts/grammar_check_diff.sh: cc -I$LLAMA_SRC/include
// -I$LLAMA_SRC/ggml/include probe.c $LLAMA_LIBS $LLAMA_LDFLAGS.
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define STACK (1024u * 1024 * 1024)
static unsigned char *stack;

typedef struct {
  int kind, n;
  const struct llama_vocab *vocab;
} job;

static char *nested(int d) {
  char *g = malloc(2 * (size_t)d + 64), *p = g;
  p += sprintf(p, "root ::= ");
  for (int i = 0; i < d; i++)
    *p++ = '(';
  p += sprintf(p, "\"a\"");
  for (int i = 0; i < d; i++)
    *p++ = ')';
  *p = 0;
  return g;
}

static char *chain(int n) {
  char *g = malloc((size_t)n * 40 + 64), *p = g;
  p += sprintf(p, "root ::= r0\n");
  for (int i = 0; i < n; i++)
    p += sprintf(p, "r%d ::= r%d \"a\"\n", i, i + 1);
  sprintf(p, "r%d ::= \"a\"\n", n);
  return g;
}

static void *run(void *arg) {
  job *j = arg;
  if (j->kind < 2) {
    char *g = j->kind == 0 ? nested(j->n) : chain(j->n);
    struct llama_sampler *s = llama_sampler_init_grammar(j->vocab, g, "root");
    if (s) llama_sampler_free(s);
    free(g);
    return NULL;
  }
  struct llama_sampler *s = llama_sampler_init_grammar(j->vocab, "root ::= [x]*", "root");
  int nv = llama_vocab_n_tokens(j->vocab);
  llama_token_data *d = malloc(sizeof *d * (size_t)nv);
  for (int i = 0; i < nv; i++)
    d[i] = (llama_token_data){i, 0.0f, 0.0f};
  llama_token_data_array a = {d, (size_t)nv, -1, false};
  llama_sampler_apply(s, &a);
  llama_sampler_free(s);
  free(d);
  return NULL;
}

static size_t used(job *j) {
  memset(stack, 0xA5, STACK);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setstack(&at, stack, STACK);
  pthread_t t;
  pthread_create(&t, &at, run, j);
  pthread_join(t, NULL);
  size_t i = 0;
  while (i < STACK && stack[i] == 0xA5)
    i++;
  return STACK - i;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  mp.vocab_only = true;
  struct llama_model *m = llama_model_load_from_file(argv[1], mp);
  if (!m) return 1;
  stack = malloc(STACK);
  job j = {atoi(argv[2]), 10, llama_model_get_vocab(m)};
  size_t base = used(&j);
  j.n = atoi(argv[3]);
  size_t deep = used(&j);
  printf("kind %d depth %d: %zu bytes (%zu at depth 10)", j.kind, j.n, deep, base);
  if (j.n > 10) printf(", %.1f per level", (double)(deep - base) / (j.n - 10));
  printf("\n");
  return 0;
}
