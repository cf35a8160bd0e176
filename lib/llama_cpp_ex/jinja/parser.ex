defmodule LlamaCppEx.Jinja.Parser do
  @moduledoc false
  # Tokens -> AST, by recursive descent with the reference's grammar and precedence
  # (@huggingface/jinja's parser.ts), lowest first:
  #
  #   inline if/else (and `x if c` without else) < or < and < not
  #   < comparisons, in, not in < + - ~ < * / // % < ** (left-associative)
  #   < is [not] test < | filter < unary + - < call, .attr, [index], [a:b:c] < primary
  #
  # Statements: {:text, str} | {:output, line, expr} | {:if, line, test, body, else}
  #   | {:for, line, target, iterable, cond | nil, body, else} | {:set, line, target, expr | nil, body}
  #   | {:macro, line, name, params, body} | {:call_block, line, caller_params, callee, args, body}
  #   | {:filter_block, line, name, args | nil, body} | {:break, line} | {:continue, line}
  # Expressions: {:lit, v} | {:var, name} | {:list, es} | {:tuple, es} | {:dict, [{k, v}]}
  #   | {:attr, obj, name} | {:index, obj, e} | {:slice, obj, start, stop, step}
  #   | {:call, callee, args} | {:filter, e, name, args | nil} | {:test, e, negate, name}
  #   | {:select, e, cond} | {:ternary, cond, a, b} | {:and | :or, a, b} | {:not, e}
  #   | {:neg, e} | {:plus, e} | {:bin, op, a, b}
  # Call arguments: {:pos, e} | {:kw, name, e} | {:splat, e} | {:kwsplat, e}.
  # Parameters: {name, default_expr | nil}.

  alias LlamaCppEx.Jinja.Lexer

  @spec parse([Lexer.token()]) :: {:ok, list()} | {:error, {String.t(), pos_integer() | nil}}
  def parse(tokens) do
    {:ok, parse_all(tokens, [])}
  catch
    {:parse_error, message, line} -> {:error, {message, line}}
  end

  defp parse_all([], acc), do: Enum.reverse(acc)

  defp parse_all(tokens, acc) do
    {node, rest} = parse_any(tokens)
    parse_all(rest, if(node, do: [node | acc], else: acc))
  end

  defp parse_any([{:comment, _, _} | rest]), do: {nil, rest}
  defp parse_any([{:text, text, _} | rest]), do: {{:text, text}, rest}
  defp parse_any([{:open_stmt, _, _} | rest]), do: statement(rest)

  defp parse_any([{:open_expr, _, line} | rest]) do
    {expr, rest} = expression(rest)
    rest = expect(rest, :close_expr, "Expected closing expression token")
    {{:output, line, expr}, rest}
  end

  defp parse_any([{type, _, line} | _]), do: fail("Unexpected token type: #{type}", line)

  # Parses until `{% <one of names>`, which is left unconsumed.
  defp body(tokens, names, acc \\ [])

  defp body([{:open_stmt, _, _}, {:ident, name, _} | _] = tokens, names, acc) when is_list(names) do
    if name in names, do: {Enum.reverse(acc), tokens}, else: body_node(tokens, names, acc)
  end

  defp body([], names, _acc), do: fail("Unexpected end of template, expected {% #{hd(names)} %}", nil)
  defp body(tokens, names, acc), do: body_node(tokens, names, acc)

  defp body_node(tokens, names, acc) do
    {node, rest} = parse_any(tokens)
    body(rest, names, if(node, do: [node | acc], else: acc))
  end

  defp end_tag(tokens, name) do
    tokens = expect(tokens, :open_stmt, "Expected {% token")
    tokens = expect_ident(tokens, name)
    expect(tokens, :close_stmt, "Expected %} token")
  end

  defp statement([{:ident, name, line} | rest]) do
    case name do
      "set" ->
        set_statement(rest, line)

      "if" ->
        {node, rest} = if_statement(rest, line)
        {node, end_tag(rest, "endif")}

      "macro" ->
        {node, rest} = macro_statement(rest, line)
        {node, end_tag(rest, "endmacro")}

      "for" ->
        {node, rest} = for_statement(rest, line)
        {node, end_tag(rest, "endfor")}

      "call" ->
        call_statement(rest, line)

      "break" ->
        {{:break, line}, expect(rest, :close_stmt, "Expected closing statement token")}

      "continue" ->
        {{:continue, line}, expect(rest, :close_stmt, "Expected closing statement token")}

      "filter" ->
        filter_statement(rest, line)

      _ ->
        fail("Unknown statement type: #{name}", line)
    end
  end

  defp statement([{type, _, line} | _]), do: fail("Unknown statement, got #{type}", line)
  defp statement([]), do: fail("Unexpected end of template", nil)

  defp set_statement(tokens, line) do
    {target, rest} = expression_sequence(tokens, false)

    case rest do
      [{:equals, _, _} | rest] ->
        {value, rest} = expression_sequence(rest, false)
        rest = expect(rest, :close_stmt, "Expected closing statement token")
        {{:set, line, target, value, []}, rest}

      _ ->
        rest = expect(rest, :close_stmt, "Expected %} token")
        {nodes, rest} = body(rest, ["endset"])
        {{:set, line, target, nil, nodes}, end_tag(rest, "endset")}
    end
  end

  defp if_statement(tokens, line) do
    {test, rest} = expression(tokens)
    rest = expect(rest, :close_stmt, "Expected closing statement token")
    {yes, rest} = body(rest, ["elif", "else", "endif"])

    case rest do
      [{:open_stmt, _, _}, {:ident, "elif", eline} | rest] ->
        {nested, rest} = if_statement(rest, eline)
        {{:if, line, test, yes, [nested]}, rest}

      [{:open_stmt, _, _}, {:ident, "else", _} | rest] ->
        rest = expect(rest, :close_stmt, "Expected closing statement token")
        {no, rest} = body(rest, ["endif"])
        {{:if, line, test, yes, no}, rest}

      _ ->
        {{:if, line, test, yes, []}, rest}
    end
  end

  defp macro_statement(tokens, line) do
    case tokens do
      [{:ident, name, _} | rest] ->
        {params, rest} = args(rest, :parameters)
        rest = expect(rest, :close_stmt, "Expected closing statement token")
        {nodes, rest} = body(rest, ["endmacro"])
        {{:macro, line, name, params, nodes}, rest}

      _ ->
        fail("Expected identifier following macro statement", line)
    end
  end

  defp for_statement(tokens, line) do
    {target, rest} = expression_sequence(tokens, true)

    unless match?({:var, _}, target) or match?({:tuple, _}, target),
      do: fail("Expected identifier/tuple for the loop variable", line)

    rest =
      case rest do
        [{:ident, "in", _} | rest] -> rest
        _ -> fail("Expected `in` keyword following loop variable", line)
      end

    {iterable, rest} = expression(rest)
    rest = expect(rest, :close_stmt, "Expected closing statement token")
    {nodes, rest} = body(rest, ["endfor", "else"])

    {alt, rest} =
      case rest do
        [{:open_stmt, _, _}, {:ident, "else", _} | rest] ->
          rest = expect(rest, :close_stmt, "Expected closing statement token")
          body(rest, ["endfor"])

        _ ->
          {[], rest}
      end

    {iterable, cond} =
      case iterable do
        {:select, lhs, cond} -> {lhs, cond}
        other -> {other, nil}
      end

    {{:for, line, target, iterable, cond, nodes, alt}, rest}
  end

  defp call_statement(tokens, line) do
    {caller_params, rest} =
      case tokens do
        [{:lparen, _, _} | _] -> args(tokens, :parameters)
        _ -> {[], tokens}
      end

    {callee, rest} = primary(rest)
    unless match?({:var, _}, callee), do: fail("Expected identifier following call statement", line)
    {call_args, rest} = args(rest, :call)
    rest = expect(rest, :close_stmt, "Expected closing statement token")
    {nodes, rest} = body(rest, ["endcall"])
    {{:call_block, line, caller_params, callee, call_args, nodes}, end_tag(rest, "endcall")}
  end

  defp filter_statement(tokens, line) do
    {name, rest} =
      case tokens do
        [{:ident, name, _} | rest] -> {name, rest}
        [{_, _, l} | _] -> fail("Expected identifier for the filter", l)
      end

    {filter_args, rest} =
      case rest do
        [{:lparen, _, _} | _] -> args(rest, :call)
        _ -> {nil, rest}
      end

    rest = expect(rest, :close_stmt, "Expected closing statement token")
    {nodes, rest} = body(rest, ["endfilter"])
    {{:filter_block, line, name, filter_args, nodes}, end_tag(rest, "endfilter")}
  end

  # --- expressions ----------------------------------------------------------------------

  defp expression_sequence(tokens, primary?) do
    parse = if primary?, do: &primary/1, else: &expression/1
    {first, rest} = parse.(tokens)

    case rest do
      [{:comma, _, _} | _] -> tuple_rest(rest, parse, [first])
      _ -> {first, rest}
    end
  end

  defp tuple_rest([{:comma, _, _} | rest], parse, acc) do
    {e, rest} = parse.(rest)
    tuple_rest(rest, parse, [e | acc])
  end

  defp tuple_rest(rest, _parse, acc), do: {{:tuple, Enum.reverse(acc)}, rest}

  defp expression(tokens), do: if_expression(tokens)

  defp if_expression(tokens) do
    {a, rest} = or_expression(tokens)

    case rest do
      [{:ident, "if", _} | rest] ->
        {test, rest} = or_expression(rest)

        case rest do
          [{:ident, "else", _} | rest] ->
            {b, rest} = if_expression(rest)
            {{:ternary, test, a, b}, rest}

          _ ->
            {{:select, a, test}, rest}
        end

      _ ->
        {a, rest}
    end
  end

  defp or_expression(tokens) do
    {left, rest} = and_expression(tokens)
    or_loop(left, rest)
  end

  defp or_loop(left, [{:ident, "or", _} | rest]) do
    {right, rest} = and_expression(rest)
    or_loop({:or, left, right}, rest)
  end

  defp or_loop(left, rest), do: {left, rest}

  defp and_expression(tokens) do
    {left, rest} = not_expression(tokens)
    and_loop(left, rest)
  end

  defp and_loop(left, [{:ident, "and", _} | rest]) do
    {right, rest} = not_expression(rest)
    and_loop({:and, left, right}, rest)
  end

  defp and_loop(left, rest), do: {left, rest}

  defp not_expression([{:ident, "not", _} | rest]) do
    {arg, rest} = not_expression(rest)
    {{:not, arg}, rest}
  end

  defp not_expression(tokens), do: comparison(tokens)

  defp comparison(tokens) do
    {left, rest} = additive(tokens)
    comparison_loop(left, rest)
  end

  defp comparison_loop(left, [{:ident, "not", _}, {:ident, "in", _} | rest]), do: comparison_next(left, "not in", rest)
  defp comparison_loop(left, [{:ident, "in", _} | rest]), do: comparison_next(left, "in", rest)
  defp comparison_loop(left, [{:comparison, op, _} | rest]), do: comparison_next(left, op, rest)
  defp comparison_loop(left, rest), do: {left, rest}

  defp comparison_next(left, op, rest) do
    {right, rest} = additive(rest)
    comparison_loop({:bin, op, left, right}, rest)
  end

  defp additive(tokens) do
    {left, rest} = multiplicative(tokens)
    additive_loop(left, rest)
  end

  defp additive_loop(left, [{:additive, op, _} | rest]) do
    {right, rest} = multiplicative(rest)
    additive_loop({:bin, op, left, right}, rest)
  end

  defp additive_loop(left, rest), do: {left, rest}

  defp multiplicative(tokens) do
    {left, rest} = power(tokens)
    multiplicative_loop(left, rest)
  end

  defp multiplicative_loop(left, [{:multiplicative, op, _} | rest]) do
    {right, rest} = power(rest)
    multiplicative_loop({:bin, op, left, right}, rest)
  end

  defp multiplicative_loop(left, rest), do: {left, rest}

  defp power(tokens) do
    {left, rest} = test_expression(tokens)
    power_loop(left, rest)
  end

  defp power_loop(left, [{:power, _, _} | rest]) do
    {right, rest} = test_expression(rest)
    power_loop({:bin, "**", left, right}, rest)
  end

  defp power_loop(left, rest), do: {left, rest}

  defp test_expression(tokens) do
    {operand, rest} = filter_expression(tokens)
    test_loop(operand, rest)
  end

  defp test_loop(operand, [{:ident, "is", line} | rest]) do
    {negate, rest} =
      case rest do
        [{:ident, "not", _} | rest] -> {true, rest}
        _ -> {false, rest}
      end

    case primary(rest) do
      {{:var, name}, rest} -> test_loop({:test, operand, negate, name}, rest)
      _ -> fail("Expected identifier for the test", line)
    end
  end

  defp test_loop(operand, rest), do: {operand, rest}

  defp filter_expression(tokens) do
    {operand, rest} = unary(tokens)
    filter_loop(operand, rest)
  end

  defp filter_loop(operand, [{:pipe, _, line} | rest]) do
    case primary(rest) do
      {{:var, name}, [{:lparen, _, _} | _] = rest} ->
        {filter_args, rest} = args(rest, :call)
        filter_loop({:filter, operand, name, filter_args}, rest)

      {{:var, name}, rest} ->
        filter_loop({:filter, operand, name, nil}, rest)

      _ ->
        fail("Expected identifier for the filter", line)
    end
  end

  defp filter_loop(operand, rest), do: {operand, rest}

  defp unary([{type, sign, _} | rest]) when type in [:unary, :additive] and sign in ["-", "+"] do
    {arg, rest} = unary(rest)
    {{if(sign == "-", do: :neg, else: :plus), arg}, rest}
  end

  defp unary(tokens) do
    {prim, rest} = primary(tokens)
    {member, rest} = member(prim, rest)

    case rest do
      [{:lparen, _, _} | _] -> call_expression(member, rest)
      _ -> {member, rest}
    end
  end

  defp call_expression(callee, tokens) do
    {call_args, rest} = args(tokens, :call)
    {expr, rest} = member({:call, callee, call_args}, rest)

    case rest do
      [{:lparen, _, _} | _] -> call_expression(expr, rest)
      _ -> {expr, rest}
    end
  end

  defp member(object, [{:dot, _, line} | rest]) do
    case primary(rest) do
      {{:var, name}, rest} -> member({:attr, object, name}, rest)
      {{:lit, n}, rest} when is_integer(n) -> member({:index, object, {:lit, n}}, rest)
      _ -> fail("Expected identifier or integer following dot operator", line)
    end
  end

  defp member(object, [{:lbracket, _, line} | rest]) do
    {slices, slice?, rest} = subscript(rest, [], false)

    rest = expect(rest, :rbracket, "Expected closing square bracket")

    cond do
      slices == [] ->
        fail("Expected at least one argument for member/slice expression", line)

      slice? and length(slices) > 3 ->
        fail("Expected 0-3 arguments for slice expression", line)

      slice? ->
        [start, stop, step] = Enum.take(slices ++ [nil, nil, nil], 3)
        member({:slice, object, start, stop, step}, rest)

      true ->
        member({:index, object, hd(slices)}, rest)
    end
  end

  defp member(object, rest), do: {object, rest}

  defp subscript([{:rbracket, _, _} | _] = rest, acc, slice?), do: {Enum.reverse(acc), slice?, rest}
  defp subscript([{:colon, _, _} | rest], acc, _slice?), do: subscript(rest, [nil | acc], true)
  defp subscript([], _acc, _slice?), do: fail("Expected closing square bracket", nil)

  defp subscript(tokens, acc, slice?) do
    {e, rest} = expression(tokens)

    case rest do
      [{:colon, _, _} | rest] -> subscript(rest, [e | acc], true)
      _ -> subscript(rest, [e | acc], slice?)
    end
  end

  # `(` args `)`; mode :call gives call arguments, :parameters gives {name, default}.
  defp args(tokens, mode) do
    rest = expect(tokens, :lparen, "Expected opening parenthesis for arguments list")
    {list, rest} = arg_list(rest, mode, [], false, false)
    {list, expect(rest, :rparen, "Expected closing parenthesis for arguments list")}
  end

  defp arg_list([{:rparen, _, _} | _] = rest, mode, acc, _kw?, _splat?), do: {finish_args(acc, mode), rest}
  defp arg_list([], _mode, _acc, _kw?, _splat?), do: fail("Expected closing parenthesis for arguments list", nil)

  defp arg_list([{:power, _, line} | rest], mode, acc, _kw?, _splat?) do
    if mode == :parameters, do: fail("Argument unpacking is not allowed in parameter declarations", line)
    {e, rest} = expression(rest)
    rest = skip_comma(rest)

    case rest do
      [{:rparen, _, _} | _] -> {finish_args([{:kwsplat, e} | acc], mode), rest}
      _ -> fail("Expected closing parenthesis: `**` must be applied to the final argument", line)
    end
  end

  defp arg_list([{:multiplicative, "*", line} | rest], mode, acc, kw?, splat?) do
    if mode == :parameters, do: fail("Argument unpacking is not allowed in parameter declarations", line)
    if splat?, do: fail("Only one `*` argument unpacking is allowed", line)
    {e, rest} = expression(rest)
    arg_list(skip_comma(rest), mode, [{:splat, e} | acc], kw?, true)
  end

  defp arg_list([{_, _, line} | _] = tokens, mode, acc, kw?, splat?) do
    {e, rest} = expression(tokens)

    {arg, rest} =
      case rest do
        [{:equals, _, _} | rest] ->
          name =
            case e do
              {:var, name} -> name
              _ -> fail("Expected identifier for keyword argument", line)
            end

          {value, rest} = expression(rest)
          {{:kw, name, value}, rest}

        _ ->
          {{:pos, e}, rest}
      end

    cond do
      mode == :parameters and not match?({:kw, _, _}, arg) and not match?({:pos, {:var, _}}, arg) ->
        fail("Expected identifier for parameter declaration", line)

      match?({:pos, _}, arg) and kw? ->
        fail(
          if(mode == :call,
            do: "Positional arguments must come before keyword arguments",
            else: "Non-default argument follows default argument"
          ),
          line
        )

      match?({:pos, _}, arg) and splat? ->
        fail("Positional arguments must not follow `*` argument unpacking", line)

      true ->
        arg_list(skip_comma(rest), mode, [arg | acc], kw? or match?({:kw, _, _}, arg), splat?)
    end
  end

  defp finish_args(acc, :call), do: Enum.reverse(acc)

  defp finish_args(acc, :parameters) do
    params =
      acc
      |> Enum.reverse()
      |> Enum.map(fn
        {:pos, {:var, name}} -> {name, nil}
        {:kw, name, default} -> {name, default}
      end)

    names = Enum.map(params, &elem(&1, 0))
    dup = names -- Enum.uniq(names)
    if dup != [], do: fail("Duplicate parameter name: #{hd(dup)}", nil)
    params
  end

  defp skip_comma([{:comma, _, _} | rest]), do: rest
  defp skip_comma(rest), do: rest

  defp primary([{:number, num, _} | rest]) do
    value =
      if String.contains?(num, "."),
        do: String.to_float(num),
        else: String.to_integer(num)

    {{:lit, value}, rest}
  end

  defp primary([{:string, s, _} | rest]), do: concat_strings(rest, [s])
  defp primary([{:ident, name, _} | rest]), do: {{:var, name}, rest}

  defp primary([{:lparen, _, _} | rest]) do
    {e, rest} = expression_sequence(rest, false)
    {e, expect(rest, :rparen, "Expected closing parenthesis")}
  end

  defp primary([{:lbracket, _, _} | rest]), do: list_literal(rest, [])
  defp primary([{:lbrace, _, _} | rest]), do: dict_literal(rest, [])
  defp primary([{type, _, line} | _]), do: fail("Unexpected token: #{type}", line)
  defp primary([]), do: fail("Unexpected end of template", nil)

  defp concat_strings([{:string, s, _} | rest], acc), do: concat_strings(rest, [s | acc])
  defp concat_strings(rest, acc), do: {{:lit, acc |> Enum.reverse() |> Enum.join()}, rest}

  defp list_literal([{:rbracket, _, _} | rest], acc), do: {{:list, Enum.reverse(acc)}, rest}
  defp list_literal([], _acc), do: fail("Unexpected end of template in a list literal", nil)

  defp list_literal(tokens, acc) do
    {e, rest} = expression(tokens)
    list_literal(skip_comma(rest), [e | acc])
  end

  defp dict_literal([{:rbrace, _, _} | rest], acc), do: {{:dict, Enum.reverse(acc)}, rest}
  defp dict_literal([], _acc), do: fail("Unexpected end of template in an object literal", nil)

  defp dict_literal(tokens, acc) do
    {k, rest} = expression(tokens)
    rest = expect(rest, :colon, "Expected colon between key and value in object literal")
    {v, rest} = expression(rest)
    dict_literal(skip_comma(rest), [{k, v} | acc])
  end

  # --- helpers ----------------------------------------------------------------------------

  defp expect([{type, _, _} | rest], type, _message), do: rest
  defp expect([{other, _, line} | _], type, message), do: fail("#{message}. #{other} !== #{type}", line)
  defp expect([], type, message), do: fail("#{message}. end of template !== #{type}", nil)

  defp expect_ident([{:ident, name, _} | rest], name), do: rest
  defp expect_ident([{_, _, line} | _], name), do: fail("Expected #{name}", line)
  defp expect_ident([], name), do: fail("Expected #{name}", nil)

  defp fail(message, line), do: throw({:parse_error, message, line})
end
