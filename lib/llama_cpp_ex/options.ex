defmodule LlamaCppEx.Options do
  @moduledoc false
  # Type and range checks for option values, shared by the public modules.
  # Each raises ArgumentError naming the option.

  @int32_max 2_147_483_647

  def bool!(opts, key) do
    case opts[key] do
      v when is_boolean(v) -> v
      v -> raise ArgumentError, "#{inspect(key)} must be a boolean, got: #{inspect(v)}"
    end
  end

  def int!(opts, key, min \\ -@int32_max - 1) do
    case opts[key] do
      v when is_integer(v) and v >= min and v <= @int32_max -> v
      v -> raise ArgumentError, "#{inspect(key)} must be an integer >= #{min}, got: #{inspect(v)}"
    end
  end

  def pos!(opts, key), do: int!(opts, key, 1)
  def non_neg!(opts, key), do: int!(opts, key, 0)

  def num!(opts, key) do
    case opts[key] do
      v when is_number(v) -> v / 1
      v -> raise ArgumentError, "#{inspect(key)} must be a number, got: #{inspect(v)}"
    end
  end

  @doc """
  Validates a call's options once and splits them by the layer that owns
  them: `groups` is a keyword list of `group: keys`, where keys are atoms or
  `{key, default}`. Unknown keys raise (as `Keyword.validate!/2`); a key
  without a default is in its group only when given. Returns a map of group
  to keyword list; each layer then checks the values of its own group.
  """
  def split!(opts, groups) do
    allowed =
      Enum.flat_map(groups, fn {_group, keys} ->
        Enum.map(keys, fn
          {k, default} -> {k, default}
          k -> {k, :__absent__}
        end)
      end)

    opts = Keyword.validate!(opts, allowed)

    Map.new(groups, fn {group, keys} ->
      names =
        Enum.map(keys, fn
          {k, _} -> k
          k -> k
        end)

      {group, for({k, v} <- opts, k in names, v != :__absent__, do: {k, v})}
    end)
  end
end
