defmodule LlamaCppEx.Grammar.IntegerRange do
  @moduledoc false
  # GBNF for the decimal integers within [min, max] (either bound may be nil,
  # unbounded), built digit by digit as upstream's build_min_max_int() in
  # common/json-schema-to-grammar.cpp; the text is the same.

  @doc "The alternatives (without the enclosing parentheses) for min..max."
  @spec build(integer() | nil, integer() | nil) :: String.t()
  def build(min, max) when is_integer(min) or is_integer(max),
    do: min |> build(max, 16, true) |> IO.iodata_to_binary()

  defp build(min, max, decimals, _top) when is_integer(min) and is_integer(max) do
    cond do
      min < 0 and max < 0 ->
        [~S("-" (), build(-max, -min, decimals, true), ")"]

      min < 0 ->
        [~S("-" (), build(0, -min, decimals, true), ") | " | both_positive(0, max)]

      true ->
        both_positive(min, max)
    end
  end

  defp build(min, nil, decimals, top) do
    less = max(decimals - 1, 1)

    cond do
      min < 0 ->
        [~S("-" (), build(nil, -min, decimals, false), ") | [0] | [1-9] ", more_digits(0, decimals - 1)]

      min == 0 and top ->
        ["[0] | [1-9] ", more_digits(0, less)]

      min == 0 ->
        more_digits(1, decimals)

      min <= 9 ->
        c = ?0 + min
        start = if top, do: ?1, else: ?0

        head = if c > start, do: [digit_range(start, c - 1), " ", more_digits(1, less), " | "], else: []
        [head, digit_range(c, ?9), " ", more_digits(0, less)]

      true ->
        min_s = Integer.to_string(min)
        len = byte_size(min_s)
        <<c, rest::binary>> = min_s

        head =
          if c > ?1,
            do: [digit_range(if(top, do: ?1, else: ?0), c - 1), " ", more_digits(len, less), " | "],
            else: []

        tail = if c < ?9, do: [" | ", digit_range(c + 1, ?9), " ", more_digits(len - 1, less)], else: []
        [head, digit_range(c, c), " (", build(String.to_integer(rest), nil, less, false), ")", tail]
    end
  end

  defp build(nil, max, decimals, top) do
    less = max(decimals - 1, 1)

    if max >= 0 do
      head = if top, do: [~S("-" [1-9] ), more_digits(0, less), " | "], else: []
      [head, build(0, max, decimals, true)]
    else
      [~S("-" (), build(-max, nil, decimals, false), ")"]
    end
  end

  # 0 <= min <= max: one uniform range per number of digits
  defp both_positive(min, max) do
    min_s = Integer.to_string(min)
    max_s = Integer.to_string(max)

    {parts, last_min} =
      Enum.map_reduce(byte_size(min_s)..(byte_size(max_s) - 1)//1, min_s, fn digits, from ->
        {[uniform_range(from, String.duplicate("9", digits)), " | "], "1" <> String.duplicate("0", digits)}
      end)

    [parts, uniform_range(last_min, max_s)]
  end

  # from and to have the same number of digits
  defp uniform_range(from, to) do
    i = common_prefix(from, to, 0)
    prefix = if i > 0, do: [?", binary_part(from, 0, i), ?"], else: []

    if i < byte_size(from) and i < byte_size(to) do
      sep = if i > 0, do: " ", else: []
      fi = :binary.at(from, i)
      ti = :binary.at(to, i)
      sub_len = byte_size(from) - i - 1

      body =
        if sub_len > 0 do
          from_sub = binary_part(from, i + 1, sub_len)
          to_sub = binary_part(to, i + 1, byte_size(to) - i - 1)
          zeros = String.duplicate("0", sub_len)
          nines = String.duplicate("9", sub_len)

          {first, to_reached} =
            if from_sub == zeros do
              {[digit_range(fi, ti - 1), " ", more_digits(sub_len, sub_len)], false}
            else
              lead = ["[", fi, "] (", uniform_range(from_sub, nines), ")"]

              if fi < ti - 1 do
                {range, reached} =
                  if to_sub == nines,
                    do: {digit_range(fi + 1, ti), true},
                    else: {digit_range(fi + 1, ti - 1), false}

                {[lead, " | ", range, " ", more_digits(sub_len, sub_len)], reached}
              else
                {lead, false}
              end
            end

          last = if to_reached, do: [], else: [" | ", digit_range(ti, ti), " ", uniform_range(zeros, to_sub)]
          ["(", first, last, ")"]
        else
          ["[", fi, "-", ti, "]"]
        end

      [prefix, sep, body]
    else
      prefix
    end
  end

  defp common_prefix(a, b, i) do
    if i < byte_size(a) and i < byte_size(b) and :binary.at(a, i) == :binary.at(b, i),
      do: common_prefix(a, b, i + 1),
      else: i
  end

  defp digit_range(from, from), do: ["[", from, "]"]
  defp digit_range(from, to), do: ["[", from, "-", to, "]"]

  defp more_digits(1, 1), do: "[0-9]"
  defp more_digits(n, n), do: ["[0-9]{", Integer.to_string(n), "}"]
  defp more_digits(min, max), do: ["[0-9]{", Integer.to_string(min), ",", Integer.to_string(max), "}"]
end
