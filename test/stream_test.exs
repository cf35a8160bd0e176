defmodule LlamaCppEx.StreamTest do
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers

  setup_all do
    %{model: load_model!()}
  end

  # Context counts are global to the VM: compare with what was live when the
  # test started (earlier modules' servers and engines may still hold theirs).
  setup do
    %{base: settled_live_objects().contexts}
  end

  @prompt "Once upon a time"

  test "concatenated chunks equal generate's text", %{model: model} do
    opts = [max_tokens: 80, temp: 0.0, n_threads: 1]
    {:ok, text} = LlamaCppEx.generate(model, @prompt, opts)
    chunks = model |> LlamaCppEx.stream(@prompt, opts) |> Enum.to_list()
    # text made while the consumer is busy is coalesced: how many chunks depends on timing
    assert length(chunks) > 1
    assert Enum.join(chunks) == text
    assert Enum.all?(chunks, &(&1 != ""))
  end

  test "seeded sampling streams the same text as generate", %{model: model} do
    opts = [max_tokens: 60, temp: 0.9, seed: 1234, n_threads: 1]
    {:ok, text} = LlamaCppEx.generate(model, @prompt, opts)
    assert Enum.join(LlamaCppEx.stream(model, @prompt, opts)) == text
  end

  test "the stream is lazy: nothing runs until consumed", %{model: model} do
    before = settled_live_objects()
    stream = LlamaCppEx.stream(model, @prompt, max_tokens: 10)
    assert LlamaCppEx.live_objects() == before
    assert [_ | _] = Enum.to_list(stream)
  end

  test "Enum.take stops generation within the stream window and leaves no messages", %{model: model, base: base} do
    me = self()

    # A slow consumer: without flow control the native loop would run far ahead.
    chunks =
      model
      |> LlamaCppEx.stream(@prompt,
        max_tokens: 1000,
        n_ctx: 1100,
        temp: 0.0,
        n_threads: 1,
        on_complete: &send(me, {:done, &1})
      )
      |> Stream.each(fn _ -> Process.sleep(20) end)
      |> Enum.take(3)

    assert length(chunks) == 3
    assert_received {:done, completion}
    assert completion.finish_reason == :cancelled
    # the documented bound: at most stream_window + 1 tokens past the text received
    received = chunks |> Enum.join() |> byte_size()
    covering = tokens_covering(model, completion.tokens, received)
    assert completion.generated_tokens - covering <= LlamaCppEx.Context.stream_window() + 1, inspect(completion)
    # a slow consumer gets coalesced chunks, not one per token
    assert covering > 3
    refute_received _
    assert eventually(fn -> LlamaCppEx.live_objects().contexts == base end)
  end

  test "a consumer that keeps up gets every token without the loop waiting", %{model: model} do
    {:ok, full} = LlamaCppEx.complete(model, @prompt, max_tokens: 200, n_ctx: 256, temp: 0.0)
    chunks = model |> LlamaCppEx.stream(@prompt, max_tokens: 200, n_ctx: 256, temp: 0.0) |> Enum.to_list()
    assert Enum.join(chunks) == full.text
    assert length(chunks) > 1
  end

  test "a prompt that fits streams until the context is full", %{model: model} do
    me = self()

    text =
      model
      |> LlamaCppEx.stream(@prompt, max_tokens: 100_000, n_ctx: 256, temp: 0.0, on_complete: &send(me, {:done, &1}))
      |> Enum.join()

    assert_received {:done, %{finish_reason: :context_full, generated_tokens: 252} = completion}
    assert text == completion.text
  end

  # The fewest leading tokens whose text is at least `bytes` long.
  defp tokens_covering(model, tokens, bytes) do
    Enum.find(1..length(tokens), length(tokens), fn k ->
      {:ok, text} = LlamaCppEx.Tokenizer.decode(model, Enum.take(tokens, k))
      byte_size(text) >= bytes
    end)
  end

  test "on_complete reports the finish reason and counts", %{model: model} do
    me = self()

    text =
      model |> LlamaCppEx.stream(@prompt, max_tokens: 12, temp: 0.0, on_complete: &send(me, {:done, &1})) |> Enum.join()

    assert_received {:done,
                     %LlamaCppEx.Completion{finish_reason: :max_tokens, generated_tokens: 12, prompt_tokens: 5} = c}

    assert c.text == text
  end

  test "a killed consumer stops the native work and frees the context", %{model: model, base: base} do
    # How long a full run takes, to show that the killed one stopped early.
    {full_us, {:ok, _}} =
      :timer.tc(fn -> LlamaCppEx.generate(model, @prompt, max_tokens: 2000, n_ctx: 2048, n_threads: 1) end)

    test_pid = self()

    consumer =
      spawn(fn ->
        model
        |> LlamaCppEx.stream(@prompt, max_tokens: 2000, n_ctx: 2048, n_threads: 1)
        |> Enum.each(fn chunk -> send(test_pid, {:chunk, self(), chunk}) end)
      end)

    assert_receive {:chunk, ^consumer, _}, 5000
    assert LlamaCppEx.live_objects().contexts == base + 1
    t0 = System.monotonic_time(:microsecond)
    Process.exit(consumer, :kill)
    assert eventually(fn -> LlamaCppEx.live_objects().contexts == base end, 5000)
    freed_after = System.monotonic_time(:microsecond) - t0
    assert freed_after < full_us, "freed after #{freed_after} µs; a full generation takes #{full_us} µs"
  end

  test "multi-byte characters arrive whole", %{model: model} do
    # stories260K has no tokens for these characters: the grammar forces them out
    # one byte-fallback token at a time, so characters span several tokens.
    text = "héllo wörld ✓ 日本 😀"
    grammar = ~s(root ::= "#{text}")
    me = self()

    chunks =
      model
      |> LlamaCppEx.stream(@prompt, max_tokens: 64, temp: 0.0, grammar: grammar, on_complete: &send(me, {:done, &1}))
      |> Enum.to_list()

    assert_received {:done, completion}
    assert Enum.join(chunks) == text
    assert Enum.all?(chunks, &String.valid?/1), "split chunk in #{inspect(chunks)}"
    # the emoji alone is 4 byte tokens, so some chunks were held back
    assert completion.generated_tokens > length(chunks)
  end

  test "stop strings end the stream and partial matches are held back", %{model: model} do
    {:ok, full} = LlamaCppEx.generate(model, @prompt, max_tokens: 60, temp: 0.0)
    # A stop string spanning several tokens, taken from the middle of the text.
    [before | _] = String.split(full, "named Lily", parts: 2)
    chunks = model |> LlamaCppEx.stream(@prompt, max_tokens: 60, temp: 0.0, stop: ["named Lily"]) |> Enum.to_list()
    assert Enum.join(chunks) == before
    refute Enum.any?(chunks, &String.contains?(&1, "named"))
    {:ok, c} = LlamaCppEx.complete(model, @prompt, max_tokens: 60, temp: 0.0, stop: ["named Lily"])
    assert c.text == before
    assert c.finish_reason == :stop
  end

  test "a stop string that never completes is released at the end", %{model: model} do
    {:ok, full} = LlamaCppEx.generate(model, @prompt, max_tokens: 30, temp: 0.0)
    # ", there" starts the text; "., therezzz" can never match but shares a prefix.
    text = model |> LlamaCppEx.stream(@prompt, max_tokens: 30, temp: 0.0, stop: [", therezzz"]) |> Enum.join()
    assert text == full
  end

  test "errors surface when the stream is consumed", %{model: model} do
    stream = LlamaCppEx.stream(model, String.duplicate(@prompt, 100), max_tokens: 10, n_ctx: 256)
    assert_raise LlamaCppEx.Error, ~r/context_overflow/, fn -> Enum.to_list(stream) end
    refute_received _
  end

  test "stream_chat streams a reply", %{model: model} do
    messages = [%{role: "user", content: "Tell me a story"}]
    chunks = model |> LlamaCppEx.stream_chat(messages, template: "chatml", max_tokens: 20, temp: 0.0) |> Enum.to_list()
    {:ok, reply} = LlamaCppEx.chat(model, messages, template: "chatml", max_tokens: 20, temp: 0.0)
    assert Enum.join(chunks) == reply
  end

  test "a consumer using its stream's own context gets :busy, not a deadlock", %{model: model} do
    {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: 256)

    results =
      model
      |> LlamaCppEx.stream(@prompt, context: ctx, max_tokens: 200)
      |> Enum.map(fn _ -> LlamaCppEx.Context.position(ctx) end)

    # while the stream holds the context (all but possibly the last two
    # chunks: the last asked for and the rest, sent unasked, after which the
    # native thread may already have let go), the consumer gets :busy instead
    # of waiting for itself
    assert length(results) >= 3
    assert Enum.all?(Enum.drop(results, -2), &(&1 == {:error, :busy})), inspect(results)
    # once the stream is over, the context is the consumer's again
    assert {:ok, _} = LlamaCppEx.Context.position(ctx)
  end

  test "while a stream uses a context or sampler, everyone else gets :busy, not a blocked scheduler",
       %{model: model} do
    {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: 1024)
    {:ok, other} = LlamaCppEx.Context.create(model, n_ctx: 256)
    test_pid = self()

    consumer =
      spawn(fn ->
        model
        |> LlamaCppEx.stream(@prompt, context: ctx, max_tokens: 500)
        |> Enum.each(fn _ ->
          send(test_pid, :streaming)

          receive do
            :stop -> exit(:normal)
          end
        end)
      end)

    assert_receive :streaming, 5000
    # more callers than dirty schedulers: none of them may wait for the stream
    callers =
      for _ <- 1..(:erlang.system_info(:dirty_cpu_schedulers) + 2),
          do: Task.async(fn -> LlamaCppEx.Context.position(ctx) end)

    assert Enum.all?(Task.await_many(callers, 5000), &(&1 == {:error, :busy}))
    assert {:ok, 0} = LlamaCppEx.Context.position(other)

    assert_raise LlamaCppEx.Error, ~r/busy/, fn ->
      model |> LlamaCppEx.stream(@prompt, context: ctx) |> Enum.to_list()
    end

    send(consumer, :stop)

    assert eventually(fn ->
             LlamaCppEx.Context.position(ctx) == {:ok, 0} or match?({:ok, _}, LlamaCppEx.Context.position(ctx))
           end)
  end

  test "an on_complete callback that raises reaches the consumer and leaks nothing", %{model: model} do
    before = settled_live_objects()

    assert_raise RuntimeError, "boom", fn ->
      model |> LlamaCppEx.stream(@prompt, max_tokens: 5, on_complete: fn _ -> raise "boom" end) |> Enum.to_list()
    end

    assert_raise RuntimeError, "boom", fn ->
      model |> LlamaCppEx.stream(@prompt, max_tokens: 50, on_complete: fn _ -> raise "boom" end) |> Enum.take(2)
    end

    refute_received _
    assert eventually(fn -> LlamaCppEx.live_objects() == before end)
  end

  test "freeing the context ends a stream that waits for its consumer", %{model: model} do
    {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: 1024)
    me = self()
    stream = LlamaCppEx.stream(model, @prompt, context: ctx, max_tokens: 500, on_complete: &send(me, {:done, &1}))

    chunks =
      Enum.reduce_while(stream, [], fn chunk, acc ->
        # the stream now waits for the next demand; free the context from elsewhere
        if acc == [], do: Task.await(Task.async(fn -> LlamaCppEx.Context.free(ctx) end), 5000)
        {:cont, [chunk | acc]}
      end)

    assert length(chunks) <= 2
    assert_received {:done, %{finish_reason: :cancelled}}
    assert {:error, :closed} = LlamaCppEx.Context.position(ctx)
  end

  test "waiting streams hold no scheduler: other work goes on", %{model: model, base: base} do
    # More suspended streams than this machine has dirty CPU schedulers.
    n = :erlang.system_info(:dirty_cpu_schedulers) + 2
    test_pid = self()

    consumers =
      for _ <- 1..n do
        spawn(fn ->
          model
          |> LlamaCppEx.stream(@prompt, max_tokens: 200, n_ctx: 256)
          |> Enum.each(fn _ ->
            send(test_pid, {:first_chunk, self()})
            # a very slow consumer
            receive do
              :stop -> exit(:normal)
            end
          end)
        end)
      end

    for c <- consumers, do: assert_receive({:first_chunk, ^c}, 5000)
    task = Task.async(fn -> LlamaCppEx.generate(model, @prompt, max_tokens: 8) end)
    assert {:ok, _} = Task.yield(task, 5000)
    for c <- consumers, do: send(c, :stop)
    assert eventually(fn -> LlamaCppEx.live_objects().contexts == base end)
  end

  # PropEr (Debian's erlang-proper) drives random stop strings, seeds and lengths.
  for dir <- Path.wildcard("/usr/lib/erlang/lib/proper-*/ebin"), do: Code.prepend_path(dir)
  @proper_skip not Code.ensure_loaded?(:proper) && "PropEr is not available (Debian's erlang-proper)"

  @tag skip: @proper_skip
  test "property: chunks are valid UTF-8, join to the completion's text, and never show a stop string",
       %{model: model} do
    alphabet = String.graphemes("abdehilmnorstwy ,.")

    stop =
      :proper_types.bind(
        :proper_types.non_empty(:proper_types.list(:proper_types.elements(alphabet))),
        &Enum.join/1,
        false
      )

    gen =
      :proper_types.tuple([
        :proper_types.integer(0, 1000),
        :proper_types.integer(1, 60),
        :proper_types.resize(3, :proper_types.list(stop))
      ])

    prop =
      :proper.forall(gen, fn {seed, max_tokens, stops} ->
        opts = [max_tokens: max_tokens, temp: 1.0, seed: seed, stop: stops, n_threads: 1]
        {:ok, c} = LlamaCppEx.complete(model, @prompt, opts)
        chunks = model |> LlamaCppEx.stream(@prompt, opts) |> Enum.to_list()
        text = Enum.join(chunks)

        text == c.text and Enum.all?(chunks, &(&1 != "" and String.valid?(&1))) and
          not Enum.any?(stops, &String.contains?(text, &1))
      end)

    assert :proper.quickcheck(prop, [{:numtests, 60}, :quiet, :long_result]) == true
  end

  test "many concurrent streams on one model", %{model: model, base: base} do
    tasks =
      for i <- 1..8 do
        Task.async(fn -> model |> LlamaCppEx.stream(@prompt, max_tokens: 30, seed: i, n_threads: 1) |> Enum.join() end)
      end

    results = Task.await_many(tasks, 30_000)
    assert Enum.all?(results, &(byte_size(&1) > 0))
    assert eventually(fn -> LlamaCppEx.live_objects().contexts == base end)
  end
end
