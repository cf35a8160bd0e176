defmodule LlamaCppEx.HTTP.JSON do
  @moduledoc false
  # JSON for the HTTP server, through jiffy (Debian's erlang-jiffy, an OTP
  # application outside Hex). Objects decode to maps with string keys.

  @doc "Raises a clear error when jiffy is not installed (LlamaCppEx.HTTP.start_link/1 calls it)."
  def ensure! do
    case Application.ensure_all_started(:jiffy) do
      {:ok, _} ->
        :ok

      {:error, _} ->
        unless Code.ensure_loaded?(:jiffy) do
          raise RuntimeError,
                "LlamaCppEx.HTTP needs the jiffy JSON library: install Debian's erlang-jiffy " <>
                  "(scripts/setup.sh does) or put jiffy on the code path"
        end

        :ok
    end
  end

  @doc "Decodes a request body: {:ok, term} or {:error, message}."
  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(body) when is_binary(body) do
    {:ok, :jiffy.decode(body, [:return_maps, :dedupe_keys])}
  catch
    :error, {pos, reason} when is_integer(pos) -> {:error, "invalid JSON at byte #{pos}: #{reason}"}
    :error, reason -> {:error, "invalid JSON: #{inspect(reason)}"}
    :throw, reason -> {:error, "invalid JSON: #{inspect(reason)}"}
  end

  @doc "Encodes a response (maps, lists, binaries, numbers, true/false/nil)."
  @spec encode!(term()) :: iodata()
  def encode!(term), do: :jiffy.encode(nulls(term), [:use_nil])

  # :neg_infinity and other atoms never reach jiffy unconverted
  defp nulls(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, nulls(v)} end)
  defp nulls(list) when is_list(list), do: Enum.map(list, &nulls/1)
  defp nulls(other), do: other
end
