defmodule LlamaCppEx.ChatFormat.DeepSeek do
  @moduledoc false
  # DeepSeek V3 / R1 and V3.1, between <｜tool▁calls▁begin｜> and
  # <｜tool▁calls▁end｜>, each call in <｜tool▁call▁begin｜> ... <｜tool▁call▁end｜>:
  #
  #   * V3, R1:  function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```
  #   * V3.1:    get_weather<｜tool▁sep｜>{"city": "Paris"}

  import LlamaCppEx.ChatFormat.Scan

  @begin "<｜tool▁calls▁begin｜>"
  @end_ "<｜tool▁calls▁end｜>"
  @call_begin "<｜tool▁call▁begin｜>"
  @call_end "<｜tool▁call▁end｜>"
  @sep "<｜tool▁sep｜>"

  def markers, do: [@begin, @call_begin]

  def parse(text, partial?) do
    cond do
      found = split(text, @begin) ->
        {before, rest} = found
        [{:text, before} | block(rest, partial?)]

      # some releases leave out the outer tag
      found = split(text, @call_begin) ->
        {before, rest} = found
        [{:text, before} | block(@call_begin <> rest, partial?)]

      true ->
        {emit, held} = hold_back(text, markers(), partial?)
        [{:text, emit}, {:held, held}]
    end
  end

  defp block(rest, partial?) do
    case split(rest, @end_) do
      {inside, after_} -> calls(inside) ++ [{:text, after_}]
      nil when partial? -> [{:held, @begin <> rest}]
      nil -> calls(rest)
    end
  end

  defp calls(inside) do
    inside
    |> String.split(@call_begin, trim: true)
    |> Enum.reject(&(String.trim(&1) == ""))
    |> Enum.map(fn part ->
      body = part |> String.split(@call_end) |> hd()
      one(body, @call_begin <> part)
    end)
  end

  defp one(body, raw) do
    case split(body, @sep) do
      {"function", rest} ->
        case Regex.run(~r/\A([^\n]+)\n```(?:json)?\n(.*?)\n?```\s*\z/s, rest) do
          [_, name, json] -> decoded(String.trim(name), json, raw)
          nil -> {:malformed, raw}
        end

      {name, json} ->
        decoded(String.trim(name), json, raw)

      nil ->
        {:malformed, raw}
    end
  end

  defp decoded(name, json, raw) do
    case decode(json) do
      {:ok, args} when is_map(args) and name != "" -> call(name, args, raw)
      _ -> {:malformed, raw}
    end
  end
end
