defmodule LlamaCppEx.HTTP.Auth do
  @moduledoc false
  # API keys: `Authorization: Bearer KEY` (or `X-Api-Key: KEY`, as
  # llama-server takes), compared in constant time: both sides are hashed
  # first, so the comparison does not depend on the length of either, and
  # :crypto.hash_equals/2 does not stop at the first differing byte.

  @public ["/health"]

  @doc "Paths that answer without a key."
  def public_paths, do: @public

  @doc "Whether the request may proceed."
  @spec allowed?(String.t() | nil, String.t(), map()) :: boolean()
  def allowed?(nil, _path, _headers), do: true
  def allowed?(_key, path, _headers) when path in @public, do: true

  def allowed?(key, _path, headers) do
    given =
      case headers do
        %{"authorization" => "Bearer " <> k} -> String.trim(k)
        %{"x-api-key" => k} -> k
        _ -> nil
      end

    # always one comparison, with or without a key given
    :crypto.hash_equals(digest(given || ""), digest(key)) and given != nil
  end

  defp digest(key), do: :crypto.hash(:sha256, key)
end
