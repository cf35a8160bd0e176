defmodule LlamaCppEx.Grammar.JsonValue do
  @moduledoc false
  # JSON values as the schema converter sees them, and their text.
  #
  # Input: a decoded JSON document, either with maps (string keys; Jason and
  # friends, `nil` or `:null` for null) or in jiffy's EJSON form
  # (`{[{key, value}]}`, keeps the document's key order). Both become one
  # internal form: `{:object, [{key, value}]}` (ordered), lists, binaries,
  # numbers, booleans and `:null`. A map's keys are taken in sorted order
  # (maps have no other); upstream keeps document order, which only EJSON
  # input has.
  #
  # dump/1 writes a value as nlohmann::json's dump() does (compact, UTF-8 kept,
  # control characters as \u00XX, floats in its shortest round-trip form), since
  # const/enum literals and property names in the grammar are that text.

  @type t ::
          {:object, [{String.t(), t()}]} | [t()] | String.t() | number() | boolean() | :null

  @doc "Normalizes a decoded JSON term; raises ArgumentError on a term that is not JSON."
  @spec normalize(term()) :: t()
  def normalize(term), do: norm(term, "#")

  defp norm(nil, _path), do: :null
  defp norm(:null, _path), do: :null
  defp norm(b, _path) when is_boolean(b), do: b
  defp norm(n, _path) when is_integer(n), do: n
  defp norm(f, _path) when is_float(f), do: f

  defp norm(s, path) when is_binary(s) do
    if String.valid?(s), do: s, else: raise(ArgumentError, "JSON schema at #{path}: a string is not valid UTF-8")
  end

  defp norm(list, path) when is_list(list) do
    list |> Enum.with_index() |> Enum.map(fn {v, i} -> norm(v, "#{path}/#{i}") end)
  end

  defp norm(%{} = map, path) when not is_struct(map) do
    map |> Map.to_list() |> Enum.sort() |> pairs(path)
  end

  defp norm({pairs}, path) when is_list(pairs), do: pairs(pairs, path)

  defp norm(other, path),
    do: raise(ArgumentError, "JSON schema at #{path}: not a JSON value: #{inspect(other)}")

  defp pairs(pairs, path) do
    {:object,
     Enum.map(pairs, fn
       {k, v} when is_binary(k) -> {norm(k, path), norm(v, "#{path}/#{k}")}
       {k, _} -> raise ArgumentError, "JSON schema at #{path}: object keys must be strings, got: #{inspect(k)}"
       other -> raise ArgumentError, "JSON schema at #{path}: not an object member: #{inspect(other)}"
     end)}
  end

  @doc "The value of `key` in an object, or `default`."
  def get({:object, pairs}, key, default \\ nil) do
    case List.keyfind(pairs, key, 0) do
      {_, v} -> v
      nil -> default
    end
  end

  def has?({:object, pairs}, key), do: List.keymember?(pairs, key, 0)

  def put({:object, pairs}, key, value), do: {:object, List.keystore(pairs, key, 0, {key, value})}

  # ---- dump ---------------------------------------------------------------------

  @doc "The compact JSON text of a value, as nlohmann::json::dump()."
  @spec dump(t()) :: String.t()
  def dump(value), do: value |> enc() |> IO.iodata_to_binary()

  defp enc(:null), do: "null"
  defp enc(true), do: "true"
  defp enc(false), do: "false"
  defp enc(n) when is_integer(n), do: Integer.to_string(n)
  defp enc(f) when is_float(f), do: float(f)
  defp enc(s) when is_binary(s), do: [?", escape(s, []), ?"]
  defp enc(list) when is_list(list), do: [?[, list |> Enum.map(&enc/1) |> Enum.intersperse(?,), ?]]

  defp enc({:object, pairs}),
    do: [?{, pairs |> Enum.map(fn {k, v} -> [enc(k), ?:, enc(v)] end) |> Enum.intersperse(?,), ?}]

  defp escape(<<>>, acc), do: acc
  defp escape(<<?", r::binary>>, acc), do: escape(r, [acc, "\\\""])
  defp escape(<<?\\, r::binary>>, acc), do: escape(r, [acc, "\\\\"])
  defp escape(<<?\b, r::binary>>, acc), do: escape(r, [acc, "\\b"])
  defp escape(<<?\f, r::binary>>, acc), do: escape(r, [acc, "\\f"])
  defp escape(<<?\n, r::binary>>, acc), do: escape(r, [acc, "\\n"])
  defp escape(<<?\r, r::binary>>, acc), do: escape(r, [acc, "\\r"])
  defp escape(<<?\t, r::binary>>, acc), do: escape(r, [acc, "\\t"])

  defp escape(<<c, r::binary>>, acc) when c < 0x20,
    do: escape(r, [acc, "\\u00", String.downcase(Base.encode16(<<c>>))])

  defp escape(<<c, r::binary>>, acc), do: escape(r, [acc, c])

  # nlohmann's format: the shortest round-trip digits, fixed notation when the
  # decimal point falls within -4 < n <= 15 (with ".0" on whole numbers),
  # otherwise d.ddde+XX.
  defp float(f) when f == 0.0, do: if(<<f::float>> == <<-0.0::float>>, do: "-0.0", else: "0.0")
  defp float(f) when f < 0, do: "-" <> float(-f)

  defp float(f) do
    {digits, exp} = shortest(f)
    k = byte_size(digits)
    n = k + exp

    cond do
      k <= n and n <= 15 ->
        digits <> String.duplicate("0", n - k) <> ".0"

      0 < n and n <= 15 ->
        binary_part(digits, 0, n) <> "." <> binary_part(digits, n, k - n)

      -4 < n and n <= 0 ->
        "0." <> String.duplicate("0", -n) <> digits

      true ->
        mant = if k == 1, do: digits, else: binary_part(digits, 0, 1) <> "." <> binary_part(digits, 1, k - 1)
        e = n - 1
        sign = if e < 0, do: "-", else: "+"
        mant <> "e" <> sign <> String.pad_leading(Integer.to_string(abs(e)), 2, "0")
    end
  end

  # digits (no leading/trailing zeros) and exponent with f = digits * 10^exp
  defp shortest(f) do
    text = :erlang.float_to_binary(f, [:short])

    {mant, e} =
      case String.split(text, "e") do
        [m, e] -> {m, String.to_integer(e)}
        [m] -> {m, 0}
      end

    {int, frac} =
      case String.split(mant, ".") do
        [i, fr] -> {i, fr}
        [i] -> {i, ""}
      end

    all = String.trim_leading(int <> frac, "0")
    trimmed = String.trim_trailing(all, "0")
    {trimmed, e - byte_size(frac) + (byte_size(all) - byte_size(trimmed))}
  end
end
