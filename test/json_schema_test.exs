defmodule LlamaCppEx.JsonSchemaTest do
  # LlamaCppEx.Grammar.from_json_schema/2 and the json_schema: /
  # response_format: options. Upstream's own cases are in
  # json_schema_conformance_test.exs; here: our additions (errors for
  # constructs upstream ignores), input forms, and generation with stories260K
  # whose output must decode (jiffy) and validate against the schema
  # (LlamaCppEx.JsonSchemaValidator).
  use ExUnit.Case, async: true

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Grammar, Sampler, Server}
  alias LlamaCppEx.JsonSchemaValidator, as: V

  for dir <- Path.wildcard("/usr/lib/erlang/lib/{jiffy,proper}-*/ebin"), do: Code.prepend_path(dir)
  @proper_skip not Code.ensure_loaded?(:proper) && "PropEr is not available (Debian's erlang-proper)"
  @jiffy_skip not Code.ensure_loaded?(:jiffy) && "jiffy is not available (Debian's erlang-jiffy)"

  doctest LlamaCppEx.Grammar

  setup_all do
    if File.exists?(model_path()), do: %{model: load_model!()}, else: :ok
  end

  @person %{
    "type" => "object",
    "properties" => %{
      "name" => %{"type" => "string", "maxLength" => 8},
      "age" => %{"type" => "integer", "minimum" => 0, "maximum" => 120}
    },
    "required" => ["name", "age"],
    "additionalProperties" => false
  }

  describe "from_json_schema/2" do
    test "a map's properties go in sorted key order, jiffy's form keeps the document's" do
      {:ok, sorted} = Grammar.from_json_schema(@person)
      assert sorted =~ ~S(root ::= "{" space age-kv "," space name-kv space "}")

      ejson =
        {[
           {"type", "object"},
           {"properties", {[{"name", {[{"type", "string"}]}}, {"age", {[{"type", "integer"}]}}]}},
           {"required", ["name", "age"]}
         ]}

      {:ok, ordered} = Grammar.from_json_schema(ejson)
      assert ordered =~ ~S(root ::= "{" space name-kv "," space age-kv space "}")
    end

    test "nil and :null are both JSON null; const literals are the JSON text" do
      assert {:ok, a} = Grammar.from_json_schema(%{"const" => nil})
      assert {:ok, ^a} = Grammar.from_json_schema(%{"const" => :null})
      assert a =~ ~S(root ::= "null")
      {:ok, g} = Grammar.from_json_schema(%{"enum" => [1.5, 1.0e20, 1.0e-7, "a\nb", %{"k" => [true]}]})
      assert g =~ ~S|root ::= ("1.5" \| "1e+20" \| "1e-07" \| "\"a\\nb\"" \| "{\"k\":[true]}")|
    end

    test "constructs with no grammar are an error naming them, not ignored" do
      for {schema, word} <- [
            {%{"not" => %{"type" => "string"}}, "not"},
            {%{"type" => "array", "items" => %{}, "uniqueItems" => true}, "uniqueItems"},
            {%{"type" => "integer", "multipleOf" => 3}, "multipleOf"},
            {%{"type" => "object", "patternProperties" => %{}}, "patternProperties"},
            {%{"type" => "number", "minimum" => 0}, "minimum on a number"},
            {%{"type" => "string", "pattern" => "^a+$", "maxLength" => 3}, "pattern"},
            {%{"type" => "string", "pattern" => "^\\d+$"}, "\\d"},
            {%{"type" => "string", "pattern" => "^(?=a)a$"}, "group"},
            {%{"properties" => %{"a" => %{}}, "required" => ["b"], "additionalProperties" => false},
             "required property b"}
          ] do
        assert {:error, {:unsupported_json_schema, msg}} = Grammar.from_json_schema(schema)
        assert msg =~ word
      end
    end

    test "wrong schemas are :invalid_json_schema" do
      for {schema, word} <- [
            {%{"$ref" => "#/$defs/missing"}, "cannot resolve $ref #/$defs/missing"},
            {%{"$ref" => "https://example.com/s.json"}, "only references into the same document"},
            {%{"type" => "string", "pattern" => "^(a$"}, "unbalanced parentheses"},
            {%{"type" => "string", "pattern" => "^[a-$"}, "unterminated character class"},
            {%{"type" => "kaboom"}, "unrecognized type kaboom"},
            {%{"type" => "array", "minItems" => -1}, "minItems"},
            {%{"type" => "integer", "minimum" => 5, "maximum" => 3}, "above maximum"},
            {%{"anyOf" => []}, "must not be empty"},
            {%{"properties" => %{"a" => 1}}, "#/properties/a: schema must be an object"}
          ] do
        assert {:error, {:invalid_json_schema, msg}} = Grammar.from_json_schema(schema)
        assert msg =~ word
      end
    end

    test "terms that are not JSON and bad options raise ArgumentError" do
      assert_raise ArgumentError, ~r/not a JSON value/, fn -> Grammar.from_json_schema(%{"const" => self()}) end
      assert_raise ArgumentError, ~r/keys must be strings/, fn -> Grammar.from_json_schema(%{type: "string"}) end
      assert_raise ArgumentError, ~r/UTF-8/, fn -> Grammar.from_json_schema(%{"const" => <<255>>}) end
      assert_raise ArgumentError, fn -> Grammar.from_json_schema(%{}, unsupported_pattern: :drop) end
      assert_raise ArgumentError, fn -> Grammar.from_json_schema(%{}, typo: 1) end
    end
  end

  describe "generation" do
    @describetag :model

    @tag skip: @jiffy_skip
    test "json_schema: output decodes and validates; response_format: :json output decodes", %{model: model} do
      for seed <- 1..5 do
        {:ok, c} =
          LlamaCppEx.complete(model, "Once upon a time",
            json_schema: @person,
            temp: 1.0,
            seed: seed,
            max_tokens: V.max_len(@person) + 1
          )

        assert c.finish_reason == :eog
        assert V.valid?(:jiffy.decode(c.text), @person), c.text

        # any JSON value; it may still be inside an unbounded string at max_tokens,
        # a complete one (:eog) must decode
        {:ok, c} =
          LlamaCppEx.complete(model, "Once upon a time", response_format: :json, temp: 1.0, seed: seed, max_tokens: 200)

        assert c.finish_reason in [:eog, :max_tokens]
        if c.finish_reason == :eog, do: :jiffy.decode(c.text)
      end
    end

    test "grammar:, json_schema: and response_format: :json are exclusive; bad values raise", %{model: model} do
      for opts <- [
            [grammar: ~S(root ::= "a"), json_schema: @person],
            [grammar: ~S(root ::= "a"), response_format: :json],
            [json_schema: @person, response_format: :json],
            [json_schema: "not a map"],
            [response_format: :xml]
          ] do
        assert_raise ArgumentError, fn -> LlamaCppEx.generate(model, "Once", opts ++ [max_tokens: 2]) end
        assert_raise ArgumentError, fn -> Sampler.create(model, opts) end
      end
    end

    test "a bad schema fails alone: the model, the facade and a server still work", %{model: model} do
      bad = [
        %{"type" => "string", "pattern" => "^(a$"},
        %{"$ref" => "#/definitions/nope"},
        %{"type" => "object", "if" => %{}}
      ]

      greedy = LlamaCppEx.generate(model, "Once", max_tokens: 8, temp: 0.0)
      assert {:ok, _} = greedy
      server = start_supervised!({Server, model: model, n_parallel: 2, n_ctx: 512, n_batch: 64, n_threads: 1})

      for schema <- bad do
        assert {:error, {reason, _}} = LlamaCppEx.generate(model, "Once", json_schema: schema)
        assert reason in [:invalid_json_schema, :unsupported_json_schema]
        assert {:error, {^reason, _}} = Sampler.create(model, json_schema: schema)
        assert {:error, {^reason, _}} = Server.generate(server, "Once", json_schema: schema)
      end

      yes_no = %{"enum" => ["yes", "no"]}
      assert {:ok, text} = LlamaCppEx.generate(model, "Once", json_schema: yes_no, temp: 1.0, seed: 7)
      assert text in [~S("yes"), ~S("no")]

      assert {:ok, c} =
               Server.complete(server, "Once",
                 json_schema: @person,
                 temp: 1.0,
                 seed: 3,
                 max_tokens: V.max_len(@person) + 1
               )

      assert c.finish_reason == :eog
      if Code.ensure_loaded?(:jiffy), do: assert(V.valid?(:jiffy.decode(c.text), @person), c.text)

      assert {:ok, ~S("no")} = Server.generate(server, "Once", json_schema: %{"const" => "no"}, temp: 1.0)
      # greedy text without a grammar is what it was before the errors
      assert LlamaCppEx.generate(model, "Once", max_tokens: 8, temp: 0.0) == greedy
      assert Server.generate(server, "Once", max_tokens: 8, temp: 0.0) == greedy
    end
  end

  # ---- property: generated schemas, generated text that validates -------------------------------------

  describe "property" do
    @describetag :model

    @names ["a", "b", "id", "name", "x y", "é"]

    defp leaf do
      alias :proper_types, as: T

      T.oneof([
        T.bind(
          T.tuple([T.integer(0, 3), T.integer(0, 5)]),
          fn {min, extra} -> %{"type" => "string", "minLength" => min, "maxLength" => min + extra} end,
          false
        ),
        T.bind(
          T.tuple([T.integer(-120, 120), T.integer(0, 1000)]),
          fn {min, w} -> %{"type" => "integer", "minimum" => min, "maximum" => min + w} end,
          false
        ),
        T.exactly(%{"type" => "integer"}),
        T.exactly(%{"type" => "number"}),
        T.exactly(%{"type" => "boolean"}),
        T.exactly(%{"type" => "null"}),
        T.bind(
          T.non_empty(T.list(T.elements(["a", "bb", "x y", "\"q\"", 1, -2, true, :null]))),
          &%{"enum" => Enum.uniq(&1)},
          false
        ),
        T.bind(T.elements(["k", 42, false]), &%{"const" => &1}, false)
      ])
    end

    defp schema(0), do: leaf()

    defp schema(depth) do
      alias :proper_types, as: T
      T.frequency([{2, leaf()}, {1, object(depth - 1)}, {1, array(depth - 1)}])
    end

    defp object(depth) do
      alias :proper_types, as: T

      props = T.list(T.tuple([T.elements(@names), schema(depth), T.bool()]))

      T.bind(
        props,
        fn props ->
          props = props |> Enum.uniq_by(&elem(&1, 0)) |> Enum.take(3)

          %{
            "type" => "object",
            "properties" => Map.new(props, fn {n, s, _} -> {n, s} end),
            "required" => for({n, _, true} <- props, do: n),
            "additionalProperties" => false
          }
        end,
        false
      )
    end

    defp array(depth) do
      alias :proper_types, as: T

      T.bind(
        T.tuple([schema(depth), T.integer(0, 2), T.integer(0, 2)]),
        fn {item, min, extra} ->
          %{"type" => "array", "items" => item, "minItems" => min, "maxItems" => min + extra}
        end,
        false
      )
    end

    @tag skip: @proper_skip || @jiffy_skip
    @tag timeout: 300_000
    test "text generated at temperature 1 under json_schema: decodes and validates", %{model: model} do
      gen =
        :proper_types.add_constraint(
          :proper_types.tuple([schema(3), :proper_types.integer(1, 1_000_000)]),
          fn {s, _} -> V.max_len(s) <= 1500 end,
          false
        )

      prop =
        :proper.forall(gen, fn {schema, seed} ->
          max = V.max_len(schema) + 1
          if System.get_env("JS_TRACE"), do: IO.puts("#{max}: #{inspect(schema)}")

          {:ok, c} =
            LlamaCppEx.complete(model, "Once upon a time",
              json_schema: schema,
              temp: 1.0,
              seed: seed,
              max_tokens: max,
              n_ctx: max + 32
            )

          # PropEr cannot report an exception raised in a property (it calls
          # erlang:get_stacktrace/0, gone in OTP 23+): turn it into false
          ok =
            try do
              c.finish_reason == :eog and V.valid?(:jiffy.decode(c.text), schema)
            catch
              # upstream's number grammar allows exponents of up to 16 digits: valid JSON
              # that jiffy cannot hold in a double (documented in LlamaCppEx.Grammar)
              :error, {:range, _} = e -> if c.text =~ ~r/[eE][-+]?[0-9]{3,}/, do: true, else: {:error, e}
              kind, e -> {kind, e}
            end

          ok == true ||
            IO.puts("failed: #{inspect(schema)} seed #{seed} -> #{c.finish_reason} #{inspect(c.text)}: #{inspect(ok)}")

          ok == true
        end)

      assert :proper.quickcheck(prop, [{:numtests, 200}, :quiet, :long_result]) == true
    end
  end
end
