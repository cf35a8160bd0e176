defmodule LlamaCppEx.JsonSchemaCases do
  @moduledoc false
  # Reads the test cases of the pinned llama.cpp's
  # tests/test-json-schema-to-grammar.cpp at test time (their text is not
  # copied into this repo). Each `test({STATUS, "name", schema, grammar});`
  # block gives a case; the literals are C++ raw strings R"""(...)""" or plain
  # "..." strings.

  @file_rel "tests/test-json-schema-to-grammar.cpp"

  @type case_t :: %{status: :success | :failure, name: String.t(), schema: String.t(), grammar: String.t()}

  @doc "The cases, in file order, or {:error, why} when the source tree is missing."
  @spec load(String.t() | nil) :: {:ok, [case_t()]} | {:error, String.t()}
  def load(nil), do: {:error, "no llama.cpp source tree"}

  def load(src) do
    path = Path.join(src, @file_rel)

    case File.read(path) do
      {:ok, text} -> {:ok, parse(text)}
      {:error, e} -> {:error, "#{path}: #{:file.format_error(e)}"}
    end
  end

  @doc "Parses the C++ test file's `test({...});` blocks."
  def parse(text) do
    text
    |> String.split(~r/\n\s*test\(\{/)
    |> tl()
    |> Enum.map(&parse_case/1)
  end

  defp parse_case(block) do
    rest = String.trim_leading(block)

    {status, rest} =
      case rest do
        "SUCCESS," <> r -> {:success, r}
        "FAILURE," <> r -> {:failure, r}
      end

    {name, rest} = literal(skip(rest))
    {schema, rest} = literal(skip(expect_comma(rest)))
    {grammar, _rest} = literal(skip(expect_comma(rest)))
    %{status: status, name: name, schema: schema, grammar: grammar}
  end

  defp skip(s), do: String.trim_leading(s)

  defp expect_comma(s) do
    "," <> r = skip(s)
    r
  end

  # R"""(...)""" raw string
  defp literal(~S|R"""(| <> rest) do
    [body, rest] = String.split(rest, ~S|)"""|, parts: 2)
    {body, rest}
  end

  # "..." string with C escapes
  defp literal("\"" <> rest), do: plain(rest, [])

  defp plain("\\" <> <<c, rest::binary>>, acc) do
    ch =
      case c do
        ?n -> "\n"
        ?t -> "\t"
        ?r -> "\r"
        ?0 -> <<0>>
        other -> <<other>>
      end

    plain(rest, [acc, ch])
  end

  defp plain("\"" <> rest, acc), do: {IO.iodata_to_binary(acc), rest}
  defp plain(<<c, rest::binary>>, acc), do: plain(rest, [acc, c])

  @doc "upstream's trim(): strip the ends and every line's leading blanks"
  def trim(s) do
    s
    |> String.trim()
    |> then(&Regex.replace(~r/(^|\n)[ \t]+/, &1, "\\1"))
  end
end
