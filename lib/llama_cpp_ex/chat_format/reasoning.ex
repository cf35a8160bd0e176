defmodule LlamaCppEx.ChatFormat.Reasoning do
  @moduledoc false
  # Splits a model's reasoning from its reply, before tool calls are looked
  # for (a call written while thinking is not a call):
  #
  #   * <think> ... </think> (DeepSeek R1, Qwen 3, QwQ, Granite 3.2 and many
  #     more); when the prompt already opened the block (`open: true`: the
  #     template ends its generation prompt with "<think>"), the reply starts
  #     inside it and only "</think>" comes;
  #   * Command R7B: <|START_THINKING|> ... <|END_THINKING|>.
  #
  # Granite's <response> ... </response> around the reply is dropped.
  # Returns {reasoning | nil, rest, held}: while streaming, reasoning not
  # closed yet is all reasoning so far, and a tail that may be the start of a
  # tag is held back.

  import LlamaCppEx.ChatFormat.Scan

  @pairs [{"<think>", "</think>"}, {"<|START_THINKING|>", "<|END_THINKING|>"}]

  def split(text, open?, partial?) do
    trimmed = String.trim_leading(text)

    case Enum.find(@pairs, fn {o, _} -> String.starts_with?(trimmed, o) end) do
      {o, c} -> inside(binary_part(trimmed, byte_size(o), byte_size(trimmed) - byte_size(o)), c, partial?)
      nil when open? -> inside(text, "</think>", partial?)
      nil -> starting(text, partial?)
    end
    |> then(fn {reasoning, rest, held} -> response(reasoning, rest, held, partial?) end)
  end

  # nothing opened yet: while streaming, the start of an opening tag waits
  defp starting(text, true) do
    trimmed = String.trim_leading(text)

    if trimmed != "" and Enum.any?(@pairs, fn {o, _} -> String.starts_with?(o, trimmed) end),
      do: {nil, "", text},
      else: {nil, text, ""}
  end

  defp starting(text, false), do: {nil, text, ""}

  defp inside(text, close, partial?) do
    case LlamaCppEx.ChatFormat.Scan.split(text, close) do
      {reasoning, rest} ->
        {String.trim(reasoning), String.trim_leading(rest), ""}

      nil ->
        {emit, held} = hold_back(text, [close], partial?)
        # ended while thinking: all of it was reasoning
        {String.trim_leading(emit), "", held}
    end
  end

  # Granite's <response> ... </response>: the tags go; while streaming, what
  # may still become one of them waits
  defp response(reasoning, rest, held, partial?) do
    trimmed = String.trim_leading(rest)

    cond do
      String.starts_with?(trimmed, "<response>") ->
        body = String.replace_prefix(trimmed, "<response>", "")

        case LlamaCppEx.ChatFormat.Scan.split(body, "</response>") do
          {inside, _after} ->
            {reasoning, inside, held}

          nil ->
            {emit, tail} = hold_back(body, ["</response>"], partial?)
            {reasoning, emit, held <> tail}
        end

      partial? and trimmed != "" and String.starts_with?("<response>", trimmed) ->
        {reasoning, "", held <> rest}

      true ->
        {reasoning, rest, held}
    end
  end
end
