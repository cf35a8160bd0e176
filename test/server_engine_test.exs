defmodule LlamaCppEx.ServerEngineTest do
  # The native batch engine under the server (c_src/batch.c, c_src/slot.c):
  # guard tests that trip each check and then prove the engine still works.
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, NIF, Sampler, Tokenizer}
  alias LlamaCppEx.Server.Batch

  setup_all do
    model = load_model!()
    {:ok, other} = LlamaCppEx.Model.load(random_model_path())
    %{model: model, other: other}
  end

  setup %{model: model} do
    {:ok, ctx} =
      Context.create(model, n_ctx: 1024, n_seq_max: 4, n_batch: 64, n_ubatch: 64, n_threads: 1, kv_unified: true)

    {:ok, engine} = Batch.new(ctx, n_slots: 3, n_batch: 64, n_ctx_slot: 128)
    {:ok, tokens} = Tokenizer.encode(model, "Once upon a time")
    %{ctx: ctx, engine: engine, tokens: tokens}
  end

  @opts %{max_tokens: 20, stop: [], stream: false, src: 0, reuse: 0}

  defp greedy(model) do
    {:ok, s} = Sampler.create(model, temp: 0.0)
    s
  end

  defp run(engine, acc \\ []) do
    case Batch.step(engine, []) do
      {:ok, [], %{tokens: 0}} -> acc
      {:ok, events, _} -> run(engine, acc ++ events)
    end
  end

  defp texts(events), do: for({:done, slot, {:ok, %{text: t}}} <- events, into: %{}, do: {slot, t})

  test "creation checks", %{model: model, ctx: ctx} do
    assert_raise ArgumentError, ~r/n_slots/, fn -> Batch.new(ctx, n_slots: 5, n_batch: 64, n_ctx_slot: 128) end
    assert_raise ArgumentError, ~r/n_batch/, fn -> Batch.new(ctx, n_slots: 4, n_batch: 2, n_ctx_slot: 128) end
    assert_raise ArgumentError, ~r/n_batch/, fn -> Batch.new(ctx, n_slots: 4, n_batch: 65, n_ctx_slot: 128) end
    assert_raise ArgumentError, ~r/n_ctx_slot/, fn -> Batch.new(ctx, n_slots: 4, n_batch: 64, n_ctx_slot: 5000) end

    assert_raise ArgumentError, ~r/pooling/, fn ->
      Batch.new(ctx, n_slots: 1, n_batch: 8, n_ctx_slot: 8, embedding: true)
    end

    assert_raise ArgumentError, fn -> NIF.batch_new(make_ref(), %{}) end
    assert_raise ArgumentError, fn -> NIF.batch_new(ctx.ref, %{n_slots: 1}) end
    {:ok, split} = Context.create(model, n_ctx: 512, n_seq_max: 2, n_batch: 16, n_threads: 1)
    assert {:ok, e} = Batch.new(split, n_slots: 2, n_batch: 16, n_ctx_slot: 256)
    assert {:ok, %{unified: false, n_ctx: 512}} = Batch.info(e)
  end

  test "admission checks; each leaves the slot free", %{model: model, other: other, engine: e, tokens: t} do
    s = greedy(model)
    assert_raise ArgumentError, ~r/slot/, fn -> Batch.admit(e, 3, s, t, @opts) end
    assert_raise ArgumentError, ~r/options/, fn -> Batch.admit(e, 0, s, t, %{}) end
    assert_raise ArgumentError, ~r/stop/, fn -> Batch.admit(e, 0, s, t, %{@opts | stop: [""]}) end
    assert_raise ArgumentError, ~r/src/, fn -> Batch.admit(e, 0, s, t, %{@opts | src: 9}) end
    assert_raise ArgumentError, ~r/sampler/, fn -> NIF.batch_admit(e, 0, make_ref(), t, @opts) end
    assert_raise ArgumentError, ~r/tokens/, fn -> Batch.admit(e, 0, s, [:a], @opts) end
    assert {:error, {:invalid_token, {512, 512}}} = Batch.admit(e, 0, s, [1, 512], @opts)
    assert {:error, {:invalid_token, {-1, 512}}} = Batch.admit(e, 0, s, [-1], @opts)
    assert {:error, :empty_prompt} = Batch.admit(e, 0, s, [], @opts)
    assert {:error, {:context_overflow, %{n_ctx: 128}}} = Batch.admit(e, 0, s, List.duplicate(1, 129), @opts)
    {:ok, foreign} = Sampler.create(other, temp: 0.0)
    assert {:error, :model_mismatch} = Batch.admit(e, 0, foreign, t, @opts)
    assert {:error, :embeddings_disabled} = Batch.admit_embed(e, 0, t, :mean)
    assert_raise ArgumentError, ~r/pooling/, fn -> Batch.admit_embed(e, 0, t, :max) end

    # a sequence of the context that is not a slot (n_seq_max 4, 3 slots)
    assert_raise ArgumentError, ~r/src/, fn -> Batch.admit(e, 0, s, t, %{@opts | src: 3}) end
    assert_raise ArgumentError, ~r/max_tokens/, fn -> Batch.admit(e, 0, s, t, %{@opts | max_tokens: 3_000_000_000}) end

    assert {:ok, 0} = Batch.admit(e, 0, s, t, @opts)
    assert_raise ArgumentError, ~r/busy/, fn -> Batch.admit(e, 0, greedy(model), t, @opts) end
    # one sampler in two slots would make the step wait on itself
    assert_raise ArgumentError, ~r/sampler is in use/, fn -> Batch.admit(e, 1, s, t, @opts) end
    assert_raise ArgumentError, ~r/busy/, fn -> Batch.purge(e, 0, 0) end
    assert_raise ArgumentError, ~r/skip/, fn -> Batch.step(e, [7]) end
    assert_raise ArgumentError, ~r/skip/, fn -> Batch.step(e, [:x]) end

    {:ok, expected} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 20, temp: 0.0)
    assert texts(run(e)) == %{0 => expected}
  end

  test "a prefix is reused from any sequence, at most what it holds", %{model: model, engine: e, tokens: t} do
    assert {:ok, 0} = Batch.admit(e, 0, greedy(model), t, @opts)
    run(e)
    # slot 0 holds prompt + 19 decoded tokens; asking for more is clamped, and the last prompt token is decoded again
    assert {:ok, %{kv_tokens: [24, 0, 0]}} = Batch.info(e)
    assert {:ok, 4} = Batch.admit(e, 1, greedy(model), t, %{@opts | src: 0, reuse: 100})
    long = t ++ [1, 2, 3]
    assert {:ok, 0} = Batch.admit(e, 2, greedy(model), long, %{@opts | src: 2, reuse: 5})
    events = run(e)
    {:ok, expected} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 20, temp: 0.0)
    assert texts(events)[1] == expected
    assert {:ok, %{kv_tokens: [24, 24, 27]}} = Batch.info(e)
    :ok = Batch.purge(e, 0, 10)
    assert {:ok, %{kv_tokens: [10, 24, 27]}} = Batch.info(e)
  end

  test "a freed sampler fails its slot alone; the others go on", %{model: model, engine: e, tokens: t} do
    doomed = greedy(model)
    assert {:ok, 0} = Batch.admit(e, 0, doomed, t, %{@opts | max_tokens: 50})
    assert {:ok, 0} = Batch.admit(e, 1, greedy(model), t, %{@opts | max_tokens: 50})
    assert {:ok, [], _} = Batch.step(e, [])
    :ok = Sampler.free(doomed)
    events = run(e)
    assert [{:error, 0, {:error, :closed}}] = for(ev <- events, elem(ev, 0) == :error, do: ev)
    {:ok, expected} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 50, temp: 0.0)
    assert texts(events) == %{1 => expected}
    assert {:ok, %{kv_tokens: [0 | _]}} = Batch.info(e)
  end

  test "release ends a job with what it made so far", %{model: model, engine: e, tokens: t} do
    assert {:ok, nil} = Batch.release(e, 2, true)
    assert {:ok, 0} = Batch.admit(e, 0, greedy(model), t, %{@opts | stream: true, max_tokens: 100})
    for _ <- 1..6, do: {:ok, [{:text, 0, _}], _} = Batch.step(e, [])
    # a skipped slot takes no step
    assert {:ok, [], %{tokens: 0}} = Batch.step(e, [0])
    assert {:ok, %{finish_reason: :cancelled, generated_tokens: 6, kv_tokens: 10}} = Batch.release(e, 0, true)
    assert {:ok, %{kv_tokens: [10, 0, 0]}} = Batch.info(e)
    assert {:ok, nil} = Batch.release(e, 0, false)
    assert {:ok, %{kv_tokens: [0, 0, 0]}} = Batch.info(e)
  end

  test "stop strings and UTF-8 go through the shared text code", %{model: model, engine: e, tokens: t} do
    assert {:ok, 0} = Batch.admit(e, 0, greedy(model), t, %{@opts | stop: ["Lily"], max_tokens: 100, stream: true})
    events = run(e)
    streamed = for({:text, 0, text} <- events, do: text) |> Enum.join()
    [{:done, 0, {:ok, done}}] = for ev <- events, elem(ev, 0) == :done, do: ev
    assert done.finish_reason == :stop
    assert done.text == ", there was a little girl named "
    assert streamed <> done.rest == done.text
  end

  test "an embedding engine pools each sequence as LlamaCppEx.embed/3 does", %{model: model} do
    {:ok, ctx} =
      Context.create(model, n_ctx: 512, n_seq_max: 2, n_batch: 16, n_threads: 1, embeddings: true, pooling: :none)

    {:ok, e} = Batch.new(ctx, n_slots: 2, n_batch: 16, n_ctx_slot: 256, embedding: true)

    assert_raise ArgumentError, ~r/without embeddings/, fn ->
      Batch.new(ctx, n_slots: 2, n_batch: 16, n_ctx_slot: 256)
    end

    {:ok, a} = Tokenizer.encode(model, "Once upon a time there was a dog")
    {:ok, b} = Tokenizer.encode(model, "The sun")
    assert_raise ArgumentError, ~r/embedding/, fn -> Batch.admit(e, 0, greedy(model), a, @opts) end
    :ok = Batch.admit_embed(e, 0, a, :mean)
    :ok = Batch.admit_embed(e, 1, b, :cls)
    events = run(e)
    vectors = for {:done, slot, {:ok, v}} <- events, into: %{}, do: {slot, v}
    {:ok, va} = LlamaCppEx.embed(model, "Once upon a time there was a dog", normalize: false, n_threads: 1)
    {:ok, vb} = LlamaCppEx.embed(model, "The sun", pooling: :cls, normalize: false, n_threads: 1)
    assert Enum.all?(Enum.zip(vectors[0], va), fn {x, y} -> abs(x - y) < 1.0e-5 end)
    assert Enum.all?(Enum.zip(vectors[1], vb), fn {x, y} -> abs(x - y) < 1.0e-5 end)
    assert {:ok, %{kv_tokens: [0, 0]}} = Batch.info(e)
  end
end
