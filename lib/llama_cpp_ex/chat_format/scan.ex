defmodule LlamaCppEx.ChatFormat.Scan do
  @moduledoc false
  # What the format parsers share: finding markers, holding back the start of
  # a marker at the end of streamed text, and delimiting one JSON value.

  @doc """
  Splits at the first `marker`: `{before, after}`, or `nil`.
  """
  def split(text, marker) do
    case :binary.split(text, marker) do
      [before, rest] -> {before, rest}
      [_] -> nil
    end
  end

  @doc """
  Text that may be handed out now and the tail held back because it could be
  the start of one of `markers` (streamed text only: `partial?`).
  """
  def hold_back(text, _markers, false), do: {text, ""}

  def hold_back(text, markers, true) do
    keep =
      markers
      |> Enum.map(&partial_suffix(text, &1))
      |> Enum.max(fn -> 0 end)

    {binary_part(text, 0, byte_size(text) - keep), binary_part(text, byte_size(text) - keep, keep)}
  end

  # the longest proper prefix of marker that text ends with
  defp partial_suffix(text, marker) do
    max = min(byte_size(marker) - 1, byte_size(text))

    Enum.find(max..1//-1, 0, fn n ->
      binary_part(text, byte_size(text) - n, n) == binary_part(marker, 0, n)
    end)
  end

  @doc """
  Delimits the JSON object or array that `text` starts with (after
  whitespace): `{:ok, json, rest}`, `:incomplete` (it is not closed yet) or
  `:error` (text does not start with `{` or `[`). The slice is not decoded:
  `decode/1` does that.
  """
  def json_value(text) do
    trimmed = String.trim_leading(text)

    case trimmed do
      <<c, _::binary>> when c in [?{, ?[] -> scan(trimmed, 0, 0, false)
      "" -> :incomplete
      _ -> :error
    end
  end

  defp scan(text, i, _depth, _in_string) when i >= byte_size(text), do: :incomplete

  defp scan(text, i, depth, true) do
    case :binary.at(text, i) do
      ?\\ -> scan(text, i + 2, depth, true)
      ?" -> scan(text, i + 1, depth, false)
      _ -> scan(text, i + 1, depth, true)
    end
  end

  defp scan(text, i, depth, false) do
    case :binary.at(text, i) do
      ?" ->
        scan(text, i + 1, depth, true)

      c when c in [?{, ?[] ->
        scan(text, i + 1, depth + 1, false)

      c when c in [?}, ?]] ->
        if depth == 1 do
          {:ok, binary_part(text, 0, i + 1), binary_part(text, i + 1, byte_size(text) - i - 1)}
        else
          scan(text, i + 1, depth - 1, false)
        end

      _ ->
        scan(text, i + 1, depth, false)
    end
  end

  @doc "Decodes JSON text (jiffy, objects as maps): `{:ok, term}` or `:error`."
  def decode(json) do
    {:ok, :jiffy.decode(json, [:return_maps, :use_nil])}
  catch
    _, _ -> :error
  end

  @doc "A call part: what a format found, before its arguments are decoded."
  def call(name, arguments, raw, id \\ nil), do: {:call, %{name: name, arguments: arguments, raw: raw, id: id}}
end
