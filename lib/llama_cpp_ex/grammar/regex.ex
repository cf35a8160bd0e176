defmodule LlamaCppEx.Grammar.Regex do
  @moduledoc false
  # A JSON schema `pattern` (an ECMA regular expression anchored with ^ and $)
  # as GBNF, as upstream's _visit_pattern()/_pattern_to_rule() in
  # common/json-schema-to-grammar.cpp: literals, ., groups (plain and (?:...)),
  # character classes, alternation, *, +, ?, {m,n} and the escapes GBNF knows.
  #
  # Two kinds of failure, as upstream: a pattern that is not a valid regex is
  # an error (:invalid_json_schema); a valid regex with no GBNF equivalent
  # (lookarounds, \w, \d, backreferences, an unanchored pattern, ...) is
  # :unsupported_json_schema, or with `unsupported_pattern: :any_string` (what
  # upstream does) any string, with a warning. Either way the rules the
  # partial conversion added are dropped.

  alias LlamaCppEx.Grammar.SchemaConverter, as: C

  @max_depth 100
  @non_literal ~c"|.()[]{}*+?^$"
  @escaped_in_regexps_but_not_in_literals ~c"^$.[](){}|*+?"

  @doc "The rule for a string matching `pattern`, added under `name`."
  def visit_pattern(st, pattern, name) do
    rules = st.rules

    try do
      to_rule(st, pattern, name)
    catch
      {:unsupported_pattern, why} ->
        st = %{st | rules: rules}

        case st.unsupported_pattern do
          :any_string ->
            st = C.add_warning(st, "pattern #{pattern} is not supported (#{why}), accepting any string")
            {string, st} = C.add_primitive(st, "string", "string")
            C.add_rule(st, name, string)

          :error ->
            {"", C.add_error(st, :unsupported_json_schema, "Unsupported pattern #{pattern}: #{why}")}
        end

      {:invalid_pattern, why} ->
        {"", C.add_error(%{st | rules: rules}, :invalid_json_schema, "Invalid pattern #{pattern}: #{why}")}
    end
  end

  defp unsupported(why), do: throw({:unsupported_pattern, why})
  defp invalid(why), do: throw({:invalid_pattern, why})

  defp to_rule(st, pattern, name) do
    size = byte_size(pattern)

    if size < 2 or :binary.first(pattern) != ?^ or :binary.last(pattern) != ?$,
      do: unsupported("not anchored with '^' and '$'")

    p = %{src: binary_part(pattern, 1, size - 2), name: name, depth: 0, sub_ids: %{}, st: st}
    {rule, i, p} = transform(p, 0, [])
    if p.depth != 0, do: invalid("unbalanced parentheses")
    _ = i
    C.add_rule(p.st, name, ~S("\"" ) <> "(" <> literal_or_rule(rule) <> ")" <> ~S( "\""))
  end

  defp literal_or_rule({s, true}), do: "\"" <> s <> "\""
  defp literal_or_rule({s, false}), do: s

  defp at(p, i), do: if(i < byte_size(p.src), do: :binary.at(p.src, i), else: nil)

  # seq is reversed: the last item first
  defp transform(p, i, seq) do
    case at(p, i) do
      nil ->
        {join(seq), i, p}

      ?. ->
        {dot, st} = C.add_rule(p.st, "dot", ~S([^\x0A\x0D]))
        transform(%{p | st: st}, i + 1, [{dot, false} | seq])

      ?( ->
        i =
          if at(p, i + 1) == ?? do
            if at(p, i + 2) == ?:, do: i + 3, else: unsupported("unsupported group syntax")
          else
            i + 1
          end

        p = %{p | depth: p.depth + 1}
        if p.depth > @max_depth, do: unsupported("pattern nesting too deep")
        {inner, i, p} = transform(p, i, [])
        transform(p, i, [{"(" <> literal_or_rule(inner) <> ")", false} | seq])

      ?) ->
        if p.depth == 0, do: invalid("unbalanced parentheses")
        {join(seq), i + 1, %{p | depth: p.depth - 1}}

      c when c in [?^, ?$] ->
        unsupported("anchor inside the pattern")

      ?[ ->
        {class, i} = char_class(p, i + 1, "[")
        transform(p, i, [{class, false} | seq])

      ?| ->
        transform(p, i + 1, [{"|", false} | seq])

      c when c in [?*, ?+, ??] ->
        case seq do
          [] -> invalid("nothing to repeat")
          [last | rest] -> transform(p, i + 1, [{literal_or_rule(last) <> <<c>>, false} | rest])
        end

      ?{ ->
        {min, max, i} = braces(p, i + 1, "")

        case seq do
          [] ->
            invalid("nothing to repeat")

          [{sub, true} | rest] ->
            transform(p, i, [{C.repetition("\"" <> sub <> "\"", min, max), false} | rest])

          [{sub, false} | rest] ->
            {id, p} = sub_rule(p, sub)
            transform(p, i, [{C.repetition(id, min, max), false} | rest])
        end

      c ->
        {lit, j} = literal(p, i, "")
        if lit == "", do: unsupported("unsupported character: " <> <<c>>)
        transform(p, j, [{lit, true} | seq])
    end
  end

  # one rule per distinct repeated group, named name-1, name-2, ...
  defp sub_rule(p, sub) do
    case Map.fetch(p.sub_ids, sub) do
      {:ok, id} ->
        {id, p}

      :error ->
        {id, st} = C.add_rule(p.st, p.name <> "-" <> Integer.to_string(map_size(p.sub_ids) + 1), sub)
        {id, %{p | st: st, sub_ids: Map.put(p.sub_ids, sub, id)}}
    end
  end

  # merges consecutive literals, joins with spaces
  defp join(seq) do
    {items, lit} =
      seq
      |> Enum.reverse()
      |> Enum.reduce({[], nil}, fn
        {s, true}, {acc, nil} -> {acc, s}
        {s, true}, {acc, lit} -> {acc, lit <> s}
        item, {acc, nil} -> {[item | acc], nil}
        item, {acc, lit} -> {[item, {lit, true} | acc], nil}
      end)

    items = if lit, do: [{lit, true} | items], else: items
    {items |> Enum.reverse() |> Enum.map_join(" ", &literal_or_rule/1), false}
  end

  defp char_class(p, i, acc) do
    case at(p, i) do
      nil ->
        invalid("unterminated character class")

      ?] ->
        {acc <> "]", i + 1}

      ?\\ ->
        case escape_length(p.src, i) do
          0 -> unsupported("unsupported escape in character class: " <> slice(p.src, i, 2))
          n -> char_class(p, i + n, acc <> binary_part(p.src, i, n))
        end

      c ->
        char_class(p, i + 1, acc <> <<c>>)
    end
  end

  defp braces(p, i, acc) do
    case at(p, i) do
      nil ->
        unsupported("unterminated curly brackets")

      ?} ->
        {min, max} = counts(acc)
        {min, max, i + 1}

      c ->
        braces(p, i + 1, acc <> <<c>>)
    end
  end

  defp counts(text) do
    case String.split(text, ",") do
      [n] ->
        n = count!(n)
        {n, n}

      [a, b] ->
        {if(a == "", do: 0, else: count!(a)), if(b == "", do: nil, else: count!(b))}

      _ ->
        unsupported("wrong number of values in curly brackets")
    end
  end

  defp count!(text) do
    case Integer.parse(String.trim_leading(text)) do
      {n, _} when n >= 0 -> n
      _ -> unsupported("invalid number in curly brackets")
    end
  end

  defp literal(p, i, acc) do
    len = byte_size(p.src)

    case at(p, i) do
      nil ->
        {acc, i}

      ?\\ ->
        if i == len - 1, do: invalid("trailing backslash")
        next = at(p, i + 1)

        if next in @escaped_in_regexps_but_not_in_literals do
          literal(p, i + 2, acc <> <<next>>)
        else
          case escape_length(p.src, i) do
            0 -> unsupported("unsupported escape: " <> slice(p.src, i, 2))
            n -> literal(p, i + n, acc <> binary_part(p.src, i, n))
          end
        end

      ?" ->
        literal(p, i + 1, acc <> ~S(\"))

      c ->
        next = at(p, i + 1)

        if c not in @non_literal and (i == len - 1 or acc == "" or next == ?. or next not in @non_literal),
          do: literal(p, i + 1, acc <> <<c>>),
          else: {acc, i}
    end
  end

  defp slice(src, i, n), do: binary_part(src, i, min(n, byte_size(src) - i))

  # length of a GBNF escape at i (\x.., \u...., \U........, \t \r \n \\ \" \[ \] \-), 0 if none;
  # kept in sync with parse_char() in llama.cpp's src/llama-grammar.cpp
  defp escape_length(src, i) do
    if i + 1 >= byte_size(src) or :binary.at(src, i) != ?\\ do
      0
    else
      case :binary.at(src, i + 1) do
        ?x -> hex_escape(src, i, 2)
        ?u -> hex_escape(src, i, 4)
        ?U -> hex_escape(src, i, 8)
        c when c in ~c"trn\\\"[]-" -> 2
        _ -> 0
      end
    end
  end

  defp hex_escape(src, i, n) do
    if i + 2 + n > byte_size(src) do
      0
    else
      hex = binary_part(src, i + 2, n)
      if hex =~ ~r/\A[0-9a-fA-F]+\z/, do: 2 + n, else: 0
    end
  end
end
