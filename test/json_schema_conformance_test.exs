defmodule LlamaCppEx.JsonSchemaConformanceTest do
  # LlamaCppEx.Grammar.from_json_schema/2 against llama.cpp's own test cases
  # (tests/test-json-schema-to-grammar.cpp of the pinned source, read at test
  # time by LlamaCppEx.JsonSchemaCases): the same grammar text, or the
  # failure, case by case; and every grammar made parses in llama.cpp (a
  # sampler is built with it).
  #
  # Where we differ, on purpose (the test checks both behaviours):
  #   "unanchored regexp", "regexp with unsupported shorthand",
  #   "unsupported regexp in a property": upstream turns a pattern it cannot
  #   translate into "any string" with a warning on stderr; by default we
  #   return {:error, {:unsupported_json_schema, message}} naming the pattern
  #   (a constraint is never dropped silently). With
  #   unsupported_pattern: :any_string the text is upstream's.
  # Not run: the file's two blocks outside test({...}) ("parsed document":
  # a C++ API equality, covered below by converting the same recursive schema;
  # "sub-schema $ref": upstream's build_grammar() builder API, which has no
  # counterpart here).
  use ExUnit.Case, async: true
  @moduletag :conformance

  alias LlamaCppEx.{Grammar, Sampler, TestHelpers}
  alias LlamaCppEx.JsonSchemaCases, as: Cases

  for dir <- Path.wildcard("/usr/lib/erlang/lib/jiffy-*/ebin"), do: Code.prepend_path(dir)

  @degraded_by_upstream ["unanchored regexp", "regexp with unsupported shorthand", "unsupported regexp in a property"]

  setup_all do
    {:ok, cases} = Cases.load(TestHelpers.llama_src())
    {:ok, cases: cases, model: TestHelpers.load_model!()}
  end

  defp decode(c), do: :jiffy.decode(c.schema)

  test "the file holds the cases", %{cases: cases} do
    assert length(cases) >= 80
    names = Enum.map(cases, & &1.name)
    assert Enum.uniq(names) == names
    for name <- @degraded_by_upstream, do: assert(name in names)
  end

  test "every case gives upstream's grammar text, or fails where upstream fails", %{cases: cases} do
    mismatches =
      for c <- cases, c.name not in @degraded_by_upstream, reduce: [] do
        acc ->
          case {c.status, Grammar.from_json_schema(decode(c))} do
            {:failure, {:error, {reason, msg}}} when reason in [:invalid_json_schema, :unsupported_json_schema] ->
              assert is_binary(msg)
              acc

            {:success, {:ok, gbnf}} ->
              if Cases.trim(gbnf) == Cases.trim(c.grammar), do: acc, else: [{c.name, gbnf} | acc]

            {_, other} ->
              [{c.name, other} | acc]
          end
      end

    assert mismatches == []
  end

  @tag capture_log: true
  test "patterns upstream degrades to any string: an error by default, upstream's text on request", %{cases: cases} do
    for c <- cases, c.name in @degraded_by_upstream do
      assert {:error, {:unsupported_json_schema, msg}} = Grammar.from_json_schema(decode(c))
      assert msg =~ "pattern", c.name
      assert {:ok, gbnf} = Grammar.from_json_schema(decode(c), unsupported_pattern: :any_string)
      assert Cases.trim(gbnf) == Cases.trim(c.grammar), c.name
    end
  end

  @tag capture_log: true
  test "llama.cpp parses every grammar made, and upstream's expected ones", %{cases: cases, model: model} do
    for c <- cases, c.status == :success do
      {:ok, gbnf} = Grammar.from_json_schema(decode(c), unsupported_pattern: :any_string)
      assert {:ok, s} = Sampler.create(model, grammar: gbnf), c.name
      Sampler.free(s)
      assert {:ok, s} = Sampler.create(model, grammar: c.grammar), c.name
      Sampler.free(s)
    end
  end

  test "a recursive $defs schema converts and parses", %{model: model} do
    schema = %{
      "$ref" => "#/$defs/node",
      "$defs" => %{
        "node" => %{
          "type" => "object",
          "properties" => %{"next" => %{"$ref" => "#/$defs/node"}, "leaf" => %{}},
          "additionalProperties" => false
        }
      }
    }

    assert {:ok, gbnf} = Grammar.from_json_schema(schema)
    assert gbnf =~ "ref-defs-node ::="
    assert gbnf =~ ~S(ref-defs-node-next-kv ::= "\"next\"" space ":" space ref-defs-node)
    assert {:ok, _} = Sampler.create(model, grammar: gbnf)
  end
end
