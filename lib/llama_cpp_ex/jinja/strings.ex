defmodule LlamaCppEx.Jinja.Strings do
  @moduledoc false
  # String semantics of the reference renderer (@huggingface/jinja, JavaScript): which
  # characters are whitespace (JavaScript's \s and String.prototype.trim), ASCII-only word
  # characters (\w, used by `title`), lengths in UTF-16 units, and the string methods
  # templates call (`strip`, `split`, `replace`, `startswith`, ...).

  # JavaScript's WhiteSpace + LineTerminator
  @ws [?\t, ?\n, 0x0B, ?\f, ?\r, ?\s, 0xA0, 0x1680] ++
        Enum.to_list(0x2000..0x200A) ++ [0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF]

  @spec ws?(integer()) :: boolean()
  def ws?(c), do: c in @ws

  @spec trim(String.t()) :: String.t()
  def trim(s), do: s |> trim_start() |> trim_end()

  @spec trim_start(String.t()) :: String.t()
  def trim_start(<<c::utf8, rest::binary>> = s), do: if(ws?(c), do: trim_start(rest), else: s)
  def trim_start(s), do: s

  @spec trim_end(String.t()) :: String.t()
  def trim_end(s) do
    s |> String.to_charlist() |> Enum.reverse() |> Enum.drop_while(&ws?/1) |> Enum.reverse() |> List.to_string()
  end

  @doc "Length in UTF-16 code units (JavaScript's `.length`)."
  @spec js_length(String.t()) :: non_neg_integer()
  def js_length(s) do
    s |> String.to_charlist() |> Enum.reduce(0, fn c, n -> if c > 0xFFFF, do: n + 2, else: n + 1 end)
  end

  @doc "JavaScript's `\\b\\w` title casing: an ASCII word character after a non-word one is uppercased."
  @spec title(String.t()) :: String.t()
  def title(s) do
    {out, _} =
      s
      |> String.to_charlist()
      |> Enum.map_reduce(false, fn c, prev_word ->
        word = word?(c)
        c = if word and not prev_word and c in ?a..?z, do: c - 32, else: c
        {c, word}
      end)

    List.to_string(out)
  end

  @spec capitalize(String.t()) :: String.t()
  def capitalize(<<c::utf8, rest::binary>>), do: String.upcase(<<c::utf8>>) <> rest
  def capitalize(s), do: s

  defp word?(c), do: c in ?a..?z or c in ?A..?Z or c in ?0..?9 or c == ?_

  @doc "Python's `str.split(sep=None, maxsplit=-1)`, as the reference implements it."
  @spec split(String.t(), String.t() | nil, integer()) :: [String.t()]
  def split(s, nil, maxsplit) do
    text = trim_start(s)
    split_ws(text, maxsplit, [])
  end

  def split(_s, "", _maxsplit), do: throw({:jinja_error, "empty separator"})

  def split(s, sep, maxsplit) do
    parts = :binary.split(s, sep, [:global])

    if maxsplit != -1 and length(parts) > maxsplit and maxsplit >= 0 do
      {head, tail} = Enum.split(parts, maxsplit)
      head ++ [Enum.join(tail, sep)]
    else
      parts
    end
  end

  defp split_ws("", _maxsplit, acc), do: Enum.reverse(acc)

  defp split_ws(text, maxsplit, acc) do
    if maxsplit != -1 and length(acc) >= maxsplit do
      Enum.reverse([text | acc])
    else
      {word, rest} = take_word(text, [])
      split_ws(trim_start(rest), maxsplit, [word | acc])
    end
  end

  defp take_word(<<c::utf8, rest::binary>> = s, acc) do
    if ws?(c), do: {acc |> Enum.reverse() |> List.to_string(), s}, else: take_word(rest, [c | acc])
  end

  defp take_word(s, acc), do: {acc |> Enum.reverse() |> List.to_string(), s}

  @doc "Python's `str.replace(old, new, count)`; an empty `old` matches between every character."
  @spec replace(String.t(), String.t(), String.t(), integer() | nil) :: String.t()
  def replace(s, _old, _new, 0), do: s

  def replace(s, "", new, count) do
    chars = String.codepoints(s)
    slots = length(chars) + 1
    n = if count == nil or count < 0, do: slots, else: min(count, slots)

    {out, _} =
      Enum.reduce(chars, {[], n}, fn c, {acc, left} ->
        if left > 0, do: {[c, new | acc], left - 1}, else: {[c | acc], 0}
      end)
      |> then(fn {acc, left} -> {if(left > 0, do: [new | acc], else: acc), left} end)

    out |> Enum.reverse() |> IO.iodata_to_binary()
  end

  def replace(s, old, new, count) when count == nil or count < 0, do: :binary.replace(s, old, new, [:global])

  def replace(s, old, new, count) do
    parts = :binary.split(s, old, [:global])
    {head, tail} = Enum.split(parts, count + 1)

    case tail do
      [] -> Enum.join(head, new)
      _ -> Enum.join(head, new) <> old <> Enum.join(tail, old)
    end
  end
end
