defmodule LlamaCppEx.ChatFormat.Granite do
  @moduledoc false
  # IBM Granite 3.x: text, then <|tool_call|> and a JSON array of calls
  #
  #     <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]
  #
  # (Granite's <think>/<response> tags are LlamaCppEx.ChatFormat.Reasoning's.)

  @open "<|tool_call|>"

  def markers, do: [@open]

  def parse(text, partial?), do: LlamaCppEx.ChatFormat.JsonList.parse(text, @open, partial?)
end
