defmodule LlamaCppEx.ServerTest do
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Completion, Server}

  setup_all do
    %{model: load_model!()}
  end

  @prompts [
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park",
    "One day, a big cat",
    "The sun was",
    "Ben had a red ball. He",
    "Mom said",
    "There was a tree"
  ]

  defp start!(model, opts \\ []) do
    opts = Keyword.merge([model: model, n_parallel: 4, n_ctx: 256, n_batch: 64, n_threads: 1], opts)
    start_supervised!({Server, opts}, id: make_ref())
  end

  # the unbatched path, with the server's attention (no flash attention)
  defp reference(model, prompt, opts),
    do: elem(LlamaCppEx.generate(model, prompt, opts ++ [n_threads: 1, flash_attn: false]), 1)

  defp wait_idle(server) do
    assert eventually(fn -> Server.stats(server).slots.busy == 0 end, 5000)
  end

  describe "batching" do
    # stories260K's greedy choices are far from ties: here even a unified cache
    # gives the same text (see the synthetic-model test for what holds in general)
    test "greedy output equals LlamaCppEx.generate/3 whatever else is in the batch (split and unified KV)",
         %{model: model} do
      for unified <- [true, false] do
        server = start!(model, kv_unified: unified)
        jobs = for {p, i} <- Enum.with_index(@prompts), do: {p, 20 + 7 * i}
        refs = Map.new(jobs, fn {p, n} -> {{p, n}, reference(model, p, max_tokens: n, temp: 0.0)} end)

        # twice: the second round reuses cached prefixes
        for _round <- 1..2 do
          results =
            jobs
            |> Enum.with_index()
            |> Enum.map(fn {{p, n}, i} ->
              Task.async(fn ->
                if rem(i, 2) == 0,
                  do: {{p, n}, Server.generate(server, p, max_tokens: n, temp: 0.0)},
                  else: {{p, n}, {:ok, server |> Server.stream(p, max_tokens: n, temp: 0.0) |> Enum.join()}}
              end)
            end)
            |> Task.await_many(30_000)

          for {job, {:ok, text}} <- results, do: assert(text == refs[job], "#{inspect(job)} unified: #{unified}")
          assert length(results) == length(jobs)
        end

        stats = Server.stats(server)
        assert stats.requests.completed == 2 * length(jobs)
        assert stats.cached_tokens > 0
      end
    end

    test "dozens of concurrent callers, mixed stream and blocking, each get their own text", %{model: model} do
      server = start!(model, n_parallel: 6, max_queue: 64)
      refs = Map.new(@prompts, &{&1, reference(model, &1, max_tokens: 24, temp: 0.0)})

      results =
        for i <- 1..40 do
          p = Enum.at(@prompts, rem(i, length(@prompts)))

          Task.async(fn ->
            case rem(i, 3) do
              0 -> {p, Server.generate(server, p, max_tokens: 24, temp: 0.0)}
              1 -> {p, {:ok, server |> Server.stream(p, max_tokens: 24, temp: 0.0) |> Enum.join()}}
              2 -> {p, Server.complete(server, p, max_tokens: 24, temp: 0.0) |> then(fn {:ok, c} -> {:ok, c.text} end)}
            end
          end)
        end
        |> Task.await_many(60_000)

      for {p, {:ok, text}} <- results, do: assert(text == refs[p])
      assert length(results) == 40
      wait_idle(server)
    end

    test "a completion carries counts and timings, queue wait and time to first token", %{model: model} do
      server = start!(model)
      {:ok, %Completion{} = c} = Server.complete(server, "Once upon a time", max_tokens: 10, temp: 0.0)
      assert c.finish_reason == :max_tokens
      assert c.generated_tokens == 10 and length(c.tokens) == 10
      assert c.prompt_tokens == 5
      assert c.queue_ms >= 0 and c.ttft_ms >= c.prompt_ms and c.generation_ms > 0
      assert c.cached_tokens == 0

      stats = Server.stats(server)
      assert %{slots: %{busy: 0, total: 4}, queue: %{depth: 0, max: 64}} = stats
      assert stats.generated_tokens == 10 and stats.prompt_tokens == 5
      assert stats.generated_tokens_per_second > 0 and stats.prompt_tokens_per_second > 0
      assert %{hit_ratio: +0.0, held: %{}} = stats.prefix_cache
      assert %{used: 14, total: 1024, unified: false} = stats.kv_cells
      assert %{count: n, outside_decode: share, by_batch: %{1 => %{decode_ms: _, cycle_ms: _}}} = stats.steps
      assert n >= 10 and share > 0 and share < 1
    end

    test "seeded sampling is reproducible per request and equals the unbatched path", %{model: model} do
      server = start!(model)
      opts = [max_tokens: 40, temp: 0.9, seed: 1234]
      expected = reference(model, "Once upon a time", opts)

      texts =
        for _ <- 1..4 do
          Task.async(fn -> Server.generate(server, "Once upon a time", opts) end)
        end
        |> Task.await_many(10_000)

      assert Enum.all?(texts, &(&1 == {:ok, expected}))
    end

    test "per-request options: grammar, logit bias, stop strings, max_tokens", %{model: model} do
      server = start!(model)
      grammar = ~S(root ::= "yes" | "no")

      [g, b, s, m] =
        [
          fn -> Server.generate(server, "Once upon a time", grammar: grammar, temp: 0.0, max_tokens: 8) end,
          fn -> Server.complete(server, "Once upon a time", logit_bias: %{13 => :neg_infinity}, temp: 0.0) end,
          fn -> Server.complete(server, "Once upon a time", stop: ["Lily"], temp: 0.0) end,
          fn -> Server.complete(server, "Once upon a time", max_tokens: 3, temp: 0.0) end
        ]
        |> Enum.map(&Task.async/1)
        |> Task.await_many(10_000)

      assert {:ok, yes_no} = g
      assert yes_no in ["yes", "no"]
      assert {:ok, %{tokens: tokens}} = b
      refute 13 in tokens
      assert {:ok, %{finish_reason: :stop, text: text}} = s
      assert text == ", there was a little girl named "
      assert {:ok, %{finish_reason: :max_tokens, generated_tokens: 3}} = m
    end

    test "a sequence that reaches the end of its slot finishes with :context_full", %{model: model} do
      server = start!(model, n_ctx: 64)
      {:ok, c} = Server.complete(server, "Once upon a time", max_tokens: 1000, temp: 0.0)
      assert c.finish_reason == :context_full
      assert c.generated_tokens == 64 - 5 + 1
    end

    test "chat, chat_complete and stream_chat", %{model: model} do
      server = start!(model)
      messages = [%{role: "user", content: "Tell me a story"}]
      opts = [template: "chatml", max_tokens: 20, temp: 0.0]
      {:ok, expected} = LlamaCppEx.chat(model, messages, opts ++ [n_threads: 1, flash_attn: false])
      assert {:ok, ^expected} = Server.chat(server, messages, opts)
      assert {:ok, %Completion{text: ^expected}} = Server.chat_complete(server, messages, opts)
      assert server |> Server.stream_chat(messages, opts) |> Enum.join() == expected
    end

    test "a long prompt is absorbed in chunks while a stream keeps getting tokens", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 2048, n_batch: 64)
      me = self()

      streamer =
        Task.async(fn ->
          server
          |> Server.stream("Once upon a time", max_tokens: 1500, temp: 0.0, logit_bias: %{2 => :neg_infinity})
          |> Enum.each(fn _ -> send(me, {:chunk, System.monotonic_time(:microsecond)}) end)
        end)

      assert_receive {:chunk, _}, 5000
      long = String.duplicate("The little dog ran to the park with his ball. ", 100)
      t0 = System.monotonic_time(:microsecond)
      {:ok, c} = Server.complete(server, long, max_tokens: 1, temp: 0.0)
      t1 = System.monotonic_time(:microsecond)
      assert c.prompt_tokens > 1500
      Task.shutdown(streamer, :brutal_kill)

      during = collect_chunks([]) |> Enum.filter(&(&1 >= t0 and &1 <= t1))
      # one step per 64 prompt tokens, and the stream gets a token in each
      assert length(during) >= div(c.prompt_tokens, 64) - 4
    end
  end

  defp collect_chunks(acc) do
    receive do
      {:chunk, t} -> collect_chunks([t | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  describe "queueing and ending requests" do
    # a request that keeps its slot for a while (end of generation banned)
    defp long_request(server, opts) do
      Task.async(fn ->
        Server.complete(
          server,
          "Once upon a time",
          Keyword.merge([max_tokens: 240, temp: 0.0, logit_bias: %{2 => :neg_infinity}], opts)
        )
      end)
    end

    test "past max_queue a request is :overloaded at once", %{model: model} do
      server = start!(model, n_parallel: 1, max_queue: 2, n_ctx: 512)
      busy = long_request(server, max_tokens: 400)
      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      queued = for _ <- 1..2, do: long_request(server, max_tokens: 2)
      assert eventually(fn -> Server.stats(server).queue.depth == 2 end)
      assert {:error, :overloaded} = Server.generate(server, "Once upon a time", max_tokens: 2)
      assert Server.stats(server).requests.rejected == 1
      assert {:ok, %{generated_tokens: 400}} = Task.await(busy, 10_000)
      assert [{:ok, _}, {:ok, _}] = Task.await_many(queued, 10_000)
    end

    test "cancel/2 by ref ends a running request and frees its slot for the next", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 2048)
      ref = make_ref()
      running = long_request(server, ref: ref, max_tokens: 2000)
      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      next = long_request(server, max_tokens: 5)
      assert eventually(fn -> Server.stats(server).queue.depth == 1 end)
      assert :ok = Server.cancel(server, ref)
      assert {:ok, %Completion{finish_reason: :cancelled} = c} = Task.await(running)
      assert c.generated_tokens < 2000
      assert {:ok, %{generated_tokens: 5}} = Task.await(next, 5000)
      assert {:error, :not_found} = Server.cancel(server, ref)
    end

    test "cancel/2 of a queued request", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 1024)
      busy = long_request(server, max_tokens: 800)
      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      ref = make_ref()
      queued = long_request(server, ref: ref)
      assert eventually(fn -> Server.stats(server).queue.depth == 1 end)
      assert :ok = Server.cancel(server, ref)
      assert {:ok, %Completion{finish_reason: :cancelled, text: ""}} = Task.await(queued)
      assert Server.stats(server).queue.depth == 0
      Task.await(busy, 10_000)
    end

    test "a halted stream frees its slot at the next step", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 2048)
      me = self()

      chunks =
        server
        |> Server.stream("Once upon a time",
          max_tokens: 2000,
          temp: 0.0,
          logit_bias: %{2 => :neg_infinity},
          on_complete: &send(me, {:completed, &1})
        )
        |> Enum.take(3)

      assert length(chunks) == 3
      assert_received {:completed, %Completion{finish_reason: :cancelled} = c}
      # flow control: at most the stream window past what the consumer took
      assert c.generated_tokens <= 3 + LlamaCppEx.Context.stream_window() + 1
      assert Server.stats(server).slots.busy == 0
      refute_received _
      assert {:ok, _} = Server.generate(server, "Once", max_tokens: 4)
    end

    test "a slow stream consumer pauses only its own slot", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 1024)

      slow =
        Task.async(fn ->
          server
          |> Server.stream("Once upon a time", max_tokens: 200, temp: 0.0)
          |> Enum.map(fn chunk ->
            Process.sleep(20)
            chunk
          end)
          |> Enum.join()
        end)

      {:ok, fast} = Server.generate(server, "The little dog", max_tokens: 100, temp: 0.0)
      assert fast == reference(model, "The little dog", max_tokens: 100, temp: 0.0)
      assert Task.await(slow, 20_000) == reference(model, "Once upon a time", max_tokens: 200, temp: 0.0)
    end

    test "a killed caller frees its slot: the next queued request gets it", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 2048)

      caller =
        spawn(fn ->
          Server.generate(server, "Once upon a time", max_tokens: 2000, temp: 0.0, logit_bias: %{2 => :neg_infinity})
        end)

      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      next = long_request(server, max_tokens: 5)
      assert eventually(fn -> Server.stats(server).queue.depth == 1 end)
      Process.exit(caller, :kill)
      assert {:ok, %{generated_tokens: 5}} = Task.await(next, 5000)
      assert Server.stats(server).requests.caller_down == 1
    end

    test "timeouts: waiting and running requests return {:error, :timeout}", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 2048)
      running = long_request(server, max_tokens: 2000, timeout: 100)
      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      queued = long_request(server, timeout: 30)
      assert {:error, :timeout} = Task.await(queued)
      assert {:error, :timeout} = Task.await(running)
      assert Server.stats(server).requests.timeout == 2
      wait_idle(server)

      assert_raise LlamaCppEx.Error, ~r/timeout/, fn ->
        server
        |> Server.stream("Once", max_tokens: 2000, logit_bias: %{2 => :neg_infinity}, timeout: 50)
        |> Stream.run()
      end
    end

    test "priorities: high first, and low is admitted within starvation_limit", %{model: model} do
      server = start!(model, n_parallel: 1, n_ctx: 1024, starvation_limit: 2)
      busy = long_request(server, max_tokens: 600)
      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      me = self()

      submit = fn name, prio ->
        Task.async(fn ->
          {:ok, _} = Server.generate(server, "Once", max_tokens: 2, priority: prio)
          send(me, {:done, name, System.monotonic_time()})
        end)
      end

      low = submit.(:low, :low)
      assert eventually(fn -> Server.stats(server).queue.low == 1 end)
      # one at a time, so that they queue in this order
      highs =
        for i <- 1..5 do
          task = submit.({:high, i}, :high)
          assert eventually(fn -> Server.stats(server).queue.high == i end)
          task
        end

      Task.await_many([busy, low | highs], 20_000)

      order =
        for _ <- 1..6 do
          receive do
            {:done, name, t} -> {t, name}
          end
        end
        |> Enum.sort()
        |> Enum.map(&elem(&1, 1))

      assert order == [{:high, 1}, {:high, 2}, :low, {:high, 3}, {:high, 4}, {:high, 5}]
    end

    test "a bad request fails alone, before it reaches the batch", %{model: model} do
      server = start!(model, n_ctx: 128)
      expected = reference(model, "Once upon a time", max_tokens: 60, temp: 0.0)
      good = Task.async(fn -> Server.generate(server, "Once upon a time", max_tokens: 60, temp: 0.0) end)

      assert_raise ArgumentError, fn -> Server.generate(server, "Once", n_ctx: 10) end
      assert_raise ArgumentError, fn -> Server.generate(server, "Once", bogus: 1) end
      assert_raise ArgumentError, fn -> Server.generate(server, "Once", priority: :urgent) end
      # values the engine would refuse (it raised inside the server before)
      assert_raise ArgumentError, fn -> Server.generate(server, "Once", max_tokens: 3_000_000_000) end
      assert_raise ArgumentError, fn -> Server.generate(server, "Once", stop: Enum.map(1..65, &"s#{&1}")) end
      assert_raise ArgumentError, fn -> Server.generate(server, [1, 9_223_372_036_854_775_808]) end
      assert {:error, {:invalid_grammar, _}} = Server.generate(server, "Once", grammar: "root ::= (")
      too_long = String.duplicate("the dog ", 200)
      assert {:error, {:context_overflow, %{n_ctx: 128}}} = Server.generate(server, too_long)
      assert {:error, :empty_prompt} = Server.generate(server, "", add_special: false)
      assert {:error, :embeddings_disabled} = Server.embed(server, "Once")

      assert Task.await(good) == {:ok, expected}
      assert Server.stats(server).requests.failed == 0
      # an id past the vocabulary is refused at admission, that request alone
      assert {:error, {:invalid_token, _}} = Server.generate(server, [1, 2_000_000_000])
      assert {:ok, _} = Server.generate(server, "Once", max_tokens: 2)
    end
  end

  describe "prefix cache" do
    @system String.duplicate("Lily liked to play with her red ball in the big green park. ", 14)

    test "a cached system prompt is computed once: stats and time to first token", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 512, n_batch: 32)
      {:ok, first} = Server.complete(server, @system <> "One day", max_tokens: 8, temp: 0.0)
      assert first.cached_tokens == 0
      assert first.prompt_tokens > 150

      {:ok, second} = Server.complete(server, @system <> "The sun", max_tokens: 8, temp: 0.0)
      assert second.cached_tokens >= first.prompt_tokens - 5
      assert second.text == reference(model, @system <> "The sun", max_tokens: 8, temp: 0.0)
      # several prompt steps against one
      assert second.prompt_ms < first.prompt_ms

      stats = Server.stats(server)
      assert stats.prefix_cache.hit_ratio > 0.4
      assert stats.prefix_cache.hits == 1
      assert stats.cached_tokens == second.cached_tokens
    end

    test "a busy slot's prompt is shared with a new request", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 1024, n_batch: 64, kv_unified: true)

      running =
        Task.async(fn ->
          Server.complete(server, @system <> "One day", max_tokens: 300, temp: 0.0, logit_bias: %{2 => :neg_infinity})
        end)

      assert eventually(fn -> Server.stats(server).slots.busy == 1 end)
      # let it absorb its prompt
      Process.sleep(50)
      {:ok, second} = Server.complete(server, @system <> "The sun", max_tokens: 8, temp: 0.0)
      assert second.cached_tokens > 150
      assert second.text == reference(model, @system <> "The sun", max_tokens: 8, temp: 0.0)
      {:ok, first} = Task.await(running, 10_000)
      # the shared prefix is held once
      %{kv_cells: kv} = Server.stats(server)
      assert kv.used == first.prompt_tokens + 299 + second.prompt_tokens - second.cached_tokens + 7
    end

    test "cache scopes: one scope computes a shared prompt once, two scopes twice", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 512)
      opts = [max_tokens: 4, temp: 0.0]
      {:ok, a1} = Server.complete(server, @system <> "One", opts ++ [cache_scope: :a])
      {:ok, b1} = Server.complete(server, @system <> "Two", opts ++ [cache_scope: :b])
      {:ok, a2} = Server.complete(server, @system <> "Three", opts ++ [cache_scope: :a])
      assert a1.cached_tokens == 0
      assert b1.cached_tokens == 0
      assert a2.cached_tokens > 150
    end

    test "a session's next turn prefills only the new turn", %{model: model} do
      server = start!(model, n_parallel: 2, n_ctx: 1024, kv_unified: false)
      turn1 = @system <> "Tom said"
      {:ok, c1} = Server.complete(server, turn1, max_tokens: 16, temp: 0.0, session: "tom")
      # other traffic in between
      {:ok, _} = Server.complete(server, "The little dog", max_tokens: 16, temp: 0.0)
      turn2 = turn1 <> c1.text <> " Then"
      {:ok, c2} = Server.complete(server, turn2, max_tokens: 8, temp: 0.0, session: "tom")
      assert c2.cached_tokens >= c1.prompt_tokens
      assert c2.text == reference(model, turn2, max_tokens: 8, temp: 0.0)
    end

    test "KV pressure: idle caches are purged first, then the newest request gives up", %{model: model} do
      server = start!(model, n_parallel: 4, n_ctx: 256, kv_unified: true, kv_cells: 256)

      results =
        for p <- Enum.take(@prompts, 4) do
          Task.async(fn -> Server.complete(server, p, max_tokens: 200, temp: 0.0, logit_bias: %{2 => :neg_infinity}) end)
        end
        |> Task.await_many(20_000)

      assert Enum.all?(results, fn
               {:ok, %{finish_reason: reason}} -> reason in [:max_tokens, :context_full]
               {:error, :context_full} -> true
             end)

      assert Enum.any?(results, &match?({:ok, %{finish_reason: :max_tokens}}, &1))
      assert Server.stats(server).requests.context_full > 0
      # still serving
      assert {:ok, _} = Server.generate(server, "Once", max_tokens: 8)
    end
  end

  describe "embeddings" do
    test "texts of concurrent callers are batched; vectors equal LlamaCppEx.embed/3", %{model: model} do
      server = start!(model, embeddings: true, n_parallel: 4, n_ctx: 512, n_batch: 128)
      texts = @prompts ++ [String.duplicate("The dog ran. ", 40)]

      for pooling <- [:mean, :last] do
        results =
          texts
          |> Enum.chunk_every(3)
          |> Enum.map(fn chunk -> Task.async(fn -> {chunk, Server.embed(server, chunk, pooling: pooling)} end) end)
          |> Task.await_many(20_000)

        for {chunk, {:ok, vectors}} <- results, {text, v} <- Enum.zip(chunk, vectors) do
          {:ok, alone} = LlamaCppEx.embed(model, text, pooling: pooling, n_threads: 1)
          assert length(v) == length(alone)
          assert Enum.all?(Enum.zip(v, alone), fn {a, b} -> abs(a - b) < 1.0e-5 end), text
        end
      end

      assert {:ok, v} = Server.embed(server, "Once upon a time")
      assert length(v) == model.n_embd
      assert {:error, :embeddings_only} = Server.generate(server, "Once")
      assert {:error, {:too_long, %{max: 512}}} = Server.embed(server, String.duplicate("dog ", 600))
      assert {:ok, _} = Server.embed(server, String.duplicate("dog ", 600), truncate: true)
    end
  end

  describe "faults" do
    test "a server crash reaches every waiting caller; the supervisor restarts it", %{model: model} do
      name = :"server_crash_#{System.unique_integer([:positive])}"
      opts = [model: model, n_parallel: 2, n_ctx: 2048, n_threads: 1, name: name]
      {:ok, sup} = Supervisor.start_link([{Server, opts}], strategy: :one_for_one)
      pid = GenServer.whereis(name)
      long = [max_tokens: 2000, temp: 0.0, logit_bias: %{2 => :neg_infinity}]

      waiting = for _ <- 1..3, do: Task.async(fn -> Server.generate(name, "Once upon a time", long) end)

      streaming =
        Task.async(fn ->
          try do
            name |> Server.stream("Once upon a time", long) |> Stream.run()
          rescue
            e in LlamaCppEx.Error -> {:raised, e.reason}
          end
        end)

      assert eventually(fn -> Server.stats(name).slots.busy == 2 end)
      Process.exit(pid, :kill)

      assert Enum.all?(Task.await_many(waiting, 5000), &match?({:error, {:server_down, _}}, &1))
      assert {:raised, {:server_down, _}} = Task.await(streaming, 5000)

      assert eventually(fn -> GenServer.whereis(name) not in [nil, pid] end)
      assert {:ok, text} = Server.generate(name, "Once upon a time", max_tokens: 10, temp: 0.0)
      assert text == reference(model, "Once upon a time", max_tokens: 10, temp: 0.0)
      Supervisor.stop(sup)
    end

    test "loading from a path does not block start; calls meanwhile wait; a bad path stops the server" do
      {:ok, server} = Server.start_link(model_path: model_path(), n_parallel: 2, n_ctx: 128, n_threads: 1)
      assert {:ok, _} = Server.generate(server, "Once", max_tokens: 4)
      GenServer.stop(server)

      Process.flag(:trap_exit, true)
      {:ok, bad} = Server.start_link(model_path: "/nonexistent.gguf", n_threads: 1)
      assert {:error, {:server_down, {:file_not_found, _}}} = Server.generate(bad, "Once")
      assert_receive {:EXIT, ^bad, {:file_not_found, _}}
    end

    test "a model without causal attention is refused before a step could trip llama.cpp's assert", %{model: model} do
      # stories260K marked non-causal: llama.cpp then requires each batch to fit in one micro-batch
      g = LlamaCppEx.TestGGUF.parse(File.read!(model_path()))
      path = g |> LlamaCppEx.TestGGUF.put("llama.attention.causal", :bool, false) |> LlamaCppEx.TestGGUF.write_tmp!()
      {:ok, noncausal} = LlamaCppEx.Model.load(path)
      {:ok, ctx} = LlamaCppEx.Context.create(noncausal, n_ctx: 256, n_seq_max: 2, n_batch: 128, n_ubatch: 32)
      refute ctx.stepwise_embeddings

      assert_raise ArgumentError, ~r/n_ubatch/, fn ->
        LlamaCppEx.Server.Batch.new(ctx, n_slots: 2, n_batch: 128, n_ctx_slot: 128)
      end

      Process.flag(:trap_exit, true)
      {:ok, server} = Server.start_link(model: noncausal, n_parallel: 2, n_ctx: 128, n_batch: 128, n_ubatch: 32)
      assert {:error, {:server_down, :generation_needs_causal_model}} = Server.generate(server, "Once")
      assert_receive {:EXIT, ^server, :generation_needs_causal_model}
      # the causal one serves as before
      assert {:ok, _} = LlamaCppEx.generate(model, "Once", max_tokens: 4)
    end

    test "start options are checked at once" do
      assert_raise ArgumentError, fn -> Server.start_link(n_parallel: 2) end
      assert_raise ArgumentError, fn -> Server.start_link(model_path: "x", n_parallel: 0) end
      assert_raise ArgumentError, fn -> Server.start_link(model_path: "x", n_parallel: 8, n_batch: 4) end
      assert_raise ArgumentError, fn -> Server.start_link(model_path: "x", bogus: true) end
    end

    test "nothing leaks: the context and samplers go with the server", %{model: model} do
      before = settled_live_objects()
      {:ok, server} = Server.start_link(model: model, n_parallel: 2, n_ctx: 128, n_threads: 1)
      for _ <- 1..5, do: {:ok, _} = Server.generate(server, "Once", max_tokens: 4)
      assert LlamaCppEx.live_objects().contexts == before.contexts + 1
      GenServer.stop(server)
      assert settled_live_objects() == before
    end
  end
end
