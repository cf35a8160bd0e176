defmodule LlamaCppEx.Jinja.Methods do
  @moduledoc false
  # Methods a template can call on values: `s.strip()`, `s.split(",")`, `d.get("k", 1)`,
  # `d.items()` ... The set is the reference's; anything else is undefined, and calling
  # it is an error (as in the reference).

  alias LlamaCppEx.Jinja.{Strings, Value}

  @string_methods ~w(upper lower strip title capitalize rstrip lstrip startswith endswith split replace)
  @dict_methods ~w(get items keys values dictsort)

  @doc "The member `name` of `value` other than data: a method, a length, or :undefined."
  @spec builtin(Value.t(), String.t()) :: Value.t()
  def builtin(s, "length") when is_binary(s), do: Strings.js_length(s)
  def builtin(s, name) when is_binary(s) and name in @string_methods, do: {:fn, {:method, s, name}}
  def builtin(l, "length") when is_list(l), do: length(l)
  def builtin({:tuple, l}, "length"), do: length(l)
  def builtin({tag, _} = d, name) when tag in [:obj, :kwargs] and name in @dict_methods, do: {:fn, {:method, d, name}}
  def builtin(_value, _name), do: :undefined

  @spec call(Value.t(), String.t(), [Value.t()]) :: Value.t()
  def call(s, "upper", _args), do: String.upcase(s)
  def call(s, "lower", _args), do: String.downcase(s)
  def call(s, "strip", _args), do: Strings.trim(s)
  def call(s, "rstrip", _args), do: Strings.trim_end(s)
  def call(s, "lstrip", _args), do: Strings.trim_start(s)
  def call(s, "title", _args), do: Strings.title(s)
  def call(s, "capitalize", _args), do: Strings.capitalize(s)
  def call(s, name, args) when name in ["startswith", "endswith"], do: affix(s, name, args)

  def call(s, "split", args) do
    sep = Enum.at(args, 0, nil)
    max = Enum.at(args, 1, -1)
    unless is_binary(sep) or sep == nil, do: throw({:jinja_error, "sep argument must be a string or null"})
    unless is_integer(max), do: throw({:jinja_error, "maxsplit argument must be a number"})
    Strings.split(s, sep, max)
  end

  def call(s, "replace", args) do
    case args do
      [old, new | more] when is_binary(old) and is_binary(new) ->
        count =
          case more do
            [] -> nil
            [{:kwargs, kw} | _] -> kw |> List.keyfind("count", 0, {"count", nil}) |> elem(1)
            [c | _] -> c
          end

        unless is_integer(count) or count == nil,
          do: throw({:jinja_error, "replace() count argument must be a number or null"})

        Strings.replace(s, old, new, count)

      [_, _ | _] ->
        throw({:jinja_error, "replace() arguments must be strings"})

      _ ->
        throw({:jinja_error, "replace() requires at least two arguments"})
    end
  end

  def call(d, "get", args) do
    {key, default} =
      case args do
        [k] -> {k, nil}
        [k, default | _] -> {k, default}
        [] -> throw({:jinja_error, "Object key must be a string: got undefined"})
      end

    unless is_binary(key), do: throw({:jinja_error, "Object key must be a string: got #{Value.type_name(key)}"})

    case List.keyfind(Value.pairs(d), key, 0) do
      {_, v} -> v
      nil -> default
    end
  end

  def call(d, "items", _args), do: Enum.map(Value.pairs(d), fn {k, v} -> [k, v] end)
  def call(d, "keys", _args), do: Enum.map(Value.pairs(d), &elem(&1, 0))
  def call(d, "values", _args), do: Enum.map(Value.pairs(d), &elem(&1, 1))
  def call(d, "dictsort", args), do: dictsort(d, args)

  defp affix(s, name, [pattern | _]) do
    test = if name == "startswith", do: &String.starts_with?/2, else: &String.ends_with?/2

    cond do
      is_binary(pattern) ->
        test.(s, pattern)

      Value.array?(pattern) ->
        Enum.any?(Value.items(pattern), fn
          p when is_binary(p) -> test.(s, p)
          _ -> throw({:jinja_error, "#{name}() tuple elements must be strings"})
        end)

      true ->
        throw({:jinja_error, "#{name}() argument must be a string or tuple of strings"})
    end
  end

  defp affix(_s, name, []), do: throw({:jinja_error, "#{name}() requires at least one argument"})

  @doc "dictsort(case_sensitive=false, by='key', reverse=false) -> [[key, value]]"
  @spec dictsort(Value.t(), [Value.t()]) :: [Value.t()]
  def dictsort(d, args) do
    {positional, kw} = split_kwargs(args)
    case_sensitive = arg(positional, 0, kw, "case_sensitive", false)
    by = arg(positional, 1, kw, "by", "key")
    reverse = arg(positional, 2, kw, "reverse", false)
    unless is_boolean(case_sensitive), do: throw({:jinja_error, "case_sensitive must be a boolean"})
    unless by in ["key", "value"], do: throw({:jinja_error, "by must be either 'key' or 'value'"})
    unless is_boolean(reverse), do: throw({:jinja_error, "reverse must be a boolean"})
    index = if by == "key", do: 0, else: 1

    d
    |> Value.pairs()
    |> Enum.map(fn {k, v} -> [k, v] end)
    |> sort(fn a, b -> compare(Enum.at(a, index), Enum.at(b, index), case_sensitive) end, reverse)
  end

  @doc "A stable sort by a three-way comparison, reversed comparisons when `reverse`."
  @spec sort([Value.t()], (Value.t(), Value.t() -> integer()), boolean()) :: [Value.t()]
  def sort(list, cmp, reverse) do
    Enum.sort(list, fn a, b ->
      r = cmp.(a, b)
      if reverse, do: -r <= 0, else: r <= 0
    end)
  end

  @doc "The reference's compareRuntimeValues: numbers (and booleans) with numbers, strings with strings."
  @spec compare(Value.t(), Value.t(), boolean()) :: -1 | 0 | 1
  def compare(nil, nil, _cs), do: 0
  def compare(:undefined, :undefined, _cs), do: 0

  def compare(a, b, _cs) when a in [nil, :undefined] or b in [nil, :undefined],
    do: throw({:jinja_error, "Cannot compare #{Value.type_name(a)} with #{Value.type_name(b)}"})

  def compare(a, b, _cs) when (is_number(a) or is_boolean(a)) and (is_number(b) or is_boolean(b)) do
    a = num(a)
    b = num(b)

    cond do
      a < b -> -1
      a > b -> 1
      true -> 0
    end
  end

  def compare(a, b, cs) when is_binary(a) and is_binary(b) do
    {a, b} = if cs, do: {a, b}, else: {String.downcase(a), String.downcase(b)}
    {a, b} = {utf16(a), utf16(b)}

    cond do
      a < b -> -1
      a > b -> 1
      true -> 0
    end
  end

  def compare(a, b, _cs) do
    if Value.type_name(a) != Value.type_name(b),
      do: throw({:jinja_error, "Cannot compare different types: #{Value.type_name(a)} and #{Value.type_name(b)}"}),
      else: throw({:jinja_error, "Cannot compare type: #{Value.type_name(a)}"})
  end

  defp num(true), do: 1
  defp num(false), do: 0
  defp num(n), do: n

  # JavaScript compares strings by UTF-16 code units
  defp utf16(s), do: :unicode.characters_to_binary(s, :utf8, :utf16)

  @doc false
  def split_kwargs(args) do
    case Enum.split_with(args, &match?({:kwargs, _}, &1)) do
      {[], positional} -> {positional, []}
      {kws, positional} -> {positional, kws |> List.last() |> elem(1)}
    end
  end

  @doc false
  def arg(positional, i, kw, name, default) do
    case Enum.fetch(positional, i) do
      {:ok, v} ->
        v

      :error ->
        case List.keyfind(kw, name, 0) do
          {_, v} -> v
          nil -> default
        end
    end
  end
end
