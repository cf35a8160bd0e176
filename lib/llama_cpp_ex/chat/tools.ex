defmodule LlamaCppEx.Chat.Tools do
  @moduledoc false
  # The :tools and :tool_choice options of the chat functions: OpenAI function
  # definitions, checked, and which of them the template is given.

  @doc """
  The tools to give the template (`nil`: none, the template's `tools` stays
  undefined), from the `:tools` list and the `:tool_choice`.
  """
  def offered(nil, choice), do: tap(nil, fn _ -> choice!(choice) end)
  def offered([], choice), do: offered(nil, choice)

  def offered(tools, choice) when is_list(tools) do
    tools = Enum.map(tools, &tool!/1)

    case choice!(choice) do
      :none ->
        nil

      {:function, name} ->
        case Enum.filter(tools, &(name(&1) == name)) do
          [] -> raise ArgumentError, ":tool_choice names #{inspect(name)}, which is not one of the :tools"
          named -> named
        end

      _auto_or_required ->
        tools
    end
  end

  def offered(other, _choice),
    do: raise(ArgumentError, ":tools must be a list of function definitions, got: #{inspect(other)}")

  defp tool!(%{} = tool) do
    t = stringify(tool)

    case t do
      %{"type" => "function", "function" => %{"name" => name}} when is_binary(name) and name != "" ->
        t

      _ ->
        raise ArgumentError,
              "a tool must be %{\"type\" => \"function\", \"function\" => %{\"name\" => ..}}, got: #{inspect(tool)}"
    end
  end

  defp tool!(other), do: raise(ArgumentError, "a tool must be a map, got: #{inspect(other)}")

  defp name(%{"function" => %{"name" => name}}), do: name

  # atom keys as strings, all the way down (the template sees JSON's shapes)
  defp stringify(%{} = map) when not is_struct(map),
    do: Map.new(map, fn {k, v} -> {if(is_atom(k), do: Atom.to_string(k), else: k), stringify(v)} end)

  defp stringify(list) when is_list(list), do: Enum.map(list, &stringify/1)
  defp stringify(other), do: other

  defp choice!(c) when c in [:auto, "auto", nil], do: :auto
  defp choice!(c) when c in [:none, "none"], do: :none
  defp choice!(c) when c in [:required, "required"], do: :required
  defp choice!({:function, name}) when is_binary(name), do: {:function, name}

  defp choice!(%{} = c) do
    case stringify(c) do
      %{"type" => "function", "function" => %{"name" => name}} when is_binary(name) -> {:function, name}
      _ -> choice!(:invalid)
    end
  end

  defp choice!(other),
    do:
      raise(
        ArgumentError,
        ":tool_choice must be :auto, :none, :required or {:function, name}, got: #{inspect(other)}"
      )
end
