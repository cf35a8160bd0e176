defmodule LlamaCppEx.JsonSchemaValidator do
  @moduledoc false
  # A small JSON schema validator for the subset the property tests generate
  # (object with properties/required/additionalProperties: false, string with
  # min/maxLength, integer with minimum/maximum, number, boolean, null, array
  # with items/minItems/maxItems, enum, const), over jiffy's decoded form
  # ({[{key, value}]} objects, :null). Also the longest JSON text the grammar
  # of such a schema admits, to size max_tokens so that a generation always
  # completes (every token the grammar lets through is at least one byte).

  # upstream's space rule: | " " | "\n"{1,2} [ \t]{0,20}
  @space 22

  alias LlamaCppEx.Grammar.JsonValue

  def valid?(v, %{"enum" => values}), do: v in values
  def valid?(v, %{"const" => c}), do: v == c

  def valid?(v, %{"type" => "string"} = s) when is_binary(v) do
    n = v |> String.to_charlist() |> length()
    n >= Map.get(s, "minLength", 0) and n <= Map.get(s, "maxLength", n)
  end

  def valid?(v, %{"type" => "integer"} = s) when is_integer(v),
    do: v >= Map.get(s, "minimum", v) and v <= Map.get(s, "maximum", v)

  def valid?(v, %{"type" => "number"}), do: is_number(v)
  def valid?(v, %{"type" => "boolean"}), do: is_boolean(v)
  def valid?(v, %{"type" => "null"}), do: v == :null

  def valid?(v, %{"type" => "array", "items" => item} = s) when is_list(v) do
    n = length(v)

    n >= Map.get(s, "minItems", 0) and n <= Map.get(s, "maxItems", n) and Enum.all?(v, &valid?(&1, item))
  end

  def valid?({pairs}, %{"type" => "object", "properties" => props, "additionalProperties" => false} = s)
      when is_list(pairs) do
    keys = Enum.map(pairs, &elem(&1, 0))

    Enum.uniq(keys) == keys and Enum.all?(Map.get(s, "required", []), &(&1 in keys)) and
      Enum.all?(pairs, fn {k, v} -> Map.has_key?(props, k) and valid?(v, props[k]) end)
  end

  def valid?(_v, _s), do: false

  defp json_size(v), do: byte_size(JsonValue.dump(JsonValue.normalize(v)))

  @doc "The longest JSON text (bytes) the schema's grammar admits."
  def max_len(%{"enum" => values}), do: values |> Enum.map(&json_size/1) |> Enum.max()
  def max_len(%{"const" => c}), do: json_size(c)
  # a char is at most a \uXXXX escape (6 bytes) or a 4-byte UTF-8 character
  def max_len(%{"type" => "string"} = s), do: 2 + 6 * Map.fetch!(s, "maxLength")
  def max_len(%{"type" => "integer", "minimum" => _}), do: 21
  def max_len(%{"type" => "integer"}), do: 17
  # ("-"? 16 digits) ("." 16 digits)? ([eE] [-+]? 16 digits)?
  def max_len(%{"type" => "number"}), do: 52
  def max_len(%{"type" => "boolean"}), do: 5
  def max_len(%{"type" => "null"}), do: 4

  # "[" space item ("," space item)* space "]"
  def max_len(%{"type" => "array", "items" => item} = s) do
    n = Map.fetch!(s, "maxItems")
    2 + @space * (n + 1) + n * (max_len(item) + 1)
  end

  # "{" space kv ("," space kv)* space "}", kv = "\"name\"" space ":" space value
  def max_len(%{"type" => "object", "properties" => props}) do
    kvs = for {k, v} <- props, do: byte_size(k) + 2 + 2 * @space + 1 + max_len(v) + 1
    2 + @space * 2 + Enum.sum(kvs) + @space * length(kvs)
  end
end
