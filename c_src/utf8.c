// See utf8.h.
#include <stdbool.h>
#include <string.h>

#include "utf8.h"

lcx_utf8_kind lcx_utf8_next(const unsigned char *s, size_t n, size_t *len) {
  unsigned char b = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF; // the allowed range of the second byte
  if (b < 0x80) {
    *len = 1;
    return LCX_UTF8_CHAR;
  } else if (b >= 0xC2 && b <= 0xDF) {
    need = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 3;
    if (b == 0xE0)
      lo = 0xA0; // no overlong forms
    else if (b == 0xED)
      hi = 0x9F; // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 4;
    if (b == 0xF0)
      lo = 0x90; // no overlong forms
    else if (b == 0xF4)
      hi = 0x8F; // nothing above U+10FFFF
  } else {
    *len = 1; // a continuation byte, C0, C1 or F5..FF
    return LCX_UTF8_INVALID;
  }
  for (size_t k = 1; k < need; k++) {
    if (k >= n) {
      *len = k;
      return LCX_UTF8_INCOMPLETE;
    }
    unsigned char c = s[k];
    bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      *len = k; // the maximal subpart so far; s[k] starts something new
      return LCX_UTF8_INVALID;
    }
  }
  *len = need;
  return LCX_UTF8_CHAR;
}

size_t lcx_utf8_sanitized_len(const unsigned char *s, size_t n) {
  size_t out = 0;
  for (size_t i = 0, len; i < n; i += len)
    out += lcx_utf8_next(s + i, n - i, &len) == LCX_UTF8_CHAR ? len : 3;
  return out;
}

void lcx_utf8_sanitize(const unsigned char *s, size_t n, unsigned char *out) {
  for (size_t i = 0, len; i < n; i += len) {
    if (lcx_utf8_next(s + i, n - i, &len) == LCX_UTF8_CHAR) {
      memcpy(out, s + i, len);
      out += len;
    } else {
      memcpy(out, LCX_UTF8_REPLACEMENT, 3);
      out += 3;
    }
  }
}

size_t lcx_utf8_cut_tail(const unsigned char *s, size_t n) {
  for (size_t i = 0, len; i < n; i += len)
    if (lcx_utf8_next(s + i, n - i, &len) == LCX_UTF8_INCOMPLETE) return len;
  return 0;
}
