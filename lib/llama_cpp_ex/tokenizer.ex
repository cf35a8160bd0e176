defmodule LlamaCppEx.Tokenizer do
  @moduledoc """
  Text to tokens and back, with the model's own vocabulary.

      {:ok, tokens} = LlamaCppEx.Tokenizer.encode(model, "Once upon a time")
      #=> {:ok, [1, 403, 407, 261, 378]}   (stories260K, BOS first)
      {:ok, text} = LlamaCppEx.Tokenizer.decode(model, tokens)

  Small work is done on the calling scheduler; anything that could take more
  than about a millisecond goes to a dirty scheduler so it never blocks the
  VM. What is small depends on the input and on the vocabulary: a crafted
  vocabulary can make a short text slow (thousands of user-defined tokens,
  each matched against the text) or a few tokens large (megabyte pieces), so
  the choice uses facts about the vocabulary read at load (see
  `LlamaCppEx.Model`).

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

  # Work allowed on a normal scheduler (well under 1 ms), measured on crafted
  # vocabularies. Tokenizing costs about bytes * (24 + literal tokens) units of
  # at most ~10 ns: llama.cpp matches every user-defined token (and with
  # parse_special every control token) against the text before splitting it;
  # 4096 bytes with none is the budget. Detokenizing copies every piece.
  @normal_encode_units 4096 * 24
  @normal_decode_tokens 1024
  @normal_decode_bytes 256 * 1024
  @normal_piece_bytes 64 * 1024

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
  def encode(%Model{ref: ref} = model, text, opts \\ []) when is_binary(text) do
    opts = Keyword.validate!(opts, add_special: true, parse_special: false)
    add = bool!(opts, :add_special)
    parse = bool!(opts, :parse_special)
    literal = if parse, do: model.n_special_tokens, else: model.n_user_defined_tokens

    cond do
      not String.valid?(text) -> {:error, :invalid_utf8}
      byte_size(text) * (24 + literal) > @normal_encode_units -> NIF.tokenize_dirty(ref, text, add, parse)
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
  def decode(%Model{ref: ref} = model, tokens, opts \\ []) when is_list(tokens) do
    opts = Keyword.validate!(opts, remove_special: false, unparse_special: false)
    remove = bool!(opts, :remove_special)
    unparse = bool!(opts, :unparse_special)
    n = length(tokens)

    if n > @normal_decode_tokens or n * model.max_piece_bytes > @normal_decode_bytes,
      do: NIF.detokenize_dirty(ref, tokens, remove, unparse),
      else: NIF.detokenize(ref, tokens, remove, unparse)
  end

  @doc """
  The text of one token. With `special: true`, special tokens render as their
  text (e.g. `"</s>"`); otherwise they render as `""`.
  """
  @spec token_to_piece(Model.t(), token(), keyword()) :: {:ok, binary()} | {:error, term()}
  def token_to_piece(%Model{ref: ref} = model, token, opts \\ []) when is_integer(token) do
    opts = Keyword.validate!(opts, special: false)

    if model.max_piece_bytes > @normal_piece_bytes,
      do: NIF.token_to_piece_dirty(ref, token, bool!(opts, :special)),
      else: NIF.token_to_piece(ref, token, bool!(opts, :special))
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
