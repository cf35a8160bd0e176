defmodule LlamaCppEx.Grammar do
  @moduledoc """
  GBNF grammars made from JSON: a JSON schema's grammar
  (`from_json_schema/2`), and any JSON value (`json/0`). Generation takes
  them as `:grammar`, or builds them itself from `json_schema:` and
  `response_format: :json` (see `LlamaCppEx.Sampler`).

  The conversion is a port of llama.cpp's own
  (`common/json-schema-to-grammar.cpp`, with the schema reading of
  `common/json-schema.cpp`), in Elixir, and gives the same grammar text for
  the same schema: `LlamaCppEx.Grammar.JsonSchema` reads the schema into a
  tree, `LlamaCppEx.Grammar.SchemaConverter` writes the rules,
  `LlamaCppEx.Grammar.Regex` translates `pattern`s and
  `LlamaCppEx.Grammar.IntegerRange` integer bounds.

      iex> {:ok, gbnf} = LlamaCppEx.Grammar.from_json_schema(%{"type" => "boolean"})
      iex> String.split(gbnf, "\\n") |> hd()
      ~S<root ::= ("true" | "false")>

  ## What a schema may use

  `type` (one or a list), `properties`, `required`, `additionalProperties`,
  `enum`, `const`, `anyOf`/`oneOf` (both as any of), `allOf` (of objects or
  enums), `$ref` into the same document (`#/$defs/...`, `#/definitions/...`,
  recursion included), `items` (a schema, or a list for tuples),
  `prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`, `pattern`
  (anchored with `^...$`), `format` (`date`, `time`, `date-time`, `uuid`;
  other formats are annotations and ignored, as the JSON schema spec
  allows), `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum` on
  integers. Annotations (`title`, `description`, `default`, `$schema`, ...)
  are ignored.

  Constructs that constrain values but have no grammar here are an error
  naming them, where llama.cpp ignores them: `not`, `if`/`then`/`else`,
  `uniqueItems`, `multipleOf`, `patternProperties`, `minProperties`,
  `contains`, ..., bounds on a `number`, `pattern` or `format` together
  with length bounds, a `required` property that cannot appear.

  Numbers: `"type": "number"` has llama.cpp's grammar, whose exponent may
  have up to 16 digits (`1e3000000000000000`): valid JSON, but beyond a
  double's range, so decoders that read numbers as doubles (jiffy, Jason)
  refuse such a text. Use `"integer"` with bounds where that matters.

  Key order: properties are generated in the order of the schema's
  object. A map has none, so a map's keys go in sorted order; to keep a
  document's order pass jiffy's form (`:jiffy.decode(text)`, objects as
  `{[{key, value}]}`), which this also accepts.
  """

  alias LlamaCppEx.Grammar.{JsonSchema, JsonValue, SchemaConverter}

  require Logger

  @typedoc "A decoded JSON document: maps with string keys, or jiffy's `{[{key, value}]}` objects."
  @type json :: map() | {[{String.t(), term()}]} | list() | String.t() | number() | boolean() | nil | :null

  @doc """
  The GBNF grammar of the JSON texts valid under `schema`.

  Returns `{:ok, gbnf}`, or `{:error, {:invalid_json_schema, message}}` for a
  schema that is wrong (a bad `$ref`, a pattern that is no regex, an unknown
  type, ...) and `{:error, {:unsupported_json_schema, message}}` for one that
  uses a construct this cannot express; the message names it and where it
  is. A term that is not JSON at all raises `ArgumentError`.

  ## Options

    * `:unsupported_pattern` - what a `pattern` with no GBNF equivalent
      (lookarounds, `\\w`, `\\d`, an unanchored pattern, ...) gives: `:error`
      (default) or `:any_string`, llama.cpp's choice: any string, with a
      warning logged.

  ## Example

      iex> schema = %{"type" => "object", "properties" => %{"n" => %{"type" => "integer", "maximum" => 9}}, "required" => ["n"]}
      iex> {:ok, gbnf} = LlamaCppEx.Grammar.from_json_schema(schema)
      iex> gbnf =~ ~S(root ::= "{" space n-kv space "}")
      true
  """
  @spec from_json_schema(json(), keyword()) :: {:ok, String.t()} | {:error, {atom(), String.t()}}
  def from_json_schema(schema, opts \\ []) do
    opts = Keyword.validate!(opts, unsupported_pattern: :error)

    unless opts[:unsupported_pattern] in [:error, :any_string],
      do:
        raise(
          ArgumentError,
          ":unsupported_pattern must be :error or :any_string, got: #{inspect(opts[:unsupported_pattern])}"
        )

    root = JsonValue.normalize(schema)

    with {:ok, node, refs} <- JsonSchema.build(root),
         {:ok, gbnf, warnings} <- SchemaConverter.convert(node, refs, opts) do
      if warnings != [],
        do: Logger.warning("JSON schema conversion was incomplete: " <> Enum.join(warnings, "; "))

      {:ok, gbnf}
    end
  end

  @json ~S"""
  root ::= value
  value ::= object | array | string | number | ("true" | "false" | "null") ws
  object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
  array ::= "[" ws ( value ("," ws value)* )? "]" ws
  string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
  number ::= ("-"? ([0] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})? ws
  ws ::= | " " | "\n" [ \t]{0,20}
  """

  @doc """
  The grammar of any JSON value (what `response_format: :json` uses): the
  rules of llama.cpp's `grammars/json.gbnf`, with any value at the root
  (json.gbnf's root is an object), and numbers that fit a double: at most 16
  digits before and after the point and a 2-digit exponent (json.gbnf's
  exponent rule, `[0-9] [1-9]{0,15}`, admits `1e9111111111` and refuses `1e10`).
  """
  @spec json() :: String.t()
  def json, do: @json
end
