# Who owns a context or a sampler (c_src/owner.c), and what stops work that
# runs on them: a stream's claim against other callers, free/1 and the death
# of the calling process cancelling a running call.
#
# async: false: timings, and live object counts.
defmodule LlamaCppEx.OwnershipTest do
  use ExUnit.Case, async: false

  @moduletag :model
  @moduletag :capture_log

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Tokenizer}

  @prompt "Once upon a time"

  setup_all do
    %{model: load_model!()}
  end

  defp ms(fun) do
    t = System.monotonic_time(:microsecond)
    result = fun.()
    {(System.monotonic_time(:microsecond) - t) / 1000, result}
  end

  describe "claims" do
    # The check ("is a stream using it?") and the claim are one step: a caller
    # that races a starting stream gets :busy or its answer at once, never
    # waits for the stream's consumer. On the old check-then-lock code the
    # caller sometimes passed the check and then blocked for as long as the
    # consumer held the stream.
    test "a caller racing a starting stream never waits for the stream's consumer", %{model: model} do
      for _trial <- 1..30 do
        {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
        {:ok, sampler} = Sampler.create(model, temp: 0.0)
        {:ok, tokens} = Tokenizer.encode(model, @prompt)
        me = self()

        racer =
          spawn_link(fn ->
            receive do: (:go -> :ok)

            times =
              for _ <- 1..200 do
                {t, r} = ms(fn -> Context.position(ctx) end)
                true = match?({:ok, _}, r) or r == {:error, :busy}
                t
              end

            send(me, {:racer, Enum.max(times)})
          end)

        # the consumer takes one chunk and then sits on the stream
        consumer =
          spawn(fn ->
            send(racer, :go)

            Context.stream(ctx, sampler, tokens, max_tokens: 200)
            |> Stream.each(fn _ -> receive do: (:never -> :ok) end)
            |> Stream.run()
          end)

        assert_receive {:racer, worst}, 5_000
        assert worst < 500, "a caller waited #{worst} ms behind a stream"
        Process.exit(consumer, :kill)
        Context.free(ctx)
        Sampler.free(sampler)
      end
    end

    test "a context and a sampler of different models are refused", %{model: model} do
      other = load_model!()
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      {:ok, sampler} = Sampler.create(other, temp: 0.0)
      assert Context.generate(ctx, sampler, [1, 403], max_tokens: 2) == {:error, :model_mismatch}
      # neither is left claimed
      assert {:ok, 0} = Context.position(ctx)
      assert :ok = Sampler.reset(sampler)
    end
  end

  describe "cancelling a running Context.generate/4" do
    setup %{model: model} do
      {:ok, ctx} = Context.create(model, n_ctx: 1024, n_threads: 1)
      {:ok, sampler} = Sampler.create(model, temp: 0.0)
      {:ok, tokens} = Tokenizer.encode(model, @prompt)
      on_exit(fn -> Context.free(ctx) && Sampler.free(sampler) end)
      %{ctx: ctx, sampler: sampler, tokens: tokens}
    end

    defp long_generate(ctx, sampler, tokens) do
      Task.async(fn -> Context.generate(ctx, sampler, tokens, max_tokens: 1000) end)
    end

    test "Sampler.free/1 cancels it as Context.free/1 does", %{ctx: ctx, sampler: sampler, tokens: tokens} do
      {full_ms, {:ok, full}} = ms(fn -> Context.generate(ctx, sampler, tokens, max_tokens: 1000) end)
      assert full.generated_tokens > 500
      :ok = Context.clear(ctx)

      task = long_generate(ctx, sampler, tokens)
      Process.sleep(round(full_ms / 10))
      {free_ms, :ok} = ms(fn -> Sampler.free(sampler) end)
      assert {:ok, %{finish_reason: :cancelled} = c} = Task.await(task)
      assert c.generated_tokens < full.generated_tokens
      assert free_ms < full_ms / 4, "Sampler.free waited #{free_ms} ms (the whole run takes #{full_ms} ms)"
      assert Sampler.reset(sampler) == {:error, :closed}
      # the context is free again
      assert {:ok, _} = Context.position(ctx)
    end

    test "the caller's death cancels it", %{ctx: ctx, sampler: sampler, tokens: tokens} do
      {full_ms, {:ok, _}} = ms(fn -> Context.generate(ctx, sampler, tokens, max_tokens: 1000) end)
      :ok = Context.clear(ctx)

      pid = spawn(fn -> Context.generate(ctx, sampler, tokens, max_tokens: 1000) end)
      Process.sleep(round(full_ms / 10))
      Process.exit(pid, :kill)
      # the next user waits for one token, not for the dead caller's whole run
      {wait_ms, {:ok, pos}} = ms(fn -> Context.position(ctx) end)
      assert wait_ms < full_ms / 4
      assert pos < 800
    end

    test "Context.free/1 cancels it", %{ctx: ctx, sampler: sampler, tokens: tokens} do
      task = long_generate(ctx, sampler, tokens)
      Process.sleep(20)
      :ok = Context.free(ctx)
      assert {:ok, %{finish_reason: :cancelled}} = Task.await(task)
      assert Context.position(ctx) == {:error, :closed}
    end
  end

  describe "sizes" do
    test "Context.decode checks what one sequence holds, not the whole context", %{model: model} do
      {:ok, ctx} = Context.create(model, n_ctx: 512, n_seq_max: 2, n_threads: 1)

      assert {:error, {:context_overflow, %{n_ctx: 256, prompt_tokens: 300}}} =
               Context.decode(ctx, List.duplicate(403, 300))

      assert :ok = Context.decode(ctx, List.duplicate(403, 256))
    end
  end

  describe "text is always valid UTF-8" do
    # The random model's byte tokens: <0xB5> is a continuation byte, <0xC3> a
    # lead byte; repeated, neither forms a character.
    test "bytes that form no character become U+FFFD, in generate and in streams" do
      model = load_model!(random_model_path())

      for byte <- [0xB5, 0xC3] do
        id = 3 + byte
        assert Tokenizer.token_to_piece(model, id) == {:ok, <<byte>>}
        opts = [max_tokens: 6, temp: 0.0, logit_bias: %{id => 100.0}, n_threads: 1]
        {:ok, c} = LlamaCppEx.complete(model, "Hello", opts)
        assert c.tokens == List.duplicate(id, 6)
        # each stray byte is one U+FFFD; the last lead byte, cut off by the end, too
        assert c.text == String.duplicate("\uFFFD", 6)

        chunks = model |> LlamaCppEx.stream("Hello", opts) |> Enum.to_list()
        assert Enum.all?(chunks, &String.valid?/1)
        assert Enum.join(chunks) == c.text
      end
    end
  end

  describe "found in review" do
    test "stop strings must be valid UTF-8 (the text is)", %{model: model} do
      assert_raise ArgumentError, ~r/UTF-8/, fn -> LlamaCppEx.generate(model, @prompt, stop: [<<0xA9>>]) end
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      {:ok, sampler} = Sampler.create(model, temp: 0.0)

      assert_raise ArgumentError, fn ->
        LlamaCppEx.NIF.generate(ctx.ref, sampler.ref, [1, 403], %{max_tokens: 2, stop: [<<0xA9, ?x>>]})
      end
    end

    test "a stream dropped while suspended is cancelled when its handle is collected", %{model: model} do
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      {:ok, sampler} = Sampler.create(model, temp: 0.0)
      {:ok, tokens} = Tokenizer.encode(model, @prompt)

      task =
        Task.async(fn ->
          stream = Context.stream(ctx, sampler, tokens, max_tokens: 200)

          {:suspended, _, _continuation} =
            Enumerable.reduce(stream, {:cont, []}, fn x, acc -> {:suspend, [x | acc]} end)

          :dropped
        end)

      assert Task.await(task) == :dropped
      :erlang.garbage_collect()
      assert eventually(fn -> match?({:ok, _}, Context.position(ctx)) end)
    end

    test "a stream whose sampler is freed under it still delivers all of its text", %{model: model} do
      {:ok, ctx} = Context.create(model, n_ctx: 1024, n_threads: 1)
      {:ok, sampler} = Sampler.create(model, temp: 0.0)
      {:ok, tokens} = Tokenizer.encode(model, @prompt)
      me = self()

      chunks =
        Context.stream(ctx, sampler, tokens, max_tokens: 900, on_complete: &send(me, {:done, &1}))
        |> Stream.with_index()
        |> Stream.each(fn {_, i} -> if i == 2, do: spawn(fn -> Sampler.free(sampler) end), else: Process.sleep(5) end)
        |> Enum.map(&elem(&1, 0))

      assert_received {:done, %{finish_reason: :cancelled, text: text}}
      assert Enum.join(chunks) == text
    end

    test "a stop string completed by the final U+FFFD ends with :stop" do
      model = load_model!(random_model_path())
      lead = 3 + 0xC3
      opts = [max_tokens: 1, temp: 0.0, logit_bias: %{lead => 100.0}, n_threads: 1, stop: ["\uFFFD"]]
      assert {:ok, %{text: "", finish_reason: :stop}} = LlamaCppEx.complete(model, "Hello", opts)
    end

    test "a stream's sample_ms does not count waiting for its consumer", %{model: model} do
      me = self()

      model
      |> LlamaCppEx.stream(@prompt, max_tokens: 40, temp: 0.0, n_threads: 1, on_complete: &send(me, {:done, &1}))
      |> Stream.each(fn _ -> Process.sleep(5) end)
      |> Stream.run()

      assert_received {:done, c}
      assert c.sample_ms < c.generation_ms / 2, inspect(c)
    end
  end
end
