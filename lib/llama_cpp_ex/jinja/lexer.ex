defmodule LlamaCppEx.Jinja.Lexer do
  @moduledoc false
  # Template source -> tokens, with the whitespace rules chat renderers use
  # (trim_blocks and lstrip_blocks on, as Hugging Face's chat templating sets them).
  #
  # The rules follow @huggingface/jinja (the reference the conformance test compares
  # with) step for step: the source is preprocessed (one trailing newline dropped,
  # lstrip_blocks and trim_blocks as regular expressions, the transformers-only
  # `{% generation %}` tag removed), then scanned. A newline removed by trim_blocks is
  # replaced by a marker that counts as a line but produces nothing, so every token
  # keeps the line it has in the original template.
  #
  # Tokens are `{type, value, line}`; types: :text, :comment, :number, :string, :ident,
  # :open_stmt, :close_stmt, :open_expr, :close_expr, :lparen, :rparen, :lbracket,
  # :rbracket, :lbrace, :rbrace, :comma, :dot, :colon, :pipe, :equals, :additive,
  # :multiplicative, :power, :comparison, :unary.

  # a noncharacter: never in a template's text, stands for a newline trim_blocks removed
  @marker 0xFDD0

  @table [
    {~c"{%", :open_stmt},
    {~c"%}", :close_stmt},
    {~c"{{", :open_expr},
    {~c"}}", :close_expr},
    {~c"(", :lparen},
    {~c")", :rparen},
    {~c"{", :lbrace},
    {~c"}", :rbrace},
    {~c"[", :lbracket},
    {~c"]", :rbracket},
    {~c",", :comma},
    {~c".", :dot},
    {~c":", :colon},
    {~c"|", :pipe},
    {~c"<=", :comparison},
    {~c">=", :comparison},
    {~c"==", :comparison},
    {~c"!=", :comparison},
    {~c"<", :comparison},
    {~c">", :comparison},
    {~c"+", :additive},
    {~c"-", :additive},
    {~c"~", :additive},
    {~c"**", :power},
    {~c"*", :multiplicative},
    {~c"//", :multiplicative},
    {~c"/", :multiplicative},
    {~c"%", :multiplicative},
    {~c"=", :equals}
  ]

  @escapes %{?n => ?\n, ?t => ?\t, ?r => ?\r, ?b => ?\b, ?f => ?\f, ?v => ?\v, ?' => ?', ?" => ?", ?\\ => ?\\}

  @type token :: {atom(), String.t(), pos_integer()}

  @spec tokenize(String.t()) :: {:ok, [token()]} | {:error, {String.t(), pos_integer()}}
  def tokenize(source) do
    chars = source |> preprocess() |> String.to_charlist()
    {:ok, scan(chars, 1, [])}
  catch
    {:lex_error, message, line} -> {:error, {message, line}}
  end

  # --- preprocessing (the reference's regular expressions) ------------------------------

  defp preprocess(source) do
    source = if String.ends_with?(source, "\n"), do: binary_part(source, 0, byte_size(source) - 1), else: source
    source = Regex.replace(~r/^[ \t]*({[#%-])/m, source, "\\1")
    source = Regex.replace(~r/([#%-]})\n/, source, "\\1" <> <<@marker::utf8>>)

    Regex.replace(
      ~r/([\s\x{FDD0}]*){%(-?)\s*(?:end)?generation\s*(-?)%}([\s\x{FDD0}]*)/su,
      source,
      fn _, before, lstrip, rstrip, trailing ->
        if(lstrip == "", do: before, else: "") <> if(rstrip == "", do: trailing, else: "")
      end
    )
  end

  # --- scanning ---------------------------------------------------------------------------

  defp scan([], _line, acc), do: Enum.reverse(acc)

  defp scan(chars, line, acc) do
    case text_allowed?(acc) and scan_text(chars, line, []) do
      {[_ | _] = text, rest, line2} -> scan(rest, line2, [{:text, List.to_string(text), line} | acc])
      {[], rest, line2} -> scan_tag(rest, line2, acc)
      false -> scan_tag(chars, line, acc)
    end
  end

  defp text_allowed?([]), do: true
  defp text_allowed?([{type, _, _} | _]), do: type in [:close_stmt, :close_expr, :comment]

  defp scan_text([?{, c | _] = rest, line, text) when c in [?%, ?{, ?#], do: {Enum.reverse(text), rest, line}
  defp scan_text([@marker | rest], line, text), do: scan_text(rest, line + 1, text)
  defp scan_text([?\n | rest], line, text), do: scan_text(rest, line + 1, [?\n | text])
  defp scan_text([c | rest], line, text), do: scan_text(rest, line, [c | text])
  defp scan_text([], line, text), do: {Enum.reverse(text), [], line}

  defp scan_tag([?{, ?# | rest], line, acc) do
    {strip_before, rest} =
      case rest do
        [?- | r] -> {true, r}
        r -> {false, r}
      end

    {comment, rest, line2} = scan_comment(rest, line, [])
    strip_after = List.last(comment) == ?-
    comment = if strip_after, do: List.delete_at(comment, -1), else: comment
    acc = if strip_before, do: strip_trailing(acc), else: acc
    acc = [{:comment, List.to_string(comment), line} | acc]
    {rest, line2} = if strip_after, do: skip_ws(rest, line2), else: {rest, line2}
    scan(rest, line2, acc)
  end

  defp scan_tag([?{, ?%, ?- | rest], line, acc), do: scan(rest, line, [{:open_stmt, "{%", line} | strip_trailing(acc)])
  defp scan_tag([?{, ?{, ?- | rest], line, acc), do: scan(rest, line, [{:open_expr, "{{", line} | strip_trailing(acc)])

  defp scan_tag(chars, line, acc) do
    {rest, line} = consume_ws(chars, line)

    case rest do
      [] -> scan([], line, acc)
      [?-, ?%, ?} | r] -> close(r, line, [{:close_stmt, "%}", line} | acc])
      [?-, ?}, ?} | r] -> close(r, line, [{:close_expr, "}}", line} | acc])
      [c | _] when c in [?-, ?+] -> sign(rest, line, acc)
      _ -> operator(rest, line, acc)
    end
  end

  defp scan_comment([?#, ?} | rest], line, acc), do: {Enum.reverse(acc), rest, line}
  defp scan_comment([_, _, _ | _] = chars, line, acc), do: comment_char(chars, line, acc)
  defp scan_comment(_chars, line, _acc), do: throw({:lex_error, "Missing end of comment tag", line})

  defp comment_char([@marker | rest], line, acc), do: scan_comment(rest, line + 1, acc)
  defp comment_char([?\n | rest], line, acc), do: scan_comment(rest, line + 1, [?\n | acc])
  defp comment_char([c | rest], line, acc), do: scan_comment(rest, line, [c | acc])

  defp close(rest, line, acc) do
    {rest, line} = skip_ws(rest, line)
    scan(rest, line, acc)
  end

  # `-`/`+` after a value is a binary operator; anywhere else it is a sign, and a sign
  # followed by digits is part of the number.
  defp sign([c | rest] = chars, line, acc) do
    case acc do
      [] ->
        throw({:lex_error, "Unexpected character: #{<<c::utf8>>}", line})

      [{:text, _, _} | _] ->
        throw({:lex_error, "Unexpected character: #{<<c::utf8>>}", line})

      [{type, _, _} | _] when type in [:ident, :number, :string, :rparen, :rbracket] ->
        operator(chars, line, acc)

      _ ->
        {num, rest} = digits(rest, [])

        {num, rest} =
          case {num, rest} do
            {[_ | _], [?., d | _]} when d in ?0..?9 ->
              {frac, rest} = digits(tl(rest), [])
              {num ++ [?.] ++ frac, rest}

            other ->
              other
          end

        token = if num == [], do: {:unary, <<c>>, line}, else: {:number, List.to_string([c | num]), line}
        scan(rest, line, [token | acc])
    end
  end

  defp operator(chars, line, acc) do
    depth = brace_depth(acc)

    case match_table(chars, depth) do
      {seq, type} ->
        scan(Enum.drop(chars, length(seq)), line, [{type, List.to_string(seq), line} | acc])

      nil ->
        literal(chars, line, acc)
    end
  end

  defp match_table(chars, depth) do
    Enum.find(@table, fn {seq, _type} ->
      not (seq == ~c"}}" and depth > 0) and List.starts_with?(chars, seq)
    end)
  end

  # `}}` inside an object literal of an expression closes the literal, not the expression.
  defp brace_depth(acc), do: brace_depth(acc, 0)
  defp brace_depth([{:open_expr, _, _} | _], depth), do: max(depth, 0)
  defp brace_depth([{:lbrace, _, _} | rest], depth), do: brace_depth(rest, depth + 1)
  defp brace_depth([{:rbrace, _, _} | rest], depth), do: brace_depth(rest, depth - 1)
  defp brace_depth([_ | rest], depth), do: brace_depth(rest, depth)
  defp brace_depth([], depth), do: depth

  defp literal([q | rest], line, acc) when q in [?', ?"] do
    {str, rest, line2} = string(rest, q, line, [])
    scan(rest, line2, [{:string, str, line} | acc])
  end

  defp literal([c | _] = chars, line, acc) when c in ?0..?9 do
    {num, rest} = digits(chars, [])

    {num, rest} =
      case {acc, rest} do
        {[{:dot, _, _} | _], _} ->
          {num, rest}

        {_, [?., d | _]} when d in ?0..?9 ->
          {frac, rest} = digits(tl(rest), [])
          {num ++ [?.] ++ frac, rest}

        _ ->
          {num, rest}
      end

    scan(rest, line, [{:number, List.to_string(num), line} | acc])
  end

  defp literal([c | _] = chars, line, acc) do
    if word?(c) do
      {word, rest} = Enum.split_while(chars, &word?/1)
      scan(rest, line, [{:ident, List.to_string(word), line} | acc])
    else
      throw({:lex_error, "Unexpected character: #{<<c::utf8>>}", line})
    end
  end

  defp string([], _q, line, _acc), do: throw({:lex_error, "Unexpected end of input", line})
  defp string([q | rest], q, line, acc), do: {acc |> Enum.reverse() |> List.to_string(), rest, line}
  defp string([@marker | rest], q, line, acc), do: string(rest, q, line + 1, acc)
  defp string([?\n | rest], q, line, acc), do: string(rest, q, line + 1, [?\n | acc])

  defp string([?\\], _q, line, _acc), do: throw({:lex_error, "Unexpected end of input", line})

  defp string([?\\, e | rest], q, line, acc) when e in [?x, ?u] do
    len = if e == ?x, do: 2, else: 4
    {hex, rest} = Enum.split(rest, len)

    if length(hex) == len and Enum.all?(hex, &hex?/1) do
      string(rest, q, line, utf16_unit(List.to_integer(hex, 16), acc))
    else
      throw({:lex_error, "Invalid hexadecimal escape sequence: \\#{<<e>>}#{hex}", line})
    end
  end

  defp string([?\\, e | rest], q, line, acc) do
    case Map.fetch(@escapes, e) do
      {:ok, c} -> string(rest, q, line, [c | acc])
      :error -> throw({:lex_error, "Unexpected escaped character: #{<<e::utf8>>}", line})
    end
  end

  defp string([c], _q, line, _acc) when c != ?\\, do: throw({:lex_error, "Unexpected end of input", line})
  defp string([c | rest], q, line, acc), do: string(rest, q, line, [c | acc])

  # A \uD83D\uDE00 pair becomes one code point; a lone surrogate is not UTF-8, so it
  # becomes U+FFFD (JavaScript would keep it as an invalid string).
  defp utf16_unit(lo, [hi | acc]) when lo in 0xDC00..0xDFFF and hi in 0xD800..0xDBFF,
    do: [0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00) | acc]

  defp utf16_unit(unit, acc) when unit in 0xD800..0xDFFF, do: [0xFFFD | acc]
  defp utf16_unit(unit, acc), do: [unit | acc]

  defp hex?(c), do: c in ?0..?9 or c in ?a..?f or c in ?A..?F

  defp digits([c | rest], acc) when c in ?0..?9, do: digits(rest, [c | acc])
  defp digits(rest, acc), do: {Enum.reverse(acc), rest}

  defp word?(c), do: c in ?a..?z or c in ?A..?Z or c in ?0..?9 or c == ?_

  # whitespace between tokens inside a tag (the reference throws when it runs to the end)
  defp consume_ws([c | rest], line) do
    cond do
      c == ?\n or c == @marker -> consume_ws(rest, line + 1)
      ws?(c) -> consume_ws(rest, line)
      true -> {[c | rest], line}
    end
  end

  defp consume_ws([], line), do: {[], line}

  defp skip_ws([c | rest] = chars, line) do
    cond do
      c == ?\n or c == @marker -> skip_ws(rest, line + 1)
      ws?(c) -> skip_ws(rest, line)
      true -> {chars, line}
    end
  end

  defp skip_ws([], line), do: {[], line}

  defp strip_trailing([{:text, text, line} | acc]) do
    case LlamaCppEx.Jinja.Strings.trim_end(text) do
      "" -> acc
      trimmed -> [{:text, trimmed, line} | acc]
    end
  end

  defp strip_trailing(acc), do: acc

  @doc false
  def ws?(c), do: LlamaCppEx.Jinja.Strings.ws?(c)
end
