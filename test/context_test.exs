defmodule LlamaCppEx.ContextTest do
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Tokenizer}

  setup_all do
    model = load_model!()
    {:ok, prompt} = Tokenizer.encode(model, "Once upon a time")
    %{model: model, prompt: prompt}
  end

  test "create reflects its options", %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: 512, n_batch: 64, n_ubatch: 32, n_threads: 1, n_threads_batch: 2)
    assert Context.n_ctx(ctx) == 512
    assert %Context{n_batch: 64, n_ubatch: 32, n_threads: 1, n_threads_batch: 2, n_seq_max: 1} = ctx
    assert inspect(ctx) =~ "n_ctx: 512"
  end

  test "a context that cannot fit in memory is refused, not OOM-killed", %{model: model} do
    assert {:error, {:context_too_large, %{needed: needed, available: ram}}} =
             Context.create(model, n_ctx: 2_000_000_000, n_batch: 2_000_000_000)

    assert needed > ram
    assert {:ok, _} = Context.create(model, n_ctx: 256)
  end

  test "decode advances the position; clear resets it", %{model: model, prompt: prompt} do
    {:ok, ctx} = Context.create(model, n_ctx: 256)
    assert {:ok, 0} = Context.position(ctx)
    assert :ok = Context.decode(ctx, prompt)
    assert {:ok, 5} = Context.position(ctx)
    assert :ok = Context.decode(ctx, [403, 407])
    assert {:ok, 7} = Context.position(ctx)
    assert :ok = Context.clear(ctx)
    assert {:ok, 0} = Context.position(ctx)
  end

  test "decode splits long inputs into n_batch chunks", %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: 512, n_batch: 16)
    tokens = List.duplicate(403, 300)
    assert :ok = Context.decode(ctx, tokens)
    assert {:ok, 300} = Context.position(ctx)
  end

  test "generate is the tight native loop and continues the context", %{model: model, prompt: prompt} do
    {:ok, ctx} = Context.create(model, n_ctx: 256)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    {:ok, c1} = Context.generate(ctx, sampler, prompt, max_tokens: 10)
    assert c1.generated_tokens == 10
    assert length(c1.tokens) == 10
    assert {:ok, text} = Tokenizer.decode(model, c1.tokens)
    assert text == c1.text
    # the last sampled token is not decoded yet: feed it to continue
    {:ok, c2} = Context.generate(ctx, sampler, [List.last(c1.tokens)], max_tokens: 10)
    {:ok, whole} = LlamaCppEx.complete(model, "Once upon a time", max_tokens: 21, temp: 0.0)
    assert c1.tokens ++ c2.tokens == Enum.take(whole.tokens, 20)
  end

  test "a context can be reused by the high-level API", %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: 256)
    {:ok, a} = LlamaCppEx.generate(model, "Once upon a time", context: ctx, max_tokens: 20, temp: 0.0)
    {:ok, b} = LlamaCppEx.generate(model, "Once upon a time", context: ctx, max_tokens: 20, temp: 0.0)
    assert a == b
    assert {:ok, _} = Context.position(ctx)
  end

  test "timings and rates are reported", %{model: model, prompt: prompt} do
    {:ok, ctx} = Context.create(model, n_ctx: 256)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    {:ok, c} = Context.generate(ctx, sampler, prompt, max_tokens: 50)
    assert c.prompt_tokens == 5
    assert c.prompt_ms > 0 and c.generation_ms > 0
    assert LlamaCppEx.Completion.tokens_per_second(c) > 10
  end

  test "concurrent users of one context are serialized", %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: 2048, n_threads: 1)

    1..4
    |> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..50, do: :ok = Context.decode(ctx, [403, 407, 261]) end) end)
    |> Task.await_many(30_000)

    assert {:ok, 600} = Context.position(ctx)
  end

  test "free aborts a running generation and closes the context", %{model: model, prompt: prompt} do
    {:ok, ctx} = Context.create(model, n_ctx: 2048, n_threads: 1)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    task = Task.async(fn -> Context.generate(ctx, sampler, prompt, max_tokens: 2000) end)
    Process.sleep(20)
    assert :ok = Context.free(ctx)

    case Task.await(task) do
      {:ok, c} -> assert c.finish_reason in [:cancelled, :max_tokens]
      {:error, :closed} -> :ok
    end

    assert {:error, :closed} = Context.decode(ctx, prompt)
    assert {:error, :closed} = Context.position(ctx)
    assert :ok = Context.free(ctx)
  end

  test "contexts are freed by garbage collection", %{model: model} do
    base = settled_live_objects().contexts

    Task.async(fn ->
      contexts = for _ <- 1..5, do: elem(Context.create(model, n_ctx: 256), 1)
      assert LlamaCppEx.live_objects().contexts == base + 5
      # the only references die with this process
      length(contexts)
    end)
    |> Task.await()

    assert eventually(fn -> LlamaCppEx.live_objects().contexts == base end)
  end
end
