// The GBNF pre-check: a port of llama.cpp's grammar parser (llama-grammar.cpp:
// parse_space, parse_name, parse_int, parse_char, parse_token, parse_sequence,
// parse_alternates, parse_rule, parse) that builds nothing and counts what the
// real parser would build: group nesting (its recursion depth), rules (named,
// plus one per group and one per optional repetition step), and elements.
//
// It follows llama.cpp's reading exactly, because a difference is a way past
// the limits: comments end at '\r' or '\n', escapes are \xHH \uHHHH \UHHHHHHHH
// \t \r \n \\ \" \[ \] \-, a character that is not an escape takes as many
// bytes as its UTF-8 lead byte says (stopping at NUL), so an invalid lead byte
// can swallow a closing quote as it does in llama.cpp. Where llama.cpp would
// throw, the scan stops with LCX_GRAMMAR_SYNTAX: the real parser is then never
// called, so nothing past that point needs to be bounded (and the error names
// a line and column). Undefined rules are found here too; checks that need
// the vocabulary or the whole grammar (token names, left recursion, the root
// rule) are left to llama.cpp, which fails safely on them.
// scripts/grammar_check_diff.sh compares this port with the real parser.
#include "grammar_check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// llama-grammar.cpp's MAX_REPETITION_THRESHOLD
#define REPETITION_THRESHOLD 2000
#define NO_MAX UINT64_MAX

// ---- the set of rule names (llama.cpp's symbol_ids, for named rules) -------------

typedef struct {
  const char *s;
  size_t len;
  bool defined;          // has a rule (name ::= ...)
  const char *first_use; // where it is first referenced, if it is
} name;

typedef struct {
  name *slots;
  size_t cap, n;
} name_set;

static uint64_t hash(const char *s, size_t len) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 0x100000001B3ULL;
  return h;
}

static bool set_grow(name_set *set) {
  size_t cap = set->cap ? set->cap * 2 : 64;
  name *slots = calloc(cap, sizeof *slots);
  if (!slots) return false;
  for (size_t i = 0; i < set->cap; i++) {
    if (!set->slots[i].s) continue;
    size_t j = hash(set->slots[i].s, set->slots[i].len) & (cap - 1);
    while (slots[j].s)
      j = (j + 1) & (cap - 1);
    slots[j] = set->slots[i];
  }
  free(set->slots);
  set->slots = slots;
  set->cap = cap;
  return true;
}

// Finds or adds a name; *added tells whether it was new. NULL when out of memory.
static name *set_add(name_set *set, const char *s, size_t len, bool *added) {
  if ((set->n + 1) * 2 > set->cap && !set_grow(set)) return NULL;
  size_t j = hash(s, len) & (set->cap - 1);
  for (; set->slots[j].s; j = (j + 1) & (set->cap - 1)) {
    if (set->slots[j].len == len && memcmp(set->slots[j].s, s, len) == 0) {
      *added = false;
      return &set->slots[j];
    }
  }
  set->slots[j] = (name){.s = s, .len = len};
  set->n++;
  *added = true;
  return &set->slots[j];
}

// ---- scanner state and errors -------------------------------------------------------

typedef struct {
  const char *text;
  name_set names;
  unsigned depth;
  lcx_grammar_stats *st;
  lcx_grammar_rc rc; // the first problem, if any
} scan;

// Records a problem at `at` and returns NULL (every step returns its new
// position, or NULL once the scan has stopped).
static const char *stop(scan *s, lcx_grammar_rc rc, const char *at, const char *what) {
  unsigned line = 1, col = 1;
  for (const char *p = s->text; p < at && *p; p++) {
    if (*p == '\n' || (*p == '\r' && p[1] != '\n')) { // llama.cpp ends lines at \n, \r\n and \r
      line++;
      col = 1;
    } else if (*p != '\r') {
      col++;
    }
  }
  s->rc = rc;
  snprintf(s->st->message, sizeof s->st->message, "%s (at line %u, column %u)", what, line, col);
  return NULL;
}

static const char *syntax(scan *s, const char *at, const char *what) { return stop(s, LCX_GRAMMAR_SYNTAX, at, what); }

static bool add_rules(scan *s, const char *at, uint64_t n) {
  s->st->rules += n;
  if (s->st->rules <= LCX_GRAMMAR_MAX_RULES) return true;
  stop(s, LCX_GRAMMAR_TOO_MANY_RULES, at,
       "too many rules (more than 16384, counting those generated for groups and repetitions)");
  return false;
}

// Elements are counted as they are emitted, rules still being built included.
static bool check_elements(scan *s, const char *at) {
  if (s->st->elements <= LCX_GRAMMAR_MAX_ELEMENTS) return true;
  stop(s, LCX_GRAMMAR_TOO_LARGE, at, "the grammar expands to more than 1048576 elements");
  return false;
}

// A rule name, where it is defined (name ::= ...) or used.
static bool add_name(scan *s, const char *p, size_t len, bool defining) {
  bool added;
  name *n = set_add(&s->names, p, len, &added);
  if (!n) {
    stop(s, LCX_GRAMMAR_NO_MEMORY, p, "out of memory");
    return false;
  }
  if (defining)
    n->defined = true;
  else if (!n->first_use)
    n->first_use = p;
  return !added || add_rules(s, p, 1);
}

// llama.cpp names the rules it generates <rule>_<number>: a reference to such
// a name may find one of them, so only llama.cpp can tell if it is undefined.
static bool may_be_generated(const name *n) {
  size_t i = n->len;
  while (i > 0 && n->s[i - 1] >= '0' && n->s[i - 1] <= '9')
    i--;
  return i < n->len && i > 0 && n->s[i - 1] == '_';
}

// The first reference to a rule that no rule defines, as llama.cpp's parse()
// finds after parsing.
static void check_undefined(scan *s) {
  const name *first = NULL;
  for (size_t i = 0; i < s->names.cap; i++) {
    const name *n = &s->names.slots[i];
    if (n->s && !n->defined && !may_be_generated(n) && (!first || n->first_use < first->first_use)) first = n;
  }
  if (!first) return;
  char what[120];
  snprintf(what, sizeof what, "undefined rule '%.*s'", first->len > 64 ? 64 : (int)first->len, first->s);
  stop(s, LCX_GRAMMAR_UNDEFINED_RULE, first->first_use, what);
}

// ---- lexical rules (llama-grammar.cpp) ------------------------------------------------

static bool is_digit_char(char c) { return '0' <= c && c <= '9'; }

static bool is_word_char(char c) {
  return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || c == '-' || is_digit_char(c);
}

static const char *parse_space(const char *p, bool newline_ok) {
  while (*p == ' ' || *p == '\t' || *p == '#' || (newline_ok && (*p == '\r' || *p == '\n'))) {
    if (*p == '#') {
      while (*p && *p != '\r' && *p != '\n')
        p++;
    } else {
      p++;
    }
  }
  return p;
}

static const char *parse_name(scan *s, const char *p) {
  const char *q = p;
  while (is_word_char(*q))
    q++;
  return q == p ? syntax(s, p, "expecting a name") : q;
}

// Digits as std::stoull/std::stoul read them: out of range is an error.
static const char *parse_int(scan *s, const char *p, uint64_t *value) {
  const char *q = p;
  uint64_t v = 0;
  bool overflow = false;
  for (; is_digit_char(*q); q++) {
    unsigned d = (unsigned)(*q - '0');
    if (v > (UINT64_MAX - d) / 10) overflow = true;
    v = v * 10 + d;
  }
  if (q == p) return syntax(s, p, "expecting an integer");
  if (overflow) return syntax(s, p, "integer out of range");
  *value = v;
  return q;
}

static const char *parse_hex(scan *s, const char *p, int size) {
  const char *q = p, *end = p + size;
  for (; q < end && *q; q++) {
    char c = *q;
    if (!(('a' <= c && c <= 'f') || ('A' <= c && c <= 'F') || is_digit_char(c))) break;
  }
  return q != end ? syntax(s, p, "expecting hex digits") : q;
}

// One character of a literal or a class: an escape, or one UTF-8 sequence
// whose length comes from its lead byte alone (llama.cpp's decode_utf8).
static const char *parse_char(scan *s, const char *p) {
  static const int lookup[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  if (*p == '\\') {
    switch (p[1]) {
    case 'x':
      return parse_hex(s, p + 2, 2);
    case 'u':
      return parse_hex(s, p + 2, 4);
    case 'U':
      return parse_hex(s, p + 2, 8);
    case 't':
    case 'r':
    case 'n':
    case '\\':
    case '"':
    case '[':
    case ']':
    case '-':
      return p + 2;
    default:
      return syntax(s, p, "unknown escape");
    }
  }
  if (!*p) return syntax(s, p, "unexpected end of input");
  const char *end = p + lookup[(unsigned char)*p >> 4];
  for (p++; p < end && *p; p++)
    ;
  return p;
}

// <[id]>, <name> (the name must be one token: llama.cpp checks that)
static const char *parse_token(scan *s, const char *p) {
  if (*p != '<') return syntax(s, p, "expecting '<'");
  p++;
  if (*p == '[') {
    uint64_t id;
    p = parse_int(s, p + 1, &id);
    if (!p) return NULL;
    if (*p != ']') return syntax(s, p, "expecting ']'");
    if (p[1] != '>') return syntax(s, p + 1, "expecting '>'");
    return p + 2;
  }
  while (*p && *p != '>')
    p++;
  return *p == '>' ? p + 1 : syntax(s, p, "expecting '>'");
}

// ---- syntax (llama-grammar.cpp's parser, counting instead of building) ------------

static const char *parse_alternates(scan *s, const char *p, bool nested);

// The rewrite of S{min,max} in handle_repetitions: S repeated min times, then
// max - min optional rules (one rule for no maximum). *size is the element
// count of the rule being built, whose last item starts at `last`.
static bool repeat(scan *s, const char *at, uint64_t *size, uint64_t last, uint64_t *n_prev, uint64_t min,
                   uint64_t max) {
  bool no_max = max == NO_MAX;
  if (last == *size) {
    syntax(s, at, "expecting an item before */+/?/{");
    return false;
  }
  uint64_t len = *size - last;
  uint64_t total = !no_max && max > 0 ? max : min > 0 ? min : 1;
  if (*n_prev * total > REPETITION_THRESHOLD) {
    syntax(s, at, "the number of rules repeated times the repetition count exceeds 2000");
    return false;
  }
  if (!no_max && max < min) { // llama.cpp would generate max - min (wrapped) rules
    syntax(s, at, "a repetition's maximum is below its minimum");
    return false;
  }
  uint64_t n_opt = no_max ? 1 : max - min;
  uint64_t new_size = (min == 0 ? last : *size + (min - 1) * len) + (n_opt > 0 ? 1 : 0);
  s->st->elements = s->st->elements - *size + new_size;
  *size = new_size;
  if (!add_rules(s, at, n_opt)) return false;
  // each optional rule: S, a reference to the next one (not in the last), ALT, END
  s->st->elements += n_opt * (len + 2) + (no_max ? n_opt : n_opt > 0 ? n_opt - 1 : 0);
  *n_prev *= total;
  return check_elements(s, at);
}

static void emit(scan *s, uint64_t *size) {
  (*size)++;
  s->st->elements++;
}

static const char *parse_sequence(scan *s, const char *p, uint64_t *size, bool nested) {
  uint64_t last = *size, n_prev = 1;
  while (*p) {
    const char *at = p;
    if (*p == '"') { // literal string
      p++;
      last = *size;
      n_prev = 1;
      while (*p != '"') {
        if (!*p) return syntax(s, p, "unexpected end of input");
        if (!(p = parse_char(s, p))) return NULL;
        emit(s, size);
      }
      p = parse_space(p + 1, nested);
    } else if (*p == '[') { // character class
      p++;
      if (*p == '^') p++;
      last = *size;
      n_prev = 1;
      while (*p != ']') {
        if (!*p) return syntax(s, p, "unexpected end of input");
        if (!(p = parse_char(s, p))) return NULL;
        emit(s, size);
        if (p[0] == '-' && p[1] != ']') {
          if (!p[1]) return syntax(s, p + 1, "unexpected end of input");
          if (!(p = parse_char(s, p + 1))) return NULL;
          emit(s, size);
        }
      }
      p = parse_space(p + 1, nested);
    } else if (*p == '<' || *p == '!') { // token
      if (*p == '!') p++;
      if (!(p = parse_token(s, p))) return NULL;
      last = *size;
      n_prev = 1;
      emit(s, size);
      p = parse_space(p, nested);
    } else if (is_word_char(*p)) { // rule reference
      const char *end = parse_name(s, p);
      if (!add_name(s, p, (size_t)(end - p), false)) return NULL;
      p = parse_space(end, nested);
      last = *size;
      n_prev = 1;
      emit(s, size);
    } else if (*p == '(') { // group: a generated rule, parsed recursively
      p = parse_space(p + 1, true);
      uint64_t before = s->st->rules;
      if (!add_rules(s, at, 1)) return NULL;
      if (++s->depth > LCX_GRAMMAR_MAX_NESTING)
        return stop(s, LCX_GRAMMAR_TOO_DEEP, at, "groups are nested too deeply (more than 128 levels)");
      if (s->depth > s->st->nesting) s->st->nesting = s->depth;
      p = parse_alternates(s, p, true);
      s->depth--;
      if (!p) return NULL;
      n_prev = s->st->rules - before;
      last = *size;
      emit(s, size);
      if (*p != ')') return syntax(s, p, "expecting ')'");
      p = parse_space(p + 1, nested);
    } else if (*p == '.') { // any character
      last = *size;
      n_prev = 1;
      emit(s, size);
      p = parse_space(p + 1, nested);
    } else if (*p == '*' || *p == '+' || *p == '?') {
      char op = *p;
      p = parse_space(p + 1, nested);
      if (!repeat(s, at, size, last, &n_prev, op == '+' ? 1 : 0, op == '?' ? 1 : NO_MAX)) return NULL;
    } else if (*p == '{') {
      uint64_t min, max = NO_MAX;
      p = parse_space(p + 1, nested);
      if (!is_digit_char(*p)) return syntax(s, p, "expecting an integer");
      if (!(p = parse_int(s, p, &min))) return NULL;
      p = parse_space(p, nested);
      if (*p == '}') {
        max = min;
        p = parse_space(p + 1, nested);
      } else if (*p == ',') {
        p = parse_space(p + 1, nested);
        if (is_digit_char(*p)) {
          if (!(p = parse_int(s, p, &max))) return NULL;
          p = parse_space(p, nested);
        }
        if (*p != '}') return syntax(s, p, "expecting '}'");
        p = parse_space(p + 1, nested);
      } else {
        return syntax(s, p, "expecting ','");
      }
      if (min > REPETITION_THRESHOLD) return syntax(s, at, "more than 2000 repetitions");
      if (max != NO_MAX && max > REPETITION_THRESHOLD) max = NO_MAX;
      if (!repeat(s, at, size, last, &n_prev, min, max)) return NULL;
    } else {
      break;
    }
    if (!check_elements(s, at)) return NULL;
  }
  return p;
}

// One rule's alternatives.
static const char *parse_alternates(scan *s, const char *p, bool nested) {
  uint64_t size = 0;
  p = parse_sequence(s, p, &size, nested);
  while (p && *p == '|') {
    emit(s, &size); // ALT
    p = parse_sequence(s, parse_space(p + 1, true), &size, nested);
  }
  if (!p) return NULL;
  emit(s, &size); // END
  return check_elements(s, p) ? p : NULL;
}

static const char *parse_rule(scan *s, const char *p) {
  const char *end = parse_name(s, p);
  if (!end || !add_name(s, p, (size_t)(end - p), true)) return NULL;
  p = parse_space(end, false);
  if (!(p[0] == ':' && p[1] == ':' && p[2] == '=')) return syntax(s, p, "expecting ::=");
  p = parse_alternates(s, parse_space(p + 3, true), false);
  if (!p) return NULL;
  if (*p == '\r')
    p += p[1] == '\n' ? 2 : 1;
  else if (*p == '\n')
    p++;
  else if (*p)
    return syntax(s, p, "expecting newline or end");
  return parse_space(p, true);
}

lcx_grammar_rc lcx_grammar_check(const char *text, lcx_grammar_stats *out) {
  memset(out, 0, sizeof *out);
  scan s = {.text = text, .st = out, .rc = LCX_GRAMMAR_OK};
  const char *p = parse_space(text, true);
  if (!*p) {
    snprintf(out->message, sizeof out->message, "the grammar is empty (it has no rules)");
    return LCX_GRAMMAR_EMPTY;
  }
  while (p && *p)
    p = parse_rule(&s, p);
  if (s.rc == LCX_GRAMMAR_OK) check_undefined(&s);
  free(s.names.slots);
  return s.rc;
}
