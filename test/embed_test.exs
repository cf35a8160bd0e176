defmodule LlamaCppEx.EmbedTest do
  # No GGUF embedding model is small enough to keep in shared/models; these
  # tests use stories260K with an explicit pooling type (see its README).
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Tokenizer}

  setup_all do
    %{model: load_model!()}
  end

  defp cosine(a, b), do: Enum.zip_reduce(a, b, 0.0, fn x, y, acc -> acc + x * y end)

  test "embed returns a unit vector of n_embd floats, deterministically", %{model: model} do
    {:ok, v} = LlamaCppEx.embed(model, "Once upon a time")
    assert length(v) == model.n_embd
    assert Enum.all?(v, &is_float/1)
    assert_in_delta cosine(v, v), 1.0, 1.0e-6
    assert {:ok, ^v} = LlamaCppEx.embed(model, "Once upon a time")
  end

  test "texts are embedded in a batch, each as on its own", %{model: model} do
    texts = ["Once upon a time", "The little dog ran to the park.", "Lily"]
    {:ok, vectors} = LlamaCppEx.embed(model, texts)
    assert length(vectors) == 3

    for {text, v} <- Enum.zip(texts, vectors) do
      {:ok, alone} = LlamaCppEx.embed(model, text)
      assert_in_delta cosine(v, alone), 1.0, 1.0e-5
    end

    [a, b, _] = vectors
    assert cosine(a, b) < 0.9999
  end

  test "pooling changes the vector; normalize: false keeps the raw one", %{model: model} do
    {:ok, mean} = LlamaCppEx.embed(model, "Once upon a time", pooling: :mean)
    {:ok, last} = LlamaCppEx.embed(model, "Once upon a time", pooling: :last)
    assert mean != last
    {:ok, raw} = LlamaCppEx.embed(model, "Once upon a time", normalize: false)
    norm = :math.sqrt(cosine(raw, raw))
    assert_in_delta cosine(Enum.map(raw, &(&1 / norm)), mean), 1.0, 1.0e-6
  end

  test "Context.embed checks its context", %{model: model} do
    {:ok, tokens} = Tokenizer.encode(model, "Once upon a time")
    {:ok, plain} = Context.create(model, n_ctx: 256)
    assert {:error, :embeddings_disabled} = Context.embed(plain, tokens)
    {:ok, none} = Context.create(model, n_ctx: 256, embeddings: true, pooling: :none)
    assert {:error, {:unsupported_pooling, 0}} = Context.embed(none, tokens)
    {:ok, small} = Context.create(model, n_ctx: 256, n_batch: 4, n_ubatch: 4, embeddings: true, pooling: :mean)
    assert {:error, {:context_overflow, _}} = Context.embed(small, tokens)
    assert {:error, :empty_prompt} = Context.embed(small, [])
    assert {:error, {:invalid_token, {9999, 512}}} = Context.embed(small, [9999])
    assert {:ok, v} = Context.embed(small, Enum.take(tokens, 4))
    assert length(v) == model.n_embd
    assert_raise ArgumentError, fn -> LlamaCppEx.embed(model, "x", pooling: :rank) end
    assert_raise ArgumentError, fn -> LlamaCppEx.embed(model, [:x]) end
  end

  describe "long texts" do
    @long String.duplicate("Once upon a time there was a girl. ", 60)

    test "are embedded in n_ubatch steps, pooled natively: the same vector as one micro-batch", %{model: model} do
      {:ok, tokens} = Tokenizer.encode(model, @long)
      assert length(tokens) > 600

      for pooling <- [:mean, :cls, :last] do
        # one micro-batch with llama.cpp's own pooling
        {:ok, pooled_ctx} =
          Context.create(model, n_ctx: 2048, n_batch: 2048, n_ubatch: 2048, embeddings: true, pooling: pooling)

        {:ok, one} = Context.embed(pooled_ctx, tokens)
        Context.free(pooled_ctx)
        # 64-token steps without pooling, pooled in C
        {:ok, none} = Context.create(model, n_ctx: 2048, n_batch: 64, n_ubatch: 64, embeddings: true, pooling: :none)
        {:ok, stepwise} = Context.embed(none, tokens, pooling: pooling)
        Context.free(none)
        worst = Enum.zip_reduce(one, stepwise, 0.0, fn a, b, acc -> max(acc, abs(a - b)) end)
        assert worst < 1.0e-4, "#{pooling}: #{worst}"
      end
    end

    test "are capped at the model's context, or cut with truncate: true", %{model: model} do
      {:ok, tokens} = Tokenizer.encode(model, String.duplicate(@long, 4))
      n = length(tokens)
      assert n > model.n_ctx_train

      assert LlamaCppEx.embed(model, String.duplicate(@long, 4)) ==
               {:error, {:too_long, %{tokens: n, max: model.n_ctx_train}}}

      assert {:error, {:too_long, %{max: 100}}} = LlamaCppEx.embed(model, @long, n_ctx: 100)
      {:ok, cut} = LlamaCppEx.embed(model, @long, n_ctx: 100, truncate: true)
      {:ok, first} = Tokenizer.decode(model, Enum.take(elem(Tokenizer.encode(model, @long), 1), 100))
      {:ok, ctx} = Context.create(model, n_ctx: 256, embeddings: true, pooling: :none)
      {:ok, expected} = Context.embed(ctx, Enum.take(elem(Tokenizer.encode(model, @long), 1), 100), pooling: :mean)
      norm = :math.sqrt(cosine(expected, expected))
      assert_in_delta cosine(cut, Enum.map(expected, &(&1 / norm))), 1.0, 1.0e-5
      assert is_binary(first)
    end

    test "a killed caller stops its embedding: others do not wait for it", %{model: model} do
      text = String.duplicate(@long, 4)
      {alone_us, {:ok, _}} = :timer.tc(fn -> LlamaCppEx.embed(model, text, n_ctx: 4096, n_threads: 1) end)

      pids = for _ <- 1..2, do: spawn(fn -> LlamaCppEx.embed(model, text, n_ctx: 4096, n_threads: 1) end)
      Process.sleep(div(alone_us, 10_000))
      Enum.each(pids, &Process.exit(&1, :kill))

      {gen_us, {:ok, _}} = :timer.tc(fn -> LlamaCppEx.generate(model, "Once", max_tokens: 4, n_threads: 1) end)
      assert gen_us < alone_us / 3, "a 4-token generate took #{div(gen_us, 1000)} ms behind two killed embeddings"
    end
  end
end
