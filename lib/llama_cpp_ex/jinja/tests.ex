defmodule LlamaCppEx.Jinja.Tests do
  @moduledoc false
  # The `is` tests (`x is defined`, `x is not none`, `selectattr("a", "equalto", 1)`),
  # with the reference's definitions: `iterable` is arrays and strings (not dicts),
  # `sequence` also dicts, `number` excludes booleans, `lower`/`upper` are false for
  # non-strings.

  alias LlamaCppEx.Jinja.Value

  @names ~w(boolean callable odd even false true none string number integer iterable mapping
            sequence lower upper defined undefined equalto eq)

  @spec names() :: [String.t()]
  def names, do: @names

  @spec known?(String.t()) :: boolean()
  def known?(name), do: name in @names

  @doc "Applies test `name`; `arg` is :none when the test got no argument."
  @spec run(String.t(), Value.t(), Value.t() | :none) :: boolean()
  def run("boolean", v, _), do: is_boolean(v)
  def run("callable", v, _), do: match?({:fn, _}, v)
  def run("odd", v, _) when is_integer(v), do: rem(v, 2) != 0
  def run("odd", v, _), do: throw({:jinja_error, "cannot odd on #{Value.type_name(v)}"})
  def run("even", v, _) when is_integer(v), do: rem(v, 2) == 0
  def run("even", v, _), do: throw({:jinja_error, "cannot even on #{Value.type_name(v)}"})
  def run("false", v, _), do: v === false
  def run("true", v, _), do: v === true
  def run("none", v, _), do: v == nil
  def run("string", v, _), do: is_binary(v)
  def run("number", v, _), do: is_number(v)
  def run("integer", v, _), do: is_integer(v)
  def run("iterable", v, _), do: is_list(v) or match?({:tuple, _}, v) or is_binary(v)
  def run("mapping", v, _), do: Value.object?(v)
  def run("sequence", v, _), do: Value.array?(v) or Value.object?(v) or is_binary(v)
  def run("lower", v, _), do: is_binary(v) and v == String.downcase(v)
  def run("upper", v, _), do: is_binary(v) and v == String.upcase(v)
  def run("defined", v, _), do: v != :undefined
  def run("undefined", v, _), do: v == :undefined
  def run(eq, _v, :none) when eq in ["equalto", "eq"], do: throw({:jinja_error, "#{eq} needs an argument"})
  def run(eq, a, b) when eq in ["equalto", "eq"], do: Value.strict_eq?(a, b)
  def run(name, _v, _), do: throw({:jinja_error, "Unknown test: #{name}"})
end
