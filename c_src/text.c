// See text.h.
#include <string.h>

#include "barrier.h"
#include "text.h"
#include "utf8.h"

// ---- stop strings --------------------------------------------------------------------

static bool valid_utf8(const unsigned char *s, size_t n) {
  for (size_t i = 0, len; i < n; i += len)
    if (lcx_utf8_next(s + i, n - i, &len) != LCX_UTF8_CHAR) return false;
  return true;
}

lcx_stops_result lcx_stops_read(ErlNifEnv *env, ERL_NIF_TERM list, lcx_stops *out) {
  *out = (lcx_stops){0};
  unsigned n;
  if (!enif_get_list_length(env, list, &n) || n > LCX_MAX_STOPS) return LCX_STOPS_BADARG;
  if (n == 0) return LCX_STOPS_OK;
  out->items = enif_alloc(sizeof(ErlNifBinary) * n);
  if (!out->items) return LCX_STOPS_NOMEM;
  ERL_NIF_TERM head, tail = list;
  for (unsigned i = 0; i < n; i++) {
    ErlNifBinary b;
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_inspect_binary(env, head, &b) || b.size == 0 || !valid_utf8(b.data, b.size)) {
      lcx_stops_free(out);
      return LCX_STOPS_BADARG;
    }
    out->items[i].size = b.size;
    out->items[i].data = enif_alloc(b.size);
    if (!out->items[i].data) {
      lcx_stops_free(out);
      return LCX_STOPS_NOMEM;
    }
    memcpy(out->items[i].data, b.data, b.size);
    out->n = i + 1;
    if (b.size > out->max_len) out->max_len = b.size;
  }
  return LCX_STOPS_OK;
}

void lcx_stops_free(lcx_stops *s) {
  for (unsigned i = 0; i < s->n; i++)
    enif_free(s->items[i].data);
  if (s->items) enif_free(s->items);
  *s = (lcx_stops){0};
}

// Earliest occurrence of any stop string starting at or after `from`.
static bool find_stop(const lcx_stops *st, const char *text, size_t len, size_t from, size_t *at) {
  bool found = false;
  for (unsigned i = 0; i < st->n; i++) {
    const ErlNifBinary *s = &st->items[i];
    for (size_t p = from; p + s->size <= len; p++) {
      if (memcmp(text + p, s->data, s->size) == 0) {
        if (!found || p < *at) *at = p;
        found = true;
        break;
      }
    }
  }
  return found;
}

// Bytes at the end of the text (after `emitted`) that could start a stop string.
static size_t stop_prefix_hold(const lcx_stops *st, const char *text, size_t len, size_t emitted) {
  size_t hold = 0;
  for (unsigned i = 0; i < st->n; i++) {
    const ErlNifBinary *s = &st->items[i];
    size_t kmax = s->size - 1;
    if (kmax > len - emitted) kmax = len - emitted;
    for (size_t k = kmax; k > hold; k--) {
      if (memcmp(text + len - k, s->data, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

// ---- the text ------------------------------------------------------------------------

void lcx_text_init(lcx_text *t, const lcx_stops *stops) {
  *t = (lcx_text){0};
  t->stops = stops;
}

void lcx_text_free(lcx_text *t) {
  if (t->data) enif_free(t->data);
  t->data = NULL;
  t->len = t->cap = 0;
}

static bool reserve(lcx_text *t, size_t extra) {
  if (t->len + extra <= t->cap) return true;
  size_t cap = t->cap ? t->cap : 256;
  while (cap < t->len + extra)
    cap *= 2;
  char *d = enif_realloc(t->data, cap);
  if (!d) return false;
  t->data = d;
  t->cap = cap;
  return true;
}

// Appends raw bytes, keeping the text valid UTF-8; an unfinished character at
// the end waits in `pending` for the next piece.
static bool append_utf8(lcx_text *t, const unsigned char *s, size_t n) {
  // worst case: every byte becomes a 3-byte U+FFFD
  if (!reserve(t, 3 * (n + t->n_pending))) return false;
  unsigned char joined[8];
  size_t i = 0;
  // first finish the pending character with the first bytes of s
  while (t->n_pending > 0) {
    size_t take = n - i < 4 ? n - i : 4, k, len;
    memcpy(joined, t->pending, t->n_pending);
    memcpy(joined + t->n_pending, s + i, take);
    lcx_utf8_kind kind = lcx_utf8_next(joined, t->n_pending + take, &len);
    if (kind == LCX_UTF8_INCOMPLETE) { // still short: everything is pending
      memcpy(t->pending + t->n_pending, s + i, take);
      t->n_pending += take;
      return true;
    }
    if (kind == LCX_UTF8_CHAR)
      memcpy(t->data + t->len, joined, len), t->len += len;
    else
      memcpy(t->data + t->len, LCX_UTF8_REPLACEMENT, 3), t->len += 3;
    if (len >= t->n_pending) { // consumed all pending bytes and len - n_pending of s
      i += len - t->n_pending;
      t->n_pending = 0;
    } else { // only part of pending was consumed: keep the rest pending
      for (k = len; k < t->n_pending; k++)
        t->pending[k - len] = t->pending[k];
      t->n_pending -= len;
    }
  }
  while (i < n) {
    size_t len;
    lcx_utf8_kind kind = lcx_utf8_next(s + i, n - i, &len);
    if (kind == LCX_UTF8_INCOMPLETE) {
      memcpy(t->pending, s + i, len);
      t->n_pending = len;
      break;
    }
    if (kind == LCX_UTF8_CHAR)
      memcpy(t->data + t->len, s + i, len), t->len += len;
    else
      memcpy(t->data + t->len, LCX_UTF8_REPLACEMENT, 3), t->len += 3;
    i += len;
  }
  return true;
}

static lcx_text_status check_stop(lcx_text *t, size_t before) {
  if (!t->stops || t->stops->n == 0) return LCX_TEXT_MORE;
  size_t from = before >= t->stops->max_len ? before - t->stops->max_len + 1 : 0, at = 0;
  if (!find_stop(t->stops, t->data, t->len, from, &at)) return LCX_TEXT_MORE;
  t->len = at;
  t->n_pending = 0;
  if (t->emitted > at) t->emitted = at; // cannot happen: held back
  return LCX_TEXT_STOP;
}

lcx_text_status lcx_text_push(lcx_text *t, const struct llama_vocab *vocab, llama_token tok) {
  char small[256];
  bool threw;
  int32_t n = lcx_token_to_piece(vocab, tok, small, sizeof small, 0, t->special, &threw);
  if (threw) return LCX_TEXT_FAILED;
  size_t before = t->len;
  if (n >= 0) {
    if (!append_utf8(t, (const unsigned char *)small, (size_t)n)) return LCX_TEXT_NOMEM;
  } else {
    char *big = enif_alloc((size_t)-n);
    if (!big) return LCX_TEXT_NOMEM;
    int32_t n2 = lcx_token_to_piece(vocab, tok, big, -n, 0, t->special, &threw);
    bool ok = !threw && n2 >= 0 && append_utf8(t, (const unsigned char *)big, (size_t)n2);
    enif_free(big);
    if (!ok) return threw || n2 < 0 ? LCX_TEXT_FAILED : LCX_TEXT_NOMEM;
  }
  return check_stop(t, before);
}

size_t lcx_text_ready(const lcx_text *t) {
  bool may_hold = !t->finished && t->stops && t->stops->n;
  size_t hold = may_hold ? stop_prefix_hold(t->stops, t->data, t->len, t->emitted) : 0;
  return t->len - hold - t->emitted;
}

const char *lcx_text_take(lcx_text *t, size_t *len) {
  if (!t->data) {
    *len = 0;
    return "";
  }
  const char *p = t->data + t->emitted;
  *len = lcx_text_ready(t);
  t->emitted += *len;
  return p;
}

lcx_text_status lcx_text_finish(lcx_text *t) {
  t->finished = true;
  if (t->n_pending == 0) return LCX_TEXT_MORE;
  // each invalid or cut-off start is one replacement
  size_t before = t->len;
  unsigned char rest[4];
  size_t n = t->n_pending;
  memcpy(rest, t->pending, n);
  t->n_pending = 0;
  if (!reserve(t, 3 * n)) return LCX_TEXT_NOMEM;
  for (size_t i = 0; i < n;) {
    size_t len;
    lcx_utf8_kind kind = lcx_utf8_next(rest + i, n - i, &len);
    if (kind == LCX_UTF8_CHAR)
      memcpy(t->data + t->len, rest + i, len), t->len += len;
    else
      memcpy(t->data + t->len, LCX_UTF8_REPLACEMENT, 3), t->len += 3;
    i += len;
  }
  return check_stop(t, before);
}
