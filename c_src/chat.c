// Chat templates through llama_chat_apply_template (llama.cpp's built-in
// template engine; it recognises the model's Jinja template or a named one).
#include <string.h>

#include "lcx.h"

// chat_apply_template(template, [{role, content}], add_assistant) -> {:ok, binary} | {:error, reason}
LCX_NIF(nif_chat_apply_template) {
  ErlNifBinary tmpl_bin;
  bool add_ass;
  unsigned n;
  if (!enif_inspect_binary(env, argv[0], &tmpl_bin) || memchr(tmpl_bin.data, 0, tmpl_bin.size))
    return lcx_raise(env, "template must be a binary without NUL bytes");
  if (!enif_get_list_length(env, argv[1], &n)) return lcx_raise(env, "messages must be a list");
  if (!lcx_get_bool(env, argv[2], &add_ass)) return lcx_raise(env, "add_assistant must be a boolean");
  char *tmpl = enif_alloc(tmpl_bin.size + 1);
  struct llama_chat_message *msgs = enif_alloc(sizeof(struct llama_chat_message) * (n ? n : 1));
  char **strings = enif_alloc(sizeof(char *) * 2 * (n ? n : 1));
  unsigned n_strings = 0;
  size_t total = tmpl_bin.size;
  ERL_NIF_TERM result = 0;
  memcpy(tmpl, tmpl_bin.data, tmpl_bin.size);
  tmpl[tmpl_bin.size] = '\0';
  ERL_NIF_TERM head, tail = argv[1];
  for (unsigned i = 0; i < n; i++) {
    int arity;
    const ERL_NIF_TERM *pair;
    ErlNifBinary role, content;
    enif_get_list_cell(env, tail, &head, &tail);
    if (!enif_get_tuple(env, head, &arity, &pair) || arity != 2 || !enif_inspect_binary(env, pair[0], &role) ||
        !enif_inspect_binary(env, pair[1], &content) || memchr(role.data, 0, role.size) ||
        memchr(content.data, 0, content.size)) {
      result = lcx_raise(env, "messages must be {role, content} binaries without NUL bytes");
      goto done;
    }
    char *r = enif_alloc(role.size + 1), *c = enif_alloc(content.size + 1);
    memcpy(r, role.data, role.size);
    r[role.size] = '\0';
    memcpy(c, content.data, content.size);
    c[content.size] = '\0';
    strings[n_strings++] = r;
    strings[n_strings++] = c;
    msgs[i].role = r;
    msgs[i].content = c;
    total += role.size + content.size;
  }
  {
    if (total > (size_t)INT32_MAX / 4) {
      result = lcx_raise(env, "conversation is too large");
      goto done;
    }
    int32_t cap = (int32_t)(total * 2 + 256);
    char *buf = enif_alloc((size_t)cap);
    bool threw;
    int32_t len = lcx_chat_apply_template(tmpl, msgs, n, add_ass, buf, cap, &threw);
    if (!threw && len > cap) {
      enif_free(buf);
      cap = len;
      buf = enif_alloc((size_t)cap);
      len = lcx_chat_apply_template(tmpl, msgs, n, add_ass, buf, cap, &threw);
    }
    if (threw)
      result = lcx_err_msg(env, LCX_E_template_failed, lcx_last_exception());
    else if (len < 0)
      result = lcx_err(env, LCX_E_unknown_template);
    else
      result = lcx_ok(env, lcx_binary(env, buf, (size_t)len));
    enif_free(buf);
  }
done:
  for (unsigned i = 0; i < n_strings; i++)
    enif_free(strings[i]);
  enif_free(strings);
  enif_free(msgs);
  enif_free(tmpl);
  return result;
}

LCX_NIF(nif_chat_builtin_templates) {
  const char *names[128];
  int32_t n = llama_chat_builtin_templates(names, 128);
  if (n > 128) n = 128;
  ERL_NIF_TERM list = enif_make_list(env, 0);
  for (int32_t i = n; i > 0; i--)
    list = enif_make_list_cell(env, lcx_cstr(env, names[i - 1]), list);
  return list;
}
