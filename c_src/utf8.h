// UTF-8 validation, one character at a time (Unicode's Table 3-7 of
// well-formed byte sequences; invalid input is replaced by U+FFFD, one
// replacement per maximal ill-formed subpart, as Python and WHATWG do).
#ifndef LCX_UTF8_H
#define LCX_UTF8_H

#include <stddef.h>

typedef enum {
  LCX_UTF8_CHAR,       // a well-formed character of *len bytes
  LCX_UTF8_INVALID,    // *len bytes that can never be part of a character
  LCX_UTF8_INCOMPLETE, // the start of a character cut off by the end of the input
} lcx_utf8_kind;

// Classifies the character at the start of s[0..n) (n > 0).
lcx_utf8_kind lcx_utf8_next(const unsigned char *s, size_t n, size_t *len);

#define LCX_UTF8_REPLACEMENT "\xEF\xBF\xBD"

// Bytes at the end of s[0..n) that start a character cut off by the end (0 if none).
size_t lcx_utf8_cut_tail(const unsigned char *s, size_t n);

// Length of s[0..n) with every ill-formed subpart replaced by U+FFFD.
size_t lcx_utf8_sanitized_len(const unsigned char *s, size_t n);
// Writes that text to out (lcx_utf8_sanitized_len(s, n) bytes).
void lcx_utf8_sanitize(const unsigned char *s, size_t n, unsigned char *out);

#endif
