# Every input check, in Elixir and in the C NIF, tripped once; after each the
# same objects must still work (a short greedy generation gives the reference
# text). Calls to LlamaCppEx.NIF with wrong terms prove that the native layer
# checks its arguments itself instead of trusting the Elixir wrappers.
#
# async: false: a few tests compare LlamaCppEx.live_objects() counts.
defmodule LlamaCppEx.BadInputTest do
  use ExUnit.Case, async: false

  @moduletag :model
  @moduletag :capture_log

  import Bitwise
  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Completion, Context, Model, NIF, Sampler, Tokenizer}

  @once [1, 403, 407, 261, 378]
  # greedy continuation of "Once upon a time", 4 tokens (test/support/reference_outputs.md)
  @greedy_4 ", there was a"
  @n_ctx 256

  # A valid options map for NIF.context_create/2.
  @native_ctx LlamaCppEx.TestHelpers.native_ctx_opts(%{n_ctx: @n_ctx})

  setup_all do
    %{model: load_model!()}
  end

  setup %{model: model} do
    {:ok, ctx} = Context.create(model, n_ctx: @n_ctx, n_batch: 64, n_threads: 1)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)

    on_exit(fn ->
      Context.free(ctx)
      Sampler.free(sampler)
    end)

    %{ctx: ctx, sampler: sampler}
  end

  defp assert_works(ctx, sampler) do
    assert :ok = Context.clear(ctx)

    assert {:ok, %Completion{text: @greedy_4, finish_reason: :max_tokens, generated_tokens: 4}} =
             Context.generate(ctx, sampler, @once, max_tokens: 4)
  end

  # llama.cpp's log lines reach Logger through the LlamaCppEx.Log process; a
  # call to it returns once the lines already sent are logged, so they fall
  # inside the test's log capture instead of spilling into the output later.
  # (The grammar parser also prints to stderr directly; that cannot be captured.)
  defp sync_native_log, do: LlamaCppEx.Log.level()

  defp assert_model_works(model) do
    assert {:ok, @greedy_4} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 4, temp: 0.0, n_threads: 1)
  end

  describe "Context.create" do
    test "bad options raise ArgumentError; the model keeps working", %{model: model} do
      for opts <- [
            [n_ctx: -1],
            [n_ctx: "512"],
            [n_ctx: 2_147_483_648],
            [n_batch: 0],
            [n_ubatch: 0],
            [n_seq_max: 0],
            [n_seq_max: 100_000],
            [n_threads: 0],
            [n_threads: 5000],
            [n_threads_batch: 0],
            [type_k: :bogus],
            [type_v: "f16"],
            [type_k: :i32],
            [flash_attn: :maybe],
            [embeddings: 1],
            [pooling: :bogus],
            [bogus: 1]
          ] do
        assert_raise ArgumentError, fn -> Context.create(model, opts) end
        assert_model_works(model)
      end
    end

    test "the native layer validates its options map itself", %{model: model} do
      before = settled_live_objects()

      for {key, value} <- [
            n_ctx: -1,
            n_ctx: "x",
            n_batch: 0,
            n_ubatch: 0,
            n_seq_max: 0,
            n_seq_max: 100_000,
            n_threads: 0,
            n_threads: 5000,
            n_threads_batch: -1,
            flash_attn: 2,
            pooling: 9,
            embeddings: :maybe,
            type_k: :bogus,
            type_v: "f16"
          ] do
        assert_raise ArgumentError, fn -> NIF.context_create(model.ref, Map.put(@native_ctx, key, value)) end
        assert_model_works(model)
      end

      assert_raise ArgumentError, fn -> NIF.context_create(model.ref, Map.delete(@native_ctx, :n_ctx)) end
      assert_raise ArgumentError, fn -> NIF.context_create(model.ref, Map.to_list(@native_ctx)) end
      assert_raise ArgumentError, fn -> NIF.context_create(:model, @native_ctx) end
      assert LlamaCppEx.live_objects() == before

      # the same map, valid, works
      assert {:ok, ref} = NIF.context_create(model.ref, @native_ctx)
      assert {:ok, %{n_ctx: @n_ctx}} = NIF.context_info(ref)
      assert :ok = NIF.context_free(ref)
      assert LlamaCppEx.live_objects() == before
    end

    # The NIF must refuse ggml types that are not KV cache types (with :f64 or
    # :i8 a context was created and its first decode segfaulted). This takes a
    # direct NIF call; it runs in a separate VM so a crash cannot take the test
    # run down.
    @tag timeout: 120_000
    test "the native layer refuses KV cache types llama.cpp cannot use" do
      for type <- [:f64, :i8, :i32] do
        {out, status} = run_in_new_vm(kv_type_script(type))

        assert status == 0,
               "#{type}: the VM died (exit #{status}):\n#{out |> String.split("\n") |> Enum.take(-25) |> Enum.join("\n")}"

        # refused up front (best), or at least an error instead of a crash
        assert out =~ ~r/RESULT: (raised ArgumentError|error )/, "#{type}: #{out}"
      end
    end
  end

  defp kv_type_script(type) do
    """
    {:ok, m} = LlamaCppEx.Model.load(#{inspect(model_path())})
    {:ok, s} = LlamaCppEx.Sampler.create(m, temp: 0.0)
    opts = %{#{inspect(@native_ctx)} | type_k: #{inspect(type)}, type_v: #{inspect(type)}}

    result =
      try do
        case LlamaCppEx.NIF.context_create(m.ref, opts) do
          {:ok, ref} -> LlamaCppEx.NIF.generate(ref, s.ref, [1, 403, 407], %{max_tokens: 4, stop: []})
          other -> other
        end
      rescue
        e in ArgumentError -> {:raised, e}
      end

    case result do
      {:raised, _} -> IO.puts("RESULT: raised ArgumentError")
      {:error, reason} -> IO.puts("RESULT: error " <> inspect(reason))
      other -> IO.puts("RESULT: " <> inspect(other))
    end
    """
  end

  defp run_in_new_vm(script) do
    elixir = System.find_executable("elixir") || flunk("elixir executable not found")
    ebin = LlamaCppEx.NIF |> :code.which() |> to_string() |> Path.dirname()
    System.cmd(elixir, ["-pa", ebin, "-e", script], stderr_to_stdout: true, env: child_vm_env())
  end

  describe "Context.decode" do
    test "empty, out-of-vocabulary and non-integer tokens", %{ctx: ctx, sampler: sampler} do
      cases = [
        {[], {:error, :empty_prompt}},
        {[99_999], {:error, {:invalid_token, {99_999, 512}}}},
        {[403, 512], {:error, {:invalid_token, {512, 512}}}},
        {[-1], {:error, {:invalid_token, {-1, 512}}}},
        {[1, 2.5], ArgumentError},
        {[1, :a], ArgumentError},
        {[1 | 403], ArgumentError},
        {{1, 403}, FunctionClauseError}
      ]

      for {tokens, expected} <- cases do
        assert :ok = Context.clear(ctx)
        assert :ok = Context.decode(ctx, [1, 403])

        if is_atom(expected),
          do: assert_raise(expected, fn -> Context.decode(ctx, tokens) end),
          else: assert(Context.decode(ctx, tokens) == expected)

        # nothing was decoded; the logits of the last good decode are still there
        assert {:ok, 2} = Context.position(ctx)
        assert {:ok, 407} = Sampler.sample(sampler, ctx)
        assert_works(ctx, sampler)
      end
    end

    test "more tokens than the context holds", %{ctx: ctx, sampler: sampler} do
      assert ctx.n_ctx == @n_ctx
      tokens = List.duplicate(403, @n_ctx + 1)

      assert Context.decode(ctx, tokens) ==
               {:error, {:context_overflow, %{position: 0, prompt_tokens: @n_ctx + 1, max_tokens: 0, n_ctx: @n_ctx}}}

      assert {:ok, 0} = Context.position(ctx)

      # filling it part way, then overflowing from there
      assert :ok = Context.decode(ctx, List.duplicate(403, 200))

      assert Context.decode(ctx, List.duplicate(403, 57)) ==
               {:error, {:context_overflow, %{position: 200, prompt_tokens: 57, max_tokens: 0, n_ctx: @n_ctx}}}

      assert {:ok, 200} = Context.position(ctx)
      # exactly full is fine
      assert :ok = Context.decode(ctx, List.duplicate(403, 56))
      assert {:ok, @n_ctx} = Context.position(ctx)
      assert_works(ctx, sampler)
    end
  end

  describe "Context.generate" do
    test "max_tokens beyond the room left generates until the context is full", %{ctx: ctx, sampler: sampler} do
      # 5 prompt tokens + 252 generated: the last one is sampled but needs no cell
      assert {:ok, c} = Context.generate(ctx, sampler, @once, max_tokens: 100_000)
      assert c.finish_reason == :context_full
      assert c.generated_tokens == @n_ctx - 4
      assert {:ok, @n_ctx} = Context.position(ctx)

      # max_tokens that lands exactly on the last token is :max_tokens
      assert :ok = Context.clear(ctx)
      assert {:ok, %{finish_reason: :max_tokens}} = Context.generate(ctx, sampler, @once, max_tokens: @n_ctx - 4)

      # counting what the context already holds
      assert :ok = Context.clear(ctx)
      assert :ok = Context.decode(ctx, List.duplicate(403, 250))

      assert {:ok, %{finish_reason: :context_full, generated_tokens: 2}} =
               Context.generate(ctx, sampler, @once, max_tokens: 10)

      # only a prompt that does not fit is an error, before any work
      assert :ok = Context.clear(ctx)
      assert :ok = Context.decode(ctx, List.duplicate(403, 250))

      assert Context.generate(ctx, sampler, @once ++ [403, 403], max_tokens: 2) ==
               {:error, {:context_overflow, %{position: 250, prompt_tokens: 7, max_tokens: 2, n_ctx: @n_ctx}}}

      assert {:ok, 250} = Context.position(ctx)
      assert_works(ctx, sampler)
    end

    test "bad arguments", %{ctx: ctx, sampler: sampler} do
      assert Context.generate(ctx, sampler, [], max_tokens: 4) == {:error, :empty_prompt}
      assert Context.generate(ctx, sampler, [1, 600], max_tokens: 4) == {:error, {:invalid_token, {600, 512}}}
      assert_raise ArgumentError, fn -> Context.generate(ctx, sampler, [1, 2.0], max_tokens: 4) end

      for opts <- [
            [max_tokens: 0],
            [max_tokens: -1],
            [max_tokens: "4"],
            [max_tokens: nil],
            [stop: [""]],
            [stop: [:a]],
            [stop: [~c"ab"]],
            [bogus: 1]
          ] do
        assert :ok = Context.clear(ctx)
        assert_raise ArgumentError, fn -> Context.generate(ctx, sampler, @once, opts) end
        assert {:ok, 0} = Context.position(ctx)
        assert_works(ctx, sampler)
      end
    end

    test "the native loop validates its options itself", %{ctx: ctx, sampler: sampler} do
      ok_opts = %{max_tokens: 4, stop: []}

      calls = [
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, max_tokens: 4, stop: []) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{stop: []}) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 0, stop: []}) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 4.0, stop: []}) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 4, stop: "x"}) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 4, stop: [1]}) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 4, stop: [""]}) end,
        fn ->
          NIF.generate(ctx.ref, sampler.ref, @once, %{max_tokens: 4, stop: Enum.map(1..65, &"s#{&1}")})
        end,
        fn -> NIF.stream_start(ctx.ref, sampler.ref, @once, ok_opts, :not_a_pid, make_ref()) end,
        fn -> NIF.stream_start(ctx.ref, sampler.ref, :not_a_list, ok_opts, self(), make_ref()) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, :not_a_list, ok_opts) end,
        fn -> NIF.generate(ctx.ref, sampler.ref, [1 | 403], ok_opts) end,
        # via the public API: more than 64 stop strings are refused natively
        fn -> LlamaCppEx.generate(ctx.model, "Once", max_tokens: 2, stop: Enum.map(1..65, &"s#{&1}")) end
      ]

      for call <- calls do
        assert :ok = Context.clear(ctx)
        assert_raise ArgumentError, call
        assert {:ok, 0} = Context.position(ctx)
        assert {:ok, %{text: @greedy_4}} = NIF.generate(ctx.ref, sampler.ref, @once, ok_opts)
        assert_works(ctx, sampler)
      end
    end
  end

  describe "LlamaCppEx.generate" do
    test "a prompt longer than the training context", %{model: model} do
      before = settled_live_objects()
      prompt = String.duplicate("Once upon a time ", 600)
      {:ok, tokens} = Tokenizer.encode(model, prompt)
      assert length(tokens) > model.n_ctx_train

      assert {:error, {:context_overflow, info}} = LlamaCppEx.generate(model, prompt, max_tokens: 4, n_threads: 1)
      assert info == %{position: 0, prompt_tokens: length(tokens), max_tokens: 4, n_ctx: model.n_ctx_train}

      # also with an explicit, smaller n_ctx
      assert {:error, {:context_overflow, %{n_ctx: 256}}} =
               LlamaCppEx.generate(model, prompt, max_tokens: 4, n_ctx: 256, n_threads: 1)

      # streams raise it when consumed
      error =
        assert_raise LlamaCppEx.Error, fn ->
          model |> LlamaCppEx.stream(prompt, max_tokens: 4, n_threads: 1) |> Enum.to_list()
        end

      assert {:context_overflow, %{prompt_tokens: n}} = error.reason
      assert n == length(tokens)

      # nothing was left behind
      assert eventually(fn -> LlamaCppEx.live_objects() == before end)
      assert_model_works(model)
    end

    test "a context of another model, or not a context, raises", %{model: model, ctx: ctx} do
      other = load_model!()
      {:ok, other_ctx} = Context.create(other, n_ctx: 256, n_threads: 1)

      assert_raise ArgumentError, ~r/different model/, fn ->
        LlamaCppEx.generate(model, "Once", max_tokens: 2, context: other_ctx)
      end

      assert_raise ArgumentError, fn -> LlamaCppEx.generate(model, "Once", max_tokens: 2, context: :ctx) end
      assert {:ok, @greedy_4} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 4, temp: 0.0, context: ctx)
      Context.free(other_ctx)
      Model.free(other)
    end
  end

  describe "Sampler.create" do
    test "a bad grammar is an error with llama.cpp's message", %{model: model, ctx: ctx, sampler: sampler} do
      before = settled_live_objects()

      for {grammar, root} <- [
            {"root ::= foo", "root"},
            {"garbage !!!", "root"},
            {~S(root ::= "yes" | "no"), "start"}
          ] do
        assert {:error, {:invalid_grammar, msg}} = Sampler.create(model, grammar: grammar, grammar_root: root)
        assert is_binary(msg) and msg != ""
      end

      assert {:error, {:invalid_grammar, msg}} = Sampler.create(model, grammar: ~S(root ::= "a"), grammar_root: "start")
      assert msg =~ "start"

      # the native layer directly
      assert {:error, {:invalid_grammar, _}} =
               NIF.sampler_create(model.ref, [{:grammar, ~S(root ::= "a"), "start"}, {:greedy}])

      assert LlamaCppEx.live_objects() == before

      assert_works(ctx, sampler)
      sync_native_log()
    end

    test "a valid grammar constrains the output", %{model: model} do
      assert {:ok, %Completion{text: text}} =
               LlamaCppEx.complete(model, "Once upon a time",
                 grammar: ~S(root ::= "yes" | "no"),
                 temp: 0.0,
                 max_tokens: 8,
                 n_threads: 1
               )

      assert text in ["yes", "no"]
    end

    test "grammar arguments of the wrong type or with NUL bytes raise", %{model: model, ctx: ctx, sampler: sampler} do
      assert_raise ArgumentError, fn -> Sampler.create(model, grammar: :root) end
      assert_raise ArgumentError, fn -> Sampler.create(model, grammar: ~S(root ::= "a"), grammar_root: :root) end
      assert_raise ArgumentError, fn -> Sampler.create(model, grammar: "root ::= \"a\"\0") end
      assert_raise ArgumentError, fn -> Sampler.create(model, grammar: ~S(root ::= "a"), grammar_root: "ro\0ot") end

      assert_raise ArgumentError, fn ->
        NIF.sampler_create(model.ref, [{:grammar, "root ::= \"a\"\0", "root"}, {:greedy}])
      end

      assert_raise ArgumentError, fn -> NIF.sampler_create(model.ref, [{:grammar, :x, "root"}, {:greedy}]) end
      assert_works(ctx, sampler)
    end

    test "logit_bias for a token outside the vocabulary", %{model: model, ctx: ctx, sampler: sampler} do
      assert_raise ArgumentError, ~r/outside the vocabulary/, fn -> Sampler.create(model, logit_bias: %{512 => 1.0}) end
      assert_raise ArgumentError, fn -> Sampler.create(model, logit_bias: [{-1, 1.0}]) end
      assert_raise ArgumentError, fn -> Sampler.create(model, logit_bias: [{1, "x"}]) end
      assert_raise ArgumentError, fn -> Sampler.create(model, logit_bias: :x) end

      before = settled_live_objects()

      assert NIF.sampler_create(model.ref, [{:logit_bias, [{600, 1.0}]}, {:greedy}]) ==
               {:error, {:invalid_token, {600, 512}}}

      assert_raise ArgumentError, fn -> NIF.sampler_create(model.ref, [{:logit_bias, [{1, :x}]}, {:greedy}]) end
      assert LlamaCppEx.live_objects() == before

      # a valid bias does act: banning the greedy first token (",") changes the text
      {:ok, banned} = Sampler.create(model, temp: 0.0, logit_bias: %{432 => :neg_infinity})
      assert :ok = Context.clear(ctx)
      assert {:ok, %Completion{tokens: [first | _]}} = Context.generate(ctx, banned, @once, max_tokens: 4)
      assert first != 432
      Sampler.free(banned)
      assert_works(ctx, sampler)
    end

    test "other stage arguments are checked natively", %{model: model, ctx: ctx, sampler: sampler} do
      before = settled_live_objects()

      for stages <- [
            [],
            :greedy,
            [:greedy],
            [{:bogus}],
            [{:greedy, 1}],
            [{:dist, -1}],
            [{:top_k, "x"}],
            [{:top_p, 0.9, -1}],
            [{:temp, :hot}],
            [{:mirostat, 1, 5.0, 0.1, 0}],
            [{:penalties, -1, 1.1, 0.0, 0.0}],
            [{:dry, 0.8, 1.75, 2, -2, []}],
            [{:dry, 0.8, 1.75, 2, -1, ["a\0"]}],
            [{:dry, 0.8, 1.75, 2, -1, [:x]}]
          ] do
        assert_raise ArgumentError, fn -> NIF.sampler_create(model.ref, stages) end
        assert_works(ctx, sampler)
      end

      assert_raise ArgumentError, fn -> NIF.sampler_create(:model, [{:greedy}]) end
      # via the public API: a DRY sequence breaker with a NUL byte
      assert_raise ArgumentError, fn -> Sampler.create(model, dry_multiplier: 0.8, dry_sequence_breakers: ["a\0"]) end
      assert LlamaCppEx.live_objects() == before
      assert_works(ctx, sampler)
    end
  end

  describe "Sampler.sample / accept" do
    test "sample before any decode, and after clear, has no logits", %{model: model, ctx: ctx, sampler: sampler} do
      {:ok, fresh} = Context.create(model, n_ctx: 256, n_threads: 1)
      assert Sampler.sample(sampler, fresh) == {:error, :no_logits}
      assert :ok = Context.decode(fresh, @once)
      assert {:ok, 432} = Sampler.sample(sampler, fresh)
      assert :ok = Context.clear(fresh)
      assert Sampler.sample(sampler, fresh) == {:error, :no_logits}
      Context.free(fresh)
      assert_works(ctx, sampler)
    end

    test "accept of a token outside the vocabulary", %{ctx: ctx, sampler: sampler} do
      assert Sampler.accept(sampler, 99_999) == {:error, {:invalid_token, {99_999, 512}}}
      assert Sampler.accept(sampler, -1) == {:error, {:invalid_token, {-1, 512}}}
      assert Sampler.accept(sampler, 512) == {:error, {:invalid_token, {512, 512}}}
      assert_raise FunctionClauseError, fn -> Sampler.accept(sampler, 1.0) end
      assert_raise ArgumentError, fn -> NIF.sampler_accept(sampler.ref, 1.0) end
      assert_raise ArgumentError, fn -> NIF.sampler_accept(sampler.ref, 1 <<< 40) end
      assert :ok = Sampler.accept(sampler, 403)
      assert :ok = Sampler.reset(sampler)
      assert_works(ctx, sampler)
    end

    test "accept into a grammar sampler: a token the grammar forbids", %{model: model} do
      {:ok, g} = Sampler.create(model, grammar: ~S(root ::= "yes" | "no"), temp: 0.0)
      assert Sampler.accept(g, 99_999) == {:error, {:invalid_token, {99_999, 512}}}
      # " Once" cannot start "yes" or "no": llama.cpp throws, the barrier turns it into an error
      assert {:error, {:sampler_failed, msg}} = Sampler.accept(g, 403)
      assert is_binary(msg)
      Sampler.free(g)
    end
  end

  describe "wrong resource types" do
    test "a model where a context is expected (Elixir layer)", %{model: model, ctx: ctx, sampler: sampler} do
      assert_raise FunctionClauseError, fn -> Context.decode(model, [1]) end
      assert_raise FunctionClauseError, fn -> Context.generate(model, sampler, [1]) end
      assert_raise FunctionClauseError, fn -> Context.generate(ctx, model, [1]) end
      assert_raise FunctionClauseError, fn -> Context.position(model) end
      assert_raise FunctionClauseError, fn -> Context.clear(model) end
      assert_raise FunctionClauseError, fn -> Context.free(model) end
      assert_raise FunctionClauseError, fn -> Sampler.sample(sampler, model) end
      assert_raise FunctionClauseError, fn -> Sampler.sample(ctx, sampler) end
      assert_raise FunctionClauseError, fn -> Sampler.create(ctx) end
      assert_raise FunctionClauseError, fn -> Tokenizer.encode(ctx, "x") end
      assert_works(ctx, sampler)
    end

    test "the C layer checks every resource type itself", %{model: model, ctx: ctx, sampler: sampler} do
      opts = %{max_tokens: 2, stop: []}

      checks = [
        {"expected a context reference", fn -> NIF.context_decode(model.ref, [1]) end},
        {"expected a context reference", fn -> NIF.context_decode(sampler.ref, [1]) end},
        {"expected a context reference", fn -> NIF.context_decode(:ctx, [1]) end},
        {"", fn -> NIF.generate(:a, :b, :c, :d) end},
        {"expected a context reference", fn -> NIF.generate(:a, sampler.ref, [1], opts) end},
        {"expected a context reference", fn -> NIF.generate(model.ref, sampler.ref, [1], opts) end},
        {"expected a context reference", fn -> NIF.generate(sampler.ref, ctx.ref, [1], opts) end},
        {"expected a sampler reference", fn -> NIF.generate(ctx.ref, model.ref, [1], opts) end},
        {"expected a sampler reference", fn -> NIF.generate(ctx.ref, ctx.ref, [1], opts) end},
        {"expected a context reference", fn -> NIF.sampler_sample(sampler.ref, sampler.ref) end},
        {"expected a sampler reference", fn -> NIF.sampler_sample(ctx.ref, ctx.ref) end},
        {"expected a context reference", fn -> NIF.context_position(model.ref) end},
        {"expected a context reference", fn -> NIF.context_clear(sampler.ref) end},
        {"expected a context reference", fn -> NIF.context_info(make_ref()) end},
        {"expected a context reference", fn -> NIF.context_free(model.ref) end},
        {"expected a model reference", fn -> NIF.model_free(ctx.ref) end},
        {"expected a model reference", fn -> NIF.model_info(sampler.ref) end},
        {"expected a model reference", fn -> NIF.model_metadata(ctx.ref) end},
        {"expected a model reference", fn -> NIF.model_chat_template(ctx.ref, nil) end},
        {"expected a model reference", fn -> NIF.tokenize(ctx.ref, "x", true, false) end},
        {"expected a model reference", fn -> NIF.detokenize(sampler.ref, [1], false, false) end},
        {"expected a model reference", fn -> NIF.token_to_piece(ctx.ref, 1, false) end},
        {"expected a model reference", fn -> NIF.vocab_info(ctx.ref) end},
        {"expected a model reference", fn -> NIF.token_is_eog(ctx.ref, 2) end},
        {"expected a model reference", fn -> NIF.context_create(ctx.ref, @native_ctx) end},
        {"expected a model reference", fn -> NIF.sampler_create(ctx.ref, [{:greedy}]) end},
        {"expected a sampler reference", fn -> NIF.sampler_accept(ctx.ref, 1) end},
        {"expected a sampler reference", fn -> NIF.sampler_reset(model.ref) end},
        {"expected a sampler reference", fn -> NIF.sampler_free(ctx.ref) end},
        {"", fn -> NIF.load_cancel(ctx.ref) end},
        {"", fn -> NIF.stream_cancel(ctx.ref) end},
        {"", fn -> NIF.stream_start(:a, :b, :c, :d, :e, :f) end}
      ]

      for {message, fun} <- checks do
        error = assert_raise ArgumentError, fun
        assert error.message =~ message
        # nothing was freed or broken by it
        assert {:ok, _} = NIF.model_info(model.ref)
        assert_works(ctx, sampler)
      end
    end
  end

  describe "freed objects" do
    test "a freed context answers {:error, :closed}", %{model: model, sampler: sampler} do
      before = settled_live_objects()
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1)
      assert LlamaCppEx.live_objects().contexts == before.contexts + 1
      assert :ok = Context.decode(ctx, @once)
      assert :ok = Context.free(ctx)
      assert :ok = Context.free(ctx)
      assert LlamaCppEx.live_objects() == before

      assert Context.decode(ctx, @once) == {:error, :closed}
      assert Context.generate(ctx, sampler, @once, max_tokens: 2) == {:error, :closed}
      assert Context.position(ctx) == {:error, :closed}
      assert Context.clear(ctx) == {:error, :closed}
      assert Sampler.sample(sampler, ctx) == {:error, :closed}
      assert NIF.context_info(ctx.ref) == {:error, :closed}
      assert LlamaCppEx.generate(model, "Once", max_tokens: 2, context: ctx) == {:error, :closed}
      # invalid input to a closed context: either answer is fine, no crash
      assert {:error, _} = Context.decode(ctx, [99_999])
      assert_model_works(model)
    end

    test "a freed sampler answers {:error, :closed}", %{model: model, ctx: ctx} do
      before = settled_live_objects()
      {:ok, s} = Sampler.create(model, temp: 0.0)
      assert :ok = Sampler.free(s)
      assert :ok = Sampler.free(s)
      assert LlamaCppEx.live_objects() == before

      assert Sampler.accept(s, 403) == {:error, :closed}
      assert Sampler.reset(s) == {:error, :closed}
      assert :ok = Context.decode(ctx, @once)
      assert Sampler.sample(s, ctx) == {:error, :closed}
      assert :ok = Context.clear(ctx)
      assert Context.generate(ctx, s, @once, max_tokens: 2) == {:error, :closed}
      # the context was not touched by the refused generate
      assert {:ok, 0} = Context.position(ctx)

      {:ok, s2} = Sampler.create(model, temp: 0.0)
      assert_works(ctx, s2)
      Sampler.free(s2)
    end

    test "a sampler of another model (the same file loaded twice)", %{ctx: ctx, sampler: sampler} do
      other = load_model!()
      {:ok, foreign} = Sampler.create(other, temp: 0.0)

      assert Context.generate(ctx, foreign, @once, max_tokens: 2) == {:error, :model_mismatch}
      assert {:ok, 0} = Context.position(ctx)
      assert :ok = Context.decode(ctx, @once)
      assert Sampler.sample(foreign, ctx) == {:error, :model_mismatch}

      # both sides still work with their own partners
      assert_works(ctx, sampler)
      {:ok, other_ctx} = Context.create(other, n_ctx: 256, n_threads: 1)
      assert {:ok, %{text: @greedy_4}} = Context.generate(other_ctx, foreign, @once, max_tokens: 4)
      Context.free(other_ctx)
      Sampler.free(foreign)
      Model.free(other)
    end
  end

  describe "NUL bytes" do
    test "in stop strings they are plain bytes", %{ctx: ctx, sampler: sampler, model: model} do
      for stop <- [[<<0>>], ["a\0b"], ["\0", " there"]] do
        assert :ok = Context.clear(ctx)
        assert {:ok, completion} = Context.generate(ctx, sampler, @once, max_tokens: 4, stop: stop)

        if " there" in stop,
          do: assert(%Completion{text: ",", finish_reason: :stop} = completion),
          else: assert(%Completion{text: @greedy_4, finish_reason: :max_tokens} = completion)
      end

      assert {:ok, @greedy_4} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 4, temp: 0.0, stop: ["x\0"])
      assert_works(ctx, sampler)
    end

    test "in a prompt they are text", %{model: model} do
      assert {:ok, tokens} = Tokenizer.encode(model, "Once\0upon")
      assert 3 in tokens
      assert {:ok, text} = LlamaCppEx.generate(model, "Once upon\0 a time", max_tokens: 4, temp: 0.0, n_threads: 1)
      assert is_binary(text)
    end
  end

  # ---- issue 7 (hardening): each new native check tripped, then the objects still work ----

  describe "issue 7 guards" do
    test "KV types the head size does not fit, too many sequences, a memory limit", %{model: model} = c do
      for opts <- [
            [type_k: :q4_0, flash_attn: false],
            [type_k: :q8_0, flash_attn: true],
            [type_v: :q5_1, flash_attn: true],
            [max_memory: 1],
            [n_seq_max: 256, max_memory: 1_000_000]
          ] do
        assert {:error, {reason, %{}}} = Context.create(model, [n_ctx: 256, n_threads: 1] ++ opts)
        assert reason in [:unsupported_kv_type, :context_too_large]
        assert_works(c.ctx, c.sampler)
      end

      for opts <- [[n_seq_max: 65, n_batch: 64], [max_memory: 0], [max_memory: -5], [max_memory: "1G"]] do
        assert_raise ArgumentError, fn -> Context.create(model, [n_ctx: 256, n_threads: 1] ++ opts) end
        assert_works(c.ctx, c.sampler)
      end

      for opts <- [%{max_memory: 0}, %{max_memory: :lots}, %{n_seq_max: 65, n_batch: 64}] do
        assert_raise ArgumentError, fn -> NIF.context_create(model.ref, Map.merge(@native_ctx, opts)) end
        assert_works(c.ctx, c.sampler)
      end

      assert {:ok, _} = NIF.context_create(model.ref, Map.put(@native_ctx, :max_memory, nil))
    end

    test "sampler numbers out of float range, too many DRY breakers, huge biases", %{model: model} = c do
      for opts <- [
            [temp: 1.0e39],
            [dynatemp_range: 1.0e300],
            [repeat_penalty: 1.0e300],
            [frequency_penalty: -1.0e300],
            [mirostat: 1, mirostat_eta: 1.0e40],
            [dry_multiplier: 1.0e39],
            [dry_multiplier: 0.5, dry_sequence_breakers: List.duplicate("x", 65)]
          ] do
        assert_raise ArgumentError, fn -> Sampler.create(model, opts) end
        assert_works(c.ctx, c.sampler)
      end

      for stage <- [
            {:temp, 1.0e39},
            {:top_p, 1.0e39, 1},
            {:temp_ext, 0.5, 1.0e39, 1.0},
            {:xtc, 1.0e39, 0.1, 1, 1},
            {:mirostat_v2, 1, 1.0e39, 0.1},
            {:penalties, 64, 1.0e39, 0.0, 0.0},
            {:dry, 0.5, 1.75, 2, 64, List.duplicate("x", 65)}
          ] do
        assert_raise ArgumentError, fn -> NIF.sampler_create(model.ref, [stage, {:greedy}]) end
        assert_works(c.ctx, c.sampler)
      end

      assert {:ok, _} = NIF.sampler_create(model.ref, [{:logit_bias, [{1, -1.0e308}, {2, 1.0e308}]}, {:greedy}])
      assert_works(c.ctx, c.sampler)
    end

    test "model paths that are not regular files", %{model: model} = c do
      for path <- ["/dev/null", "/dev/zero", System.tmp_dir!(), "/"] do
        assert {:error, reason} = Model.load(path)
        assert match?({:not_regular_file, _, _}, reason) or match?({:file_error, :eisdir, _}, reason)
        assert {:error, reason} = NIF.model_load(path, %{}, nil, nil, nil)
        assert match?({:not_regular_file, _, _}, reason) or match?({:file_error, :eisdir, _}, reason)
        assert_model_works(model)
      end

      assert_works(c.ctx, c.sampler)
    end

    test "token_to_piece_dirty checks its arguments like token_to_piece", %{model: model} do
      assert {:ok, " Once"} = NIF.token_to_piece_dirty(model.ref, 403, false)
      assert {:error, {:invalid_token, _}} = NIF.token_to_piece_dirty(model.ref, 512, false)
      assert_raise ArgumentError, fn -> NIF.token_to_piece_dirty(model.ref, "x", false) end
      assert_raise ArgumentError, fn -> NIF.token_to_piece_dirty(:model, 1, false) end
      assert_model_works(model)
    end
  end
end
