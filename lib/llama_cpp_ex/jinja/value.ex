defmodule LlamaCppEx.Jinja.Value do
  @moduledoc false
  # Template values and their semantics, as the reference renderer (@huggingface/jinja)
  # defines them:
  #
  #   nil (none) | :undefined | true | false | integer | float | binary (string)
  #   | list (array) | {:tuple, list} | {:obj, [{key, value}]} (a dict: keys are strings,
  #   in insertion order) | {:kwargs, pairs} | {:ns, id} (a namespace(), mutable, its
  #   entries live in the interpreter state) | {:fn, ...} (a callable)
  #
  # Elixir data becomes template values with from_term/1: maps (keys in term order, i.e.
  # sorted for small maps) and keyword lists (keys in the given order) become dicts,
  # atom keys become strings; only data is accepted, never functions, pids or refs.
  #
  # Printing follows the reference, which is JavaScript and differs from Python Jinja:
  # `{{ true }}` prints `true`, `{{ [1, 'a'] }}` prints `[1, "a"]` (JSON), `{{ 2.0 }}`
  # prints `2.0`, none and undefined print nothing, and `~` joins a list with commas.

  alias LlamaCppEx.Jinja.Strings

  @type t ::
          nil
          | :undefined
          | boolean()
          | number()
          | String.t()
          | [t()]
          | {:tuple, [t()]}
          | {:obj, [{String.t(), t()}]}
          | {:kwargs, [{String.t(), t()}]}
          | {:ns, non_neg_integer()}
          | {:fn, term()}

  # --- from Elixir ------------------------------------------------------------------------

  @doc "Converts Elixir data to a template value; raises ArgumentError on anything else."
  @spec from_term(term()) :: t()
  def from_term(v) when is_binary(v) do
    if String.valid?(v), do: v, else: raise(ArgumentError, "template variables must be valid UTF-8, got: #{inspect(v)}")
  end

  def from_term(v) when is_integer(v) or is_float(v) or is_boolean(v) or is_nil(v), do: v
  def from_term(v) when is_atom(v), do: Atom.to_string(v)

  def from_term(%{__struct__: mod} = v),
    do: raise(ArgumentError, "template variables cannot be structs, got: #{inspect(mod)} #{inspect(v)}")

  def from_term(%{} = map) do
    {:obj, map |> Enum.sort_by(fn {k, _} -> key!(k) end) |> Enum.map(fn {k, v} -> {key!(k), from_term(v)} end)}
  end

  def from_term([{k, _} | _] = list) when is_atom(k) do
    if Keyword.keyword?(list),
      do: {:obj, Enum.map(list, fn {k, v} -> {key!(k), from_term(v)} end)},
      else: Enum.map(list, &from_term/1)
  end

  def from_term(list) when is_list(list), do: Enum.map(list, &from_term/1)
  def from_term(other), do: raise(ArgumentError, "template variables must be data, got: #{inspect(other)}")

  defp key!(k) when is_binary(k), do: from_term(k)
  defp key!(k) when is_atom(k) and not is_nil(k) and not is_boolean(k), do: Atom.to_string(k)
  defp key!(k), do: raise(ArgumentError, "dict keys must be strings or atoms, got: #{inspect(k)}")

  # --- predicates ---------------------------------------------------------------------------

  @spec truthy?(t()) :: boolean()
  def truthy?(nil), do: false
  def truthy?(:undefined), do: false
  def truthy?(false), do: false
  def truthy?(true), do: true
  def truthy?(0), do: false
  def truthy?(n) when is_float(n), do: n != 0.0
  def truthy?(""), do: false
  def truthy?([]), do: false
  def truthy?({:tuple, []}), do: false
  def truthy?({:obj, []}), do: false
  def truthy?({:kwargs, []}), do: false
  def truthy?(_), do: true

  def array?(v), do: is_list(v) or match?({:tuple, _}, v)
  def items(list) when is_list(list), do: list
  def items({:tuple, list}), do: list

  def object?(v), do: match?({:obj, _}, v) or match?({:kwargs, _}, v)
  def pairs({:obj, p}), do: p
  def pairs({:kwargs, p}), do: p

  @spec type_name(t()) :: String.t()
  def type_name(nil), do: "NullValue"
  def type_name(:undefined), do: "UndefinedValue"
  def type_name(b) when is_boolean(b), do: "BooleanValue"
  def type_name(n) when is_integer(n), do: "IntegerValue"
  def type_name(n) when is_float(n), do: "FloatValue"
  def type_name(s) when is_binary(s), do: "StringValue"
  def type_name(l) when is_list(l), do: "ArrayValue"
  def type_name({:tuple, _}), do: "TupleValue"
  def type_name({:obj, _}), do: "ObjectValue"
  def type_name({:kwargs, _}), do: "KeywordArgumentsValue"
  def type_name({:ns, _}), do: "NamespaceValue"
  def type_name({:fn, _}), do: "FunctionValue"

  # --- printing ---------------------------------------------------------------------------

  @doc "What `{{ v }}` prints (RuntimeValue.toString); `ns` resolves namespaces."
  @spec to_output(t(), (integer() -> list())) :: String.t()
  def to_output(v, ns), do: rv_string(v, ns)

  defp rv_string(nil, _ns), do: "null"
  defp rv_string(:undefined, _ns), do: "undefined"
  defp rv_string(true, _ns), do: "true"
  defp rv_string(false, _ns), do: "false"
  defp rv_string(n, _ns) when is_integer(n), do: Integer.to_string(n)
  defp rv_string(f, _ns) when is_float(f), do: float_string(f)
  defp rv_string(s, _ns) when is_binary(s), do: s
  defp rv_string({:fn, _}, _ns), do: "[function]"
  defp rv_string(v, ns), do: to_json(v, ns, %{undefined: "undefined"})

  # FloatValue.toString: integral floats keep a ".0"
  defp float_string(f) do
    if f == Float.round(f) and abs(f) < 1.0e21, do: Integer.to_string(trunc(f)) <> ".0", else: js_number(f)
  end

  @doc "JavaScript's `value.toString()` (used by `~` and string `+`)."
  @spec js_string(t(), (integer() -> list())) :: String.t()
  def js_string(n, _ns) when is_number(n), do: js_number(n)
  def js_string(l, ns) when is_list(l), do: Enum.map_join(l, ",", &rv_string(&1, ns))
  def js_string({:tuple, l}, ns), do: js_string(l, ns)
  def js_string({tag, _}, _ns) when tag in [:obj, :kwargs, :ns], do: "[object Map]"
  def js_string(v, ns), do: rv_string(v, ns)

  @doc "JavaScript's Array.prototype.join of the raw values (the `join` filter)."
  @spec join_string(t(), (integer() -> list())) :: String.t()
  def join_string(v, _ns) when v in [nil, :undefined], do: ""
  def join_string(v, ns), do: js_string(v, ns)

  @doc "JavaScript's Number.prototype.toString."
  @spec js_number(number()) :: String.t()
  def js_number(n) when is_integer(n), do: Integer.to_string(n)

  def js_number(f) when is_float(f) do
    cond do
      f == 0.0 ->
        "0"

      f < 0 ->
        "-" <> js_number(-f)

      f == Float.round(f) and f < 1.0e21 ->
        Integer.to_string(trunc(f))

      true ->
        {digits, n} = shortest_digits(f)
        format_ecma(digits, n)
    end
  end

  # digits (no leading/trailing zeros) and n such that f = 0.digits * 10^n
  defp shortest_digits(f) do
    [mantissa | exp] = String.split(:erlang.float_to_binary(f, [:short]), "e")
    exp = if exp == [], do: 0, else: String.to_integer(hd(exp))
    [int, frac] = String.split(mantissa <> if(String.contains?(mantissa, "."), do: "", else: ".0"), ".")
    all = int <> frac
    lead = byte_size(all) - byte_size(String.trim_leading(all, "0"))
    digits = all |> String.trim_leading("0") |> String.trim_trailing("0")
    {digits, byte_size(int) + exp - lead}
  end

  defp format_ecma(s, n) do
    k = byte_size(s)

    cond do
      k <= n and n <= 21 ->
        s <> String.duplicate("0", n - k)

      0 < n and n <= 21 ->
        binary_part(s, 0, n) <> "." <> binary_part(s, n, k - n)

      -6 < n and n <= 0 ->
        "0." <> String.duplicate("0", -n) <> s

      true ->
        e = n - 1
        sign = if e >= 0, do: "+", else: "-"
        m = if k == 1, do: s, else: binary_part(s, 0, 1) <> "." <> binary_part(s, 1, k - 1)
        m <> "e" <> sign <> Integer.to_string(abs(e))
    end
  end

  # --- comparison -------------------------------------------------------------------------

  @doc "`==` of the reference: JavaScript's loose equality of the raw values."
  @spec loose_eq?(t(), t()) :: boolean()
  def loose_eq?(a, b) when a in [nil, :undefined] and b in [nil, :undefined], do: true
  def loose_eq?(a, _b) when a in [nil, :undefined], do: false
  def loose_eq?(_a, b) when b in [nil, :undefined], do: false
  def loose_eq?(a, b) when is_number(a) and is_number(b), do: a == b
  def loose_eq?(a, b) when is_binary(a) and is_binary(b), do: a == b
  def loose_eq?(a, b) when is_boolean(a) and is_boolean(b), do: a == b
  def loose_eq?(a, b) when is_boolean(a), do: loose_eq?(if(a, do: 1, else: 0), b)
  def loose_eq?(a, b) when is_boolean(b), do: loose_eq?(a, if(b, do: 1, else: 0))
  def loose_eq?(a, b) when is_number(a) and is_binary(b), do: to_js_number(b) == a
  def loose_eq?(a, b) when is_binary(a) and is_number(b), do: to_js_number(a) == b
  # Arrays and dicts are objects in the reference, equal only to themselves
  # (`message == user_messages[-1]` is the idiom); values cannot be told apart by
  # identity here, so equal contents are equal, as in Python.
  def loose_eq?(a, b) when is_tuple(a) or is_list(a), do: a === b
  def loose_eq?(_a, _b), do: false

  @doc "`===` of the raw values (used by `in` on arrays and by `unique`)."
  @spec strict_eq?(t(), t()) :: boolean()
  def strict_eq?(a, b) when is_number(a) and is_number(b), do: a == b
  def strict_eq?(a, b) when is_binary(a) or is_boolean(a) or a == nil or a == :undefined, do: a === b
  def strict_eq?(_a, _b), do: false

  # JavaScript's Number(string); nil stands for NaN
  defp to_js_number(s) do
    case Strings.trim(s) do
      "" ->
        0

      t ->
        case Float.parse(t) do
          {f, ""} -> f
          _ -> nil
        end
    end
  end

  # --- JSON ---------------------------------------------------------------------------------

  @doc """
  The reference's toJSON. Options: :indent (integer or nil), :ensure_ascii, :separators
  ({item, key} or nil), :sort_keys, :undefined (what undefined prints: "null" for the
  `tojson` filter, "undefined" when a value is printed).
  """
  @spec to_json(t(), (integer() -> list()), map()) :: String.t()
  def to_json(v, ns, opts) do
    opts = Map.merge(%{indent: nil, ensure_ascii: false, separators: nil, sort_keys: false, undefined: "null"}, opts)

    {item_sep, key_sep} =
      cond do
        opts.separators -> opts.separators
        opts.indent not in [nil, 0] -> {",", ": "}
        true -> {", ", ": "}
      end

    opts = Map.merge(opts, %{item_sep: item_sep, key_sep: key_sep})
    v |> json(ns, opts, 0) |> IO.iodata_to_binary()
  end

  defp json(nil, _ns, _o, _d), do: "null"
  defp json(:undefined, _ns, o, _d), do: o.undefined
  defp json(true, _ns, _o, _d), do: "true"
  defp json(false, _ns, _o, _d), do: "false"
  defp json(n, _ns, _o, _d) when is_number(n), do: js_number(n)
  defp json(s, _ns, o, _d) when is_binary(s), do: json_string(s, o.ensure_ascii)

  defp json(list, ns, o, d) when is_list(list) do
    core = Enum.map(list, &json(&1, ns, o, d + 1))

    if indented?(o) and core != [] do
      {base, child} = paddings(o, d)
      ["[", child, Enum.intersperse(core, [o.item_sep, child]), base, "]"]
    else
      ["[", Enum.intersperse(core, o.item_sep), "]"]
    end
  end

  defp json({:obj, pairs}, ns, o, d), do: json_object(pairs, ns, o, d)
  defp json({:ns, id}, ns, o, d), do: json_object(ns.(id), ns, o, d)
  defp json(other, _ns, _o, _d), do: throw({:jinja_error, "Cannot convert to JSON: #{type_name(other)}"})

  defp json_object(pairs, ns, o, d) do
    pairs = if o.sort_keys, do: Enum.sort_by(pairs, fn {k, _} -> {String.downcase(k), k} end), else: pairs

    core =
      Enum.map(pairs, fn {k, v} ->
        entry = [json_string(k, o.ensure_ascii), o.key_sep, json(v, ns, o, d + 1)]
        if indented?(o), do: [elem(paddings(o, d), 1), entry], else: entry
      end)

    if indented?(o) and core != [] do
      {base, _} = paddings(o, d)
      ["{", Enum.intersperse(core, o.item_sep), base, "}"]
    else
      ["{", Enum.intersperse(core, o.item_sep), "}"]
    end
  end

  defp indented?(o), do: o.indent not in [nil, 0]

  defp paddings(o, d) do
    unit = String.duplicate(" ", o.indent)
    base = ["\n", String.duplicate(unit, d)]
    {base, [base, unit]}
  end

  @doc "JSON.stringify of a string; with ensure_ascii, code points from U+007F are \\u-escaped."
  @spec json_string(String.t(), boolean()) :: iodata()
  def json_string(s, ensure_ascii) do
    [?", escape(s, ensure_ascii, []), ?"]
  end

  defp escape(<<>>, _ascii, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, a, acc), do: escape(rest, a, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, a, acc), do: escape(rest, a, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, a, acc), do: escape(rest, a, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, a, acc), do: escape(rest, a, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, a, acc), do: escape(rest, a, ["\\t" | acc])
  defp escape(<<?\b, rest::binary>>, a, acc), do: escape(rest, a, ["\\b" | acc])
  defp escape(<<?\f, rest::binary>>, a, acc), do: escape(rest, a, ["\\f" | acc])
  defp escape(<<c, rest::binary>>, a, acc) when c < 0x20, do: escape(rest, a, [u_escape(c) | acc])

  defp escape(<<c::utf8, rest::binary>>, true, acc) when c >= 0x7F do
    units =
      if c > 0xFFFF do
        c = c - 0x10000
        [u_escape(0xD800 + div(c, 0x400)), u_escape(0xDC00 + rem(c, 0x400))]
      else
        u_escape(c)
      end

    escape(rest, true, [units | acc])
  end

  defp escape(<<c::utf8, rest::binary>>, a, acc), do: escape(rest, a, [<<c::utf8>> | acc])

  defp u_escape(c), do: "\\u" <> String.pad_leading(String.downcase(Integer.to_string(c, 16)), 4, "0")
end
