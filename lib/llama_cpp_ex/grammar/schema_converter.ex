defmodule LlamaCppEx.Grammar.SchemaConverter do
  @moduledoc false
  # Node tree (LlamaCppEx.Grammar.JsonSchema) -> GBNF rules, as upstream's
  # common_chat_schema_converter (common/json-schema-to-grammar.cpp): the same
  # rule names, rule text and order (rules sorted by name), so that the
  # grammar can be compared with upstream's line by line. Patterns go through
  # LlamaCppEx.Grammar.Regex, integer bounds through
  # LlamaCppEx.Grammar.IntegerRange.
  #
  # The state is threaded through every call: rules (name -> text), the $refs
  # being resolved (for cycles), errors and warnings.

  alias LlamaCppEx.Grammar.{IntegerRange, Regex}
  alias LlamaCppEx.Grammar.JsonValue, as: J

  @space_rule ~S'| " " | "\n"{1,2} [ \t]{0,20}'

  @primitive %{
    "boolean" => {~S'("true" | "false")', []},
    "decimal-part" => {~S'[0-9]{1,16}', []},
    "integral-part" => {~S'[0] | [1-9] [0-9]{0,15}', []},
    "number" =>
      {~S'("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?', ["integral-part", "decimal-part"]},
    "integer" => {~S'("-"? integral-part)', ["integral-part"]},
    "value" =>
      {"object | array | string | number | boolean | null", ["object", "array", "string", "number", "boolean", "null"]},
    "object" =>
      {~S'"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"', ["string", "value"]},
    "array" => {~S'"[" space ( value ("," space value)* )? space "]"', ["value"]},
    "uuid" =>
      {~S'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\""', []},
    "char" => {~S'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})', []},
    "string" => {~S'"\"" char* "\""', ["char"]},
    "null" => {~S'"null"', []}
  }

  @string_format %{
    "date" => {~S'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', []},
    "time" =>
      {~S'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
       []},
    "date-time" => {~S'date "T" time', ["date", "time"]},
    "date-string" => {~S'"\"" date "\""', ["date"]},
    "time-string" => {~S'"\"" time "\""', ["time"]},
    "date-time-string" => {~S'"\"" date-time "\""', ["date-time"]}
  }

  @reserved MapSet.new(["root" | Map.keys(@primitive) ++ Map.keys(@string_format)])

  defstruct rules: %{"space" => @space_rule},
            resolving: MapSet.new(),
            errors: [],
            warnings: [],
            refs: %{},
            unsupported_pattern: :error

  @doc """
  Converts the tree. Returns `{:ok, gbnf, warnings}` or `{:error, {reason, message}}`.
  """
  def convert(root, refs, opts) do
    st = %__MODULE__{refs: refs, unsupported_pattern: Keyword.fetch!(opts, :unsupported_pattern)}
    {_name, st} = visit(root, "", st)

    case Enum.reverse(st.errors) do
      [] ->
        {:ok, format(st.rules), Enum.reverse(st.warnings)}

      errors ->
        reason =
          if Enum.all?(errors, &match?({:unsupported_json_schema, _}, &1)),
            do: :unsupported_json_schema,
            else: :invalid_json_schema

        {:error, {reason, "JSON schema conversion failed:\n" <> Enum.map_join(errors, "\n", &elem(&1, 1))}}
    end
  end

  defp format(rules) do
    rules |> Enum.sort() |> Enum.map_join(fn {name, rule} -> "#{name} ::= #{rule}\n" end)
  end

  @doc false
  def add_error(st, reason, msg), do: %{st | errors: [{reason, msg} | st.errors]}
  @doc false
  def add_warning(st, msg), do: %{st | warnings: [msg | st.warnings]}

  # ---- rules ------------------------------------------------------------------------

  @doc "Adds a rule under `name` (made a valid rule name), or a numbered variant when taken by another."
  def add_rule(st, name, rule) do
    esc = String.replace(name, ~r/[^a-zA-Z0-9-]+/, "-")

    case Map.fetch(st.rules, esc) do
      {:ok, ^rule} ->
        {esc, st}

      :error ->
        {esc, put_in(st.rules[esc], rule)}

      {:ok, _other} ->
        key = free_name(st.rules, esc, rule, 0)
        {key, put_in(st.rules[key], rule)}
    end
  end

  defp free_name(rules, esc, rule, i) do
    key = esc <> Integer.to_string(i)

    case Map.fetch(rules, key) do
      {:ok, other} when other != rule -> free_name(rules, esc, rule, i + 1)
      _ -> key
    end
  end

  @doc "Adds a built-in rule and the built-in rules it uses."
  def add_primitive(st, name, type) do
    {content, deps} = builtin!(type)
    {n, st} = add_rule(st, name, content)

    st =
      Enum.reduce(deps, st, fn dep, st ->
        if Map.has_key?(st.rules, dep), do: st, else: st |> add_primitive(dep, dep) |> elem(1)
      end)

    {n, st}
  end

  defp builtin!(type), do: Map.get(@primitive, type) || Map.fetch!(@string_format, type)

  @doc "A GBNF string literal, as upstream's format_literal()."
  def format_literal(text) do
    escaped =
      for <<c <- text>>, into: "" do
        case c do
          ?\r -> "\\r"
          ?\n -> "\\n"
          ?" -> "\\\""
          ?\\ -> "\\\\"
          c -> <<c>>
        end
      end

    "\"" <> escaped <> "\""
  end

  @doc """
  Repetition of `item` from `min` to `max` (nil: no limit) times, with
  `separator` between items, as upstream's build_repetition().
  """
  def repetition(item, min, max, separator \\ "")
  def repetition(_item, _min, 0, _sep), do: ""
  def repetition(item, 0, 1, _sep), do: item <> "?"
  def repetition(item, 1, nil, ""), do: item <> "+"
  def repetition(item, 0, nil, ""), do: item <> "*"
  def repetition(item, min, max, ""), do: "#{item}{#{min},#{max}}"

  def repetition(item, min, max, sep) do
    rest = repetition("(" <> sep <> " " <> item <> ")", max(min - 1, 0), max && max - 1)
    result = item <> " " <> rest
    if min == 0, do: "(" <> result <> ")?", else: result
  end

  # ---- visiting nodes ---------------------------------------------------------------

  defp visit(node, name, st) do
    rule_name =
      cond do
        MapSet.member?(@reserved, name) -> name <> "-"
        name == "" -> "root"
        true -> name
      end

    sub_name = if name == "", do: "", else: name <> "-"
    visit(node, name, rule_name, sub_name, st)
  end

  defp visit({:ref, ref}, _name, rule_name, _sub, st) do
    {target, st} = resolve_ref(ref, st)
    add_rule(st, rule_name, target)
  end

  defp visit({:any_of, alts}, name, rule_name, _sub, st) do
    {rules, st} =
      alts
      |> Enum.with_index()
      |> Enum.map_reduce(st, fn {alt, i}, st ->
        visit(alt, name <> if(name == "", do: "alternative-", else: "-") <> Integer.to_string(i), st)
      end)

    add_rule(st, rule_name, Enum.join(rules, " | "))
  end

  defp visit({:all_of, children}, name, rule_name, _sub, st), do: visit_all_of(children, name, rule_name, st)

  defp visit({:const, value}, _name, rule_name, _sub, st),
    do: add_rule(st, rule_name, constant(value))

  defp visit({:enum, values}, _name, rule_name, _sub, st),
    do: add_rule(st, rule_name, "(" <> Enum.map_join(values, " | ", &constant/1) <> ")")

  defp visit({:object, [], :any}, _name, rule_name, _sub, st) do
    {obj, st} = add_primitive(st, "object", "object")
    add_rule(st, rule_name, obj)
  end

  defp visit({:object, props, additional}, name, rule_name, _sub, st) do
    required = for {n, _, true} <- props, into: MapSet.new(), do: n
    {rule, st} = object_rule(Enum.map(props, fn {n, node, _} -> {n, node} end), required, name, additional, st)
    add_rule(st, rule_name, rule)
  end

  defp visit({:tuple, items}, _name, rule_name, sub_name, st) do
    {rules, st} =
      items
      |> Enum.with_index()
      |> Enum.map_reduce(st, fn {item, i}, st -> visit(item, "#{sub_name}tuple-#{i}", st) end)

    add_rule(st, rule_name, ~S("[" space ) <> Enum.join(rules, ~S( "," space )) <> ~S( space "]"))
  end

  defp visit({:array, :any, 0, nil}, _name, rule_name, _sub, st), do: primitive(st, rule_name, "array")

  defp visit({:array, items, min, max}, _name, rule_name, sub_name, st) do
    {item, st} = visit(items, sub_name <> "item", st)
    add_rule(st, rule_name, ~S("[" space ) <> repetition(item, min, max, ~S("," space)) <> ~S( space "]"))
  end

  defp visit({:string, %{pattern: p}}, _name, rule_name, _sub, st) when p != "",
    do: Regex.visit_pattern(st, p, rule_name)

  defp visit({:string, %{format: "uuid"}}, _name, rule_name, _sub, st), do: primitive(st, rule_name, "uuid")

  defp visit({:string, %{format: f}}, _name, rule_name, _sub, st) when is_binary(f) do
    {prim, st} = add_primitive(st, f <> "-string", f <> "-string")
    add_rule(st, rule_name, prim)
  end

  defp visit({:string, %{min_length: min, max_length: max}}, _name, rule_name, _sub, st)
       when min > 0 or max != nil do
    {char, st} = add_primitive(st, "char", "char")
    add_rule(st, rule_name, ~S("\"" ) <> repetition(char, min, max) <> ~S( "\""))
  end

  defp visit({:string, _}, _name, rule_name, _sub, st), do: primitive(st, rule_name, "string")

  defp visit({:integer, nil, nil}, _name, rule_name, _sub, st), do: primitive(st, rule_name, "integer")

  defp visit({:integer, min, max}, _name, rule_name, _sub, st),
    do: add_rule(st, rule_name, "(" <> IntegerRange.build(min, max) <> ")")

  defp visit(type, _name, rule_name, _sub, st) when type in [:number, :boolean, :null],
    do: primitive(st, rule_name, Atom.to_string(type))

  defp visit(:any, _name, rule_name, _sub, st) do
    {value, st} = add_primitive(st, "value", "value")
    add_rule(st, rule_name, value)
  end

  defp primitive(st, rule_name, type), do: add_primitive(st, if(rule_name == "root", do: "root", else: type), type)

  defp constant(value), do: format_literal(J.dump(value))

  defp resolve_ref(ref, st) do
    fragment =
      case String.split(ref, "#", parts: 2) do
        [_, frag] -> frag
        [whole] -> whole
      end

    ref_name = "ref" <> String.replace(fragment, ~r/[^a-zA-Z0-9-]+/, "-")

    cond do
      Map.has_key?(st.rules, ref_name) or MapSet.member?(st.resolving, ref) ->
        {ref_name, st}

      Map.get(st.refs, ref) == nil ->
        {"", add_error(st, :invalid_json_schema, "Unresolved $ref " <> ref)}

      true ->
        st = %{st | resolving: MapSet.put(st.resolving, ref)}
        {name, st} = visit(Map.fetch!(st.refs, ref), ref_name, st)
        {name, %{st | resolving: MapSet.delete(st.resolving, ref)}}
    end
  end

  # ---- allOf ----------------------------------------------------------------------

  defp visit_all_of(children, name, rule_name, st) do
    acc = %{props: [], required: MapSet.new(), enums: %{}}

    acc =
      Enum.reduce(children, acc, fn
        {:any_of, alts}, acc -> Enum.reduce(alts, acc, &all_of_component(&1, false, &2, st))
        child, acc -> all_of_component(child, true, acc, st)
      end)

    n = length(children)
    intersection = for {lit, count} <- Enum.sort(acc.enums), count == n, do: lit

    if intersection != [] do
      add_rule(st, rule_name, "(" <> Enum.join(intersection, " | ") <> ")")
    else
      {rule, st} = object_rule(Enum.reverse(acc.props), acc.required, name, nil, st)
      add_rule(st, rule_name, rule)
    end
  end

  defp all_of_component({:ref, ref}, required?, acc, st) do
    case Map.get(st.refs, ref) do
      nil -> acc
      target -> all_of_component(target, required?, acc, st)
    end
  end

  defp all_of_component({:object, props, _additional}, required?, acc, _st) do
    Enum.reduce(props, acc, fn {n, node, _}, acc ->
      acc = %{acc | props: [{n, node} | acc.props]}
      if required?, do: %{acc | required: MapSet.put(acc.required, n)}, else: acc
    end)
  end

  defp all_of_component({:enum, values}, _required?, acc, _st) do
    Enum.reduce(values, acc, fn v, acc -> %{acc | enums: Map.update(acc.enums, constant(v), 1, &(&1 + 1))} end)
  end

  defp all_of_component(_other, _required?, acc, _st), do: acc

  # ---- objects --------------------------------------------------------------------

  defp object_rule(props, required, name, additional, st) do
    sep = if name == "", do: "", else: "-"

    {st, kv, req, opt, names} =
      Enum.reduce(props, {st, %{}, [], [], []}, fn {prop, node}, {st, kv, req, opt, names} ->
        {prop_rule, st} = visit(node, name <> sep <> prop, st)

        {kv_name, st} =
          add_rule(st, name <> sep <> prop <> "-kv", format_literal(J.dump(prop)) <> ~S( space ":" space ) <> prop_rule)

        kv = Map.put(kv, prop, kv_name)

        if MapSet.member?(required, prop),
          do: {st, kv, [prop | req], opt, [prop | names]},
          else: {st, kv, req, [prop | opt], [prop | names]}
      end)

    {req, opt, names} = {Enum.reverse(req), Enum.reverse(opt), Enum.reverse(names)}

    {st, kv, opt} =
      if additional do
        sub = name <> sep <> "additional"

        {value_rule, st} =
          if additional == :any, do: add_primitive(st, "value", "value"), else: visit(additional, sub <> "-value", st)

        {key_rule, st} =
          if names == [] do
            add_primitive(st, "string", "string")
          else
            {not_rule, st} = not_strings(names, st)
            add_rule(st, sub <> "-k", not_rule)
          end

        {kv_rule, st} = add_rule(st, sub <> "-kv", key_rule <> ~S( ":" space ) <> value_rule)
        {st, Map.put(kv, "*", kv_rule), opt ++ ["*"]}
      else
        {st, kv, opt}
      end

    if req == [] and opt == [] do
      {~S("{" space "}"), st}
    else
      head = ~S("{" space ) <> Enum.map_join(req, ~S( "," space ), &kv[&1])

      {optional, st} =
        if opt == [] do
          {"", st}
        else
          {alts, st} =
            opt
            |> tails()
            |> Enum.map_reduce(st, fn ks, st -> recursive_refs(ks, false, kv, name, sep, st) end)

          body = Enum.join(alts, " | ")

          if req == [],
            do: {" (" <> body <> " )?", st},
            else: {~S| ( "," space ( | <> body <> " ) )?", st}
        end

      {head <> optional <> ~S( space "}"), st}
    end
  end

  defp tails([]), do: []
  defp tails([_ | rest] = list), do: [list | tails(rest)]

  defp recursive_refs([k | rest], first_optional?, kv, name, sep, st) do
    kv_name = kv[k]
    comma = ~S|( "," space | <> kv_name <> " )"

    res =
      cond do
        first_optional? -> comma <> if(k == "*", do: "*", else: "?")
        k == "*" -> kv_name <> " " <> comma <> "*"
        true -> kv_name
      end

    if rest == [] do
      {res, st}
    else
      {inner, st} = recursive_refs(rest, true, kv, name, sep, st)
      {rest_name, st} = add_rule(st, name <> sep <> k <> "-rest", inner)
      {res <> " " <> rest_name, st}
    end
  end

  # a JSON string that is none of `strings` (upstream's _not_strings, over a trie)
  defp not_strings(strings, st) do
    trie = Enum.reduce(strings, %{end?: false, kids: %{}}, &trie_insert(&2, String.to_charlist(&1)))
    {char, st} = add_primitive(st, "char", "char")
    body = IO.iodata_to_binary(trie_visit(trie, char))
    {~S|["] ( | <> body <> " )" <> if(trie.end?, do: "", else: "?") <> ~S| ["]|, st}
  end

  defp trie_insert(node, []), do: %{node | end?: true}

  defp trie_insert(node, [c | rest]) do
    child = Map.get(node.kids, c, %{end?: false, kids: %{}})
    %{node | kids: Map.put(node.kids, c, trie_insert(child, rest))}
  end

  defp trie_visit(node, char) do
    kids = Enum.sort(node.kids)

    alts =
      Enum.map(kids, fn {c, child} ->
        if map_size(child.kids) > 0,
          do: ["[", <<c::utf8>>, "] (", trie_visit(child, char), ")"],
          else: ["[", <<c::utf8>>, "] ", char, "+"]
      end)

    rejects = for {c, _} <- kids, into: "", do: <<c::utf8>>
    tail = if kids != [], do: [~S( | [^"), rejects, "] ", char, "*"], else: []
    [Enum.intersperse(alts, " | "), tail]
  end
end
