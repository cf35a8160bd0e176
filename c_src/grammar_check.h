// A pre-check of GBNF grammar text, read with exactly the lexical and
// syntactic rules of llama.cpp's grammar parser (src/llama-grammar.cpp of the
// pinned llama.cpp), which it refuses to call on grammars that would exhaust
// its stack or memory. No llama.cpp dependency: plain C over the text.
#ifndef LCX_GRAMMAR_CHECK_H
#define LCX_GRAMMAR_CHECK_H

#include <stddef.h>
#include <stdint.h>

// Groups nested deeper than this are refused: llama.cpp's parser recurses
// once per group.
#define LCX_GRAMMAR_MAX_NESTING 128
// Rules: named ones plus those llama.cpp generates for groups and repetitions.
// Its left-recursion check recurses once per rule along a chain.
#define LCX_GRAMMAR_MAX_RULES 16384
// Grammar elements (characters, ranges, references, alternatives) over all
// rules once repetitions are expanded; llama.cpp copies them a few times.
#define LCX_GRAMMAR_MAX_ELEMENTS (1u << 20)

typedef enum {
  LCX_GRAMMAR_OK,
  LCX_GRAMMAR_EMPTY,          // no rule at all (empty, blank or only comments)
  LCX_GRAMMAR_SYNTAX,         // llama.cpp's parser stops with an error here
  LCX_GRAMMAR_UNDEFINED_RULE, // a rule is used but not defined
  LCX_GRAMMAR_TOO_DEEP,       // more than LCX_GRAMMAR_MAX_NESTING nested groups
  LCX_GRAMMAR_TOO_MANY_RULES, // more than LCX_GRAMMAR_MAX_RULES rules
  LCX_GRAMMAR_TOO_LARGE,      // more than LCX_GRAMMAR_MAX_ELEMENTS elements
  LCX_GRAMMAR_NO_MEMORY,
} lcx_grammar_rc;

typedef struct {
  unsigned nesting; // deepest group nesting seen
  uint64_t rules;   // rules llama.cpp creates (an upper bound)
  uint64_t elements;
  char message[200]; // what was wrong and where (line:column), for non-OK results
} lcx_grammar_stats;

// Scans the NUL-terminated grammar text. Scanning stops at the first problem.
// Left to llama.cpp: token names (they need the vocabulary), left recursion,
// the root rule, and references to names of the form <rule>_<number>.
lcx_grammar_rc lcx_grammar_check(const char *text, lcx_grammar_stats *out);

#endif
