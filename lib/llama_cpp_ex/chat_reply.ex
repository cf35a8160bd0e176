defmodule LlamaCppEx.ChatReply do
  @moduledoc """
  What a chat model wrote, split into its parts by `LlamaCppEx.ChatFormat`:

    * `:content` - the text meant for the user (text around tool calls
      included; a malformed call stays here, as text).
    * `:reasoning_content` - the model's reasoning (`<think>...</think>` and
      the like), or `nil` when it wrote none.
    * `:tool_calls` - the `LlamaCppEx.ToolCall`s, in the order written.
  """

  defstruct content: "", reasoning_content: nil, tool_calls: []

  @type t :: %__MODULE__{
          content: String.t(),
          reasoning_content: String.t() | nil,
          tool_calls: [LlamaCppEx.ToolCall.t()]
        }
end
