defmodule LlamaCppEx.ChatFormat.Hermes do
  @moduledoc false
  # Hermes 2 Pro, Qwen 2.5 / Qwen 3 and the many templates that copied them:
  #
  #     text <tool_call>
  #     {"name": "get_weather", "arguments": {"city": "Paris"}}
  #     </tool_call>
  #
  # any number of calls, text around them. A last call whose closing tag never
  # came (generation ended right after the JSON) is still a call.

  import LlamaCppEx.ChatFormat.Scan

  @open "<tool_call>"
  @close "</tool_call>"

  def markers, do: [@open]

  def parse(text, partial?) do
    case split(text, @open) do
      nil ->
        {emit, held} = hold_back(text, [@open], partial?)
        [{:text, emit}, {:held, held}]

      {before, rest} ->
        [{:text, before} | call(rest, partial?)]
    end
  end

  defp call(rest, partial?) do
    case split(rest, @close) do
      {inside, after_} ->
        [json_call(inside, @open <> inside <> @close) | parse(after_, partial?)]

      nil when partial? ->
        [{:held, @open <> rest}]

      nil ->
        [json_call(rest, @open <> rest)]
    end
  end

  # Qwen3-Coder, Qwen 3.5, Nemotron 3 and others write XML inside the tags:
  # <function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>
  defp json_call(inside, raw) do
    if String.starts_with?(String.trim_leading(inside), "<function="),
      do: xml_call(inside, raw),
      else: json_object(inside, raw)
  end

  defp xml_call(inside, raw) do
    case Regex.run(~r/\A\s*<function=([^>\s]+)>(.*?)<\/function>\s*\z/s, inside) do
      [_, name, body] ->
        args =
          for [_, key, value] <- Regex.scan(~r/<parameter=([^>\s]+)>\n?(.*?)\n?<\/parameter>/s, body), into: %{} do
            # a value is JSON when it reads as JSON (numbers, objects, ...), else the text itself
            case decode(value) do
              {:ok, v} -> {key, v}
              :error -> {key, value}
            end
          end

        call(name, args, raw)

      nil ->
        {:malformed, raw}
    end
  end

  defp json_object(inside, raw) do
    with {:ok, json, rest} <- json_value(inside),
         "" <- String.trim(rest),
         {:ok, %{"name" => name} = map} when is_binary(name) <- decode(json),
         {:ok, args} <- arguments(map) do
      call(name, args, raw)
    else
      _ -> {:malformed, raw}
    end
  end

  defp arguments(%{"arguments" => args}) when is_map(args) or is_binary(args), do: {:ok, args}
  defp arguments(%{"parameters" => args}) when is_map(args), do: {:ok, args}
  defp arguments(map) when not is_map_key(map, "arguments") and not is_map_key(map, "parameters"), do: {:ok, %{}}
  defp arguments(_), do: :error
end
