defmodule LlamaCppEx.ToolCall do
  @moduledoc """
  A function call a model wrote, parsed from its output by
  `LlamaCppEx.ChatFormat`.

    * `:id` - the call's id: the model's own when its format has one
      (Mistral, Command R), else one made up (`"call_" <> 16 hex digits`).
    * `:name` - the function's name.
    * `:arguments` - the arguments decoded from JSON (a map with string keys).
    * `:raw_arguments` - the arguments' JSON text as the model wrote it
      (what OpenAI's API returns in `function.arguments`).
  """

  @enforce_keys [:id, :name, :arguments]
  defstruct [:id, :name, :arguments, raw_arguments: nil]

  @type t :: %__MODULE__{id: String.t(), name: String.t(), arguments: map(), raw_arguments: String.t() | nil}

  @doc false
  def new_id, do: "call_" <> Base.encode16(:crypto.strong_rand_bytes(8), case: :lower)
end
