defmodule LlamaCppEx.NIF do
  @moduledoc false
  # Stubs for the native functions in c_src/. Each is replaced when the shared
  # library loads; the schedulers they run on are listed in c_src/nif.c.

  @on_load :load_nif

  # LLAMA_CPP_EX_NIF=llama_cpp_ex_nif_asan loads the AddressSanitizer build
  # (scripts/test_asan.sh); any other value is ignored.
  @variants ["llama_cpp_ex_nif", "llama_cpp_ex_nif_asan"]

  # The library is built by the :llama_cpp_ex Mix compiler (mix.exs) into the
  # application's priv directory in the Mix build path, _build/<env>/lib/llama_cpp_ex/priv,
  # which `mix release` copies. It runs before the Elixir compiler, so the library is
  # already there when compiling this module loads it.
  def load_nif do
    name = System.get_env("LLAMA_CPP_EX_NIF", "llama_cpp_ex_nif")
    name = if name in @variants, do: name, else: "llama_cpp_ex_nif"

    with priv when is_list(priv) <- :code.priv_dir(:llama_cpp_ex),
         path = :filename.join(priv, String.to_charlist(name)),
         :ok <- :erlang.load_nif(path, 0) do
      :ok
    else
      {:error, {reason, text}} ->
        load_failed("#{name}.so in #{:code.priv_dir(:llama_cpp_ex)} (#{reason}): #{text}")
        {:error, reason}

      {:error, :bad_name} ->
        load_failed("#{name}.so: the :llama_cpp_ex application is not in the code path")
        {:error, :bad_name}
    end
  end

  defp load_failed(what) do
    require Logger

    Logger.error(
      "LlamaCppEx could not load its native library #{what}. It is built by `mix compile` " <>
        "(`mix deps.compile llama_cpp_ex` in a project that depends on it)."
    )
  end

  defp nif_error, do: :erlang.nif_error(:nif_not_loaded)

  def load_handle(_answering_pid), do: nif_error()
  def load_cancel(_handle), do: nif_error()
  def load_answer(_handle, _continue), do: nif_error()
  def model_load(_path, _opts, _handle, _progress_pid, _ref), do: nif_error()
  def model_free(_model), do: nif_error()
  def model_info(_model), do: nif_error()
  def model_metadata(_model), do: nif_error()
  def model_chat_template(_model, _name), do: nif_error()
  def live_counts, do: nif_error()
  def system_info, do: nif_error()

  def tokenize(_model, _text, _add_special, _parse_special), do: nif_error()
  def tokenize_dirty(_model, _text, _add_special, _parse_special), do: nif_error()
  def detokenize(_model, _tokens, _remove_special, _unparse_special), do: nif_error()
  def detokenize_dirty(_model, _tokens, _remove_special, _unparse_special), do: nif_error()
  def token_to_piece(_model, _token, _special), do: nif_error()
  def token_to_piece_dirty(_model, _token, _special), do: nif_error()
  def vocab_info(_model), do: nif_error()
  def token_is_eog(_model, _token), do: nif_error()

  def sampler_create(_model, _stages), do: nif_error()
  def sampler_accept(_sampler, _token), do: nif_error()
  def sampler_reset(_sampler), do: nif_error()
  def sampler_free(_sampler), do: nif_error()
  def sampler_sample(_sampler, _ctx), do: nif_error()
  def context_logprobs(_ctx), do: nif_error()

  def context_create(_model, _opts), do: nif_error()
  def context_free(_ctx), do: nif_error()
  def context_info(_ctx), do: nif_error()
  def context_position(_ctx), do: nif_error()
  def context_clear(_ctx), do: nif_error()
  def context_decode(_ctx, _tokens), do: nif_error()
  def context_embed(_ctx, _tokens, _pooling), do: nif_error()
  def context_set_lora(_ctx, _adapters), do: nif_error()
  def lora_load(_model, _path), do: nif_error()
  def lora_info(_lora), do: nif_error()
  def generate(_ctx, _sampler, _tokens, _opts), do: nif_error()
  def context_state_save(_ctx), do: nif_error()
  def context_state_load(_ctx, _state), do: nif_error()
  def context_seq_save(_ctx, _seq_id), do: nif_error()
  def context_seq_load(_ctx, _seq_id, _state), do: nif_error()
  def stream_start(_ctx, _sampler, _tokens, _opts, _consumer, _ref), do: nif_error()
  def stream_cancel(_stream), do: nif_error()
  def stream_demand(_stream), do: nif_error()

  def batch_new(_ctx, _opts), do: nif_error()
  def batch_admit(_engine, _slot, _sampler, _tokens, _opts), do: nif_error()
  def batch_admit_embed(_engine, _slot, _tokens, _pooling), do: nif_error()
  def batch_step(_engine, _skip), do: nif_error()
  def batch_release(_engine, _slot, _keep), do: nif_error()
  def batch_purge(_engine, _slot, _from), do: nif_error()
  def batch_info(_engine), do: nif_error()
  def batch_seq_save(_engine, _slot), do: nif_error()
  def batch_seq_load(_engine, _slot, _state, _n_tokens), do: nif_error()

  def chat_apply_template(_template, _messages, _add_assistant), do: nif_error()
  def chat_builtin_templates, do: nif_error()

  def set_log_handler(_pid, _level), do: nif_error()
end
