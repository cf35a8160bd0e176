// LoRA adapters: load (dirty IO), the adapter sets contexts apply, free.
//
// llama.cpp registers an adapter with its model and frees whatever adapters
// are left when the model goes, so an adapter here is a dependant of its model
// (lcx_model_acquire): the weights are freed only after the adapter. Contexts
// keep a reference to every adapter they have set (lcx_lora_set), since the
// llama_context holds pointers to them.
#define _POSIX_C_SOURCE 200809L // fdopen
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lcx.h"
#include "lora.h"

struct lcx_lora {
  struct llama_adapter_lora *adapter;
  lcx_model *model; // a dependant: released after the adapter is freed
};

static ErlNifResourceType *LCX_LORA_RT;
atomic_long lcx_live_loras;

typedef struct {
  struct llama_adapter_lora *adapter;
  lcx_model *model;
} native_lora;

// The adapter first (llama_adapter_lora_free unregisters it from the model),
// then the model it pinned.
static void free_native(void *arg) {
  native_lora *n = arg;
  if (n->adapter) {
    lcx_model_adapters_lock(n->model);
    llama_adapter_lora_free(n->adapter); // unregisters it from the model
    lcx_model_adapters_unlock(n->model);
    atomic_fetch_sub(&lcx_live_loras, 1);
  }
  if (n->model) lcx_model_release(n->model, false);
}

static void lora_dtor(ErlNifEnv *env, void *obj) {
  lcx_lora *l = obj;
  native_lora n = {l->adapter, l->model};
  if (n.adapter || n.model) lcx_dispose(free_native, &n, sizeof n, true);
}

int lcx_lora_load_types(ErlNifEnv *env) {
  LCX_LORA_RT = enif_open_resource_type(env, NULL, "lcx_lora", lora_dtor, ERL_NIF_RT_CREATE, NULL);
  return LCX_LORA_RT ? 0 : -1;
}

static lcx_lora *get_lora(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_LORA_RT, &p) ? p : NULL;
}

// ---- loading ------------------------------------------------------------------------

// Decodes one token with the adapter at scale 1, on one thread (this one),
// inside the barrier, as Model.load/2 does for the model: an adapter whose
// tensors make ggml assert (types the kernels do not take, say) is refused
// here instead of aborting the VM at its first use on a worker thread.
// NULL when it computes, else why not.
static const char *warm_up(struct llama_model *model, struct llama_adapter_lora *adapter) {
  struct llama_context_params p = llama_context_default_params();
  p.n_ctx = 256;
  p.n_batch = p.n_ubatch = 1;
  p.n_seq_max = 1;
  p.n_threads = p.n_threads_batch = 1;
  p.no_perf = true;
  struct llama_context *ctx = lcx_init_from_model(model, p);
  if (!ctx) return NULL; // memory, not the adapter: contexts will report it
  float scale = 1.0f;
  const char *why = NULL;
  if (!lcx_set_adapters_lora(ctx, &adapter, 1, &scale)) {
    why = lcx_last_exception();
  } else {
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    llama_token tok = llama_vocab_bos(vocab);
    if (tok < 0 || tok >= llama_vocab_n_tokens(vocab)) tok = 0;
    bool threw = false;
    lcx_decode(ctx, llama_batch_get_one(&tok, 1), &threw);
    if (threw) why = lcx_last_exception();
  }
  llama_free(ctx);
  return why;
}

// lora_load(model, path) -> {:ok, ref} | {:error, reason}
LCX_NIF(nif_lora_load) {
  lcx_model *m = lcx_get_model(env, argv[0]);
  if (!m) return lcx_raise(env, "expected a model reference");
  ErlNifBinary path_bin;
  if (!enif_inspect_binary(env, argv[1], &path_bin) || path_bin.size == 0 || path_bin.size > 4096 ||
      memchr(path_bin.data, 0, path_bin.size))
    return lcx_raise(env, "adapter path must be a non-empty binary without NUL bytes");
  if (lcx_model_vocab_only(m)) return lcx_raise(env, "cannot load an adapter for a vocab_only model");
  char path[4097];
  memcpy(path, path_bin.data, path_bin.size);
  path[path_bin.size] = '\0';

  ERL_NIF_TERM err;
  struct stat st;
  int fd = lcx_open_gguf(env, path, argv[1], &st, &err);
  if (fd < 0) return err;
  FILE *file = fdopen(fd, "rb"); // llama.cpp reads the very file checked
  if (!file) {
    close(fd);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  if (!lcx_model_acquire(m)) {
    fclose(file);
    return lcx_err(env, LCX_E_closed);
  }
  lcx_lora *l = enif_alloc_resource(LCX_LORA_RT, sizeof(lcx_lora));
  if (!l) {
    fclose(file);
    lcx_model_release(m, false);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  memset(l, 0, sizeof *l);
  l->model = m;

  lcx_log_capture_begin();
  lcx_clear_exception();
  lcx_model_adapters_lock(m);
  l->adapter = lcx_adapter_lora_init(lcx_model_llama(m), file); // registers it with the model
  lcx_model_adapters_unlock(m);
  const char *why = lcx_log_capture_end();
  fclose(file);
  if (!l->adapter) {
    const char *exc = lcx_last_exception();
    err = lcx_err_msg(env, LCX_E_load_failed, why[0] ? why : exc[0] ? exc : "llama_adapter_lora_init returned NULL");
    enif_release_resource(l); // the destructor releases the model
    return err;
  }
  atomic_fetch_add(&lcx_live_loras, 1);
  lcx_model_adapters_lock(m); // the warm-up context reads the model's adapters
  const char *broken = warm_up(lcx_model_llama(m), l->adapter);
  lcx_model_adapters_unlock(m);
  if (broken) {
    err = lcx_err_msg(env, LCX_E_load_failed, broken);
    enif_release_resource(l); // frees the adapter, then releases the model
    return err;
  }
  ERL_NIF_TERM t = enif_make_resource(env, l);
  enif_release_resource(l);
  return lcx_ok(env, t);
}

// lora_info(ref) -> %{alpha: float | nil, n_invocation_tokens: n}
LCX_NIF(nif_lora_info) {
  lcx_lora *l = get_lora(env, argv[0]);
  if (!l) return lcx_raise(env, "expected a LoRA adapter reference");
  char buf[64];
  ERL_NIF_TERM alpha = ATOM_nil;
  if (llama_adapter_meta_val_str(l->adapter, "adapter.lora.alpha", buf, sizeof buf) > 0)
    alpha = enif_make_double(env, strtod(buf, NULL));
  static const char *const keys[] = {"alpha", "n_invocation_tokens"};
  ERL_NIF_TERM vals[2] = {alpha, enif_make_uint64(env, llama_adapter_get_alora_n_invocation_tokens(l->adapter))};
  return lcx_make_map(env, keys, vals, 2);
}

// ---- adapter sets ---------------------------------------------------------------------

static void set_insert(lcx_lora_set *s, lcx_lora *l, float scale) {
  unsigned i = s->n;
  while (i > 0 && (uintptr_t)s->items[i - 1] > (uintptr_t)l) {
    s->items[i] = s->items[i - 1];
    s->scales[i] = s->scales[i - 1];
    i--;
  }
  s->items[i] = l;
  s->scales[i] = scale;
  s->n++;
  enif_keep_resource(l);
}

bool lcx_read_lora_set(ErlNifEnv *env, ERL_NIF_TERM list, const lcx_model *model, lcx_lora_set *out,
                       ERL_NIF_TERM *err) {
  memset(out, 0, sizeof *out);
  lcx_lora *seen[LCX_MAX_LORAS];
  unsigned n_seen = 0, len;
  if (!enif_get_list_length(env, list, &len)) {
    *err = lcx_raise(env, "lora must be a list of {adapter, scale}");
    return false;
  }
  if (len > LCX_MAX_LORAS) {
    *err = lcx_raise(env, "at most %d LoRA adapters at once", LCX_MAX_LORAS);
    return false;
  }
  ERL_NIF_TERM head, tail = list;
  bool mismatch = false;
  while (enif_get_list_cell(env, tail, &head, &tail)) {
    const ERL_NIF_TERM *tuple;
    int arity;
    double scale;
    lcx_lora *l;
    if (!enif_get_tuple(env, head, &arity, &tuple) || arity != 2 || !(l = get_lora(env, tuple[0]))) {
      *err = lcx_raise(env, "lora must be a list of {adapter, scale}");
      goto fail;
    }
    if (!lcx_get_double(env, tuple[1], &scale) || !(scale >= -FLT_MAX && scale <= FLT_MAX)) {
      *err = lcx_raise(env, "a LoRA scale must be a finite number within the 32-bit float range");
      goto fail;
    }
    for (unsigned i = 0; i < n_seen; i++)
      if (seen[i] == l) {
        *err = lcx_raise(env, "the same LoRA adapter is given twice");
        goto fail;
      }
    seen[n_seen++] = l;
    if (l->model != model) mismatch = true;
    if ((float)scale != 0.0f) set_insert(out, l, (float)scale);
  }
  if (mismatch) {
    *err = lcx_err(env, LCX_E_model_mismatch);
    goto fail;
  }
  return true;
fail:
  lcx_lora_set_release(out);
  return false;
}

void lcx_lora_set_release(lcx_lora_set *s) {
  for (unsigned i = 0; i < s->n; i++)
    enif_release_resource(s->items[i]);
  s->n = 0;
}

void lcx_lora_set_copy(lcx_lora_set *dst, const lcx_lora_set *src) {
  *dst = *src;
  for (unsigned i = 0; i < dst->n; i++)
    enif_keep_resource(dst->items[i]);
}

bool lcx_lora_set_equal(const lcx_lora_set *a, const lcx_lora_set *b) {
  if (a->n != b->n) return false;
  for (unsigned i = 0; i < a->n; i++)
    if (a->items[i] != b->items[i] || a->scales[i] != b->scales[i]) return false;
  return true;
}

bool lcx_lora_set_apply(struct llama_context *ctx, const lcx_lora_set *s) {
  struct llama_adapter_lora *adapters[LCX_MAX_LORAS];
  float scales[LCX_MAX_LORAS];
  for (unsigned i = 0; i < s->n; i++) {
    adapters[i] = s->items[i]->adapter;
    scales[i] = s->scales[i];
  }
  // llama.cpp asserts on NULL arrays unless n is 0: always pass arrays
  return lcx_set_adapters_lora(ctx, adapters, s->n, scales);
}
