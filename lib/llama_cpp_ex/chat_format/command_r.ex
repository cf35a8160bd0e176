defmodule LlamaCppEx.ChatFormat.CommandR do
  @moduledoc false
  # Cohere's Command R7B (and Command A):
  #
  #     <|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather",
  #                       "parameters": {"city": "Paris"}}]<|END_ACTION|>
  #     <|START_RESPONSE|>text<|END_RESPONSE|>
  #
  # and Command R+ (08-2024): Action:\n```json\n[{"tool_name": .., "parameters": ..}]\n```
  # (<|START_THINKING|> ... <|END_THINKING|> is LlamaCppEx.ChatFormat.Reasoning's.)

  alias LlamaCppEx.ChatFormat.JsonList
  import LlamaCppEx.ChatFormat.Scan

  @action "<|START_ACTION|>"
  @action_end "<|END_ACTION|>"
  @plus "Action:"

  def markers, do: [@action, @plus, "<|START_RESPONSE|>"]

  def parse(text, partial?) do
    text = text |> String.replace("<|START_RESPONSE|>", "") |> String.replace("<|END_RESPONSE|>", "")

    case plus_action(text, partial?) do
      :action -> text |> String.replace(~r/Action:\s*```json/, @plus) |> JsonList.parse(@plus, partial?, "```")
      {:writing, before, rest} -> [{:text, before}, {:held, rest}]
      :none -> JsonList.parse(text, @action, partial?, @action_end)
    end
    |> hold_response(partial?)
  end

  # Command R+'s "Action:" followed by a ```json block, or (streaming) on its way to one
  defp plus_action(text, partial?) do
    case split(text, @plus) do
      {before, rest} ->
        after_ = String.trim_leading(rest)

        cond do
          String.starts_with?(after_, "```json") -> :action
          partial? and String.starts_with?("```json", after_) -> {:writing, before, @plus <> rest}
          true -> :none
        end

      nil ->
        :none
    end
  end

  # streamed text may end in the start of <|START_RESPONSE|> or <|END_RESPONSE|>
  defp hold_response(parts, false), do: parts

  defp hold_response(parts, true) do
    Enum.flat_map(parts, fn
      {:text, t} ->
        {emit, held} = hold_back(t, ["<|START_RESPONSE|>", "<|END_RESPONSE|>", @plus, @action], true)
        [{:text, emit}, {:held, held}]

      other ->
        [other]
    end)
  end
end
