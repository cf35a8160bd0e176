defmodule LlamaCppEx.ChatFormat.JsonList do
  @moduledoc false
  # The shape several formats share: text, a marker, then a JSON array of
  # call objects ({"name", "arguments" | "parameters", "id"?} or Command R's
  # {"tool_name", "parameters", "tool_call_id"}), then possibly more text.

  import LlamaCppEx.ChatFormat.Scan

  def parse(text, marker, partial?, close \\ nil) do
    case split(text, marker) do
      nil ->
        {emit, held} = hold_back(text, [marker], partial?)
        [{:text, emit}, {:held, held}]

      {before, rest} ->
        [{:text, before} | list(rest, marker, partial?, close)]
    end
  end

  defp list(rest, marker, partial?, close) do
    case json_value(rest) do
      {:ok, json, after_} ->
        raw = marker <> json
        calls(json, raw) ++ after_list(after_, marker, partial?, close)

      :incomplete when partial? ->
        [{:held, marker <> rest}]

      _ ->
        [{:malformed, marker <> rest}]
    end
  end

  defp after_list(text, marker, partial?, nil), do: parse(text, marker, partial?, nil)

  defp after_list(text, marker, partial?, close) do
    trimmed = String.trim_leading(text)

    cond do
      String.starts_with?(trimmed, close) -> parse(drop_close(text, close), marker, partial?, close)
      # the closing tag is still being written
      partial? and String.starts_with?(close, trimmed) -> [{:held, text}]
      true -> parse(text, marker, partial?, close)
    end
  end

  defp drop_close(text, close) do
    trimmed = String.trim_leading(text)

    if String.starts_with?(trimmed, close),
      do: binary_part(trimmed, byte_size(close), byte_size(trimmed) - byte_size(close)),
      else: text
  end

  defp calls(json, raw) do
    case decode(json) do
      {:ok, list} when is_list(list) and list != [] ->
        parsed = Enum.map(list, &one(&1, raw))
        if Enum.all?(parsed, &match?({:call, _}, &1)), do: parsed, else: [{:malformed, raw}]

      {:ok, %{} = one} ->
        case one(one, raw) do
          {:call, _} = c -> [c]
          _ -> [{:malformed, raw}]
        end

      _ ->
        [{:malformed, raw}]
    end
  end

  defp one(%{"name" => name} = m, raw) when is_binary(name) do
    case Map.get(m, "arguments", Map.get(m, "parameters", %{})) do
      args when is_map(args) or is_binary(args) -> call(name, args, raw, string_id(m["id"]))
      _ -> :error
    end
  end

  defp one(%{"tool_name" => name} = m, raw) when is_binary(name) do
    case Map.get(m, "parameters", %{}) do
      args when is_map(args) -> call(name, args, raw, string_id(m["tool_call_id"]))
      _ -> :error
    end
  end

  defp one(_, _raw), do: :error

  defp string_id(id) when is_binary(id), do: id
  defp string_id(id) when is_integer(id), do: Integer.to_string(id)
  defp string_id(_), do: nil
end
