// Every reason the NIF returns in {:error, reason} or {:error, {reason, detail}},
// in one table (mirrored by LlamaCppEx.Error's @type reason). One policy for
// out of memory: {:error, :out_of_memory}, never an exception.
#ifndef LCX_ERRORS_H
#define LCX_ERRORS_H

#include <erl_nif.h>

#define LCX_REASONS(X)                                                                                                 \
  X(closed)               /* the object was freed */                                                                   \
  X(busy)                 /* a stream holds the object */                                                              \
  X(out_of_memory)        /* an allocation failed */                                                                   \
  X(context_overflow)     /* the prompt does not fit in the context */                                                 \
  X(empty_prompt)         /* nothing to decode */                                                                      \
  X(invalid_token)        /* {id, n_vocab} */                                                                          \
  X(decode_failed)        /* llama_decode failed: its code or llama.cpp's message */                                   \
  X(no_kv_slot)           /* llama_decode found no room in the KV cache */                                             \
  X(aborted)              /* a decode was cancelled (Context.decode) */                                                \
  X(sampler_failed)       /* llama.cpp threw while sampling */                                                         \
  X(model_mismatch)       /* a context and a sampler of different models */                                            \
  X(no_logits)            /* nothing to sample from yet */                                                             \
  X(invalid_grammar)      /* the grammar did not parse */                                                              \
  X(load_failed)          /* llama.cpp could not load the file */                                                      \
  X(load_cancelled)       /* the progress callback cancelled the load */                                               \
  X(context_failed)       /* llama.cpp could not create the context */                                                 \
  X(context_too_large)    /* the context would not fit in memory */                                                    \
  X(thread_failed)        /* a native thread could not start */                                                        \
  X(exception)            /* llama.cpp threw */                                                                        \
  X(template_failed)      /* a chat template did not render */                                                         \
  X(unknown_template)     /* no such built-in template */                                                              \
  X(invalid_utf8)         /* text that must be UTF-8 is not */                                                         \
  X(tokenize_failed)      /* llama.cpp could not tokenize */                                                           \
  X(detokenize_failed)    /* llama.cpp could not render a token's text */                                              \
  X(embeddings_disabled)  /* the context was made without embeddings: true */                                          \
  X(unsupported_pooling)  /* pooling type the context cannot embed with */                                             \
  X(no_embeddings)        /* llama.cpp returned no embeddings */                                                       \
  X(non_finite_embedding) /* an embedding holds NaN or an infinity */                                                  \
  X(unsupported_kv_type)  /* a KV cache type whose block does not divide the head size */                              \
  X(file_not_found)       /* Model.load: no such file */                                                               \
  X(file_error)           /* Model.load: {posix, path} */                                                              \
  X(not_regular_file)     /* Model.load: {device | other, path} (a FIFO, a socket, ...) */                             \
  X(not_gguf)             /* Model.load: the file does not start with GGUF */                                          \
  X(shift_unsupported)    /* context_shift: true on a context whose memory cannot shift */                             \
  X(invalid_state)        /* a state blob that is malformed or not of this context: message */                         \
  X(state_load_failed)    /* llama.cpp refused a blob (the target is left empty): message */                           \
  X(state_unsupported)    /* saved state of a model whose memory this library cannot check */

typedef enum {
#define LCX_REASON_ENUM(name) LCX_E_##name,
  LCX_REASONS(LCX_REASON_ENUM)
#undef LCX_REASON_ENUM
      LCX_N_REASONS
} lcx_reason;

void lcx_init_reasons(ErlNifEnv *env);
ERL_NIF_TERM lcx_reason_atom(lcx_reason r);
// {:error, reason}
ERL_NIF_TERM lcx_err(ErlNifEnv *env, lcx_reason r);
// {:error, {reason, detail}}
ERL_NIF_TERM lcx_err_detail(ErlNifEnv *env, lcx_reason r, ERL_NIF_TERM detail);
// {:error, {reason, a, b}}
ERL_NIF_TERM lcx_err_detail2(ErlNifEnv *env, lcx_reason r, ERL_NIF_TERM a, ERL_NIF_TERM b);
// {:error, {reason, "message"}} (the message made valid UTF-8)
ERL_NIF_TERM lcx_err_msg(ErlNifEnv *env, lcx_reason r, const char *msg);

#endif
