defmodule LlamaCppEx.Error do
  @moduledoc """
  Raised by streams (which cannot return `{:error, reason}`) when generation
  fails, e.g. `%LlamaCppEx.Error{reason: {:context_overflow, info}}`.
  """
  defexception [:reason]

  @impl true
  def message(%{reason: reason}), do: "llama.cpp generation failed: #{inspect(reason)}"
end
