// Differential test of c_src/grammar_check.c against llama.cpp's own grammar
// parser (llama_grammar_parser, from the pinned source), on random grammar
// text built from the fragments that matter to the lexer: comments ending at
// \r or \n, escapes, strings, classes, UTF-8 lead bytes, tokens, groups and
// repetitions. For each text:
//   * the check calls it a syntax error  =>  llama.cpp's parser must fail too
//     (else the check would stop early and leave the real parse unbounded);
//   * both accept it  =>  the check's rule and element counts must be at least
//     llama.cpp's (they are upper bounds; they are equal without name clashes);
//   * the check finds an undefined rule  =>  so does llama.cpp (or it stops
//     earlier at a token name, which needs a vocabulary);
//   * the check accepts, llama.cpp fails  =>  only for reasons the check leaves
//     to llama.cpp (token names without a vocabulary, references to names
//     that may be generated ones, <rule>_<number>).
// Texts with S{m,n}, n < m, are not given to llama.cpp, which would build
// rules until memory runs out (the check refuses them).
// Built and run by scripts/grammar_check_diff.sh. Exit status 0 when all agree.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "llama-grammar.h"

extern "C" {
#include "grammar_check.h"
}

static const char *fragments[] = {
    "root",
    "a",
    "b",
    "x-1",
    " ::= ",
    "::=",
    "::",
    ":",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "#c",
    "# x\r",
    "#",
    "|",
    "(",
    ")",
    "\"",
    "\"ab\"",
    "[",
    "]",
    "^",
    "-",
    "[a-z]",
    "[^\"]",
    "\\",
    "\\x4",
    "\\x41",
    "\\u00e9",
    "\\U0001F600",
    "\\n",
    "\\q",
    "\\\"",
    "\\]",
    "*",
    "+",
    "?",
    "{",
    "}",
    ",",
    "{2}",
    "{0,3}",
    "{2,}",
    "{3,1}",
    "{2001}",
    "{0,2001}",
    "0",
    "7",
    ".",
    "<",
    ">",
    "!",
    "<[12]>",
    "<[99999999999999999999999]>",
    "<tok>",
    "é",
    "\xF0",
    "\xC3",
    "\x80",
    "\xE2\x82",
    "((",
    "))",
    "\"a\"*",
    "a{1000}",
    "(\"a\"{40}){40}",
};

static std::string random_text(std::mt19937_64 &rng) {
  std::string g;
  int n = (int)(rng() % 40);
  if (rng() % 2) g = "root ::= ";
  for (int i = 0; i < n; i++)
    g += fragments[rng() % (sizeof fragments / sizeof *fragments)];
  return g;
}

// A well-formed grammar, then perturbed by a few fragment insertions.
static std::string structured(std::mt19937_64 &rng) {
  const char *items[] = {"\"yes\"", "[0-9]", "a", "b", ".", "<[3]>", "\"\\\"\"", "[\\]\\-]"};
  const char *ops[] = {"", "", "*", "+", "?", "{2}", "{1,3}", "{0,}"};
  std::string g;
  for (const char *rule : {"root", "a", "b"}) {
    g += rule;
    g += " ::= ";
    int n = 1 + (int)(rng() % 6), depth = 0;
    for (int i = 0; i < n; i++) {
      if (rng() % 4 == 0) {
        g += "(";
        depth++;
      }
      g += std::string(items[rng() % 8]) + ops[rng() % 8] + (rng() % 5 == 0 ? " | " : " ");
      if (depth && rng() % 3 == 0) {
        g += ")";
        depth--;
      }
    }
    while (depth--)
      g += ")";
    g += rng() % 3 ? "\n" : rng() % 2 ? "\r\n" : " # note\r";
  }
  for (int k = (int)(rng() % 3); k > 0; k--)
    g.insert(rng() % (g.size() + 1), fragments[rng() % (sizeof fragments / sizeof *fragments)]);
  return g;
}

int main(int argc, char **argv) {
  long iterations = argc > 1 ? atol(argv[1]) : 200000;
  std::mt19937_64 rng(argc > 2 ? strtoull(argv[2], nullptr, 10) : 42);
  // llama.cpp prints parse errors to stderr: collect them in a file
  FILE *err = tmpfile();
  int saved = dup(2);
  dup2(fileno(err), 2);
  long counts[4] = {0}, bad = 0, inexact = 0;
  for (long it = 0; it < iterations; it++) {
    std::string g = it % 2 ? random_text(rng) : structured(rng);
    lcx_grammar_stats st;
    lcx_grammar_rc rc = lcx_grammar_check(g.c_str(), &st);
    // llama.cpp turns S{m,n} with n < m into ~2^64 rules: it never returns
    if (rc == LCX_GRAMMAR_SYNTAX && strstr(st.message, "maximum is below")) {
      counts[3]++;
      continue;
    }
    if (ftruncate(2, 0) != 0 || lseek(2, 0, SEEK_SET) != 0) return 2;
    llama_grammar_parser parser;
    bool ok = parser.parse(g.c_str()) && !parser.rules.empty();
    char why[512] = "";
    ssize_t got = pread(2, why, sizeof why - 1, 0);
    why[got > 0 ? got : 0] = '\0';
    const char *problem = nullptr;
    if ((rc == LCX_GRAMMAR_SYNTAX || rc == LCX_GRAMMAR_UNDEFINED_RULE) && ok)
      problem = "the check refuses what llama.cpp parses";
    if (rc == LCX_GRAMMAR_UNDEFINED_RULE && !strstr(why, "Undefined rule") && !strstr(why, "no vocab"))
      problem = "the check finds an undefined rule, llama.cpp another error";
    if (rc == LCX_GRAMMAR_EMPTY && ok) problem = "the check calls empty what llama.cpp parses";
    if (rc == LCX_GRAMMAR_OK && !ok && !strstr(why, "no vocab") &&
        !(strstr(why, "Undefined rule") && strchr(g.c_str(), '_')))
      problem = "llama.cpp refuses what the check accepts";
    if (rc == LCX_GRAMMAR_OK && ok) {
      uint64_t elements = 0;
      for (const auto &r : parser.rules)
        elements += r.size();
      if (st.rules < parser.symbol_ids.size() || st.elements < elements) problem = "the check under-counts";
      if (st.rules != parser.symbol_ids.size() || st.elements != elements) inexact++;
    }
    counts[rc == LCX_GRAMMAR_OK ? (ok ? 0 : 1) : (ok ? 2 : 3)]++;
    if (problem && bad++ < 20) {
      dprintf(saved, "MISMATCH: %s\n  check: rc %d rules %llu elements %llu: %s\n  llama: %s\n  text: ", problem,
              (int)rc, (unsigned long long)st.rules, (unsigned long long)st.elements, st.message, ok ? "ok" : why);
      for (unsigned char c : g)
        dprintf(saved, c >= 32 && c < 127 && c != '\\' ? "%c" : "\\x%02x", c);
      dprintf(saved, "\n");
    }
  }
  dprintf(saved,
          "%ld texts: both accept %ld, check accepts/llama.cpp refuses %ld, check refuses/llama.cpp accepts %ld, "
          "both refuse %ld; counts differ (rules defined twice) %ld; %ld mismatches\n",
          iterations, counts[0], counts[1], counts[2], counts[3], inexact, bad);
  return bad ? 1 : 0;
}
