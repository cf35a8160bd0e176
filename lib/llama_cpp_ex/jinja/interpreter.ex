defmodule LlamaCppEx.Jinja.Interpreter do
  @moduledoc false
  # Evaluates a parsed template (LlamaCppEx.Jinja.Parser's AST) over template values
  # (LlamaCppEx.Jinja.Value), with the reference's scoping: a `for` loop and a macro call
  # open a scope (a frame on `frames`), `if` does not; `set` writes the innermost scope;
  # a macro body sees the scope it is called from (the reference's rule); a call block's
  # `caller()` sees the scope of the `{% call %}`. Namespaces are the only mutable values:
  # their entries live in `ns`, keyed by id.
  #
  # Runtime errors are thrown as {:jinja_error, message} and get the line of the innermost
  # statement that was running ({:jinja_error, message, line}). The limits of
  # LlamaCppEx.Jinja.Sandbox are counted here: statements and loop iterations executed
  # (:max_steps), macro call depth (:max_depth), output and string size (:max_output).

  alias LlamaCppEx.Jinja.{Filters, Methods, Tests, Value}

  @globals %{
    "true" => true,
    "false" => false,
    "none" => nil,
    "True" => true,
    "False" => false,
    "None" => nil,
    "namespace" => {:fn, {:builtin, "namespace"}},
    "raise_exception" => {:fn, {:builtin, "raise_exception"}},
    "range" => {:fn, {:builtin, "range"}},
    "strftime_now" => {:fn, {:builtin, "strftime_now"}}
  }

  @spec global_names() :: [String.t()]
  def global_names, do: Map.keys(@globals)

  @doc "Renders `ast` with `vars` (a map of name => template value); throws on errors."
  @spec render(list(), %{String.t() => Value.t()}, map()) :: String.t()
  def render(ast, vars, limits) do
    st = %{
      frames: [Map.merge(@globals, vars)],
      ns: %{},
      next_ns: 0,
      steps: 0,
      depth: 0,
      max_steps: limits.max_steps,
      max_depth: limits.max_depth,
      max_output: limits.max_output
    }

    try do
      {out, _st} = block(ast, st)
      out
    catch
      {:loop_control, kind, _st} -> throw({:jinja_error, "#{kind} outside of a loop", nil})
    end
  end

  # --- statements ---------------------------------------------------------------------------

  defp block(nodes, st), do: block(nodes, st, [], 0)

  defp block([], st, acc, _size), do: {acc |> Enum.reverse() |> IO.iodata_to_binary(), st}

  defp block([node | rest], st, acc, size) do
    {value, st} = statement(node, step(st))

    case value do
      v when v in [nil, :undefined] ->
        block(rest, st, acc, size)

      v ->
        s = if is_binary(v), do: v, else: Value.to_output(v, ns_fun(st))
        size = size + byte_size(s)
        if size > st.max_output, do: throw({:jinja_error, "output exceeds #{st.max_output} bytes"})
        block(rest, st, [s | acc], size)
    end
  end

  defp step(%{steps: n, max_steps: max}) when n >= max, do: throw({:jinja_error, "template exceeded #{max} steps"})
  defp step(st), do: %{st | steps: st.steps + 1}

  defp statement({:text, text}, st), do: {text, st}

  defp statement(node, st) do
    run(node, st)
  catch
    {:jinja_error, message} -> throw({:jinja_error, message, line_of(node)})
  end

  defp line_of(node), do: elem(node, 1)

  defp run({:output, _, expr}, st), do: eval(expr, st)

  defp run({:if, _, test, yes, no}, st) do
    {t, st} = eval(test, st)
    block(if(Value.truthy?(t), do: yes, else: no), st)
  end

  defp run({:set, _, target, expr, body}, st) do
    {value, st} = if expr, do: eval(expr, st), else: block(body, st)
    {nil, assign(target, value, st)}
  end

  defp run({:for, _, target, iterable, cond, body, alt}, st), do: for_loop(target, iterable, cond, body, alt, st)

  defp run({:macro, _, name, params, body}, st) do
    macro = {:fn, {:macro, name, params, body, special_args(params, body)}}
    {nil, put_var(st, name, macro)}
  end

  defp run({:call_block, _, caller_params, callee, args, body}, st) do
    caller = {:fn, {:caller, caller_params, body, special_args(caller_params, body), st.frames}}
    {pos, kw, st} = eval_args(args, st)
    {fun, st} = eval(callee, st)
    unless match?({:fn, _}, fun), do: fail("Cannot call something that is not a function: got #{Value.type_name(fun)}")
    frames = st.frames
    st = %{st | frames: [%{"caller" => caller} | frames]}
    {value, st} = call(fun, pos ++ [{:kwargs, kw}], st)
    {value, %{st | frames: frames}}
  end

  defp run({:filter_block, _, name, args, body}, st) do
    {text, st} = block(body, st)
    apply_filter(text, name, args, st)
  end

  defp run({:break, _}, st), do: throw({:loop_control, :break, st})
  defp run({:continue, _}, st), do: throw({:loop_control, :continue, st})

  defp assign({:var, name}, value, st), do: put_var(st, name, value)

  defp assign({:tuple, targets}, value, st) do
    unless Value.array?(value), do: fail("Cannot unpack non-iterable type in set: #{Value.type_name(value)}")
    values = Value.items(value)

    if length(values) != length(targets),
      do: fail("Too #{if length(targets) > length(values), do: "few", else: "many"} items to unpack in set")

    Enum.zip(targets, values)
    |> Enum.reduce(st, fn
      {{:var, name}, v}, st -> put_var(st, name, v)
      {_, _}, _st -> fail("Cannot unpack to non-identifier in set")
    end)
  end

  defp assign({:attr, object, name}, value, st) do
    case eval(object, st) do
      {{:ns, id}, st} ->
        %{st | ns: Map.update!(st.ns, id, &put_pair(&1, name, value))}

      _ ->
        fail("cannot assign attribute on non-namespace object")
    end
  end

  defp assign(_target, _value, _st), do: fail("Invalid LHS inside assignment expression")

  defp put_pair(pairs, key, value) do
    if List.keymember?(pairs, key, 0), do: List.keyreplace(pairs, key, 0, {key, value}), else: pairs ++ [{key, value}]
  end

  defp for_loop(target, iterable, cond, body, alt, st) do
    outer = st.frames
    st = %{st | frames: [%{} | outer]}
    {iter, st} = eval(iterable, st)

    items =
      cond do
        Value.array?(iter) -> Value.items(iter)
        Value.object?(iter) -> Enum.map(Value.pairs(iter), &elem(&1, 0))
        true -> fail("Expected iterable or object type in for loop: got #{Value.type_name(iter)}")
      end

    {items, st} =
      if cond do
        Enum.reduce(items, {[], st}, fn item, {acc, st} ->
          loop_scope = %{st | frames: [bind_loop_var(%{}, target, item) | st.frames]}
          {ok, st2} = eval(cond, loop_scope)
          st = %{st2 | frames: st.frames}
          if Value.truthy?(ok), do: {[item | acc], st}, else: {acc, st}
        end)
        |> then(fn {acc, st} -> {Enum.reverse(acc), st} end)
      else
        {items, st}
      end

    n = length(items)
    depth = length(st.frames)
    indexed = Enum.with_index(items)
    prev = [:undefined | items]
    next = if items == [], do: [], else: tl(items) ++ [:undefined]

    {acc, iterated, st} = iterate(Enum.zip([indexed, prev, next]), n, target, body, depth, [], false, st)

    {acc, st} =
      if iterated do
        {acc, st}
      else
        {text, st} = block(alt, st)
        {[text | acc], st}
      end

    {acc |> Enum.reverse() |> IO.iodata_to_binary(), %{st | frames: outer}}
  end

  defp iterate([], _n, _target, _body, _depth, acc, iterated, st), do: {acc, iterated, st}

  defp iterate([{{item, i}, prev, next} | rest], n, target, body, depth, acc, iterated, st) do
    st = step(st)

    loop =
      {:obj,
       [
         {"index", i + 1},
         {"index0", i},
         {"revindex", n - i},
         {"revindex0", n - i - 1},
         {"first", i == 0},
         {"last", i == n - 1},
         {"length", n},
         {"previtem", prev},
         {"nextitem", next}
       ]}

    [frame | frames] = st.frames
    st = %{st | frames: [bind_loop_var(Map.put(frame, "loop", loop), target, item) | frames]}

    try do
      block(body, st)
    catch
      {:loop_control, kind, thrown} -> {kind, %{thrown | frames: Enum.take(thrown.frames, -depth)}}
    end
    |> case do
      {:continue, st} -> iterate(rest, n, target, body, depth, acc, iterated, st)
      {:break, st} -> {acc, iterated, st}
      {text, st} -> iterate(rest, n, target, body, depth, [text | acc], true, st)
    end
  end

  defp bind_loop_var(frame, {:var, name}, item), do: Map.put(frame, name, item)

  defp bind_loop_var(frame, {:tuple, targets}, item) do
    unless is_list(item), do: fail("Cannot unpack non-iterable type: #{Value.type_name(item)}")

    if length(targets) != length(item),
      do: fail("Too #{if length(targets) > length(item), do: "few", else: "many"} items to unpack")

    Enum.zip(targets, item)
    |> Enum.reduce(frame, fn
      {{:var, name}, v}, frame -> Map.put(frame, name, v)
      _, _ -> fail("Cannot unpack non-identifier type")
    end)
  end

  # --- expressions ----------------------------------------------------------------------------

  defp eval(nil, st), do: {:undefined, st}
  defp eval({:lit, v}, st), do: {v, st}
  defp eval({:var, name}, st), do: {lookup(st.frames, name), st}

  defp eval({:list, exprs}, st) do
    {values, st} = eval_list(exprs, st)
    {values, st}
  end

  defp eval({:tuple, exprs}, st) do
    {values, st} = eval_list(exprs, st)
    {{:tuple, values}, st}
  end

  defp eval({:dict, entries}, st) do
    {pairs, st} =
      Enum.reduce(entries, {[], st}, fn {k, v}, {acc, st} ->
        {key, st} = eval(k, st)
        unless is_binary(key), do: fail("Object keys must be strings: got #{Value.type_name(key)}")
        {value, st} = eval(v, st)
        {put_pair(acc, key, value), st}
      end)

    {{:obj, pairs}, st}
  end

  defp eval({:attr, object, name}, st) do
    {obj, st} = eval(object, st)
    {member(obj, name, st), st}
  end

  defp eval({:index, object, expr}, st) do
    {obj, st} = eval(object, st)
    {prop, st} = eval(expr, st)
    {member(obj, prop, st), st}
  end

  defp eval({:slice, object, start, stop, step}, st) do
    {obj, st} = eval(object, st)
    unless Value.array?(obj) or is_binary(obj), do: fail("Slice object must be an array or string")
    {a, st} = eval(start, st)
    {b, st} = eval(stop, st)
    {c, st} = eval(step, st)

    for {v, what} <- [{a, "start"}, {b, "stop"}, {c, "step"}],
        not (is_integer(v) or v == :undefined),
        do: fail("Slice #{what} must be numeric or undefined")

    if is_binary(obj),
      do: {obj |> String.codepoints() |> slice(a, b, c) |> Enum.join(), st},
      else: {obj |> Value.items() |> slice(a, b, c), st}
  end

  defp eval({:call, callee, args}, st) do
    {pos, kw, st} = eval_args(args, st)
    args = if kw == [], do: pos, else: pos ++ [{:kwargs, kw}]
    {fun, st} = eval(callee, st)
    unless match?({:fn, _}, fun), do: fail("Cannot call something that is not a function: got #{Value.type_name(fun)}")
    call(fun, args, st)
  end

  defp eval({:filter, expr, name, args}, st) do
    {operand, st} = eval(expr, st)
    apply_filter(operand, name, args, st)
  end

  defp eval({:test, expr, negate, name}, st) do
    {operand, st} = eval(expr, st)
    unless Tests.known?(name), do: fail("Unknown test: #{name}")
    result = Tests.run(name, operand, :none)
    {if(negate, do: not result, else: result), st}
  end

  defp eval({:select, expr, cond}, st) do
    {ok, st} = eval(cond, st)
    if Value.truthy?(ok), do: eval(expr, st), else: {:undefined, st}
  end

  defp eval({:ternary, cond, a, b}, st) do
    {ok, st} = eval(cond, st)
    eval(if(Value.truthy?(ok), do: a, else: b), st)
  end

  defp eval({:and, a, b}, st) do
    {left, st} = eval(a, st)
    if Value.truthy?(left), do: eval(b, st), else: {left, st}
  end

  defp eval({:or, a, b}, st) do
    {left, st} = eval(a, st)
    if Value.truthy?(left), do: {left, st}, else: eval(b, st)
  end

  defp eval({:not, e}, st) do
    {v, st} = eval(e, st)
    {not Value.truthy?(v), st}
  end

  defp eval({sign, e}, st) when sign in [:neg, :plus] do
    {v, st} = eval(e, st)
    s = if sign == :neg, do: -1, else: 1

    cond do
      is_boolean(v) -> {s * if(v, do: 1, else: 0), st}
      is_number(v) -> {s * v, st}
      true -> fail("Unknown operator \"#{if sign == :neg, do: "-", else: "+"}\" for #{Value.type_name(v)}")
    end
  end

  defp eval({:bin, op, a, b}, st) do
    {left, st} = eval(a, st)
    {right, st} = eval(b, st)
    {binary(op, left, right, st), st}
  end

  defp eval_list(exprs, st) do
    {values, st} =
      Enum.reduce(exprs, {[], st}, fn e, {acc, st} -> eval(e, st) |> then(fn {v, st} -> {[v | acc], st} end) end)

    {Enum.reverse(values), st}
  end

  # Positional arguments (with `*` unpacking) first, then keyword arguments, as the reference.
  defp eval_args(args, st) do
    {pos, st} =
      Enum.reduce(args, {[], st}, fn
        {:pos, e}, {acc, st} ->
          {v, st} = eval(e, st)
          {[v | acc], st}

        {:splat, e}, {acc, st} ->
          {v, st} = eval(e, st)
          unless Value.array?(v), do: fail("Cannot unpack non-iterable type: #{Value.type_name(v)}")
          {Enum.reverse(Value.items(v), acc), st}

        _, acc ->
          acc
      end)

    {kw, st} =
      Enum.reduce(args, {[], st}, fn
        {:kw, name, e}, {acc, st} ->
          {v, st} = eval(e, st)
          {add_kw(acc, name, v), st}

        {:kwsplat, e}, {acc, st} ->
          {v, st} = eval(e, st)
          unless match?({:obj, _}, v), do: fail("Argument after ** must be a mapping, not #{Value.type_name(v)}")
          {Enum.reduce(Value.pairs(v), acc, fn {k, x}, acc -> add_kw(acc, k, x) end), st}

        _, acc ->
          acc
      end)

    {Enum.reverse(pos), Enum.reverse(kw), st}
  end

  defp add_kw(acc, name, v) do
    if List.keymember?(acc, name, 0), do: fail("Got multiple values for keyword argument '#{name}'")
    [{name, v} | acc]
  end

  defp apply_filter(operand, name, nil, st), do: {Filters.apply(operand, name, nil, ns_fun(st)), st}

  defp apply_filter(operand, name, args, st) do
    literals? = Enum.all?(args, &match?({:pos, {:lit, s}} when is_binary(s), &1))
    {pos, kw, st} = eval_args(args, st)
    result = Filters.apply(operand, name, {pos, kw, literals?}, ns_fun(st))
    check_size(result, st)
    {result, st}
  end

  # --- members, operators, calls ----------------------------------------------------------------

  defp member({tag, pairs} = obj, prop, _st) when tag in [:obj, :kwargs] do
    unless is_binary(prop), do: fail("Cannot access property with non-string: got #{Value.type_name(prop)}")

    case List.keyfind(pairs, prop, 0) do
      {_, v} -> v
      nil -> Methods.builtin(obj, prop)
    end
  end

  defp member({:ns, id}, prop, st) do
    unless is_binary(prop), do: fail("Cannot access property with non-string: got #{Value.type_name(prop)}")

    case List.keyfind(Map.fetch!(st.ns, id), prop, 0) do
      {_, v} -> v
      nil -> :undefined
    end
  end

  defp member(obj, prop, _st) when is_binary(obj) or is_list(obj) or elem(obj, 0) == :tuple do
    cond do
      is_integer(prop) ->
        items = if is_binary(obj), do: String.codepoints(obj), else: Value.items(obj)
        n = length(items)
        i = if prop < 0, do: n + prop, else: prop
        if i >= 0 and i < n, do: Enum.at(items, i), else: :undefined

      is_binary(prop) ->
        Methods.builtin(obj, prop)

      true ->
        fail("Cannot access property with non-string/non-number: got #{Value.type_name(prop)}")
    end
  end

  defp member(_obj, prop, _st) do
    unless is_binary(prop), do: fail("Cannot access property with non-string: got #{Value.type_name(prop)}")
    :undefined
  end

  defp binary("==", a, b, _st), do: Value.loose_eq?(a, b)
  defp binary("!=", a, b, _st), do: not Value.loose_eq?(a, b)
  defp binary(op, _a, :undefined, _st) when op in ["in", "not in"], do: op == "not in"

  defp binary(op, a, b, _st) when a == :undefined or b == :undefined,
    do: fail("Cannot perform operation #{op} on undefined values")

  defp binary(_op, a, b, _st) when a == nil or b == nil, do: fail("Cannot perform operation on null values")

  defp binary("~", a, b, st), do: check_size(Value.js_string(a, ns_fun(st)) <> Value.js_string(b, ns_fun(st)), st)

  defp binary("**", a, b, _st) when (is_number(a) or is_boolean(a)) and (is_number(b) or is_boolean(b)),
    do: power(num(a), num(b))

  defp binary(op, a, b, st) when is_number(a) and is_number(b), do: arith(op, a, b, st)

  defp binary("+", a, b, st) when is_list(a) and is_list(b), do: check_size(a ++ b, st)

  defp binary(op, a, b, st) do
    cond do
      Value.array?(b) and op in ["in", "not in"] ->
        member? = Enum.any?(Value.items(b), &Value.strict_eq?(&1, a))
        if op == "in", do: member?, else: not member?

      op == "+" and (is_binary(a) or is_binary(b)) ->
        check_size(Value.js_string(a, ns_fun(st)) <> Value.js_string(b, ns_fun(st)), st)

      is_binary(a) and is_binary(b) and op in ["in", "not in"] ->
        found = a == "" or String.contains?(b, a)
        if op == "in", do: found, else: not found

      is_binary(a) and Value.object?(b) and op in ["in", "not in"] ->
        found = List.keymember?(Value.pairs(b), a, 0)
        if op == "in", do: found, else: not found

      true ->
        fail("Unknown operator \"#{op}\" between #{Value.type_name(a)} and #{Value.type_name(b)}")
    end
  end

  defp num(true), do: 1
  defp num(false), do: 0
  defp num(n), do: n

  defp arith(op, a, b, _st) do
    float? = is_float(a) or is_float(b)

    case op do
      "+" -> a + b
      "-" -> a - b
      "*" -> a * b
      "/" when b == 0 -> fail("division by zero")
      "/" -> a / b
      "//" when b == 0 -> fail("division by zero")
      "//" -> if float?, do: Float.floor(a / b), else: Integer.floor_div(a, b)
      "%" when b == 0 -> fail("modulo by zero")
      "%" -> if float?, do: js_fmod(a, b), else: rem(a, b)
      "<" -> a < b
      ">" -> a > b
      "<=" -> a <= b
      ">=" -> a >= b
      _ -> fail("Unknown operator \"#{op}\" between numbers")
    end
  end

  defp js_fmod(a, b), do: a - b * trunc(a / b)

  defp power(a, b) do
    if a == 0 and b < 0, do: fail("0.0 cannot be raised to a negative power")
    f = :math.pow(a * 1.0, b * 1.0)
    if abs(f) > 1.0e300, do: fail("Exponentiation result is not a finite real number")
    if is_float(a) or is_float(b) or b < 0, do: f, else: Integer.pow(a, b)
  rescue
    ArithmeticError -> fail("Exponentiation result is not a finite real number")
  end

  defp check_size(v, st) do
    cond do
      is_binary(v) and byte_size(v) > st.max_output -> fail("a string exceeds #{st.max_output} bytes")
      is_list(v) and length(v) > st.max_steps -> fail("a list exceeds #{st.max_steps} items")
      true -> v
    end
  end

  defp call({:fn, {:builtin, "namespace"}}, args, st) do
    {positional, kw} = Methods.split_kwargs(args)
    if length(positional) > 1, do: fail("namespace expected at most 1 argument, got #{length(positional)}")

    base =
      case positional do
        [] ->
          []

        [{:obj, pairs}] ->
          pairs

        [list] when is_list(list) ->
          Enum.map(list, fn
            [k, v] when is_binary(k) -> {k, v}
            _ -> fail("namespace expected an object or an iterable of [key, value] pairs")
          end)

        [other] ->
          fail("'#{Value.type_name(other)}' object is not iterable")
      end

    pairs = Enum.reduce(kw, base, fn {k, v}, acc -> put_pair(acc, k, v) end)
    id = st.next_ns
    {{:ns, id}, %{st | ns: Map.put(st.ns, id, pairs), next_ns: id + 1}}
  end

  defp call({:fn, {:builtin, "raise_exception"}}, args, st) do
    message =
      case args do
        [m | _] when is_binary(m) -> m
        [m | _] -> Value.js_string(m, ns_fun(st))
        [] -> "undefined"
      end

    fail(message)
  end

  defp call({:fn, {:builtin, "range"}}, args, st) do
    {start, stop, step} =
      case args do
        [stop] -> {0, stop, 1}
        [start, stop] -> {start, stop, 1}
        [start, stop, step | _] -> {start, stop, step}
        [] -> fail("range expects an argument")
      end

    unless Enum.all?([start, stop, step], &is_number/1), do: fail("range arguments must be numbers")
    if step == 0, do: fail("range() step must not be zero")
    count = max(0, ceil((stop - start) / step))
    if count > st.max_steps, do: fail("range of #{count} items exceeds the step limit")
    {Enum.map(0..(count - 1)//1, &(start + &1 * step)), st}
  end

  defp call({:fn, {:builtin, "strftime_now"}}, args, st) do
    case args do
      [format | _] when is_binary(format) -> {LlamaCppEx.Jinja.Time.strftime_now(format), st}
      _ -> fail("strftime_now expects a format string")
    end
  end

  defp call({:fn, {:method, recv, name}}, args, st), do: {check_size(Methods.call(recv, name, args), st), st}

  defp call({:fn, {:macro, name, params, body, specials}}, args, st) do
    st = enter(st)
    frames = st.frames
    st = %{st | frames: [%{} | frames]}
    st = bind_args("'#{name}'", params, specials, args, st)
    {out, st} = block(body, st)
    {out, %{st | frames: frames, depth: st.depth - 1}}
  end

  defp call({:fn, {:caller, params, body, specials, captured}}, args, st) do
    st = enter(st)
    frames = st.frames
    st = %{st | frames: [%{} | captured]}
    st = bind_args("None", params, specials, args, st)
    {out, st} = block(body, st)
    {out, %{st | frames: frames, depth: st.depth - 1}}
  end

  defp enter(%{depth: d, max_depth: max}) when d >= max, do: fail("macro calls nested deeper than #{max}")
  defp enter(st), do: %{st | depth: st.depth + 1}

  defp bind_args(display, params, specials, args, st) do
    {positional, kw} =
      case List.last(args) do
        {:kwargs, kw} -> {Enum.drop(args, -1), kw}
        _ -> {args, []}
      end

    {st, kw, pending} =
      params
      |> Enum.with_index()
      |> Enum.reduce({st, kw, []}, fn {{name, default}, i}, {st, kw, pending} ->
        {value, kw} =
          case Enum.fetch(positional, i) do
            {:ok, v} ->
              {v, kw}

            :error ->
              case List.keyfind(kw, name, 0) do
                {_, v} -> {v, List.keydelete(kw, name, 0)}
                nil -> {:none, kw}
              end
          end

        pending = if value == :none and default != nil, do: [{name, default} | pending], else: pending
        {put_var(st, name, if(value == :none, do: :undefined, else: value)), kw, pending}
      end)

    st =
      cond do
        "kwargs" in specials -> put_var(st, "kwargs", {:obj, kw})
        kw != [] -> fail("macro #{display} takes no keyword argument '#{elem(hd(kw), 0)}'")
        true -> st
      end

    st =
      cond do
        "varargs" in specials ->
          put_var(st, "varargs", Enum.drop(positional, length(params)))

        length(positional) > length(params) ->
          fail("macro #{display} takes not more than #{length(params)} argument(s)")

        true ->
          st
      end

    pending
    |> Enum.reverse()
    |> Enum.reduce(st, fn {name, default}, st ->
      {v, st} = eval(default, st)
      put_var(st, name, v)
    end)
  end

  # `kwargs` / `varargs` become variables of a macro only when its body reads them.
  defp special_args(params, body) do
    names = Enum.map(params, &elem(&1, 0))

    for special <- ["kwargs", "varargs"], special not in names, reads?(body, special), do: special
  end

  defp reads?({:var, name}, name), do: true
  defp reads?(t, name) when is_tuple(t), do: t |> Tuple.to_list() |> reads?(name)
  defp reads?(l, name) when is_list(l), do: Enum.any?(l, &reads?(&1, name))
  defp reads?(_, _), do: false

  # --- scopes ---------------------------------------------------------------------------------------

  defp lookup([frame | rest], name) do
    case frame do
      %{^name => v} -> v
      _ -> lookup(rest, name)
    end
  end

  defp lookup([], _name), do: :undefined

  defp put_var(%{frames: [frame | rest]} = st, name, value), do: %{st | frames: [Map.put(frame, name, value) | rest]}

  defp ns_fun(st), do: fn id -> Map.fetch!(st.ns, id) end

  # Python slicing, as the reference's utils.slice
  defp slice(items, start, stop, step) do
    n = length(items)
    step = if step == :undefined, do: 1, else: step
    start = if start == :undefined, do: nil, else: start
    stop = if stop == :undefined, do: nil, else: stop

    if step >= 0 do
      start = clamp(start || 0, n, 0, n)
      stop = clamp(stop || n, n, 0, n)
      if step == 0, do: [], else: take_range(items, start, stop, step)
    else
      start = if start == nil, do: n - 1, else: if(start < 0, do: max(n + start, -1), else: min(start, n - 1))
      stop = if stop == nil, do: -1, else: if(stop < -1, do: max(n + stop, -1), else: min(stop, n - 1))
      tuple = List.to_tuple(items)
      if start > stop, do: Enum.map(start..(stop + 1)//step, &elem(tuple, &1)), else: []
    end
  end

  defp clamp(i, n, lo, hi), do: if(i < 0, do: max(n + i, lo), else: min(i, hi))

  defp take_range(_items, start, stop, _step) when start >= stop, do: []
  defp take_range(items, start, stop, 1), do: Enum.slice(items, start, stop - start)

  defp take_range(items, start, stop, step) do
    tuple = List.to_tuple(items)
    Enum.map(start..(stop - 1)//step, &elem(tuple, &1))
  end

  defp fail(message), do: throw({:jinja_error, message})
end
