defmodule LlamaCppEx.Jinja.Filters do
  @moduledoc false
  # The filters (`x | tojson(indent=2)`, `xs | selectattr("type", "equalto", "f")`, ...),
  # with the reference's rules: which filters exist depends on the operand's type, and the
  # bare form (`x | f`) and the call form (`x | f(...)`) are different sets, as in
  # @huggingface/jinja. An unknown filter, or one applied to the wrong type, is an error.

  alias LlamaCppEx.Jinja.{Methods, Strings, Tests, Value}

  @typedoc "nil for the bare form, else {positional, keyword pairs, all-arguments-are-string-literals?}"
  @type args :: nil | {[Value.t()], [{String.t(), Value.t()}], boolean()}

  @spec apply(Value.t(), String.t(), args(), (integer() -> list())) :: Value.t()
  def apply(operand, "safe", nil, _ns), do: operand
  def apply(operand, "tojson", nil, ns), do: Value.to_json(operand, ns, %{})
  def apply(operand, name, nil, ns), do: bare(operand, name, ns)
  def apply(operand, name, {pos, kw, literals?}, ns), do: call(operand, name, pos, kw, literals?, ns)

  # --- bare filters ---------------------------------------------------------------------

  defp bare(list, name, ns) when is_list(list) do
    case name do
      "list" -> list
      "first" -> List.first(list, :undefined)
      "last" -> List.last(list, :undefined)
      "length" -> length(list)
      "reverse" -> Enum.reverse(list)
      "sort" -> Methods.sort(list, &Methods.compare(&1, &2, false), false)
      "join" -> Enum.map_join(list, "", &Value.join_string(&1, ns))
      "string" -> Value.to_json(list, ns, %{undefined: "undefined"})
      "unique" -> unique(list)
      _ -> fail("Unknown ArrayValue filter: #{name}")
    end
  end

  defp bare({:tuple, list}, name, ns) when name in ~w(list first last length reverse sort join unique),
    do: bare(list, name, ns)

  defp bare({:tuple, _} = t, "string", ns), do: Value.to_json(t, ns, %{undefined: "undefined"})

  defp bare(s, name, _ns) when is_binary(s) do
    case name do
      "length" -> Strings.js_length(s)
      "upper" -> String.upcase(s)
      "lower" -> String.downcase(s)
      "title" -> Strings.title(s)
      "capitalize" -> Strings.capitalize(s)
      "trim" -> Strings.trim(s)
      "indent" -> indent(s, 4, false, false)
      "join" -> s
      "string" -> s
      "int" -> parse_int(s) || 0
      "float" -> parse_float(s) || 0.0
      _ -> fail("Unknown StringValue filter: #{name}")
    end
  end

  defp bare(n, name, _ns) when is_number(n) do
    case name do
      "abs" -> abs(n)
      "int" -> if is_integer(n), do: n, else: floor(n)
      "float" -> n * 1.0
      "string" -> Value.to_output(n, fn _ -> [] end)
      _ -> fail("Unknown NumericValue filter: #{name}")
    end
  end

  defp bare({tag, pairs} = d, name, _ns) when tag in [:obj, :kwargs] do
    case name do
      "items" -> Enum.map(pairs, fn {k, v} -> [k, v] end)
      "length" -> length(pairs)
      m when m in ~w(get items keys values dictsort) -> Methods.call(d, m, [])
      _ -> fail("Unknown ObjectValue filter: #{name}")
    end
  end

  defp bare(b, name, _ns) when is_boolean(b) do
    case name do
      "bool" -> b
      "int" -> if b, do: 1, else: 0
      "float" -> if b, do: 1.0, else: 0.0
      "string" -> if b, do: "true", else: "false"
      _ -> fail("Unknown BooleanValue filter: #{name}")
    end
  end

  defp bare(v, name, _ns), do: fail("Cannot apply filter \"#{name}\" to type: #{Value.type_name(v)}")

  # --- filters with arguments -------------------------------------------------------------

  defp call(operand, "tojson", _pos, kw, _lit, ns) do
    indent = kwarg(kw, "indent", nil)
    ensure_ascii = kwarg(kw, "ensure_ascii", false)
    sort_keys = kwarg(kw, "sort_keys", false)
    separators = kwarg(kw, "separators", nil)
    unless is_integer(indent) or indent == nil, do: fail("If set, indent must be a number")
    unless is_boolean(ensure_ascii), do: fail("If set, ensure_ascii must be a boolean")
    unless is_boolean(sort_keys), do: fail("If set, sort_keys must be a boolean")

    separators =
      case separators do
        nil ->
          nil

        v ->
          if Value.array?(v) do
            case Value.items(v) do
              [a, b] when is_binary(a) and is_binary(b) -> {a, b}
              _ -> fail("separators must be a tuple of two strings")
            end
          else
            fail("If set, separators must be a tuple of two strings")
          end
      end

    Value.to_json(operand, ns, %{
      indent: indent,
      ensure_ascii: ensure_ascii,
      sort_keys: sort_keys,
      separators: separators
    })
  end

  defp call(operand, "join", pos, kw, _lit, ns) do
    parts =
      cond do
        is_binary(operand) -> String.codepoints(operand)
        Value.array?(operand) -> Enum.map(Value.items(operand), &Value.join_string(&1, ns))
        true -> fail("Cannot apply filter \"join\" to type: #{Value.type_name(operand)}")
      end

    sep = Methods.arg(pos, 0, kw, "separator", "")
    unless is_binary(sep), do: fail("separator must be a string")
    Enum.join(parts, sep)
  end

  defp call(operand, name, pos, kw, _lit, _ns) when name in ["int", "float"] do
    default = Methods.arg(pos, 0, kw, "default", if(name == "int", do: 0, else: 0.0))

    cond do
      is_binary(operand) ->
        parsed = if name == "int", do: parse_int(operand), else: parse_float(operand)
        if parsed == nil, do: default, else: parsed

      is_number(operand) ->
        operand

      is_boolean(operand) ->
        if name == "int", do: if(operand, do: 1, else: 0), else: if(operand, do: 1.0, else: 0.0)

      true ->
        fail("Cannot apply filter \"#{name}\" to type: #{Value.type_name(operand)}")
    end
  end

  defp call(operand, "default", pos, kw, _lit, _ns) do
    default = Enum.at(pos, 0, "")
    boolean = Methods.arg(pos, 1, kw, "boolean", false)
    unless is_boolean(boolean), do: fail("`default` filter flag must be a boolean")
    if operand == :undefined or (boolean and not Value.truthy?(operand)), do: default, else: operand
  end

  defp call({:tuple, list}, name, pos, kw, lit, ns) when name in ~w(sort selectattr rejectattr map),
    do: call(list, name, pos, kw, lit, ns)

  defp call(list, name, pos, kw, lit, _ns) when is_list(list) do
    case name do
      "sort" -> sort(list, pos, kw)
      "selectattr" -> select_attr(list, true, pos, lit)
      "rejectattr" -> select_attr(list, false, pos, lit)
      "map" -> map_attr(list, kw)
      _ -> fail("Unknown ArrayValue filter: #{name}")
    end
  end

  defp call(s, name, pos, kw, _lit, _ns) when is_binary(s) do
    case name do
      "indent" ->
        width = Methods.arg(pos, 0, kw, "width", 4)
        unless is_integer(width), do: fail("width must be a number")

        indent(
          s,
          width,
          Value.truthy?(Methods.arg(pos, 1, kw, "first", false)),
          Value.truthy?(Methods.arg(pos, 2, kw, "blank", false))
        )

      "replace" ->
        Methods.call(s, "replace", pos ++ [{:kwargs, kw}])

      _ ->
        fail("Unknown StringValue filter: #{name}")
    end
  end

  defp call({tag, _} = d, name, pos, kw, _lit, _ns) when tag in [:obj, :kwargs] do
    if name in ~w(get items keys values dictsort),
      do: Methods.call(d, name, if(kw == [], do: pos, else: pos ++ [{:kwargs, kw}])),
      else: fail("Unknown ObjectValue filter: #{name}")
  end

  defp call(v, name, _pos, _kw, _lit, _ns), do: fail("Cannot apply filter \"#{name}\" to type: #{Value.type_name(v)}")

  # --- helpers ----------------------------------------------------------------------------

  defp sort(list, pos, kw) do
    reverse = Methods.arg(pos, 0, kw, "reverse", false)
    case_sensitive = Methods.arg(pos, 1, kw, "case_sensitive", false)
    attribute = Methods.arg(pos, 2, kw, "attribute", nil)
    unless is_boolean(reverse), do: fail("reverse must be a boolean")
    unless is_boolean(case_sensitive), do: fail("case_sensitive must be a boolean")

    key =
      cond do
        attribute == nil -> & &1
        is_binary(attribute) -> &attribute_value(&1, attribute)
        is_integer(attribute) -> &attribute_value(&1, Integer.to_string(attribute))
        true -> fail("attribute must be a string, integer, or null")
      end

    Methods.sort(list, fn a, b -> Methods.compare(key.(a), key.(b), case_sensitive) end, reverse)
  end

  defp select_attr(list, select?, pos, literals?) do
    name = if select?, do: "selectattr", else: "rejectattr"
    unless Enum.all?(list, &Value.object?/1), do: fail("`#{name}` can only be applied to array of objects")
    unless literals?, do: fail("arguments of `#{name}` must be strings")

    {attr, test, value} =
      case pos do
        [a] -> {a, nil, :none}
        [a, t] -> {a, t, :none}
        [a, t, v | _] -> {a, t, v}
        [] -> fail("`#{name}` needs an attribute")
      end

    if test != nil and not Tests.known?(test), do: fail("Unknown test: #{test}")

    Enum.filter(list, fn item ->
      result =
        case List.keyfind(Value.pairs(item), attr, 0) do
          nil -> false
          {_, a} -> if test, do: Tests.run(test, a, value), else: Value.truthy?(a)
        end

      if select?, do: result, else: not result
    end)
  end

  defp map_attr(list, kw) do
    case List.keyfind(kw, "attribute", 0) do
      {_, attr} when is_binary(attr) ->
        default = kwarg(kw, "default", :undefined)

        Enum.map(list, fn item ->
          unless Value.object?(item) or match?({:ns, _}, item), do: fail("items in map must be an object")

          case attribute_value(item, attr) do
            :undefined -> default
            v -> v
          end
        end)

      {_, _} ->
        fail("attribute must be a string")

      nil ->
        fail("`map` expressions without `attribute` set are not currently supported.")
    end
  end

  # "a.b.0" through dicts and arrays
  defp attribute_value(item, path) do
    Enum.reduce_while(String.split(path, "."), item, fn part, v ->
      cond do
        Value.object?(v) ->
          case List.keyfind(Value.pairs(v), part, 0) do
            {_, x} -> {:cont, x}
            nil -> {:cont, :undefined}
          end

        Value.array?(v) ->
          items = Value.items(v)

          case Integer.parse(part) do
            {i, _} when i >= 0 and i < length(items) -> {:cont, Enum.at(items, i)}
            _ -> {:halt, :undefined}
          end

        true ->
          {:halt, :undefined}
      end
    end)
  end

  defp unique(list) do
    {out, _} =
      Enum.reduce(list, {[], []}, fn item, {out, seen} ->
        if Enum.any?(seen, &same_value?(&1, item)), do: {out, seen}, else: {[item | out], [item | seen]}
      end)

    Enum.reverse(out)
  end

  # Set membership of the raw values: primitives by value, containers by identity (never
  # equal here, as each is a distinct object in the reference)
  defp same_value?(a, b), do: Value.strict_eq?(a, b)

  defp indent(s, width, first, blank) do
    pad = String.duplicate(" ", max(width, 0))

    s
    |> String.split("\n")
    |> Enum.with_index()
    |> Enum.map_join("\n", fn {line, i} ->
      if (not first and i == 0) or (not blank and line == ""), do: line, else: pad <> line
    end)
  end

  # JavaScript's parseInt(s, 10) / parseFloat(s): a leading numeric prefix, nil for NaN
  defp parse_int(s) do
    case Integer.parse(Strings.trim_start(s)) do
      {n, _} -> n
      :error -> nil
    end
  end

  defp parse_float(s) do
    t = Strings.trim_start(s)

    case Regex.run(~r/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/, t) do
      [m | _] ->
        m =
          if String.starts_with?(m, ".") or String.starts_with?(m, "-.") or String.starts_with?(m, "+."),
            do: String.replace(m, ".", "0.", global: false),
            else: m

        m = if String.ends_with?(m, "."), do: m <> "0", else: m

        case Float.parse(m) do
          {f, _} -> f
          :error -> nil
        end

      nil ->
        nil
    end
  end

  defp kwarg(kw, name, default) do
    case List.keyfind(kw, name, 0) do
      {_, v} -> v
      nil -> default
    end
  end

  defp fail(message), do: throw({:jinja_error, message})
end
