defmodule LlamaCppEx.ChatFormat.Llama3 do
  @moduledoc false
  # Llama 3.1 / 3.2 / 3.3 (and Functionary v3.1, which follows it):
  #
  #   * a reply that is one JSON object, or several separated by ";":
  #     {"name": "get_weather", "parameters": {"city": "Paris"}}
  #   * <|python_tag|> then JSON like the above, or a built-in tool call
  #     brave_search.call(query="...") (arguments as keyword literals), or
  #     code for the code interpreter (a call of "python" with {"code": ...});
  #   * Functionary v3.1: <function=get_weather>{"city": "Paris"}</function>.
  #
  # Text before <|python_tag|> or <function= stays content; a reply that
  # starts with "{" but is not such an object is content.

  import LlamaCppEx.ChatFormat.Scan

  @tag "<|python_tag|>"
  @fn_open "<function="
  @fn_close "</function>"

  def markers, do: [@tag, @fn_open]

  def parse(text, partial?) do
    trimmed = String.trim_leading(text)

    cond do
      String.starts_with?(trimmed, "{") -> json_reply(text, trimmed, partial?)
      true -> tagged(text, partial?)
    end
  end

  # the whole reply as JSON call objects
  defp json_reply(text, trimmed, partial?) do
    case objects(trimmed, []) do
      {:ok, calls} -> calls
      {:incomplete, calls, _rest} when partial? -> calls ++ [{:held, text}]
      # cut off in a later call: the complete ones stay calls
      {:incomplete, [_ | _] = calls, rest} -> calls ++ [{:malformed, rest}]
      _ -> tagged(text, partial?)
    end
  end

  defp objects(text, acc) do
    case json_value(text) do
      {:ok, json, rest} ->
        with {:ok, %{"name" => name} = m} when is_binary(name) <- decode(json),
             args when is_map(args) <- Map.get(m, "parameters", Map.get(m, "arguments", %{})) do
          acc = [call(name, args, json) | acc]

          case String.trim(rest) do
            "" -> {:ok, Enum.reverse(acc)}
            ";" <> more -> objects(String.trim_leading(more), acc)
            _ -> :error
          end
        else
          _ -> :error
        end

      # the calls complete so far, while the next one is written
      :incomplete ->
        {:incomplete, Enum.reverse(acc), text}

      :error ->
        :error
    end
  end

  defp tagged(text, partial?) do
    case {split(text, @tag), split(text, @fn_open)} do
      {{before, code}, fun} when fun == nil or byte_size(elem(fun, 0)) > byte_size(before) ->
        [{:text, before} | python_tag(code, partial?)]

      {_, {before, rest}} ->
        [{:text, before} | function_tag(rest, partial?)]

      {nil, nil} ->
        {emit, held} = hold_back(text, markers(), partial?)
        [{:text, emit}, {:held, held}]
    end
  end

  defp python_tag(code, true), do: [{:held, @tag <> code}]

  defp python_tag(code, false) do
    body = String.trim(code)

    case objects(body, []) do
      {:ok, [_ | _] = calls} ->
        calls

      _ ->
        case Regex.run(~r/\A([A-Za-z_][\w]*)\.call\((.*)\)\z/s, body) do
          [_, name, args] -> builtin(name, args, @tag <> code)
          nil -> [call("python", %{"code" => body}, @tag <> code)]
        end
    end
  end

  # brave_search.call(query="a", n=3): keyword arguments with JSON-like literals
  defp builtin(name, args, raw) do
    pairs = Regex.scan(~r/([A-Za-z_]\w*)\s*=\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)/, args)

    values =
      Enum.reduce_while(pairs, %{}, fn [_, k, v], acc ->
        case decode(v) do
          {:ok, value} -> {:cont, Map.put(acc, k, value)}
          :error -> {:halt, :error}
        end
      end)

    if is_map(values), do: [call(name, values, raw)], else: [{:malformed, raw}]
  end

  defp function_tag(rest, partial?) do
    with [_, name, after_name] <- Regex.run(~r/\A([A-Za-z_][\w.-]*)>(.*)\z/s, rest),
         {args, after_} <- split(after_name, @fn_close) do
      raw = @fn_open <> name <> ">" <> args <> @fn_close

      case decode(args) do
        {:ok, map} when is_map(map) -> [call(name, map, raw) | tagged(after_, partial?)]
        _ -> [{:malformed, raw} | tagged(after_, partial?)]
      end
    else
      _ when partial? -> [{:held, @fn_open <> rest}]
      _ -> [{:malformed, @fn_open <> rest}]
    end
  end
end
