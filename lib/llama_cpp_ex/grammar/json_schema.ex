defmodule LlamaCppEx.Grammar.JsonSchema do
  @moduledoc false
  # Reads a JSON schema into a tree of nodes, as upstream's
  # common_chat_schema_from_json() (common/json-schema.cpp): which keywords
  # decide a node's kind, in the same order, and the same errors.
  # LlamaCppEx.Grammar.SchemaConverter then turns the tree into GBNF.
  #
  # One addition: keywords that constrain a value but have no grammar here
  # (`not`, `if`, `uniqueItems`, `multipleOf`, bounds on a number, ...) are an
  # error naming them, where upstream ignores them.
  #
  # Nodes:
  #   :any | :null | :boolean | :number
  #   {:ref, ref}                       target in the refs map
  #   {:any_of, [node]} | {:all_of, [node]}
  #   {:const, value} | {:enum, [value]}
  #   {:integer, min | nil, max | nil}
  #   {:string, %{pattern:, format:, min_length:, max_length:}}
  #   {:array, item_node, min_items, max_items | nil}
  #   {:tuple, [node]}
  #   {:object, [{name, node, required?}], additional}   additional: nil | :any | node

  alias LlamaCppEx.Grammar.JsonValue, as: J

  @int64_min -9_223_372_036_854_775_808
  @int64_max 9_223_372_036_854_775_807
  @int32_max 2_147_483_647

  # keywords with a meaning for the values allowed that no grammar here gives
  @unsupported ~w(not if then else patternProperties propertyNames dependentRequired
                  dependentSchemas dependencies minProperties maxProperties uniqueItems
                  contains minContains maxContains unevaluatedProperties unevaluatedItems
                  additionalItems $dynamicRef $recursiveRef multipleOf)

  @doc """
  Builds the node tree. Returns `{:ok, root, refs}` or
  `{:error, {:invalid_json_schema | :unsupported_json_schema, message}}`.
  """
  def build(root) do
    {node, st} = node(root, "#", %{root: root, refs: %{}})
    {:ok, node, Map.new(st.refs)}
  catch
    {:schema_error, kind, path, msg} ->
      {:error, {kind, "JSON schema error at #{path}: #{msg}"}}
  end

  defp fail(path, msg), do: throw({:schema_error, :invalid_json_schema, path, msg})
  defp unsupported(path, msg), do: throw({:schema_error, :unsupported_json_schema, path, msg})

  defp node({:object, pairs} = s, path, st) do
    case Enum.find(pairs, fn {k, _} -> k in @unsupported end) do
      {k, _} -> unsupported(path, "keyword #{k} is not supported")
      nil -> kind(s, path, st)
    end
  end

  defp node(_, path, _st), do: fail(path, "schema must be an object")

  defp kind(s, path, st) do
    type = J.get(s, "type", :null)

    cond do
      J.has?(s, "$ref") ->
        ref(J.get(s, "$ref"), path, st)

      J.has?(s, "oneOf") or J.has?(s, "anyOf") ->
        key = if J.has?(s, "oneOf"), do: "oneOf", else: "anyOf"
        alternatives(:any_of, J.get(s, key), path <> "/" <> key, st)

      is_list(type) ->
        if type == [], do: fail(path, "type must not be empty")

        {children, st} =
          type
          |> Enum.with_index()
          |> Enum.map_reduce(st, fn {t, i}, st -> node(J.put(s, "type", t), "#{path}/type/#{i}", st) end)

        {{:any_of, children}, st}

      J.has?(s, "const") ->
        {{:const, J.get(s, "const")}, st}

      J.has?(s, "enum") ->
        case J.get(s, "enum") do
          [_ | _] = values -> {{:enum, values}, st}
          _ -> fail(path, "enum must be a non-empty array")
        end

      type != :null and not is_binary(type) ->
        fail(path, "type must be a string or an array of strings")

      true ->
        typed(if(type == :null, do: "", else: type), s, path, st)
    end
  end

  defp typed(type, s, path, st) do
    has_properties? =
      J.has?(s, "properties") or (J.has?(s, "additionalProperties") and J.get(s, "additionalProperties") != true)

    case type do
      "" ->
        cond do
          has_properties? -> object(s, path, st)
          J.has?(s, "allOf") -> alternatives(:all_of, J.get(s, "allOf"), path <> "/allOf", st)
          J.has?(s, "items") or J.has?(s, "prefixItems") -> array(s, path, st)
          string_keywords?(s, path) -> string(s, path, st)
          true -> {:any, st}
        end

      "object" ->
        if not has_properties? and J.has?(s, "allOf"),
          do: alternatives(:all_of, J.get(s, "allOf"), path <> "/allOf", st),
          else: object(s, path, st)

      "string" ->
        if J.has?(s, "allOf"),
          do: alternatives(:all_of, J.get(s, "allOf"), path <> "/allOf", st),
          else: string(s, path, st)

      "array" ->
        array(s, path, st)

      "integer" ->
        {integer(s, path), st}

      "number" ->
        for k <- ~w(minimum maximum exclusiveMinimum exclusiveMaximum),
            J.has?(s, k),
            do: unsupported(path, "#{k} on a number is not supported (only integers are bounded)")

        {:number, st}

      "boolean" ->
        {:boolean, st}

      "null" ->
        {:null, st}

      other ->
        fail(path, "unrecognized type #{J.dump(other) |> String.trim("\"")}")
    end
  end

  defp string_keywords?(s, path) do
    J.has?(s, "pattern") or J.has?(s, "minLength") or J.has?(s, "maxLength") or format(s, path) != nil
  end

  # ---- $ref -----------------------------------------------------------------------

  defp ref(ref, path, _st) when not is_binary(ref), do: fail(path, "$ref must be a string")

  defp ref("#/" <> _ = ref, path, st) do
    st =
      if Map.has_key?(st.refs, ref) do
        st
      else
        # reserve the key first, so that a cycle back to this $ref stops here
        st = put_in(st.refs[ref], nil)
        {target, st} = node(resolve(ref, path, st.root), ref, st)
        put_in(st.refs[ref], target)
      end

    {{:ref, ref}, st}
  end

  defp ref(ref, path, _st),
    do: fail(path, "unsupported $ref #{ref}, only references into the same document are supported")

  defp resolve(ref, path, root) do
    ref
    |> binary_part(1, byte_size(ref) - 1)
    |> String.split("/")
    |> tl()
    |> Enum.reduce(root, fn sel, target ->
      cond do
        match?({:object, _}, target) and J.has?(target, sel) ->
          J.get(target, sel)

        is_list(target) ->
          case Integer.parse(sel) do
            {idx, _} when idx >= 0 and idx < length(target) -> Enum.at(target, idx)
            _ -> fail(path, "cannot resolve $ref #{ref}, #{sel} is out of range")
          end

        true ->
          fail(path, "cannot resolve $ref #{ref}, #{sel} not found")
      end
    end)
  end

  # ---- structures -------------------------------------------------------------------

  defp alternatives(_kind, alts, path, _st) when not is_list(alts), do: fail(path, "must be an array of schemas")
  defp alternatives(_kind, [], path, _st), do: fail(path, "must not be empty")

  defp alternatives(kind, alts, path, st) do
    {children, st} =
      alts |> Enum.with_index() |> Enum.map_reduce(st, fn {alt, i}, st -> node(alt, "#{path}/#{i}", st) end)

    {{kind, children}, st}
  end

  defp object(s, path, st) do
    required =
      case J.get(s, "required") do
        names when is_list(names) -> for n <- names, is_binary(n), into: MapSet.new(), do: n
        _ -> MapSet.new()
      end

    {props, st} =
      case J.get(s, "properties") do
        nil ->
          {[], st}

        {:object, pairs} ->
          Enum.map_reduce(pairs, st, fn {name, prop}, st ->
            {n, st} = node(prop, "#{path}/properties/#{name}", st)
            {{name, n, MapSet.member?(required, name)}, st}
          end)

        _ ->
          fail(path, "properties must be an object")
      end

    {additional, st} =
      case J.get(s, "additionalProperties", :absent) do
        true -> {:any, st}
        false -> {nil, st}
        {:object, _} = a -> node(a, path <> "/additionalProperties", st)
        :absent -> {if(J.has?(s, "properties"), do: nil, else: :any), st}
        _ -> fail(path, "additionalProperties must be a boolean or a schema")
      end

    if additional == nil do
      names = MapSet.new(props, fn {name, _, _} -> name end)

      case Enum.find(required, &(not MapSet.member?(names, &1))) do
        nil -> :ok
        missing -> unsupported(path, "required property #{missing} is not in properties and no other is allowed")
      end
    end

    {{:object, props, additional}, st}
  end

  defp array(s, path, st) do
    if J.has?(s, "items") or J.has?(s, "prefixItems") do
      # "items" wins when both are present; a schema instead of an array is the item schema
      key = if J.has?(s, "items"), do: "items", else: "prefixItems"

      case J.get(s, key) do
        items when is_list(items) ->
          {nodes, st} =
            items
            |> Enum.with_index()
            |> Enum.map_reduce(st, fn {item, i}, st -> node(item, "#{path}/#{key}/#{i}", st) end)

          {{:tuple, nodes}, st}

        items ->
          {item, st} = node(items, path <> "/" <> key, st)
          {{:array, item, count(s, "minItems", path, 0), count(s, "maxItems", path, nil)}, st}
      end
    else
      {{:array, :any, count(s, "minItems", path, 0), count(s, "maxItems", path, nil)}, st}
    end
  end

  defp string(s, path, st) do
    pattern =
      case J.get(s, "pattern", "") do
        p when is_binary(p) -> p
        _ -> fail(path, "pattern must be a string")
      end

    node = %{
      pattern: pattern,
      format: format(s, path),
      min_length: count(s, "minLength", path, 0),
      max_length: count(s, "maxLength", path, nil)
    }

    cond do
      pattern != "" and (J.has?(s, "minLength") or J.has?(s, "maxLength")) ->
        unsupported(path, "minLength/maxLength together with pattern is not supported")

      node.format != nil and (pattern != "" or J.has?(s, "minLength") or J.has?(s, "maxLength")) ->
        unsupported(path, "format #{node.format} together with pattern/minLength/maxLength is not supported")

      true ->
        {{:string, node}, st}
    end
  end

  defp integer(s, path) do
    min =
      cond do
        J.has?(s, "minimum") -> bound(s, "minimum", path, :up)
        J.has?(s, "exclusiveMinimum") -> bound(s, "exclusiveMinimum", path, :down) + 1
        true -> nil
      end

    max =
      cond do
        J.has?(s, "maximum") -> bound(s, "maximum", path, :down)
        J.has?(s, "exclusiveMaximum") -> bound(s, "exclusiveMaximum", path, :up) - 1
        true -> nil
      end

    if min && max && min > max, do: fail(path, "minimum #{min} is above maximum #{max}")
    {:integer, min, max}
  end

  defp count(s, key, path, default) do
    case J.get(s, key, :absent) do
      :absent -> default
      n when is_integer(n) and n >= 0 and n <= @int32_max -> n
      _ -> fail(path, "#{key} must be a non-negative integer")
    end
  end

  # a fractional bound is rounded inwards, towards the integers it still admits
  defp bound(s, key, path, dir) do
    value =
      case J.get(s, key) do
        n when is_integer(n) -> n
        f when is_float(f) and dir == :up -> ceil(f)
        f when is_float(f) -> floor(f)
        _ -> fail(path, "#{key} must be a number")
      end

    if value < @int64_min or value > @int64_max, do: fail(path, "#{key} is out of the 64-bit range")
    value
  end

  defp format(s, path) do
    case J.get(s, "format", :absent) do
      :absent -> nil
      f when f in ["date", "time", "date-time"] -> f
      "uuid" -> "uuid"
      <<"uuid", d>> when d in ?1..?5 -> "uuid"
      f when is_binary(f) -> nil
      _ -> fail(path, "format must be a string")
    end
  end
end
