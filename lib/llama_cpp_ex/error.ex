defmodule LlamaCppEx.Error do
  @moduledoc """
  Raised by streams (which cannot return `{:error, reason}`) when generation
  fails, e.g. `%LlamaCppEx.Error{reason: {:context_overflow, info}}`.

  The reasons every function of the library may return in `{:error, reason}`
  are listed in `t:reason/0` (the native ones come from one table,
  `c_src/errors.h`). Misuse (a wrong type, an unknown option) raises
  `ArgumentError` instead.
  """
  defexception [:reason]

  @typedoc """
  Why a call failed.

    * `:closed` - the model, context or sampler was freed.
    * `:busy` - a stream owns the context or sampler until it ends.
    * `:out_of_memory` - a native allocation failed.
    * `{:context_overflow, %{position:, prompt_tokens:, n_ctx:}}` - the prompt
      does not fit in the context (generation itself stops with
      `finish_reason: :context_full` instead).
    * `{:too_long, %{tokens:, max:}}` - a text to embed is longer than the context.
    * `:empty_prompt`, `{:invalid_token, {id, n_vocab}}` - bad token input.
    * `{:decode_failed, code_or_message}`, `:no_kv_slot`, `:aborted`,
      `{:sampler_failed, message}`, `:no_logits` - llama.cpp failed.
    * `:model_mismatch` - a context and a sampler of different models.
    * `{:invalid_grammar, message}` - the grammar did not parse or is too big.
    * `{:invalid_json_schema, message}`, `{:unsupported_json_schema, message}`
      - a JSON schema (`LlamaCppEx.Grammar.from_json_schema/2`, the
      `:json_schema` option) that is wrong, or that uses a construct with no
      grammar here; made in Elixir, not by the NIF.
    * `{:load_failed, message}`, `:load_cancelled` - loading a model.
    * `{:context_failed, message}`, `{:context_too_large, %{needed:, available:}}`
      - creating a context.
    * `:thread_failed`, `{:exception, message}` - native failures.
    * `{:template_failed, message}`, `:unknown_template` - chat templates
      (llama.cpp's named formats); `{:template_error, %{message:, line:}}` - a
      Jinja template failed (`LlamaCppEx.Jinja`: its `raise_exception`, a
      runtime error, a sandbox limit); made in Elixir, not by the NIF.
    * `:invalid_utf8`, `{:tokenize_failed, message}`,
      `{:detokenize_failed, message}` - tokenizing and token text.
    * `:embeddings_disabled`, `{:unsupported_pooling, type}`, `:no_embeddings`,
      `:non_finite_embedding` - embeddings.
    * `{:unsupported_kv_type, info}` - a quantized KV cache type whose block
      does not divide the model's head size.
    * `{:file_not_found, path}`, `{:file_error, posix, path}`,
      `{:not_regular_file, :device | :other, path}`, `{:not_gguf, path}` -
      `LlamaCppEx.Model.load/2` refusing a path before llama.cpp opens it.
    * `:shift_unsupported` - `context_shift: true` on a context whose memory
      llama.cpp cannot shift (M-RoPE models, some sliding-window caches), or
      on a server with a unified KV cache.
    * `{:invalid_state, message}` - a saved state that is malformed or not of
      this context (the context is unchanged); `{:state_load_failed, message}`
      - llama.cpp refused it (the target is left empty);
      `{:state_unsupported, message}` - a model whose memory cannot be saved
      here (recurrent, hybrid). See `LlamaCppEx.State`.
    * `LlamaCppEx.Server` also returns: `:overloaded` (its queue is full),
      `:timeout` (the request's `:timeout` passed), `:context_full` (no KV
      cells left for it before its first token), `:embeddings_only` (a
      generation on an embedding server), `:duplicate_ref` (a `:ref` already
      in use), `{:server_down, reason}` (the server stopped or crashed while
      the request waited), `{:invalid_request, message}` (a request the
      native engine refused at admission; the others are unaffected).
    * `{:special_token_text, field}` - a chat's tools or tool calls hold the
      text of a special token of the model (message contents may: they are
      tokenized as plain text; these fields cannot be).
  """
  @type reason ::
          :closed
          | :busy
          | :out_of_memory
          | {:context_overflow, map()}
          | {:too_long, map()}
          | :empty_prompt
          | {:invalid_token, {integer(), non_neg_integer()}}
          | {:decode_failed, integer() | String.t()}
          | :no_kv_slot
          | :aborted
          | {:sampler_failed, String.t()}
          | :no_logits
          | :model_mismatch
          | {:invalid_grammar, String.t()}
          | {:invalid_json_schema, String.t()}
          | {:template_error, %{message: String.t(), line: pos_integer() | nil}}
          | {:unsupported_json_schema, String.t()}
          | {:load_failed, String.t()}
          | :load_cancelled
          | {:context_failed, String.t()}
          | {:context_too_large, map()}
          | :thread_failed
          | {:exception, String.t()}
          | {:template_failed, String.t()}
          | :unknown_template
          | :invalid_utf8
          | {:tokenize_failed, String.t()}
          | {:detokenize_failed, String.t()}
          | :embeddings_disabled
          | {:unsupported_pooling, integer()}
          | :no_embeddings
          | :non_finite_embedding
          | {:unsupported_kv_type, map()}
          | {:file_not_found, String.t()}
          | {:file_error, atom(), String.t()}
          | {:not_regular_file, :device | :other, String.t()}
          | {:not_gguf, String.t()}
          | :shift_unsupported
          | {:invalid_state, String.t()}
          | {:state_load_failed, String.t()}
          | {:state_unsupported, String.t()}
          | :overloaded
          | :timeout
          | :context_full
          | :embeddings_only
          | :duplicate_ref
          | {:server_down, term()}
          | {:invalid_request, String.t()}
          | {:special_token_text, String.t()}

  @impl true
  def message(%{reason: reason}), do: "LlamaCppEx: #{inspect(reason)}"
end
