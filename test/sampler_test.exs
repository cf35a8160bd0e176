defmodule LlamaCppEx.SamplerTest do
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Tokenizer}

  setup_all do
    %{model: load_model!()}
  end

  @prompt "Once upon a time"

  defp gen(model, opts) do
    {:ok, text} = LlamaCppEx.generate(model, @prompt, Keyword.merge([max_tokens: 40, n_threads: 1], opts))
    text
  end

  test "seeded sampling is reproducible, and seeds matter", %{model: model} do
    a = gen(model, temp: 1.0, seed: 42)
    assert a == gen(model, temp: 1.0, seed: 42)
    others = for s <- 1..5, do: gen(model, temp: 1.0, seed: s)
    assert Enum.any?(others, &(&1 != a))
  end

  test "temp 0 is greedy: top_k 1 gives the same text", %{model: model} do
    greedy = gen(model, temp: 0.0)
    assert greedy == gen(model, temp: 1.5, top_k: 1, seed: 7)
    assert greedy =~ ~r/^, there was a little girl named Lily/
  end

  # Each option, set away from its neutral value, changes what a fixed seed produces.
  @changes [
    top_k: 3,
    top_p: 0.3,
    min_p: 0.3,
    typical_p: 0.3,
    top_n_sigma: 0.5,
    xtc_probability: 1.0,
    dynatemp_range: 1.5,
    repeat_penalty: 3.0,
    frequency_penalty: 1.5,
    presence_penalty: 1.5,
    mirostat: 1,
    mirostat: 2
  ]

  for {key, value} <- @changes do
    test "#{key}: #{value} changes sampling", %{model: model} do
      base = [temp: 1.2, seed: 3, max_tokens: 60]
      neutral = gen(model, base)
      changed = gen(model, Keyword.put(base, unquote(key), unquote(value)))
      assert changed != neutral
      # and is itself reproducible
      assert changed == gen(model, Keyword.put(base, unquote(key), unquote(value)))
    end
  end

  test "DRY breaks greedy repetition", %{model: model} do
    # Greedy continuation of this prompt repeats itself ("a big box with a big box").
    prompt = "Lily and Ben went to the park"
    {:ok, plain} = LlamaCppEx.generate(model, prompt, temp: 0.0, max_tokens: 120)

    {:ok, dry} =
      LlamaCppEx.generate(model, prompt, temp: 0.0, max_tokens: 120, dry_multiplier: 3.0, dry_allowed_length: 2)

    assert plain =~ "a big box with a big box"
    assert dry != plain
  end

  test "penalties change greedy output too", %{model: model} do
    assert gen(model, temp: 0.0, repeat_penalty: 2.0) != gen(model, temp: 0.0)
  end

  test "logit_bias bans a token", %{model: model} do
    {:ok, [comma]} = Tokenizer.encode(model, ",", add_special: false) |> then(fn {:ok, t} -> {:ok, [List.last(t)]} end)
    {:ok, c} = LlamaCppEx.complete(model, @prompt, temp: 0.0, max_tokens: 40)
    assert comma in c.tokens

    {:ok, banned} =
      LlamaCppEx.complete(model, @prompt, temp: 0.0, max_tokens: 40, logit_bias: %{comma => :neg_infinity})

    refute comma in banned.tokens
  end

  test "a grammar constrains the output", %{model: model} do
    for seed <- 1..5 do
      text = gen(model, temp: 1.0, seed: seed, grammar: ~S<root ::= ("yes" | "no") ".">)
      assert text in ["yes.", "no."]
    end

    text = gen(model, temp: 0.8, seed: 1, max_tokens: 30, grammar: ~S(root ::= [a-z ]+))
    assert text =~ ~r/^[a-z ]+$/

    text = gen(model, temp: 0.0, grammar: ~S(answer ::= "The end."), grammar_root: "answer")
    assert text == "The end."
  end

  test "a grammar ends generation with :eog when complete", %{model: model} do
    {:ok, c} = LlamaCppEx.complete(model, @prompt, temp: 0.0, max_tokens: 50, grammar: ~S(root ::= "ok"))
    assert c.text == "ok"
    assert c.finish_reason == :eog
  end

  test "an invalid grammar is an error, not ignored", %{model: model} do
    assert {:error, {:invalid_grammar, msg}} = Sampler.create(model, grammar: ~S(root ::= "unterminated))
    assert is_binary(msg)
    assert {:error, {:invalid_grammar, _}} = Sampler.create(model, grammar: ~S(root ::= "a"), grammar_root: "missing")
    assert {:error, {:invalid_grammar, _}} = LlamaCppEx.generate(model, @prompt, grammar: "root ::= (")
  end

  test "explicit sampler order is validated and used", %{model: model} do
    assert_raise ArgumentError, ~r/unknown sampler/, fn -> Sampler.create(model, samplers: [:nope]) end
    text = gen(model, temp: 1.0, seed: 5, samplers: [:temperature])
    assert is_binary(text)
    assert text != gen(model, temp: 1.0, seed: 5, samplers: [:top_k, :temperature], top_k: 2)
  end

  test "sample, accept and reset", %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: 256)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    assert {:error, :no_logits} = Sampler.sample(sampler, ctx)
    {:ok, prompt} = Tokenizer.encode(model, @prompt)
    :ok = Context.decode(ctx, prompt)
    {:ok, tok} = Sampler.sample(sampler, ctx)
    {:ok, c} = LlamaCppEx.complete(model, @prompt, temp: 0.0, max_tokens: 1)
    assert [tok] == c.tokens
    assert :ok = Sampler.accept(sampler, tok)
    assert :ok = Sampler.reset(sampler)
    assert {:error, {:invalid_token, _}} = Sampler.accept(sampler, 100_000)
    assert :ok = Sampler.free(sampler)
    assert :ok = Sampler.free(sampler)
    assert {:error, :closed} = Sampler.sample(sampler, ctx)
  end

  test "unknown and mistyped options raise", %{model: model} do
    assert_raise ArgumentError, fn -> Sampler.create(model, temperature: 1.0) end
    assert_raise ArgumentError, fn -> Sampler.create(model, top_p: 2.0) end
    assert_raise ArgumentError, fn -> Sampler.create(model, seed: -1) end
    assert_raise ArgumentError, fn -> Sampler.create(model, mirostat: 3) end
    assert_raise ArgumentError, fn -> Sampler.create(model, logit_bias: %{100_000 => 1.0}) end
    assert_raise ArgumentError, fn -> LlamaCppEx.generate(model, @prompt, bogus: 1) end
  end
end
