// Models: loading (dirty IO), introspection (normal), metadata, explicit free.
//
// A model is pinned by every context and sampler made from it (their
// "dependants"). Model.free/1 marks it closed at once; the llama_model itself is
// freed when the last dependant goes, so a live context never sees freed weights.
#define _POSIX_C_SOURCE 200809L // O_CLOEXEC, pread
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "grammar_stack.h"
#include "lcx.h"
#include "lora.h"
#include "model.h"
#include "sampler.h"

struct lcx_model {
  ErlNifRWLock *lock; // read: use of `model`; write: free
  struct llama_model *model;
  const struct llama_vocab *vocab;
  int32_t n_vocab;
  // vocabulary facts read once at load: grammar sampling recurses once per byte
  // of a token's text, and the Elixir side picks normal or dirty schedulers
  // for tokenizer calls from them
  int32_t max_piece;      // longest token text in bytes (special tokens as text)
  int32_t n_user_defined; // user-defined tokens: matched literally in every tokenize
  int32_t n_special;      // those plus control and unknown tokens (with parse_special)
  ErlNifMutex *dep_mu;    // guards `dependants`; never held across llama.cpp calls
  // guards llama.cpp's list of the model's LoRA adapters (llama_model::loras,
  // a std::set): see lcx_model_adapters_lock
  ErlNifMutex *adapters_mu;
  int dependants;     // live contexts + samplers
  atomic_bool closed; // free/1 called; llama_model freed when dependants hit 0
  bool vocab_only;    // no weights: no contexts
};

// A model load in progress. With a progress function, each progress report
// waits for the function's answer (continue or cancel), so cancelling is exact;
// the process running the function is monitored, and its death cancels.
typedef struct lcx_load {
  atomic_int cancel;
  ErlNifMutex *mu;
  ErlNifCond *cv;
  long answered; // under mu
  ErlNifMonitor mon;
} lcx_load;

static ErlNifResourceType *LCX_MODEL_RT;
static ErlNifResourceType *LCX_LOAD_RT;
atomic_long lcx_live_models;

static void free_llama_model(void *p) {
  llama_model_free(*(struct llama_model **)p);
  atomic_fetch_sub(&lcx_live_models, 1);
  lcx_janitor_trim_soon();
}

static void model_dtor(ErlNifEnv *env, void *obj) {
  lcx_model *m = obj;
  // Nothing can use the model now (users hold references): no lock needed.
  if (m->model) lcx_dispose(free_llama_model, &m->model, sizeof m->model, true);
  if (m->lock) enif_rwlock_destroy(m->lock);
  if (m->dep_mu) enif_mutex_destroy(m->dep_mu);
  if (m->adapters_mu) enif_mutex_destroy(m->adapters_mu);
}

void lcx_model_adapters_lock(lcx_model *m) { enif_mutex_lock(m->adapters_mu); }
void lcx_model_adapters_unlock(lcx_model *m) { enif_mutex_unlock(m->adapters_mu); }

// Frees the weights once readers (tokenize, introspection) are done.
static void free_weights(lcx_model *m) {
  enif_rwlock_rwlock(m->lock);
  if (m->model) lcx_dispose(free_llama_model, &m->model, sizeof m->model, false);
  m->model = NULL;
  m->vocab = NULL;
  enif_rwlock_rwunlock(m->lock);
}

static void free_weights_and_release(void *arg) {
  free_weights(arg);
  enif_release_resource(arg);
}

bool lcx_model_acquire(lcx_model *m) {
  enif_mutex_lock(m->dep_mu);
  bool ok = !atomic_load(&m->closed);
  if (ok) m->dependants++;
  enif_mutex_unlock(m->dep_mu);
  if (ok) enif_keep_resource(m);
  return ok;
}

void lcx_model_release(lcx_model *m, bool in_destructor) {
  enif_mutex_lock(m->dep_mu);
  bool last = --m->dependants == 0 && atomic_load(&m->closed);
  enif_mutex_unlock(m->dep_mu);
  if (last && in_destructor) {
    // a destructor may run on a normal scheduler: waiting there for readers
    // to let go of the write lock would block it, so the janitor does it
    enif_keep_resource(m);
    lcx_janitor_run(free_weights_and_release, m);
  } else if (last) {
    free_weights(m);
  }
  enif_release_resource(m);
}

static void load_cancel(lcx_load *l) {
  enif_mutex_lock(l->mu);
  atomic_store(&l->cancel, 1);
  enif_cond_broadcast(l->cv);
  enif_mutex_unlock(l->mu);
}

static void load_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) { load_cancel(obj); }

static void load_dtor(ErlNifEnv *env, void *obj) {
  lcx_load *l = obj;
  if (l->cv) enif_cond_destroy(l->cv);
  if (l->mu) enif_mutex_destroy(l->mu);
}

int lcx_model_load_types(ErlNifEnv *env) {
  LCX_MODEL_RT = enif_open_resource_type(env, NULL, "lcx_model", model_dtor, ERL_NIF_RT_CREATE, NULL);
  ErlNifResourceTypeInit init = {.dtor = load_dtor, .stop = NULL, .down = load_down};
  LCX_LOAD_RT = enif_open_resource_type_x(env, "lcx_load", &init, ERL_NIF_RT_CREATE, NULL);
  return LCX_MODEL_RT && LCX_LOAD_RT ? 0 : -1;
}

// ---- loading ---------------------------------------------------------------------

typedef struct {
  lcx_load *load;
  ErlNifEnv *caller_env;
  ErlNifPid pid;
  bool has_pid;
  ERL_NIF_TERM ref;   // in ref_env (msg_env is cleared after every send)
  ErlNifEnv *ref_env; // holds ref for the whole load
  ErlNifEnv *msg_env;
  float last_sent;
  long sent;
} progress_state;

static bool progress_cb(float progress, void *user_data) {
  progress_state *st = user_data;
  if (st->has_pid && (progress >= st->last_sent + 0.01f || (progress >= 1.0f && st->last_sent < 1.0f))) {
    st->last_sent = progress;
    ERL_NIF_TERM msg = enif_make_tuple3(st->msg_env, ATOM_load_progress, enif_make_copy(st->msg_env, st->ref),
                                        enif_make_double(st->msg_env, progress));
    enif_send(st->caller_env, &st->pid, st->msg_env, msg);
    enif_clear_env(st->msg_env);
    st->sent++;
    if (st->load) { // wait for the progress function's answer
      enif_mutex_lock(st->load->mu);
      while (st->load->answered < st->sent && !atomic_load(&st->load->cancel))
        enif_cond_wait(st->load->cv, st->load->mu);
      enif_mutex_unlock(st->load->mu);
    }
  }
  return !(st->load && atomic_load(&st->load->cancel));
}

// load_handle(answering_pid) -> handle; the pid answers progress reports with
// load_answer/2, and its death cancels the load.
LCX_NIF(nif_load_handle) {
  ErlNifPid pid;
  if (!enif_get_local_pid(env, argv[0], &pid)) return lcx_raise(env, "expected a local pid");
  lcx_load *load = enif_alloc_resource(LCX_LOAD_RT, sizeof(lcx_load));
  if (!load) return lcx_err(env, LCX_E_out_of_memory);
  memset(load, 0, sizeof *load);
  atomic_init(&load->cancel, 0);
  load->mu = enif_mutex_create("lcx_load");
  load->cv = enif_cond_create("lcx_load");
  if (!load->mu || !load->cv) {
    enif_release_resource(load); // the destructor frees what was created
    return lcx_err(env, LCX_E_out_of_memory);
  }
  if (enif_monitor_process(env, load, &pid, &load->mon) != 0) atomic_store(&load->cancel, 1);
  ERL_NIF_TERM t = enif_make_resource(env, load);
  enif_release_resource(load);
  return t;
}

LCX_NIF(nif_load_cancel) {
  void *p;
  if (!enif_get_resource(env, argv[0], LCX_LOAD_RT, &p)) return lcx_raise(env, "expected a load handle");
  load_cancel(p);
  return ATOM_ok;
}

// load_answer(handle, continue?) answers one progress report
LCX_NIF(nif_load_answer) {
  void *p;
  bool go;
  if (!enif_get_resource(env, argv[0], LCX_LOAD_RT, &p)) return lcx_raise(env, "expected a load handle");
  if (!lcx_get_bool(env, argv[1], &go)) return lcx_raise(env, "expected a boolean");
  lcx_load *l = p;
  enif_mutex_lock(l->mu);
  l->answered++;
  if (!go) atomic_store(&l->cancel, 1);
  enif_cond_broadcast(l->cv);
  enif_mutex_unlock(l->mu);
  return ATOM_ok;
}

// Decodes one token with one thread, on this thread, inside the barrier. A
// model whose hyperparameters trip a llama.cpp assertion during compute (say a
// NaN norm epsilon) would otherwise abort the VM at its first real decode,
// where the assertion may fire on an OpenMP worker thread that no barrier
// covers. Returns NULL when the model computes, else why it does not.
static const char *warm_up(struct llama_model *model) {
  struct llama_context_params p = llama_context_default_params();
  p.n_ctx = 256;
  p.n_batch = p.n_ubatch = 1;
  p.n_seq_max = 1;
  p.n_threads = p.n_threads_batch = 1;
  p.no_perf = true;
  struct llama_context *ctx = lcx_init_from_model(model, p);
  if (!ctx) return NULL; // not the model's fault (memory): contexts will report it
  const struct llama_vocab *vocab = llama_model_get_vocab(model);
  llama_token tok = llama_vocab_bos(vocab);
  if (tok < 0 || tok >= llama_vocab_n_tokens(vocab)) tok = 0;
  bool threw = false;
  lcx_decode(ctx, llama_batch_get_one(&tok, 1), &threw);
  llama_free(ctx);
  return threw ? lcx_last_exception() : NULL;
}

// ---- the model file ------------------------------------------------------------------

// The posix atom File.posix/0 uses for the errors open/stat/pread can give here.
static ERL_NIF_TERM posix_atom(ErlNifEnv *env, int e) {
  static const struct {
    int code;
    const char *name;
  } table[] = {{EACCES, "eacces"},       {EPERM, "eperm"},   {ENOENT, "enoent"}, {ENOTDIR, "enotdir"},
               {ELOOP, "eloop"},         {EMFILE, "emfile"}, {ENFILE, "enfile"}, {ENAMETOOLONG, "enametoolong"},
               {ENOMEM, "enomem"},       {EISDIR, "eisdir"}, {ENXIO, "enxio"},   {ENODEV, "enodev"},
               {EOVERFLOW, "eoverflow"}, {EIO, "eio"}};
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (table[i].code == e) return enif_make_atom(env, table[i].name);
  return enif_make_atom(env, "eio");
}

static ERL_NIF_TERM file_error(ErlNifEnv *env, int e, ERL_NIF_TERM path) {
  if (e == ENOENT) return lcx_err_detail(env, LCX_E_file_not_found, path);
  return lcx_err_detail2(env, LCX_E_file_error, posix_atom(env, e), path);
}

// {:error, reason} for a path that is not a regular file (the shapes of Model.load/2).
static ERL_NIF_TERM not_regular(ErlNifEnv *env, mode_t mode, ERL_NIF_TERM path) {
  if (S_ISDIR(mode)) return file_error(env, EISDIR, path);
  const char *type = S_ISCHR(mode) || S_ISBLK(mode) ? "device" : "other";
  return lcx_err_detail2(env, LCX_E_not_regular_file, enif_make_atom(env, type), path);
}

// "name-00001-of-00003.gguf": llama.cpp opens the other parts of a split model
// by names derived from this one, so such a path must reach it unchanged.
static bool is_split_name(const char *path) {
  size_t n = strlen(path);
  static const char pat[] = "-#####-of-#####.gguf";
  size_t m = sizeof pat - 1;
  if (n < m) return false;
  for (size_t i = 0; i < m; i++) {
    char c = path[n - m + i];
    if (pat[i] == '#' ? (c < '0' || c > '9') : c != pat[i]) return false;
  }
  return true;
}

// Opens a GGUF file without ever blocking: stat first (a FIFO, socket,
// device or directory is refused before anything opens it), then open with
// O_NONBLOCK and check the opened file again (the path may have been swapped
// in between) and its GGUF magic. Returns the fd, or -1 with *err set
// (*st: the opened file's stat). Model and adapter loads share it.
int lcx_open_gguf(ErlNifEnv *env, const char *path, ERL_NIF_TERM path_term, struct stat *st, ERL_NIF_TERM *err) {
  if (stat(path, st) != 0) {
    *err = file_error(env, errno, path_term);
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    *err = not_regular(env, st->st_mode, path_term);
    return -1;
  }
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    *err = file_error(env, errno, path_term);
    return -1;
  }
  if (fstat(fd, st) != 0) {
    *err = file_error(env, errno, path_term);
    close(fd);
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    *err = not_regular(env, st->st_mode, path_term);
    close(fd);
    return -1;
  }
  unsigned char magic[4];
  if (pread(fd, magic, 4, 0) != 4 || memcmp(magic, "GGUF", 4) != 0) {
    *err = lcx_err_detail(env, LCX_E_not_gguf, path_term);
    close(fd);
    return -1;
  }
  return fd;
}

// Opens the model file with lcx_open_gguf.
//
// llama.cpp opens the file itself, by name. On Linux it is handed
// /proc/self/fd/<fd>, which names the very file checked here, so swapping the
// path afterwards cannot make it open a FIFO. Split models keep their name
// (llama.cpp derives the names of the other parts from it; those parts are
// opened unchecked), as do systems without /proc.
static int open_model_file(ErlNifEnv *env, const char *path, ERL_NIF_TERM path_term, char *llama_path,
                           size_t llama_path_size, ERL_NIF_TERM *err) {
  struct stat st;
  int fd = lcx_open_gguf(env, path, path_term, &st, err);
  if (fd < 0) return -1;
  snprintf(llama_path, llama_path_size, "%s", path);
#ifdef __linux__
  char by_fd[64];
  struct stat st_fd;
  snprintf(by_fd, sizeof by_fd, "/proc/self/fd/%d", fd);
  if (!is_split_name(path) && stat(by_fd, &st_fd) == 0 && st_fd.st_dev == st.st_dev && st_fd.st_ino == st.st_ino)
    snprintf(llama_path, llama_path_size, "%s", by_fd);
#endif
  return fd;
}

// llama.cpp's messages name the path it was given: put the caller's back.
static void unname_fd_path(char *out, size_t size, const char *msg, const char *llama_path, const char *path) {
  size_t from = strlen(llama_path), used = 0;
  out[0] = '\0';
  while (*msg && used + 1 < size) {
    const char *at = strcmp(llama_path, path) != 0 ? strstr(msg, llama_path) : NULL;
    size_t head = at ? (size_t)(at - msg) : strlen(msg);
    int n = snprintf(out + used, size - used, "%.*s%s", (int)head, msg, at ? path : "");
    if (n < 0 || (size_t)n >= size - used) break; // truncated: out is still a string
    used += (size_t)n;
    msg += head + (at ? from : 0);
  }
}

// Counts the literal tokens of the vocabulary (a pass over it at load, on the
// loading dirty scheduler); max_piece comes from lcx_vocab_check_pieces.
static void read_vocab_facts(lcx_model *m) {
  const int32_t literal = LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN;
  for (llama_token t = 0; t < m->n_vocab; t++) {
    enum llama_token_attr attr = llama_vocab_get_attr(m->vocab, t);
    if (attr & LLAMA_TOKEN_ATTR_USER_DEFINED) m->n_user_defined++;
    if (attr & literal) m->n_special++;
  }
}

// model_load(path, %{n_gpu_layers, use_mmap, use_mlock, vocab_only, warmup}, load_handle, progress_pid | nil, ref)
LCX_NIF(nif_model_load) {
  ErlNifBinary path_bin;
  if (!enif_inspect_binary(env, argv[0], &path_bin) || path_bin.size == 0 || path_bin.size > 4096 ||
      memchr(path_bin.data, 0, path_bin.size))
    return lcx_raise(env, "model path must be a non-empty binary without NUL bytes");
  struct llama_model_params params = llama_model_default_params();
  ERL_NIF_TERM v;
  int n_gpu_layers;
  bool mmap_ = true, mlock_ = false, vocab_only = false;
  if (!enif_is_map(env, argv[1])) return lcx_raise(env, "options must be a map");
  if (lcx_map_get(env, argv[1], "n_gpu_layers", &v)) {
    if (!enif_get_int(env, v, &n_gpu_layers)) return lcx_raise(env, "n_gpu_layers must be an integer");
    params.n_gpu_layers = n_gpu_layers;
  }
  if (lcx_map_get(env, argv[1], "use_mmap", &v) && !lcx_get_bool(env, v, &mmap_))
    return lcx_raise(env, "use_mmap must be a boolean");
  if (lcx_map_get(env, argv[1], "use_mlock", &v) && !lcx_get_bool(env, v, &mlock_))
    return lcx_raise(env, "use_mlock must be a boolean");
  if (lcx_map_get(env, argv[1], "vocab_only", &v) && !lcx_get_bool(env, v, &vocab_only))
    return lcx_raise(env, "vocab_only must be a boolean");
  bool warmup = true;
  if (lcx_map_get(env, argv[1], "warmup", &v) && !lcx_get_bool(env, v, &warmup))
    return lcx_raise(env, "warmup must be a boolean");
  params.load_mode = mmap_ && mlock_ ? LLAMA_LOAD_MODE_MMAP_MLOCK
                     : mmap_         ? LLAMA_LOAD_MODE_MMAP
                     : mlock_        ? LLAMA_LOAD_MODE_MLOCK
                                     : LLAMA_LOAD_MODE_NONE;
  params.vocab_only = vocab_only;

  char path[4097], llama_path[4097];
  memcpy(path, path_bin.data, path_bin.size);
  path[path_bin.size] = '\0';

  progress_state st = {.caller_env = env, .last_sent = -1.0f};
  void *p;
  if (enif_get_resource(env, argv[2], LCX_LOAD_RT, &p))
    st.load = p;
  else if (!enif_is_identical(argv[2], ATOM_nil))
    return lcx_raise(env, "expected a load handle or nil");
  if (enif_get_local_pid(env, argv[3], &st.pid))
    st.has_pid = true;
  else if (!enif_is_identical(argv[3], ATOM_nil))
    return lcx_raise(env, "progress must be a pid or nil");
  ErlNifPid self;
  // reports that wait for an answer cannot go to the loading process itself
  if (st.load && st.has_pid && enif_self(env, &self) && enif_compare_pids(&self, &st.pid) == 0)
    return lcx_raise(env, "progress reports that wait for answers must go to another process");
  ERL_NIF_TERM file_err;
  int fd = open_model_file(env, path, argv[0], llama_path, sizeof llama_path, &file_err);
  if (fd < 0) return file_err;
  if (st.has_pid) {
    st.msg_env = enif_alloc_env();
    st.ref_env = enif_alloc_env();
    st.ref = enif_make_copy(st.ref_env, argv[4]);
  }
  params.progress_callback = progress_cb;
  params.progress_callback_user_data = &st;

  lcx_log_capture_begin();
  lcx_clear_exception();
  struct llama_model *model = lcx_model_load(llama_path, params);
  const char *why = lcx_log_capture_end();
  close(fd);
  if (st.msg_env) enif_free_env(st.msg_env);
  if (st.ref_env) enif_free_env(st.ref_env);

  if (!model) {
    if (st.load && atomic_load(&st.load->cancel)) return lcx_err(env, LCX_E_load_cancelled);
    const char *exc = lcx_last_exception();
    // an assertion caught by the barrier explains more than the log lines
    const char *msg = strncmp(exc, "llama.cpp assertion", 19) == 0 ? exc : why[0] ? why : exc;
    char named[2048];
    unname_fd_path(named, sizeof named, msg, llama_path, path);
    return lcx_err_msg(env, LCX_E_load_failed, named[0] ? named : "llama_model_load_from_file returned NULL");
  }
  int32_t max_piece = 0; // grammar sampling recurses once per byte of a token's text
  char bad_vocab[600];
  if (lcx_vocab_check_pieces(llama_model_get_vocab(model), &max_piece, bad_vocab, sizeof bad_vocab) != LCX_PIECES_OK) {
    llama_model_free(model);
    return lcx_err_msg(env, LCX_E_load_failed, bad_vocab);
  }
  if (warmup && !vocab_only) {
    const char *why_not = warm_up(model);
    if (why_not) {
      char msg[600];
      snprintf(msg, sizeof msg, "warm-up decode failed: %s", why_not);
      llama_model_free(model);
      return lcx_err_msg(env, LCX_E_load_failed, msg);
    }
  }
  lcx_model *m = enif_alloc_resource(LCX_MODEL_RT, sizeof(lcx_model));
  if (!m) {
    llama_model_free(model);
    return lcx_err(env, LCX_E_out_of_memory);
  }
  memset(m, 0, sizeof *m);
  m->lock = enif_rwlock_create("lcx_model");
  m->dep_mu = enif_mutex_create("lcx_model_dependants");
  m->adapters_mu = enif_mutex_create("lcx_model_adapters");
  atomic_init(&m->closed, false);
  m->model = model;
  m->vocab = llama_model_get_vocab(model);
  m->n_vocab = llama_vocab_n_tokens(m->vocab);
  m->max_piece = max_piece;
  m->vocab_only = vocab_only;
  read_vocab_facts(m);
  atomic_fetch_add(&lcx_live_models, 1);
  if (!m->lock || !m->dep_mu || !m->adapters_mu) {
    enif_release_resource(m); // the destructor frees the model
    return lcx_err(env, LCX_E_out_of_memory);
  }
  ERL_NIF_TERM t = enif_make_resource(env, m);
  enif_release_resource(m);
  return lcx_ok(env, t);
}

LCX_NIF(nif_model_free) {
  lcx_model *m = lcx_get_model(env, argv[0]);
  if (!m) return lcx_raise(env, "expected a model reference");
  enif_mutex_lock(m->dep_mu);
  atomic_store(&m->closed, true);
  bool unused = m->dependants == 0;
  enif_mutex_unlock(m->dep_mu);
  if (unused) free_weights(m); // waits for readers: this NIF is dirty
  return ATOM_ok;
}

lcx_model *lcx_get_model(ErlNifEnv *env, ERL_NIF_TERM t) {
  void *p;
  return enif_get_resource(env, t, LCX_MODEL_RT, &p) ? p : NULL;
}

struct llama_model *lcx_model_llama(const lcx_model *m) {
  return m->model;
}
const struct llama_vocab *lcx_model_vocab(const lcx_model *m) { return m->vocab; }
int32_t lcx_model_n_vocab(const lcx_model *m) { return m->n_vocab; }
int32_t lcx_model_max_piece(const lcx_model *m) { return m->max_piece; }
bool lcx_model_vocab_only(const lcx_model *m) { return m->vocab_only; }
void lcx_model_unlock(lcx_model *m) { enif_rwlock_runlock(m->lock); }

lcx_model *lcx_read_model(ErlNifEnv *env, ERL_NIF_TERM t, ERL_NIF_TERM *err) {
  lcx_model *m = lcx_get_model(env, t);
  if (!m) {
    *err = lcx_raise(env, "expected a model reference");
    return NULL;
  }
  enif_rwlock_rlock(m->lock);
  if (!m->model || m->closed) {
    enif_rwlock_runlock(m->lock);
    *err = lcx_err(env, LCX_E_closed);
    return NULL;
  }
  return m;
}

// ---- introspection -------------------------------------------------------------------

static ERL_NIF_TERM meta_string(ErlNifEnv *env, int32_t (*get)(const struct llama_model *, int32_t, char *, size_t),
                                const struct llama_model *model, int32_t i) {
  char small[256];
  int32_t n = get(model, i, small, sizeof small);
  if (n < 0) return ATOM_nil;
  if ((size_t)n < sizeof small) return lcx_utf8_binary(env, small, (size_t)n);
  char *big = enif_alloc((size_t)n + 1);
  if (!big) return ATOM_nil;
  get(model, i, big, (size_t)n + 1);
  ERL_NIF_TERM t = lcx_utf8_binary(env, big, (size_t)n);
  enif_free(big);
  return t;
}

// model_info(model) -> map of everything cheap to read once after load
LCX_NIF(nif_model_info) {
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  const struct llama_model *model = m->model;
  char desc[256];
  llama_model_desc(model, desc, sizeof desc);
  char arch[128] = "";
  llama_model_meta_val_str(model, "general.architecture", arch, sizeof arch);
  const char *tmpl = llama_model_chat_template(model, NULL);
  const char *keys[] = {"desc",
                        "size",
                        "n_params",
                        "n_ctx_train",
                        "n_embd",
                        "n_layer",
                        "n_head",
                        "n_head_kv",
                        "n_vocab",
                        "architecture",
                        "chat_template",
                        "has_encoder",
                        "has_decoder",
                        "max_piece_bytes",
                        "n_user_defined_tokens",
                        "n_special_tokens"};
  ERL_NIF_TERM vals[16] = {
      lcx_utf8_binary(env, desc, strlen(desc)),
      enif_make_uint64(env, llama_model_size(model)),
      enif_make_uint64(env, llama_model_n_params(model)),
      enif_make_int(env, llama_model_n_ctx_train(model)),
      enif_make_int(env, llama_model_n_embd(model)),
      enif_make_int(env, llama_model_n_layer(model)),
      // n_head/n_head_kv abort on a model without layers (vocab_only)
      enif_make_int(env, llama_model_n_layer(model) > 0 ? llama_model_n_head(model) : 0),
      enif_make_int(env, llama_model_n_layer(model) > 0 ? llama_model_n_head_kv(model) : 0),
      enif_make_int(env, m->n_vocab),
      arch[0] ? lcx_utf8_binary(env, arch, strlen(arch)) : ATOM_nil,
      tmpl ? lcx_utf8_binary(env, tmpl, strlen(tmpl)) : ATOM_nil,
      llama_model_has_encoder(model) ? ATOM_true : ATOM_false,
      llama_model_has_decoder(model) ? ATOM_true : ATOM_false,
      enif_make_int(env, m->max_piece),
      enif_make_int(env, m->n_user_defined),
      enif_make_int(env, m->n_special),
  };
  enif_rwlock_runlock(m->lock);
  return lcx_ok(env, lcx_make_map(env, keys, vals, 16));
}

// model_metadata(model) -> %{key => value} (all GGUF key/values as strings)
LCX_NIF(nif_model_metadata) {
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  int32_t n = llama_model_meta_count(m->model);
  ERL_NIF_TERM map = enif_make_new_map(env);
  for (int32_t i = 0; i < n; i++) {
    ERL_NIF_TERM k = meta_string(env, llama_model_meta_key_by_index, m->model, i);
    ERL_NIF_TERM v = meta_string(env, llama_model_meta_val_str_by_index, m->model, i);
    if (!enif_is_identical(k, ATOM_nil)) enif_make_map_put(env, map, k, v, &map);
  }
  enif_rwlock_runlock(m->lock);
  return lcx_ok(env, map);
}

// model_chat_template(model, name | nil) -> binary | nil
LCX_NIF(nif_model_chat_template) {
  if (!lcx_get_model(env, argv[0])) return lcx_raise(env, "expected a model reference");
  char name[128];
  bool named = false;
  if (!enif_is_identical(argv[1], ATOM_nil)) {
    ErlNifBinary b;
    if (!enif_inspect_binary(env, argv[1], &b) || b.size >= sizeof name || memchr(b.data, 0, b.size))
      return lcx_raise(env, "template name must be a short binary");
    memcpy(name, b.data, b.size);
    name[b.size] = '\0';
    named = true;
  }
  ERL_NIF_TERM err;
  lcx_model *m = lcx_read_model(env, argv[0], &err);
  if (!m) return err;
  const char *t = llama_model_chat_template(m->model, named ? name : NULL);
  ERL_NIF_TERM r = t ? lcx_utf8_binary(env, t, strlen(t)) : ATOM_nil;
  enif_rwlock_runlock(m->lock);
  return lcx_ok(env, r);
}

LCX_NIF(nif_live_counts) {
  ERL_NIF_TERM keys[4] = {ATOM_models, ATOM_contexts, ATOM_samplers, ATOM_loras};
  ERL_NIF_TERM vals[4] = {
      enif_make_long(env, atomic_load(&lcx_live_models)), enif_make_long(env, atomic_load(&lcx_live_contexts)),
      enif_make_long(env, atomic_load(&lcx_live_samplers)), enif_make_long(env, atomic_load(&lcx_live_loras))};
  ERL_NIF_TERM map;
  enif_make_map_from_arrays(env, keys, vals, 4, &map);
  return map;
}

// llama_print_system_info() rebuilds a static std::string on every call: not
// thread-safe, so it is read once at load (lcx_model_init_system_info).
static char system_info[1024];

void lcx_model_init_system_info(void) { snprintf(system_info, sizeof system_info, "%s", llama_print_system_info()); }

LCX_NIF(nif_system_info) { return lcx_cstr(env, system_info); }
