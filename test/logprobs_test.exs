defmodule LlamaCppEx.LogprobsTest do
  # Log-probabilities (c_src/logprobs.c): on the core API, streams and the
  # batching server, on both test models.
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Logprob, Sampler, Server, Tokenizer}

  setup_all do
    %{model: load_model!(), random: load_model!(random_model_path())}
  end

  @prompt "Once upon a time"

  defp sorted_desc?(lps), do: lps |> Enum.map(& &1.logprob) |> then(&(&1 == Enum.sort(&1, :desc)))

  describe "core API" do
    test "greedy: every token is the most likely one and its record matches the top alternative", %{model: model} do
      {:ok, c} = LlamaCppEx.complete(model, @prompt, max_tokens: 24, temp: 0.0, logprobs: 5)
      assert length(c.logprobs) == c.generated_tokens
      assert Enum.map(c.logprobs, & &1.token) == c.tokens

      for lp <- c.logprobs do
        assert %Logprob{top: [best | _] = top} = lp
        assert length(top) == 5
        assert sorted_desc?(top)
        assert best.token == lp.token
        assert best.logprob == lp.logprob
        assert lp.logprob <= 0.0
        assert Enum.all?(top, &(&1.top == [] and is_binary(&1.text) and String.valid?(&1.text)))
        assert {:ok, lp.bytes} == Tokenizer.token_to_piece(model, lp.token, special: true)
      end

      # the text of the chosen tokens is the completion's text
      assert c.logprobs |> Enum.map(& &1.bytes) |> Enum.join() == c.text
    end

    test "the whole distribution sums to 1 and its top entries are the reported ones", %{model: model} do
      {:ok, tokens} = Tokenizer.encode(model, @prompt)

      for m <- [model, load_model!(random_model_path())] do
        {:ok, tokens} = if m == model, do: {:ok, tokens}, else: Tokenizer.encode(m, @prompt)
        {:ok, ctx} = Context.create(m, n_ctx: 128, n_threads: 1)
        assert {:error, :no_logits} = Context.logprobs(ctx)
        :ok = Context.decode(ctx, tokens)
        {:ok, dist} = Context.logprobs(ctx)
        assert length(dist) == m.n_vocab
        total = dist |> Enum.map(&:math.exp/1) |> Enum.sum()
        assert_in_delta total, 1.0, 1.0e-4

        # the first generated token's alternatives are the distribution's top 20
        {:ok, c} = LlamaCppEx.complete(m, @prompt, max_tokens: 1, temp: 0.0, logprobs: 20, n_threads: 1)
        expected = dist |> Enum.with_index() |> Enum.sort_by(fn {lp, id} -> {-lp, id} end) |> Enum.take(20)
        [%Logprob{top: top}] = c.logprobs

        for {alt, {lp, id}} <- Enum.zip(top, expected) do
          assert alt.token == id
          assert_in_delta alt.logprob, lp, 1.0e-5
        end

        Context.free(ctx)
      end
    end

    test "sampled tokens get the probabilities before sampling", %{model: model} do
      opts = [max_tokens: 30, temp: 1.2, seed: 7, logprobs: 2]
      {:ok, c} = LlamaCppEx.complete(model, @prompt, opts)
      # the same tokens as without logprobs: collecting them changes nothing
      {:ok, plain} = LlamaCppEx.complete(model, @prompt, Keyword.delete(opts, :logprobs))
      assert c.tokens == plain.tokens and plain.logprobs == nil
      # at temperature 1.2 some sampled token is not the most likely one
      assert Enum.any?(c.logprobs, fn lp -> hd(lp.top).token != lp.token end)
      assert Enum.all?(c.logprobs, fn lp -> lp.logprob <= hd(lp.top).logprob end)
    end

    test "logprobs: 0 gives the chosen token only; nil is off", %{model: model} do
      # sampled (not greedy) tokens keep their own ids and probabilities
      opts = [max_tokens: 40, temp: 1.5, seed: 3]
      {:ok, c} = LlamaCppEx.complete(model, @prompt, opts ++ [logprobs: 0])
      {:ok, c5} = LlamaCppEx.complete(model, @prompt, opts ++ [logprobs: 5])
      assert Enum.all?(c.logprobs, &(&1.top == [] and is_float(&1.logprob)))
      assert Enum.map(c.logprobs, & &1.token) == c.tokens
      assert Enum.map(c.logprobs, & &1.logprob) == Enum.map(c5.logprobs, & &1.logprob)
      {:ok, off} = LlamaCppEx.complete(model, @prompt, max_tokens: 4, temp: 0.0)
      assert off.logprobs == nil
    end

    test "out-of-range values raise, and generation works afterwards", %{model: model} do
      for bad <- [21, -1, 2.0, :all, "3"] do
        assert_raise ArgumentError, ~r/logprobs/, fn -> LlamaCppEx.complete(model, @prompt, logprobs: bad) end
      end

      {:ok, ctx} = Context.create(model, n_ctx: 64, n_threads: 1)
      {:ok, s} = Sampler.create(model, temp: 0.0)
      assert_raise ArgumentError, fn -> Context.generate(ctx, s, [1, 2], logprobs: 99) end
      # the native check, past the Elixir one
      assert_raise ArgumentError, fn ->
        LlamaCppEx.NIF.generate(ctx.ref, s.ref, [1, 2], %{max_tokens: 2, logprobs: 21})
      end

      assert {:ok, %{logprobs: [_, _]}} = Context.generate(ctx, s, [1, 2], max_tokens: 2, logprobs: 3)
    end

    test "streams: chunks carry the logprobs of their tokens", %{model: model} do
      opts = [max_tokens: 40, temp: 0.0, logprobs: 3, n_threads: 1]
      {:ok, c} = LlamaCppEx.complete(model, @prompt, opts)
      me = self()
      chunks = model |> LlamaCppEx.stream(@prompt, opts ++ [on_complete: &send(me, {:done, &1})]) |> Enum.to_list()
      assert Enum.all?(chunks, &match?({text, lps} when is_binary(text) and is_list(lps), &1))
      assert chunks |> Enum.map(&elem(&1, 0)) |> Enum.join() == c.text
      lps = Enum.flat_map(chunks, &elem(&1, 1))
      assert Enum.map(lps, & &1.token) == c.tokens
      assert Enum.map(lps, & &1.logprob) == Enum.map(c.logprobs, & &1.logprob)
      assert_received {:done, %{logprobs: all}}
      assert all == c.logprobs
    end
  end

  describe "server" do
    setup %{model: model} do
      server =
        start_supervised!({Server, model: model, n_parallel: 3, n_ctx: 256, n_batch: 64, n_threads: 1},
          id: make_ref()
        )

      %{server: server}
    end

    test "per request, blocking and streamed, equal to the core API", %{model: model, server: server} do
      prompts = [@prompt, "The little dog", "Lily and Tom went to the park"]

      results =
        prompts
        |> Enum.with_index()
        |> Enum.map(fn {p, i} ->
          Task.async(fn ->
            opts = [max_tokens: 20, temp: 0.0, logprobs: i + 1]

            streamed = server |> Server.stream(p, opts) |> Enum.to_list()

            {:ok, c} = Server.complete(server, p, opts)
            {p, opts, c, streamed}
          end)
        end)
        |> Task.await_many(30_000)

      for {p, opts, c, streamed} <- results do
        {:ok, ref} = LlamaCppEx.complete(model, p, opts ++ [n_threads: 1, flash_attn: false])
        assert c.tokens == ref.tokens
        assert length(c.logprobs) == c.generated_tokens

        # the same tokens and alternatives; the values agree to what batched
        # arithmetic rounds differently (a few 1e-4 here)
        for {a, b} <- Enum.zip(c.logprobs, ref.logprobs) do
          assert a.token == b.token
          assert Enum.map(a.top, & &1.token) == Enum.map(b.top, & &1.token)
          assert_in_delta a.logprob, b.logprob, 5.0e-3
        end

        assert streamed |> Enum.map(&elem(&1, 0)) |> Enum.join() == c.text
        assert streamed |> Enum.flat_map(&elem(&1, 1)) |> Enum.map(& &1.token) == c.tokens
      end

      # off by default; bad values rejected alone
      {:ok, plain} = Server.complete(server, @prompt, max_tokens: 3)
      assert plain.logprobs == nil
      assert_raise ArgumentError, fn -> Server.complete(server, @prompt, logprobs: 50) end
      assert {:ok, _} = Server.generate(server, @prompt, max_tokens: 3)
    end
  end
end
