// Samplers: a llama.cpp sampler chain built from an ordered list of stages that
// LlamaCppEx.Sampler validated and ordered. The chain pins its model (grammar,
// DRY, penalties, logit bias and mirostat are sized by or point into its vocab).
#include <float.h>
#include <string.h>

#include "grammar_check.h"
#include "grammar_stack.h"
#include "lcx.h"
#include "sampler.h"

struct lcx_sampler {
  lcx_owner owner; // who uses `chain`
  struct llama_sampler *chain;
  lcx_model *model; // kept alive: grammar, DRY and penalties use its vocab
};

static ErlNifResourceType *LCX_SAMPLER_RT;

lcx_sampler *lcx_get_sampler(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_SAMPLER_RT, &p) ? p : NULL;
}
atomic_long lcx_live_samplers;

typedef struct {
  struct llama_sampler *chain;
  lcx_model *model; // released after the chain (grammar and DRY read the vocab)
} native_sampler;

static void free_native(void *arg) {
  native_sampler *n = arg;
  if (n->chain) {
    llama_sampler_free(n->chain);
    atomic_fetch_sub(&lcx_live_samplers, 1);
  }
  if (n->model) lcx_model_release(n->model, false);
}

// As for contexts: from a destructor, the chain and then the model reference
// go on the janitor thread, in that order.
static void destroy_sampler(lcx_sampler *s, bool from_destructor) {
  native_sampler n = {s->chain, s->model};
  s->chain = NULL;
  s->model = NULL;
  if (n.chain || n.model) lcx_dispose(free_native, &n, sizeof n, from_destructor);
}

static void destroy_now(void *s) { destroy_sampler(s, false); }

lcx_owner *lcx_sampler_owner(lcx_sampler *s) { return &s->owner; }
struct llama_sampler *lcx_sampler_chain(lcx_sampler *s) {
  return s->chain;
}
lcx_model *lcx_sampler_model(lcx_sampler *s) { return s->model; }

static void sampler_dtor(ErlNifEnv *env, void *obj) {
  lcx_sampler *s = obj;
  destroy_sampler(s, true); // nobody holds it: users keep references
  lcx_owner_destroy(&s->owner);
}

int lcx_sampler_load_types(ErlNifEnv *env) {
  LCX_SAMPLER_RT = enif_open_resource_type(env, NULL, "lcx_sampler", sampler_dtor, ERL_NIF_RT_CREATE, NULL);
  return LCX_SAMPLER_RT ? 0 : -1;
}

// A number that fits a float (a double beyond FLT_MAX would become inf).
static bool get_f(ErlNifEnv *env, ERL_NIF_TERM t, float *out) {
  double d;
  if (!lcx_get_double(env, t, &d) || !(d >= -FLT_MAX && d <= FLT_MAX)) return false;
  *out = (float)d;
  return true;
}

// Why get_f refused t, for the message: not a number, or out of float range.
static const char *f_why(ErlNifEnv *env, ERL_NIF_TERM t) {
  double d;
  return lcx_get_double(env, t, &d) ? "is outside the 32-bit float range (|x| <= 3.4e38)" : "must be a number";
}

// Longest history window for penalties and DRY: llama.cpp allocates it up front
// (an absurd one is gigabytes on a normal allocation path, or std::bad_alloc).
#define MAX_PENALTY_WINDOW (1 << 20)
// Logit biases beyond this overflow llama.cpp's bucket sort (float -> int).
#define MAX_LOGIT_BIAS 1.0e6f

static bool get_i(ErlNifEnv *env, ERL_NIF_TERM t, int32_t *out) {
  int v;
  if (!enif_get_int(env, t, &v)) return false;
  *out = v;
  return true;
}

static bool get_u(ErlNifEnv *env, ERL_NIF_TERM t, uint32_t *out) {
  unsigned v;
  if (!enif_get_uint(env, t, &v)) return false;
  *out = v;
  return true;
}

// Copies a binary into a fresh NUL-terminated string (caller enif_frees).
static char *dup_cstr(ErlNifEnv *env, ERL_NIF_TERM t) {
  ErlNifBinary b;
  if (!enif_inspect_binary(env, t, &b) || memchr(b.data, 0, b.size)) return NULL;
  char *s = enif_alloc(b.size + 1);
  if (!s) return NULL;
  memcpy(s, b.data, b.size);
  s[b.size] = '\0';
  return s;
}

// A grammar stage: the text is checked against the limits llama.cpp's
// recursive parser can take (grammar_check.c), then parsed on a stack sized
// for them (grammar_stack.c). NULL with *err = {:error, {:invalid_grammar, msg}}.
static struct llama_sampler *grammar_stage(ErlNifEnv *env, lcx_model *m, const char *g, const char *root,
                                           ERL_NIF_TERM *err) {
  lcx_grammar_stats stats;
  lcx_grammar_rc rc = lcx_grammar_check(g, &stats);
  if (rc == LCX_GRAMMAR_NO_MEMORY) {
    *err = lcx_err(env, LCX_E_out_of_memory);
    return NULL;
  }
  if (rc != LCX_GRAMMAR_OK) {
    *err = lcx_err_msg(env, LCX_E_invalid_grammar, stats.message);
    return NULL;
  }
  char why[512];
  struct llama_sampler *smpl = lcx_grammar_sampler_init(lcx_model_vocab(m), g, root, why, sizeof why);
  if (!smpl) *err = lcx_err_msg(env, LCX_E_invalid_grammar, why[0] ? why : "failed to parse grammar");
  return smpl;
}

static bool is_tag(ErlNifEnv *env, ERL_NIF_TERM t, const char *name) {
  char buf[32];
  return enif_get_atom(env, t, buf, sizeof buf, ERL_NIF_LATIN1) && strcmp(buf, name) == 0;
}

// Builds one stage. Returns NULL and sets *err (an exception or error term).
static struct llama_sampler *build_stage(ErlNifEnv *env, lcx_model *m, ERL_NIF_TERM stage, ERL_NIF_TERM *err) {
  int arity;
  const ERL_NIF_TERM *a;
  if (!enif_get_tuple(env, stage, &arity, &a) || arity < 1) {
    *err = lcx_raise(env, "malformed sampler stage");
    return NULL;
  }
  float f1, f2, f3;
  int32_t i1, i2;
  uint32_t seed;
  size_t min_keep;
  unsigned mk;
#define BAD(msg)                                                                                                       \
  do {                                                                                                                 \
    *err = lcx_raise(env, msg);                                                                                        \
    return NULL;                                                                                                       \
  } while (0)
#define BADF(name, term)                                                                                               \
  do {                                                                                                                 \
    *err = lcx_raise(env, "%s %s", name, f_why(env, term));                                                            \
    return NULL;                                                                                                       \
  } while (0)
  if (is_tag(env, a[0], "greedy") && arity == 1) return llama_sampler_init_greedy();
  if (is_tag(env, a[0], "dist") && arity == 2) {
    if (!get_u(env, a[1], &seed)) BAD("seed must be a non-negative 32-bit integer");
    return llama_sampler_init_dist(seed);
  }
  if (is_tag(env, a[0], "top_k") && arity == 2) {
    if (!get_i(env, a[1], &i1)) BAD("top_k must be an integer");
    return llama_sampler_init_top_k(i1);
  }
  if ((is_tag(env, a[0], "top_p") || is_tag(env, a[0], "min_p") || is_tag(env, a[0], "typical")) && arity == 3) {
    if (!get_f(env, a[1], &f1)) BADF("probability", a[1]);
    if (!enif_get_uint(env, a[2], &mk)) BAD("min_keep must be a non-negative integer");
    min_keep = mk;
    if (is_tag(env, a[0], "top_p")) return llama_sampler_init_top_p(f1, min_keep);
    if (is_tag(env, a[0], "min_p")) return llama_sampler_init_min_p(f1, min_keep);
    return llama_sampler_init_typical(f1, min_keep);
  }
  if (is_tag(env, a[0], "temp") && arity == 2) {
    if (!get_f(env, a[1], &f1)) BADF("temp", a[1]);
    return llama_sampler_init_temp(f1);
  }
  if (is_tag(env, a[0], "temp_ext") && arity == 4) {
    if (!get_f(env, a[1], &f1)) BADF("temp", a[1]);
    if (!get_f(env, a[2], &f2)) BADF("dynatemp_range", a[2]);
    if (!get_f(env, a[3], &f3)) BADF("dynatemp_exponent", a[3]);
    return llama_sampler_init_temp_ext(f1, f2, f3);
  }
  if (is_tag(env, a[0], "xtc") && arity == 5) {
    if (!get_f(env, a[1], &f1)) BADF("xtc_probability", a[1]);
    if (!get_f(env, a[2], &f2)) BADF("xtc_threshold", a[2]);
    if (!enif_get_uint(env, a[3], &mk) || !get_u(env, a[4], &seed)) BAD("bad xtc arguments (min_keep, seed)");
    return llama_sampler_init_xtc(f1, f2, mk, seed);
  }
  if (is_tag(env, a[0], "top_n_sigma") && arity == 2) {
    if (!get_f(env, a[1], &f1)) BADF("top_n_sigma", a[1]);
    return llama_sampler_init_top_n_sigma(f1);
  }
  if (is_tag(env, a[0], "mirostat") && arity == 5) {
    if (!get_f(env, a[2], &f1)) BADF("mirostat_tau", a[2]);
    if (!get_f(env, a[3], &f2)) BADF("mirostat_eta", a[3]);
    if (!get_u(env, a[1], &seed) || !get_i(env, a[4], &i1) || i1 <= 0) BAD("bad mirostat arguments (seed, m > 0)");
    return llama_sampler_init_mirostat(lcx_model_n_vocab(m), seed, f1, f2, i1);
  }
  if (is_tag(env, a[0], "mirostat_v2") && arity == 4) {
    if (!get_f(env, a[2], &f1)) BADF("mirostat_tau", a[2]);
    if (!get_f(env, a[3], &f2)) BADF("mirostat_eta", a[3]);
    if (!get_u(env, a[1], &seed)) BAD("bad mirostat_v2 arguments (seed)");
    return llama_sampler_init_mirostat_v2(seed, f1, f2);
  }
  if (is_tag(env, a[0], "penalties") && arity == 5) {
    if (!get_i(env, a[1], &i1) || i1 < 0 || i1 > MAX_PENALTY_WINDOW) BAD("penalty_last_n must be in 0..1048576");
    if (!get_f(env, a[2], &f1)) BADF("repeat_penalty", a[2]);
    if (f1 <= 0) BAD("repeat_penalty must be > 0");
    if (!get_f(env, a[3], &f2)) BADF("frequency_penalty", a[3]);
    if (!get_f(env, a[4], &f3)) BADF("presence_penalty", a[4]);
    return lcx_sampler_init_penalties(lcx_model_n_vocab(m), i1, f1, f2, f3);
  }
  if (is_tag(env, a[0], "dry") && arity == 6) {
    unsigned nb;
    if (!get_f(env, a[1], &f1)) BADF("dry_multiplier", a[1]);
    if (!get_f(env, a[2], &f2)) BADF("dry_base", a[2]);
    if (!get_i(env, a[3], &i1) || i1 < 0) BAD("dry_allowed_length must be a non-negative integer");
    if (!get_i(env, a[4], &i2) || i2 < 0 || i2 > MAX_PENALTY_WINDOW) BAD("dry_penalty_last_n must be in 0..1048576");
    if (!enif_get_list_length(env, a[5], &nb)) BAD("dry sequence breakers must be a list");
    if (nb > 64) BAD("at most 64 dry sequence breakers are allowed");
    const char *breakers[64];
    ERL_NIF_TERM head, tail = a[5];
    unsigned got = 0;
    bool ok = true;
    for (unsigned i = 0; i < nb && ok; i++) {
      enif_get_list_cell(env, tail, &head, &tail);
      char *s = dup_cstr(env, head);
      if (!s)
        ok = false;
      else
        breakers[got++] = s;
    }
    struct llama_sampler *smpl = ok ? lcx_sampler_init_dry(lcx_model_vocab(m), f1, f2, i1, i2, breakers, got) : NULL;
    for (unsigned i = 0; i < got; i++)
      enif_free((void *)breakers[i]);
    if (!ok) BAD("dry sequence breakers must be binaries without NUL bytes");
    if (!smpl) {
      *err = lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception());
      return NULL;
    }
    return smpl;
  }
  if (is_tag(env, a[0], "logit_bias") && arity == 2) {
    unsigned n;
    if (!enif_get_list_length(env, a[1], &n)) BAD("logit_bias must be a list");
    llama_logit_bias *lb = enif_alloc(sizeof(llama_logit_bias) * (n ? n : 1));
    ERL_NIF_TERM head, tail = a[1];
    for (unsigned i = 0; i < n; i++) {
      int ar;
      const ERL_NIF_TERM *pair;
      enif_get_list_cell(env, tail, &head, &tail);
      double bias;
      if (!enif_get_tuple(env, head, &ar, &pair) || ar != 2 || !get_i(env, pair[0], &i1) ||
          !lcx_get_double(env, pair[1], &bias)) {
        enif_free(lb);
        BAD("logit_bias entries must be {token, bias}");
      }
      if (i1 < 0 || i1 >= lcx_model_n_vocab(m)) {
        enif_free(lb);
        *err = lcx_invalid_token(env, enif_make_int(env, i1), lcx_model_n_vocab(m));
        return NULL;
      }
      lb[i].token = i1;
      // beyond ±1e6 a bias only breaks llama.cpp's bucket sort; -1e6 already bans
      lb[i].bias = bias > MAX_LOGIT_BIAS ? MAX_LOGIT_BIAS : bias < -MAX_LOGIT_BIAS ? -MAX_LOGIT_BIAS : (float)bias;
    }
    struct llama_sampler *smpl = llama_sampler_init_logit_bias(lcx_model_n_vocab(m), (int32_t)n, lb);
    enif_free(lb);
    return smpl;
  }
  if (is_tag(env, a[0], "grammar") && arity == 3) {
    char *g = dup_cstr(env, a[1]);
    char *root = dup_cstr(env, a[2]);
    struct llama_sampler *smpl = g && root ? grammar_stage(env, m, g, root, err) : NULL;
    if (!g || !root) *err = lcx_raise(env, "grammar and root must be binaries without NUL bytes");
    if (g) enif_free(g);
    if (root) enif_free(root);
    return smpl;
  }
#undef BAD
#undef BADF
  *err = lcx_raise(env, "unknown sampler stage");
  return NULL;
}

// sampler_create(model, [stage]) -> {:ok, ref} | {:error, reason}
LCX_NIF(nif_sampler_create) {
  lcx_model *m = lcx_get_model(env, argv[0]);
  if (!m) return lcx_raise(env, "expected a model reference");
  unsigned n;
  if (!enif_get_list_length(env, argv[1], &n) || n == 0)
    return lcx_raise(env, "sampler stages must be a non-empty list");
  if (!lcx_model_acquire(m)) return lcx_err(env, LCX_E_closed);
  struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
  cp.no_perf = false;
  struct llama_sampler *chain = llama_sampler_chain_init(cp);
  ERL_NIF_TERM head, tail = argv[1], err;
  for (unsigned i = 0; i < n; i++) {
    enif_get_list_cell(env, tail, &head, &tail);
    struct llama_sampler *stage = build_stage(env, m, head, &err);
    if (!stage) {
      llama_sampler_free(chain);
      lcx_model_release(m, false);
      return err;
    }
    llama_sampler_chain_add(chain, stage);
  }
  lcx_sampler *s = enif_alloc_resource(LCX_SAMPLER_RT, sizeof(lcx_sampler));
  if (s) memset(s, 0, sizeof *s);
  if (!s || !lcx_owner_init(&s->owner, "lcx_sampler")) {
    if (s) enif_release_resource(s); // empty: its destructor has nothing to free
    llama_sampler_free(chain);
    lcx_model_release(m, false);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  s->chain = chain;
  s->model = m;
  atomic_fetch_add(&lcx_live_samplers, 1);
  ERL_NIF_TERM t = enif_make_resource(env, s);
  enif_release_resource(s);
  return lcx_ok(env, t);
}

// Claims a sampler alone (accept, reset).
static lcx_sampler *claim_sampler(ErlNifEnv *env, ERL_NIF_TERM t, lcx_claim *who, ERL_NIF_TERM *err) {
  lcx_sampler *s = lcx_get_sampler(env, t);
  if (!s) {
    *err = lcx_raise(env, "expected a sampler reference");
    return NULL;
  }
  lcx_claim_result r = lcx_owner_claim(&s->owner, who);
  if (r != LCX_CLAIM_OK) {
    *err = lcx_err(env, r == LCX_CLAIM_BUSY ? LCX_E_busy : LCX_E_closed);
    return NULL;
  }
  return s;
}

// sampler_accept(sampler, token)
LCX_NIF(nif_sampler_accept) {
  int token;
  ERL_NIF_TERM r;
  if (!lcx_get_sampler(env, argv[0])) return lcx_raise(env, "expected a sampler reference");
  if (!enif_get_int(env, argv[1], &token)) return lcx_raise(env, "token must be an integer");
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_sampler *s = claim_sampler(env, argv[0], &me, &r);
  if (!s) return r;
  if (token < 0 || token >= lcx_model_n_vocab(s->model))
    r = lcx_invalid_token(env, enif_make_int(env, token), lcx_model_n_vocab(s->model));
  else if (!lcx_sampler_accept(s->chain, token))
    r = lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception());
  else
    r = ATOM_ok;
  lcx_owner_release(&s->owner, &me);
  return r;
}

LCX_NIF(nif_sampler_reset) {
  ERL_NIF_TERM r;
  lcx_claim me = LCX_CALL_CLAIM(env);
  lcx_sampler *s = claim_sampler(env, argv[0], &me, &r);
  if (!s) return r;
  r = lcx_chain_reset(s->chain) ? ATOM_ok : lcx_err_msg(env, LCX_E_sampler_failed, lcx_last_exception());
  lcx_owner_release(&s->owner, &me);
  return r;
}

// sampler_free(sampler): cancels a generation or stream using it, waits for it
// to let go (one token), then frees.
LCX_NIF(nif_sampler_free) {
  lcx_sampler *s = lcx_get_sampler(env, argv[0]);
  if (!s) return lcx_raise(env, "expected a sampler reference");
  lcx_owner_close(&s->owner, destroy_now, s);
  return ATOM_ok;
}
