defmodule LlamaCppEx.Embedding do
  @moduledoc false
  # The steps of embedding texts that LlamaCppEx.embed/3 and
  # LlamaCppEx.Server.embed/3 share: tokenizing a list of texts, fitting them
  # to the longest sequence allowed, and normalizing the pooled vectors.

  alias LlamaCppEx.Tokenizer

  # {:ok, [tokens]} in the texts' order, or the first tokenizer error.
  def encode_all(model, texts, add_special) do
    Enum.reduce_while(texts, {:ok, []}, fn
      text, {:ok, acc} when is_binary(text) ->
        case Tokenizer.encode(model, text, add_special: add_special) do
          {:ok, tokens} -> {:cont, {:ok, [tokens | acc]}}
          error -> {:halt, error}
        end

      other, _ ->
        raise ArgumentError, "texts must be strings, got: #{inspect(other)}"
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  # Each token list at most max long: cut (truncate?) or {:error, {:too_long, info}}.
  def fit(token_lists, max, truncate?) do
    case Enum.find(token_lists, &(length(&1) > max)) do
      nil -> {:ok, token_lists}
      _ when truncate? -> {:ok, Enum.map(token_lists, &Enum.take(&1, max))}
      long -> {:error, {:too_long, %{tokens: length(long), max: max}}}
    end
  end

  # The vector scaled to unit length (a zero vector stays as it is).
  def normalize(vector) do
    norm = :math.sqrt(Enum.reduce(vector, 0.0, &(&1 * &1 + &2)))
    if norm > 0, do: Enum.map(vector, &(&1 / norm)), else: vector
  end
end
