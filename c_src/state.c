// Saved state: a context's KV cache (or one sequence of it) as a binary, and
// back (llama_state_get_data / set_data, llama_state_seq_*).
//
// What our context remembers about its cache is derived from the cache
// itself: the next position of a sequence is its largest position + 1
// (lcx_next_position), and the only other fact, whether the last decode left
// logits, is forgotten on every load (the pinned llama.cpp saves no logits).
// So a loaded cache is consistent with the context as long as each sequence
// holds exactly the positions 0..n-1 once, as every cache this library fills
// does (a sliding-window cache: its latest positions, see read_cache): that is
// checked before loading.
//
// llama.cpp checks a blob only in part, and some of what it does not check
// asserts or corrupts its cell bookkeeping: a sequence blob's cell count is
// allocated before it is checked against the buffer (4 G cells is an OOM
// kill), positions and sequence ids of a whole-cache blob are taken as they
// are (a cell at position -1 with sequences, a sequence id twice in a cell,
// a cell of sequence 1 in sequence 0's stream), and its own checks of layer
// count, types and row sizes run after it has emptied the target. So every
// blob is parsed here first against the context it is loaded into (the
// format of src/llama-kv-cache.cpp state_write / state_write_meta /
// state_write_data, in the layout llama.cpp gives the model, see
// memory_layout): the architecture, the stream count, every cell's
// position and sequences, the layer headers' shape, and the exact length. Only
// a blob that passes goes to llama.cpp, through the exception barrier. What is
// left to llama.cpp: whether the layer count, K/V types and row sizes are the
// context's (a blob of another model of the same architecture); it then
// empties the target and fails, and so do we ({:state_load_failed, msg}).
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "lcx.h"
#include "state.h"

// ---- reading a blob ------------------------------------------------------------------

typedef struct {
  const uint8_t *p;
  size_t left;
} reader;

static bool rd_bytes(reader *r, void *out, size_t n) {
  if (n > r->left) return false;
  memcpy(out, r->p, n);
  r->p += n;
  r->left -= n;
  return true;
}

static bool rd_u32(reader *r, uint32_t *v) { return rd_bytes(r, v, sizeof *v); }
static bool rd_i32(reader *r, int32_t *v) { return rd_bytes(r, v, sizeof *v); }
static bool rd_u64(reader *r, uint64_t *v) { return rd_bytes(r, v, sizeof *v); }

// Skips n * size bytes (without overflowing).
static bool rd_skip(reader *r, uint64_t n, uint64_t size) {
  if (size != 0 && n > r->left / size) return false;
  r->p += n * size;
  r->left -= n * size;
  return true;
}

// What a blob must match: the context it is loaded into.
typedef struct {
  uint32_t n_stream;     // KV streams: 1 if unified, else one per sequence
  uint32_t stream_cells; // cells of a stream
  uint32_t n_seq_max;
  uint32_t n_layer; // the model's (a cache holds at most as many)
  bool cell_ext;    // cells carry 2D positions (M-RoPE models)
  bool has_v;       // layers have V sections (not MLA models)
  int32_t one_seq;  // a sequence blob: -1 for a whole-context blob
  // per sequence (one for a sequence blob): positions seen, count, smallest, largest
  uint8_t *seen; // n_seq * stream_cells
  uint32_t *count;
  int32_t *min_pos, *max_pos;
  int32_t *base_max; // max_pos of the first (non-SWA) cache, for the SWA one
  char why[160];
} shape;

#define BAD(sh, ...)                                                                                                   \
  do {                                                                                                                 \
    snprintf((sh)->why, sizeof(sh)->why, __VA_ARGS__);                                                                 \
    return false;                                                                                                      \
  } while (0)

static uint32_t n_tracked(const shape *sh) { return sh->one_seq >= 0 ? 1 : sh->n_seq_max; }

// One cell's metadata: position, sequence count, (2D position), sequence ids.
static bool read_cell(reader *r, shape *sh, uint32_t stream) {
  int32_t pos;
  uint32_t n_seq;
  if (!rd_i32(r, &pos) || !rd_u32(r, &n_seq)) BAD(sh, "truncated cell");
  if (pos < 0 || (uint32_t)pos >= sh->stream_cells)
    BAD(sh, "cell position %d outside 0..%u", pos, sh->stream_cells - 1);
  if (sh->one_seq >= 0 ? n_seq != 1 : (n_seq == 0 || n_seq > sh->n_seq_max)) BAD(sh, "cell with %u sequences", n_seq);
  if (sh->cell_ext && !rd_skip(r, 1, 12)) BAD(sh, "truncated cell");
  for (uint32_t j = 0; j < n_seq; j++) {
    int32_t seq;
    if (!rd_i32(r, &seq)) BAD(sh, "truncated cell");
    if (seq < 0 || (uint32_t)seq >= sh->n_seq_max) BAD(sh, "sequence id %d outside 0..%u", seq, sh->n_seq_max - 1);
    // a sequence blob's cells go to the sequence it is loaded into
    uint32_t k = sh->one_seq >= 0 ? 0 : (uint32_t)seq;
    if (sh->one_seq < 0 && sh->n_stream > 1 && (uint32_t)seq != stream)
      BAD(sh, "a cell of sequence %d in stream %u", seq, stream);
    uint8_t *mark = &sh->seen[(size_t)k * sh->stream_cells + (uint32_t)pos];
    if (*mark) BAD(sh, "position %d twice in sequence %d", pos, seq);
    *mark = 1;
    sh->count[k]++;
    if (pos > sh->max_pos[k]) sh->max_pos[k] = pos;
    if (sh->min_pos[k] < 0 || pos < sh->min_pos[k]) sh->min_pos[k] = pos;
  }
  return true;
}

// One layer header (type, row size) and its rows.
static bool read_rows(reader *r, shape *sh, uint32_t cells) {
  int32_t type;
  uint64_t row;
  if (!rd_i32(r, &type) || !rd_u64(r, &row)) BAD(sh, "truncated layer");
  if (type < 0 || type >= GGML_TYPE_COUNT) BAD(sh, "unknown tensor type %d", type);
  if (row == 0 || !rd_skip(r, cells, row)) BAD(sh, "truncated layer data");
  return true;
}

// A transposed V layer: type, element size, rows, and n_embd rows of cells elements.
static bool read_rows_transposed(reader *r, shape *sh, uint32_t cells) {
  int32_t type;
  uint32_t el, n_embd;
  if (!rd_i32(r, &type) || !rd_u32(r, &el) || !rd_u32(r, &n_embd)) BAD(sh, "truncated layer");
  if (type < 0 || type >= GGML_TYPE_COUNT) BAD(sh, "unknown tensor type %d", type);
  if (el == 0 || n_embd == 0 || !rd_skip(r, (uint64_t)n_embd * cells, el)) BAD(sh, "truncated layer data");
  return true;
}

// A stream's layers: V transposition, layer count, K of each layer, V of each
// (an MLA model has no V tensors: llama.cpp writes no V sections, whatever the flag).
static bool read_layers(reader *r, shape *sh, uint32_t cells) {
  uint32_t v_trans, n_layer;
  if (!rd_u32(r, &v_trans) || !rd_u32(r, &n_layer)) BAD(sh, "truncated stream");
  if (v_trans > 1) BAD(sh, "V transposition flag %u", v_trans);
  if (n_layer == 0 || n_layer > sh->n_layer) BAD(sh, "%u layers, the model has %u", n_layer, sh->n_layer);
  for (uint32_t l = 0; l < n_layer; l++)
    if (!read_rows(r, sh, cells)) return false;
  for (uint32_t l = 0; sh->has_v && l < n_layer; l++)
    if (!(v_trans ? read_rows_transposed(r, sh, cells) : read_rows(r, sh, cells))) return false;
  return true;
}

// The memory layout of the model, decided as the pinned llama.cpp decides it
// (llama_model::create_memory, each architecture's load_arch_hparams in
// src/models/*.cpp, llama_hparams::is_mla): what is not visible through
// llama.h is read from the model's metadata as llama.cpp reads it. A model
// whose layout cannot be decided that way is refused ({:state_unsupported, _}).
enum swa_kind { SWA_NONE, SWA_STANDARD, SWA_CHUNKED }; // llama_swa_type

typedef struct {
  uint32_t n_caches;  // 0 (no memory), 1, or 2 (iSWA: the base cache, then the SWA one)
  bool has_v;         // false for MLA models: K sections only
  enum swa_kind swa;  // the SWA cache's masking
  uint32_t n_swa;     // its window
  const char *refuse; // why the layout cannot be checked, or NULL
} layout;

static bool arch_in(const char *arch, const char *const *names) {
  for (; *names; names++)
    if (strcmp(arch, *names) == 0) return true;
  return false;
}

// An unsigned integer metadata value: 1 read, 0 absent, -1 not an unsigned integer.
static int meta_uint(const struct llama_model *m, const char *arch, const char *what, unsigned long long *v) {
  char key[128], val[32], *end;
  snprintf(key, sizeof key, "%s.%s", arch, what);
  int32_t n = llama_model_meta_val_str(m, key, val, sizeof val);
  if (n < 0) return 0;
  if (n == 0 || (size_t)n >= sizeof val || val[0] < '0' || val[0] > '9') return -1;
  *v = strtoull(val, &end, 10);
  return *end == '\0' ? 1 : -1;
}

static layout memory_layout(lcx_context *c) {
  const struct llama_model *m = lcx_model_llama(lcx_context_model(c));
  layout l = {0, true, SWA_NONE, 0, NULL};
  if (!llama_get_memory(lcx_context_llama(c))) return l; // embedding models without a cache
  char arch[64] = "";
  llama_model_meta_val_str(m, "general.architecture", arch, sizeof arch);

  // memories of their own kind (indexer caches, compressed caches, cells shared with another context)
  static const char *const own_kind[] = {"minimax-m3", "glm-dsa", "deepseek32",       "hy_v4", "dots3note",
                                         "deepseek4",  "dflash",  "gemma4-assistant", NULL};
  if (arch_in(arch, own_kind)) {
    l.refuse = "a KV cache of a kind of its own";
    return l;
  }

  // MLA (no V tensors): the architectures whose hparams read the MLA head sizes
  // (deepseek2.cpp, inherited by mistral4); is_mla() wants both non-zero. The
  // other MLA architectures (bailingmoe3, kimi-k3, kimi-linear) are hybrid, refused before.
  static const char *const mla_archs[] = {"deepseek2", "mistral4", NULL};
  if (arch_in(arch, mla_archs)) {
    unsigned long long k = 0, v = 0;
    int hk = meta_uint(m, arch, "attention.key_length_mla", &k),
        hv = meta_uint(m, arch, "attention.value_length_mla", &v);
    if (hk < 0 || hv < 0 || (k == 0) != (v == 0)) {
      l.refuse = "MLA head sizes that llama.cpp may not read as MLA";
      return l;
    }
    l.has_v = k == 0;
  }

  // iSWA (two caches) when llama.cpp's swa_type is not NONE
  static const char *const swa_always[] = {
      "exaone-moe", "gemma3n",     "step35", "muse-glimmer", "gpt-oss", "spark2_5", "cohere2moe",
      "cohere2",    "granite_swa", "gemma2", "mimo2",        "gemma4",  "maple",    NULL};
  // sliding window metadata > 0 (phi3: never, and llama.cpp then keeps n_swa 0)
  static const char *const swa_if_window[] = {"gemma3", "olmo2", "plamo3", "smallthinker", "mellum", "afmoe",
                                              "laguna", "phi3",  NULL};
  int32_t n_swa = llama_model_n_swa(m);
  if (arch_in(arch, swa_always))
    l.swa = SWA_STANDARD;
  else if (strcmp(arch, "exaone4") == 0)
    l.swa = llama_model_n_layer(m) == 64 ? SWA_STANDARD : SWA_NONE;
  else if (strcmp(arch, "llama4") == 0)
    l.swa = n_swa > 0 ? SWA_CHUNKED : SWA_NONE; // chunked unless sliding_window says 0
  else if (arch_in(arch, swa_if_window))
    l.swa = n_swa > 0 ? SWA_STANDARD : SWA_NONE;
  else if (n_swa > 0) {
    l.refuse = "a sliding window on an architecture this library does not know";
    return l;
  }
  if (l.swa != SWA_NONE && n_swa <= 0) {
    l.refuse = "sliding-window layers with a window of 0";
    return l;
  }
  l.n_swa = (uint32_t)n_swa;
  l.n_caches = l.swa != SWA_NONE ? 2 : 1;
  return l;
}

// One KV cache's section (an iSWA model has two: its base cache, then its SWA
// cache): the stream count, then per stream its cell count, cells and layers.
// In the only or base cache each sequence must hold the positions 0..n-1, each
// once. The SWA cache holds a sequence's latest positions: it must end at the
// base cache's largest (llama.cpp takes a sequence's position from it), and
// what it holds inside the window (the positions llama.cpp does not mask) is a
// run down from there. A sequence blob holds nothing else (llama.cpp leaves
// masked cells out); a whole-context blob may hold masked cells below the
// window, not yet reused.
static bool read_cache(reader *r, shape *sh, const layout *l, bool swa) {
  uint32_t n_stream, with_cells = 0;
  if (!rd_u32(r, &n_stream)) BAD(sh, "truncated cache header");
  if (n_stream != sh->n_stream) BAD(sh, "%u KV streams, the context has %u", n_stream, sh->n_stream);
  memset(sh->seen, 0, (size_t)n_tracked(sh) * sh->stream_cells);
  for (uint32_t k = 0; k < n_tracked(sh); k++) {
    sh->count[k] = 0;
    sh->min_pos[k] = sh->max_pos[k] = -1;
  }
  for (uint32_t s = 0; s < n_stream; s++) {
    uint32_t cells;
    if (!rd_u32(r, &cells)) BAD(sh, "truncated stream");
    if (cells == 0) continue;
    if (cells > sh->stream_cells) BAD(sh, "%u cells, a stream of the context has %u", cells, sh->stream_cells);
    if (sh->one_seq >= 0 && ++with_cells > 1) BAD(sh, "a sequence blob with cells in two streams");
    for (uint32_t i = 0; i < cells; i++)
      if (!read_cell(r, sh, s)) return false;
    if (!read_layers(r, sh, cells)) return false;
  }
  for (uint32_t k = 0; k < n_tracked(sh); k++) {
    int id = sh->one_seq >= 0 ? sh->one_seq : (int)k;
    int32_t top = sh->max_pos[k];
    if (!swa) {
      if (sh->count[k] != (uint32_t)(top + 1))
        BAD(sh, "sequence %d holds %u cells but positions up to %d", id, sh->count[k], top);
      sh->base_max[k] = top;
      continue;
    }
    int32_t m = sh->base_max[k];
    if (top != m) BAD(sh, "sequence %d ends at %d in the sliding-window cache, at %d in the other", id, top, m);
    if (m < 0) continue;
    // the lowest position llama.cpp does not mask (llama_hparams::is_masked_swa against m)
    int32_t lo = l->swa == SWA_CHUNKED    ? (int32_t)((uint32_t)m / l->n_swa * l->n_swa)
                 : m >= (int32_t)l->n_swa ? m - (int32_t)l->n_swa + 1
                                          : 0;
    const uint8_t *seen = &sh->seen[(size_t)k * sh->stream_cells];
    int32_t run = m;
    while (run > lo && seen[run - 1])
      run--;
    for (int32_t p = lo; p < run; p++)
      if (seen[p]) BAD(sh, "sequence %d misses position %d in the sliding-window cache", id, run - 1);
    if (sh->one_seq >= 0 && sh->min_pos[k] < run)
      BAD(sh, "sequence %d holds masked position %d in the sliding-window cache", id, sh->min_pos[k]);
  }
  return true;
}

static bool shape_init(shape *sh, lcx_context *c, int32_t one_seq, const layout *l) {
  struct llama_context *ctx = lcx_context_llama(c);
  const struct llama_model *m = lcx_model_llama(lcx_context_model(c));
  memset(sh, 0, sizeof *sh);
  sh->n_seq_max = llama_n_seq_max(ctx);
  sh->n_stream = lcx_context_kv_unified(c) ? 1 : sh->n_seq_max;
  sh->stream_cells = llama_n_ctx_seq(ctx);
  // a cache holds at most the model's layers, MTP layers included where not filtered out
  sh->n_layer = (uint32_t)llama_model_n_layer(m) + (uint32_t)llama_model_n_layer_nextn(m);
  enum llama_rope_type rope = llama_model_rope_type(m);
  sh->cell_ext = rope == LLAMA_ROPE_TYPE_MROPE || rope == LLAMA_ROPE_TYPE_IMROPE;
  sh->has_v = l->has_v;
  sh->one_seq = one_seq;
  uint32_t n = n_tracked(sh);
  sh->seen = enif_alloc((size_t)n * sh->stream_cells);
  sh->count = enif_alloc(sizeof(uint32_t) * n);
  sh->min_pos = enif_alloc(sizeof(int32_t) * n);
  sh->max_pos = enif_alloc(sizeof(int32_t) * n);
  sh->base_max = enif_alloc(sizeof(int32_t) * n);
  return sh->seen && sh->count && sh->min_pos && sh->max_pos && sh->base_max;
}

static void shape_free(shape *sh) {
  if (sh->seen) enif_free(sh->seen);
  if (sh->count) enif_free(sh->count);
  if (sh->min_pos) enif_free(sh->min_pos);
  if (sh->max_pos) enif_free(sh->max_pos);
  if (sh->base_max) enif_free(sh->base_max);
}

#define SEQ_MAGIC 0xaf143cd8u // io_magic in src/llama-context.cpp

// A whole-context blob: the architecture name, then each cache.
static bool check_state(reader *r, shape *sh, lcx_context *c, const layout *l) {
  char arch[64] = "", got[64];
  uint32_t len;
  llama_model_meta_val_str(lcx_model_llama(lcx_context_model(c)), "general.architecture", arch, sizeof arch);
  if (!rd_u32(r, &len)) BAD(sh, "truncated header");
  if (len >= sizeof got || !rd_bytes(r, got, len)) BAD(sh, "bad architecture name");
  got[len] = '\0';
  if (strlen(got) != len || strcmp(got, arch) != 0)
    BAD(sh, "a state of architecture '%s', the model is '%s'", got, arch);
  for (uint32_t i = 0; i < l->n_caches; i++)
    if (!read_cache(r, sh, l, i == 1)) return false;
  if (r->left) BAD(sh, "%zu bytes after the state", r->left);
  return true;
}

// A sequence blob: magic, the sequence id it was saved from, then each cache.
static bool check_seq(reader *r, shape *sh, const layout *l) {
  uint32_t magic;
  int32_t from;
  if (!rd_u32(r, &magic) || magic != SEQ_MAGIC) BAD(sh, "not a sequence state");
  if (!rd_i32(r, &from)) BAD(sh, "truncated header");
  for (uint32_t i = 0; i < l->n_caches; i++)
    if (!read_cache(r, sh, l, i == 1)) return false;
  if (r->left) BAD(sh, "%zu bytes after the state", r->left);
  return true;
}

// ---- saving and loading -------------------------------------------------------------------------

// Why the context's memory cannot be saved and checked (KV caches of a known
// layout only), or NULL; *l, if given, gets the layout.
static const char *unsupported(lcx_context *c, layout *l) {
  const struct llama_model *m = lcx_model_llama(lcx_context_model(c));
  if (llama_model_is_recurrent(m) || llama_model_is_hybrid(m)) return "recurrent or hybrid memory";
  layout got = memory_layout(c);
  if (l) *l = got;
  return got.refuse;
}

static bool always(void *data) { return true; }

// Reads the sequence id argument against the context (llama.cpp asserts on one out of range).
static bool get_seq(ErlNifEnv *env, lcx_context *c, ERL_NIF_TERM t, int32_t *seq, ERL_NIF_TERM *err) {
  int v;
  if (!enif_get_int(env, t, &v) || v < 0 || (uint32_t)v >= llama_n_seq_max(lcx_context_llama(c))) {
    *err = lcx_raise(env, "sequence id must be an integer in 0..%u", llama_n_seq_max(lcx_context_llama(c)) - 1);
    return false;
  }
  *seq = v;
  return true;
}

// Saves the whole context (seq < 0) or one sequence into a new binary.
static ERL_NIF_TERM save(ErlNifEnv *env, lcx_context *c, int32_t seq) {
  struct llama_context *ctx = lcx_context_llama(c);
  const char *why = unsupported(c, NULL);
  if (why) return lcx_err_msg(env, LCX_E_state_unsupported, why);
  bool threw;
  size_t size = seq < 0 ? lcx_state_get_size(ctx, &threw) : lcx_state_seq_get_size(ctx, seq, &threw);
  if (threw || size == 0) return lcx_err_msg(env, LCX_E_exception, threw ? lcx_last_exception() : "no state size");
  ErlNifBinary bin;
  if (!enif_alloc_binary(size, &bin)) return lcx_err(env, LCX_E_out_of_memory);
  size_t got = seq < 0 ? lcx_state_get_data(ctx, bin.data, size, &threw)
                       : lcx_state_seq_get_data(ctx, bin.data, size, seq, &threw);
  if (threw || got != size) {
    enif_release_binary(&bin);
    return lcx_err_msg(env, LCX_E_exception, threw ? lcx_last_exception() : "the state changed size while saved");
  }
  return lcx_ok(env, enif_make_binary(env, &bin));
}

// Checks a blob against the context, then loads it into the whole context
// (seq < 0) or into sequence seq. On a failure of llama.cpp's own the target
// is emptied (as llama.cpp leaves it).
static ERL_NIF_TERM load(ErlNifEnv *env, lcx_context *c, int32_t seq, ERL_NIF_TERM blob) {
  ErlNifBinary bin;
  if (!enif_inspect_binary(env, blob, &bin)) return lcx_raise(env, "state must be a binary");
  layout l;
  const char *unsup = unsupported(c, &l);
  if (unsup) return lcx_err_msg(env, LCX_E_state_unsupported, unsup);
  shape sh;
  if (!shape_init(&sh, c, seq, &l)) {
    shape_free(&sh);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  reader r = {bin.data, bin.size};
  bool ok = seq < 0 ? check_state(&r, &sh, c, &l) : check_seq(&r, &sh, &l);
  shape_free(&sh);
  if (!ok) return lcx_err_msg(env, LCX_E_invalid_state, sh.why);

  struct llama_context *ctx = lcx_context_llama(c);
  bool threw;
  lcx_context_forget_logits(c);
  // llama.cpp empties a sequence only when the blob has cells for it; a load replaces it
  if (seq >= 0 && !lcx_memory_seq_rm(ctx, seq, -1, -1))
    return lcx_err_msg(env, LCX_E_state_load_failed, "could not empty the sequence");
  lcx_log_capture_begin();
  lcx_log_quiet_when(always, NULL); // its complaint is our error message
  size_t n = seq < 0 ? lcx_state_set_data(ctx, bin.data, bin.size, &threw)
                     : lcx_state_seq_set_data(ctx, bin.data, bin.size, seq, &threw);
  lcx_log_quiet_when(NULL, NULL);
  const char *why = lcx_log_capture_end();
  if (!threw && n == bin.size) return ATOM_ok;
  char msg[512];
  snprintf(msg, sizeof msg, "%s", threw ? lcx_last_exception() : why[0] ? why : "llama.cpp refused the state");
  // leave the target empty whatever llama.cpp got to
  if (seq < 0)
    lcx_memory_clear(ctx);
  else
    lcx_memory_seq_rm(ctx, seq, -1, -1);
  return lcx_err_msg(env, LCX_E_state_load_failed, msg);
}

// A negative id would mean the whole context to save/load: the callers pass checked ids.
static bool valid_seq(lcx_context *c, int32_t seq) {
  return seq >= 0 && (uint32_t)seq < llama_n_seq_max(lcx_context_llama(c));
}

ERL_NIF_TERM lcx_state_seq_save(ErlNifEnv *env, lcx_context *c, int32_t seq) {
  return valid_seq(c, seq) ? save(env, c, seq) : lcx_raise(env, "sequence id %d outside the context", seq);
}

ERL_NIF_TERM lcx_state_seq_load(ErlNifEnv *env, lcx_context *c, int32_t seq, ERL_NIF_TERM blob) {
  return valid_seq(c, seq) ? load(env, c, seq, blob) : lcx_raise(env, "sequence id %d outside the context", seq);
}

// ---- NIFs ------------------------------------------------------------------------------------

// context_state_save(ctx) -> {:ok, binary}
LCX_NIF(nif_context_state_save) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  ERL_NIF_TERM r = save(env, c, -1);
  lcx_context_release(c, &me);
  return r;
}

// context_state_load(ctx, binary) -> :ok | {:error, reason}
LCX_NIF(nif_context_state_load) {
  ERL_NIF_TERM err;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  ERL_NIF_TERM r = load(env, c, -1, argv[1]);
  lcx_context_release(c, &me);
  return r;
}

// context_seq_save(ctx, seq_id) -> {:ok, binary}
LCX_NIF(nif_context_seq_save) {
  ERL_NIF_TERM err, r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  int32_t seq;
  r = get_seq(env, c, argv[1], &seq, &err) ? lcx_state_seq_save(env, c, seq) : err;
  lcx_context_release(c, &me);
  return r;
}

// context_seq_load(ctx, seq_id, binary) -> :ok | {:error, reason}
LCX_NIF(nif_context_seq_load) {
  ERL_NIF_TERM err, r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_context *c = lcx_context_claim(env, argv[0], &me, &err);
  if (!c) return err;
  int32_t seq;
  r = get_seq(env, c, argv[1], &seq, &err) ? lcx_state_seq_load(env, c, seq, argv[2]) : err;
  lcx_context_release(c, &me);
  return r;
}
