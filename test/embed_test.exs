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
end
