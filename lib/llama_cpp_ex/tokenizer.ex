defmodule LlamaCppEx.Tokenizer do
  @moduledoc """
  Text to tokens and back, with the model's own vocabulary.

      {:ok, tokens} = LlamaCppEx.Tokenizer.encode(model, "Once upon a time")
      #=> {:ok, [1, 403, 407, 261, 378]}   (stories260K, BOS first)
      {:ok, text} = LlamaCppEx.Tokenizer.decode(model, tokens)

  Short inputs are handled on the calling scheduler; inputs above a few
  kilobytes go to a dirty scheduler so they never block the VM.

  ## Bytes, not text

  `decode/3` and `token_to_piece/3` return the exact bytes of the tokens
  (`binary()`), which need not be valid UTF-8: a byte-fallback token is one
  byte of a character, and a cut list of tokens can end inside one. This is
  what round trips and byte-exact comparisons need. Generated text
  (`LlamaCppEx.generate/3`, streams, `LlamaCppEx.Completion`) is always valid
  UTF-8 instead: bytes that form no character there become U+FFFD.
  """

  import LlamaCppEx.Options
  alias LlamaCppEx.{Model, NIF}

  # Beyond this size tokenizing can take over ~1 ms: use a dirty scheduler.
  @dirty_bytes 4096
  @dirty_tokens 1024

  @type token :: non_neg_integer()

  @doc """
  Tokenizes `text`.

  ## Options

    * `:add_special` - add BOS/EOS as the model is configured to (default `true`).
    * `:parse_special` - turn special-token text such as `<|im_start|>` into
      the special token (default `false`: user text can never forge them).

  Returns `{:error, :invalid_utf8}` when `text` is not valid UTF-8.
  """
  @spec encode(Model.t(), String.t(), keyword()) :: {:ok, [token()]} | {:error, term()}
  def encode(%Model{ref: ref}, text, opts \\ []) when is_binary(text) do
    opts = Keyword.validate!(opts, add_special: true, parse_special: false)
    add = bool!(opts, :add_special)
    parse = bool!(opts, :parse_special)

    cond do
      not String.valid?(text) -> {:error, :invalid_utf8}
      byte_size(text) > @dirty_bytes -> NIF.tokenize_dirty(ref, text, add, parse)
      true -> NIF.tokenize(ref, text, add, parse)
    end
  end

  @doc """
  Turns tokens back into text.

  ## Options

    * `:remove_special` - drop the BOS/EOS the model adds (default `false`).
    * `:unparse_special` - render special tokens as their text (default `false`).

  The result is the raw bytes of the pieces; a token list that ends inside a
  multi-byte character gives a binary that is not valid UTF-8.
  """
  @spec decode(Model.t(), [token()], keyword()) :: {:ok, binary()} | {:error, term()}
  def decode(%Model{ref: ref}, tokens, opts \\ []) when is_list(tokens) do
    opts = Keyword.validate!(opts, remove_special: false, unparse_special: false)
    remove = bool!(opts, :remove_special)
    unparse = bool!(opts, :unparse_special)

    if length(tokens) > @dirty_tokens,
      do: NIF.detokenize_dirty(ref, tokens, remove, unparse),
      else: NIF.detokenize(ref, tokens, remove, unparse)
  end

  @doc """
  The text of one token. With `special: true`, special tokens render as their
  text (e.g. `"</s>"`); otherwise they render as `""`.
  """
  @spec token_to_piece(Model.t(), token(), keyword()) :: {:ok, binary()} | {:error, term()}
  def token_to_piece(%Model{ref: ref}, token, opts \\ []) when is_integer(token) do
    opts = Keyword.validate!(opts, special: false)
    NIF.token_to_piece(ref, token, bool!(opts, :special))
  end

  @doc """
  The model's special tokens: `:bos`, `:eos`, `:eot`, `:sep`, `:nl`, `:pad`,
  `:fim_pre`, `:fim_suf`, `:fim_mid` (each a token id or `nil`), plus
  `:add_bos`/`:add_eos` (whether `encode/3` adds them) and `:n_vocab`.
  `{:error, :closed}` once the model is freed.
  """
  @spec special_tokens(Model.t()) :: map() | {:error, :closed}
  def special_tokens(%Model{ref: ref}) do
    with {:ok, info} <- NIF.vocab_info(ref), do: Map.delete(info, :type)
  end

  @doc "Beginning-of-sequence token, or `nil` (`{:error, :closed}` once the model is freed)."
  @spec bos(Model.t()) :: token() | nil | {:error, :closed}
  def bos(model), do: special(model, :bos)

  @doc "End-of-sequence token, or `nil` (`{:error, :closed}` once the model is freed)."
  @spec eos(Model.t()) :: token() | nil | {:error, :closed}
  def eos(model), do: special(model, :eos)

  @doc "End-of-turn token, or `nil` (`{:error, :closed}` once the model is freed)."
  @spec eot(Model.t()) :: token() | nil | {:error, :closed}
  def eot(model), do: special(model, :eot)

  @doc "Newline token, or `nil` (`{:error, :closed}` once the model is freed)."
  @spec nl(Model.t()) :: token() | nil | {:error, :closed}
  def nl(model), do: special(model, :nl)

  defp special(model, key) do
    case special_tokens(model) do
      %{} = tokens -> Map.fetch!(tokens, key)
      error -> error
    end
  end

  @doc """
  Whether `token` ends generation (EOS, EOT or another end-of-generation
  token). Raises `ArgumentError` for a token outside the vocabulary;
  `{:error, :closed}` once the model is freed.
  """
  @spec eog?(Model.t(), token()) :: boolean() | {:error, :closed}
  def eog?(%Model{ref: ref}, token) when is_integer(token) do
    case NIF.token_is_eog(ref, token) do
      {:ok, bool} -> bool
      {:error, {:invalid_token, _}} -> raise ArgumentError, "token #{token} is outside the vocabulary"
      {:error, :closed} = error -> error
    end
  end

  @doc "Number of tokens in the vocabulary."
  @spec vocab_size(Model.t()) :: pos_integer()
  def vocab_size(%Model{n_vocab: n}), do: n
end
