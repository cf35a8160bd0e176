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

  @doc """
  With `tool_choice: :required` (or a named function), a grammar that makes
  the reply one call of the offered tools in `format`'s syntax, its
  arguments following the tool's JSON schema (`parameters`); generation
  ends with the call. (One call: a small model given `(call)+` may never
  stop calling.) `nil`
  when the choice lets the model answer freely, when no tools are offered,
  or for a format this cannot write (the choice then only shapes the prompt).
  `template` tells Mistral's two call syntaxes apart. When the prompt opened
  a reasoning block (`thinking_open?`), the reply first closes it: any text
  without `</`, then `</think>`, then the call.
  """
  def grammar(tools, choice, format, template, thinking_open? \\ false)
  def grammar(nil, _choice, _format, _template, _open?), do: nil
  def grammar([], _choice, _format, _template, _open?), do: nil

  def grammar(tools, choice, format, template, thinking_open?) do
    with c when c != :auto and c != :none <- choice!(choice),
         offered when is_list(offered) <- offered(tools, choice),
         {:ok, wrap} <- wrapper(format, template) do
      rules =
        Enum.map(offered, fn %{"function" => f} ->
          params = Map.get(f, "parameters") || %{"type" => "object"}

          {[
             {"type", "object"},
             {"properties", {[{"name", %{"const" => f["name"]}}, {wrap.args, params}]}},
             {"required", ["name", wrap.args]}
           ]}
        end)

      schema = if match?([_], rules), do: hd(rules), else: %{"anyOf" => rules}

      case LlamaCppEx.Grammar.from_json_schema(schema) do
        {:ok, gbnf} ->
          root = if thinking_open?, do: ~S{thinking "</think>" "\n"* } <> wrap.root, else: wrap.root
          thinking = if thinking_open?, do: ~S{thinking ::= ([^<] | "<" [^/])*} <> "\n", else: ""
          Regex.replace(~r/^root ::=/m, gbnf, "tool-call ::=") <> "\n" <> thinking <> "root ::= " <> root <> "\n"

        {:error, reason} ->
          raise ArgumentError, "a tool's parameters cannot be turned into a grammar: #{inspect(reason)}"
      end
    else
      _ -> nil
    end
  end

  defp wrapper(:hermes, _), do: {:ok, %{args: "arguments", root: ~S{"<tool_call>\n" tool-call "\n</tool_call>"}}}
  defp wrapper(:llama3, _), do: {:ok, %{args: "parameters", root: ~S{tool-call}}}
  defp wrapper(:granite, _), do: {:ok, %{args: "arguments", root: ~S{"<|tool_call|>[" tool-call "]"}}}

  defp wrapper(:mistral, template) do
    if is_binary(template) and String.contains?(template, "[ARGS]"),
      # [TOOL_CALLS]name[ARGS]{...}: the JSON object is the arguments alone; not this shape
      do: :error,
      else: {:ok, %{args: "arguments", root: ~S{"[TOOL_CALLS][" tool-call "]"}}}
  end

  defp wrapper(_format, _template), do: :error

  @doc """
  Sampler options with the tool-call grammar of a chat's reply format
  (`Chat.prepare/3`) added, unless the caller constrains the output already
  (`:grammar`, `:json_schema`, `response_format: :json`).
  """
  def constrain(sampler_opts, %{grammar: g}) when is_binary(g) do
    own? =
      Keyword.has_key?(sampler_opts, :grammar) or Keyword.has_key?(sampler_opts, :json_schema) or
        Keyword.get(sampler_opts, :response_format) == :json

    if own?, do: sampler_opts, else: Keyword.put(sampler_opts, :grammar, g)
  end

  def constrain(sampler_opts, _reply), do: sampler_opts
end
