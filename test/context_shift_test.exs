defmodule LlamaCppEx.ContextShiftTest do
  # context_shift: true (c_src/shift.c): on the core API, streams and the
  # server, compared with llama.cpp's own CLI built from the same source.
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Server, Tokenizer}

  setup_all do
    %{model: load_model!()}
  end

  @prompt "Once upon a time"
  # llama.cpp rounds n_ctx up to a multiple of 256: 256 cells
  @opts [max_tokens: 600, n_ctx: 256, temp: 0.0, n_threads: 1, context_shift: true]

  describe "core API" do
    test "generation goes past the end of the context", %{model: model} do
      {:ok, c} = LlamaCppEx.complete(model, @prompt, @opts)
      assert c.finish_reason == :max_tokens
      assert c.generated_tokens == 600
      # prompt (5) + 600 tokens through 256 cells: shifts of half the window
      assert c.discarded_tokens >= 600 + 5 - 256
      assert String.valid?(c.text)

      # without it, the same request ends when the context is full
      {:ok, full} = LlamaCppEx.complete(model, @prompt, Keyword.delete(@opts, :context_shift))
      assert full.finish_reason == :context_full and full.discarded_tokens == 0
      assert String.starts_with?(c.text, full.text)
    end

    test "n_keep keeps the start of the sequence; a stream gives the same text", %{model: model} do
      {:ok, c} = LlamaCppEx.complete(model, @prompt, @opts ++ [n_keep: 20])
      {:ok, default} = LlamaCppEx.complete(model, @prompt, @opts)
      assert c.generated_tokens == 600
      assert c.text != default.text
      assert model |> LlamaCppEx.stream(@prompt, @opts ++ [n_keep: 20]) |> Enum.join() == c.text
    end

    test "n_keep covering the whole window ends with :context_full", %{model: model} do
      # a prompt of 254 tokens kept whole leaves nothing to drop
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      {:ok, s} = Sampler.create(model, temp: 0.0)
      {:ok, tokens} = Tokenizer.encode(model, String.duplicate("Once upon a time ", 80))
      tokens = Enum.take(tokens, 254)
      opts = [max_tokens: 100, context_shift: true]
      {:ok, c} = Context.generate(ctx, s, tokens, opts ++ [n_keep: 254])
      assert c.finish_reason == :context_full and c.discarded_tokens == 0
      # keeping less, it goes on
      :ok = Context.clear(ctx)
      {:ok, c} = Context.generate(ctx, s, tokens, opts ++ [n_keep: 200])
      assert c.finish_reason == :max_tokens and c.discarded_tokens > 0
    end

    test "Context.generate/4 shifts what the context holds and the context stays usable", %{model: model} do
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      {:ok, s} = Sampler.create(model, temp: 0.0)
      {:ok, tokens} = Tokenizer.encode(model, @prompt)
      {:ok, c} = Context.generate(ctx, s, tokens, max_tokens: 400, context_shift: true)
      assert c.generated_tokens == 400 and c.discarded_tokens > 0
      {:ok, pos} = Context.position(ctx)
      assert pos < 256
      # the last token is not decoded
      assert pos == length(tokens) + 400 - 1 - c.discarded_tokens
      :ok = Context.clear(ctx)
      assert {:ok, %{finish_reason: :max_tokens}} = Context.generate(ctx, s, tokens, max_tokens: 10)
    end

    test "bad values raise", %{model: model} do
      assert_raise ArgumentError, ~r/context_shift/, fn -> LlamaCppEx.complete(model, @prompt, context_shift: :yes) end
      assert_raise ArgumentError, ~r/n_keep/, fn -> LlamaCppEx.complete(model, @prompt, n_keep: -1) end
      assert_raise ArgumentError, ~r/n_keep/, fn -> LlamaCppEx.complete(model, @prompt, n_keep: "4") end
      assert {:ok, _} = LlamaCppEx.generate(model, @prompt, max_tokens: 4)
    end
  end

  describe "llama.cpp's CLI" do
    @describetag :conformance
    @describetag timeout: 600_000

    # llama-completion --context-shift: the same tokens, the same shifts.
    # --keep N keeps N tokens after the BOS; our :n_keep counts the BOS too.
    test "greedy text equals llama-completion --context-shift", %{model: model} do
      long = "Once upon a time, there was a little girl named Lily. She loved to play"

      for {prompt, keep, n_ctx, n} <- [{@prompt, 0, 256, 600}, {long, 8, 256, 600}, {long, 40, 512, 1500}] do
        args =
          ["-m", model_path(), "-p", prompt, "-n", "#{n}", "-c", "#{n_ctx}", "--keep", "#{keep}"] ++
            ~w(--temp 0 --context-shift -no-cnv --no-display-prompt --simple-io -t 1 --no-warmup)

        cli = llama_completion!(args)
        opts = [max_tokens: n, n_ctx: n_ctx, temp: 0.0, n_threads: 1, context_shift: true, n_keep: keep + 1]
        {:ok, ours} = LlamaCppEx.complete(model, prompt, opts)
        assert ours.discarded_tokens > 0

        at =
          Enum.find(0..byte_size(cli), fn i ->
            binary_part(cli, 0, i) != binary_part(ours.text, 0, min(i, byte_size(ours.text)))
          end)

        assert ours.text == cli,
               "keep #{keep}, n_ctx #{n_ctx}: #{byte_size(ours.text)} vs #{byte_size(cli)} bytes, first difference near #{inspect(at)}: " <>
                 inspect(binary_part(cli, max((at || 1) - 40, 0), min(80, byte_size(cli) - max((at || 1) - 40, 0))))
      end
    end
  end

  describe "server" do
    test "a request with context_shift runs past its slot's cells, equal to the core API", %{model: model} do
      server =
        start_supervised!(
          {Server, model: model, n_parallel: 2, n_ctx: 256, n_batch: 64, n_threads: 1, flash_attn: false},
          id: make_ref()
        )

      opts = [max_tokens: 600, temp: 0.0, context_shift: true]
      {:ok, ref} = LlamaCppEx.complete(model, @prompt, opts ++ [n_ctx: 256, n_threads: 1, flash_attn: false])
      assert ref.discarded_tokens > 0

      # two at once, one streamed, and a plain request beside them
      tasks = [
        Task.async(fn -> Server.complete(server, @prompt, opts) end),
        Task.async(fn -> {:ok, server |> Server.stream(@prompt, opts) |> Enum.join()} end),
        Task.async(fn -> Server.complete(server, "The little dog", max_tokens: 800, temp: 0.0) end)
      ]

      [{:ok, c}, {:ok, streamed}, {:ok, plain}] = Task.await_many(tasks, 60_000)
      assert c.text == ref.text
      assert c.discarded_tokens == ref.discarded_tokens
      assert streamed == ref.text
      assert plain.finish_reason == :context_full

      # the shifted slot's cells are not offered as a cached prefix
      {:ok, again} = Server.complete(server, @prompt, max_tokens: 8, temp: 0.0)
      assert again.text == String.slice(ref.text, 0, String.length(again.text))
    end

    test "a unified KV cache refuses context_shift", %{model: model} do
      server =
        start_supervised!({Server, model: model, n_parallel: 2, n_ctx: 128, n_threads: 1, kv_unified: true},
          id: make_ref()
        )

      assert {:error, :shift_unsupported} = Server.complete(server, @prompt, context_shift: true)
      assert {:ok, _} = Server.complete(server, @prompt, max_tokens: 4)
    end

    test "a one-slot server shifts (nothing shares its cells)", %{model: model} do
      server = start_supervised!({Server, model: model, n_parallel: 1, n_ctx: 256, n_threads: 1}, id: make_ref())

      assert {:ok, %{discarded_tokens: d, generated_tokens: 400}} =
               Server.complete(server, @prompt, max_tokens: 400, temp: 0.0, context_shift: true)

      assert d > 0
    end
  end
end
