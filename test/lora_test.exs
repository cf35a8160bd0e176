defmodule LlamaCppEx.LoraTest do
  # async: false: compares LlamaCppEx.live_objects() counts
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Lora, Model, NIF, Sampler, Server, Tokenizer}
  alias LlamaCppEx.Server.Batch

  @prompt "Once upon a time"
  @n 40

  setup_all do
    model = load_model!()
    path = lora_path()
    {:ok, lora} = Lora.load(model, path)
    {:ok, base} = LlamaCppEx.generate(model, @prompt, greedy([]))
    %{model: model, lora: lora, path: path, base: base}
  end

  defp greedy(opts), do: [max_tokens: @n, temp: 0.0, n_threads: 1, flash_attn: false] ++ opts

  defp gen(model, opts), do: LlamaCppEx.generate(model, @prompt, greedy(opts))

  # generates with a context of our own (its adapters as they are set)
  defp ctx_gen(ctx) do
    {:ok, sampler} = Sampler.create(ctx.model, temp: 0.0)
    {:ok, tokens} = Tokenizer.encode(ctx.model, @prompt)
    :ok = Context.clear(ctx)
    {:ok, c} = Context.generate(ctx, sampler, tokens, max_tokens: @n)
    Sampler.free(sampler)
    c.text
  end

  # every step's events, until the engine has nothing left to do
  defp run_steps(engine, acc) do
    case Batch.step(engine, []) do
      {:ok, [], %{tokens: 0}} -> Enum.reverse(acc)
      {:ok, events, _} -> run_steps(engine, [events | acc])
    end
  end

  defp tmp_file(name, bytes) do
    path = Path.join(System.tmp_dir!(), "lcx-lora-#{System.unique_integer([:positive])}-#{name}")
    File.write!(path, bytes)
    on_exit(fn -> File.rm(path) end)
    path
  end

  describe "load/2" do
    test "reads the adapter's metadata", %{lora: lora, path: path, model: model} do
      assert %Lora{alpha: 4.0, n_invocation_tokens: 0, path: ^path, model: ^model} = lora
    end

    test "an adapter pins its model and is freed with its last user", %{model: model, lora: lora, path: path} do
      before = settled_live_objects()
      {:ok, adapted} = gen(model, lora: [{lora, 1.0}])

      task =
        Task.async(fn ->
          {:ok, own} = Model.load(model_path())
          {:ok, own_lora} = Lora.load(own, path)
          assert LlamaCppEx.live_objects().loras == before.loras + 1
          {:ok, ctx} = Context.create(own, n_ctx: 256, n_threads: 1, flash_attn: false, lora: [{own_lora, 1.0}])
          {:ok, sampler} = Sampler.create(own, temp: 0.0)
          {:ok, tokens} = Tokenizer.encode(own, @prompt)
          # the model is closed for new work; the context and its adapter still run
          :ok = Model.free(own)
          assert {:error, :closed} = Lora.load(own, path)
          assert {:ok, c} = Context.generate(ctx, sampler, tokens, max_tokens: @n)
          c.text
        end)

      assert Task.await(task) == adapted
      assert eventually(fn -> settled_live_objects() == before end, 5000)
    end
  end

  describe "scales" do
    test "scale 0 is the base model, scale 1 changes the greedy text", %{model: model, lora: lora, base: base} do
      assert {:ok, ^base} = gen(model, lora: [{lora, 0}])
      assert {:ok, ^base} = gen(model, lora: [])
      assert {:ok, adapted} = gen(model, lora: [{lora, 1.0}])
      assert adapted != base
      assert {:ok, half} = gen(model, lora: [{lora, 0.5}])
      assert half != base and half != adapted
    end

    test "Context.create(lora:) and set_lora/2 switch adapters on one context",
         %{model: model, lora: lora, base: base} do
      {:ok, adapted} = gen(model, lora: [{lora, 1.0}])
      {:ok, half} = gen(model, lora: [{lora, 0.5}])
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1, flash_attn: false, lora: [{lora, 1.0}])
      assert ctx_gen(ctx) == adapted
      assert :ok = Context.set_lora(ctx, [])
      assert ctx_gen(ctx) == base
      assert :ok = Context.set_lora(ctx, [{lora, 0.5}])
      assert ctx_gen(ctx) == half
      assert :ok = Context.set_lora(ctx, [{lora, 0.5}])
      assert ctx_gen(ctx) == half
      assert :ok = Context.set_lora(ctx, [{lora, 0.0}])
      assert ctx_gen(ctx) == base
      Context.free(ctx)
      assert {:error, :closed} = Context.set_lora(ctx, [{lora, 1.0}])
    end
  end

  test "set_lora/2 while a stream holds the context is :busy, and changes nothing", %{model: model, lora: lora} do
    {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1, flash_attn: false)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    {:ok, tokens} = Tokenizer.encode(model, @prompt)
    # with 200 tokens to go, the stream's thread holds the context past its first chunk
    results =
      ctx
      |> Context.stream(sampler, tokens, max_tokens: 200)
      |> Stream.take(1)
      |> Enum.map(fn _ -> Context.set_lora(ctx, [{lora, 1.0}]) end)

    assert results == [{:error, :busy}]
    {:ok, base} = gen(model, [])
    assert ctx_gen(ctx) == base
    Sampler.free(sampler)
    Context.free(ctx)
  end

  test "adapters loaded and collected while other contexts of the model are made and switch adapters", %{
    model: model,
    lora: lora,
    path: path,
    base: base
  } do
    {:ok, adapted} = gen(model, lora: [{lora, 1.0}])

    loader =
      Task.async(fn ->
        for _ <- 1..30 do
          {:ok, _dropped} = Lora.load(model, path)
          :erlang.garbage_collect()
        end
      end)

    users =
      for _ <- 1..2 do
        Task.async(fn ->
          for i <- 1..10 do
            {set, expected} = if rem(i, 2) == 0, do: {[], base}, else: {[{lora, 1.0}], adapted}
            {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1, flash_attn: false, lora: set)
            assert ctx_gen(ctx) == expected
            :ok = Context.set_lora(ctx, if(set == [], do: [{lora, 1.0}], else: []))
            assert ctx_gen(ctx) == if(set == [], do: adapted, else: base)
            Context.free(ctx)
          end
        end)
      end

    Task.await_many([loader | users], 60_000)
  end

  describe "bad input" do
    test "a missing file, a directory, a non-GGUF file", %{model: model, base: base} do
      assert {:error, {:file_not_found, "/nonexistent/a.gguf"}} = Lora.load(model, "/nonexistent/a.gguf")
      dir = System.tmp_dir!()
      assert {:error, {:file_error, :eisdir, ^dir}} = Lora.load(model, dir)
      junk = tmp_file("junk.gguf", :binary.copy("not a gguf file ", 64))
      assert {:error, {:not_gguf, ^junk}} = Lora.load(model, junk)
      # and the NIF itself, called directly
      assert {:error, {:file_not_found, _}} = NIF.lora_load(model.ref, "/nonexistent/a.gguf")
      assert_raise ArgumentError, fn -> NIF.lora_load(model.ref, "") end
      assert_raise ArgumentError, fn -> NIF.lora_load(make_ref(), "/x") end
      assert {:ok, ^base} = gen(model, [])
    end

    test "an adapter for another model", %{path: path, model: model, base: base} do
      random = load_model!(random_model_path())
      assert {:error, {:load_failed, msg}} = Lora.load(random, path)
      assert msg =~ "shape"
      assert {:ok, _} = LlamaCppEx.generate(random, "Hello", max_tokens: 4, temp: 0.0, n_threads: 1)
      # a model file is not an adapter
      assert {:error, {:load_failed, msg}} = Lora.load(model, model_path())
      assert msg =~ "adapter"
      assert {:ok, ^base} = gen(model, [])
    end

    test "corrupt and truncated adapters", %{path: path, model: model, base: base} do
      bytes = File.read!(path)
      size = byte_size(bytes)

      for cut <- [8, 64, div(size, 2), size - 16] do
        truncated = tmp_file("cut#{cut}.gguf", binary_part(bytes, 0, cut))
        assert {:error, {:load_failed, _}} = Lora.load(model, truncated), "cut at #{cut}"
      end

      # the tensor count and a tensor's dimension count overwritten
      <<head::binary-size(8), _n_tensors::little-64, rest::binary>> = bytes
      huge = tmp_file("count.gguf", <<head::binary, 0xFFFFFFFF::little-64, rest::binary>>)
      assert {:error, {:load_failed, _}} = Lora.load(model, huge)
      # metadata values changed in place (GGUF strings: u32 type 8, u64 length, bytes)
      edit = fn name, from, to ->
        assert :binary.match(bytes, from) != :nomatch
        tmp_file(name, String.replace(bytes, from, to, global: false))
      end

      str = fn key, value -> key <> <<8::little-32, byte_size(value)::little-64>> <> value end
      not_lora = edit.("type.gguf", str.("adapter.type", "lora"), str.("adapter.type", "lorb"))
      assert {:error, {:load_failed, msg}} = Lora.load(model, not_lora)
      assert msg =~ "adapter.type"
      arch = edit.("arch.gguf", str.("general.architecture", "llama"), str.("general.architecture", "qwen2"))
      assert {:error, {:load_failed, msg}} = Lora.load(model, arch)
      assert msg =~ "arch"
      # adapter.lora.alpha typed u32 instead of f32: llama.cpp's gguf_get_val_f32
      # asserts on the type; the barrier turns that into an error
      alpha = edit.("alpha.gguf", "adapter.lora.alpha" <> <<6::little-32>>, "adapter.lora.alpha" <> <<4::little-32>>)
      assert {:error, {:load_failed, msg}} = Lora.load(model, alpha)
      assert msg =~ "assert"
      garbled = tmp_file("garbled.gguf", binary_part(bytes, 0, 24) <> :binary.copy(<<0xFF>>, size - 24))
      assert {:error, {:load_failed, _}} = Lora.load(model, garbled)
      assert {:ok, ^base} = gen(model, [])
    end

    test "an adapter of another model passed to a context, the facade and set_lora", %{lora: lora, base: base} do
      other = load_model!()
      assert_raise ArgumentError, ~r/another model/, fn -> Context.create(other, n_ctx: 256, lora: [{lora, 1.0}]) end
      assert_raise ArgumentError, ~r/another model/, fn -> gen(other, lora: [{lora, 1.0}]) end
      {:ok, ctx} = Context.create(other, n_ctx: 256, n_threads: 1, flash_attn: false)
      assert_raise ArgumentError, ~r/another model/, fn -> Context.set_lora(ctx, [{lora, 1.0}]) end
      # past the Elixir checks, the NIF refuses it too
      assert {:error, :model_mismatch} = NIF.context_set_lora(ctx.ref, [{lora.ref, 1.0}])
      assert {:error, :model_mismatch} = NIF.context_create(other.ref, native_ctx_opts(%{lora: [{lora.ref, 1.0}]}))
      assert ctx_gen(ctx) == base
      Context.free(ctx)
    end

    test "bad scales and shapes", %{model: model, lora: lora, base: base} do
      {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1, flash_attn: false)

      for bad <- [[{lora, :one}], [{lora, "1"}], [{lora, 1.0e39}], [{lora, 1.0}, {lora, 0.5}], [lora], :x, [{1, 1}]] do
        assert_raise ArgumentError, fn -> Context.set_lora(ctx, bad) end
        assert_raise ArgumentError, fn -> gen(model, lora: bad) end
      end

      assert_raise ArgumentError, fn -> Context.set_lora(ctx, List.duplicate({lora, 1.0}, 9)) end

      for bad <- [[{lora.ref, :one}], [{lora.ref, 1.0e39}], [{lora.ref, 1.0}, {lora.ref, 2.0}], [{make_ref(), 1.0}], :x] do
        assert_raise ArgumentError, fn -> NIF.context_set_lora(ctx.ref, bad) end
        assert_raise ArgumentError, fn -> NIF.context_create(model.ref, native_ctx_opts(%{lora: bad})) end
      end

      assert ctx_gen(ctx) == base
      assert_raise ArgumentError, ~r/set_lora/, fn -> gen(model, context: ctx, lora: [{lora, 1.0}]) end
      Context.free(ctx)
    end
  end

  describe "server" do
    test "requests with different adapters each get their own output", %{model: model, lora: lora, base: base} do
      {:ok, adapted} = gen(model, lora: [{lora, 1.0}])
      {:ok, half} = gen(model, lora: [{lora, 0.5}])
      server = start_supervised!({Server, model: model, n_parallel: 3, n_ctx: 256, n_batch: 64, n_threads: 1})

      cases = [
        {[{lora, 1.0}], adapted},
        {[], base},
        {[{lora, 0.5}], half},
        {[{lora, 1.0}], adapted},
        {[{lora, 0.0}], base},
        {[{lora, 0.5}], half}
      ]

      results =
        cases
        |> Enum.map(fn {set, _} ->
          Task.async(fn -> Server.generate(server, @prompt, max_tokens: @n, temp: 0.0, lora: set) end)
        end)
        |> Task.await_many(60_000)

      for {{set, expected}, result} <- Enum.zip(cases, results) do
        assert result == {:ok, expected}, "lora #{inspect(Enum.map(set, &elem(&1, 1)))}"
      end

      # the prefix cache does not hand cells computed under one adapter to another
      for {set, expected} <- cases do
        assert {:ok, ^expected} = Server.generate(server, @prompt, max_tokens: @n, temp: 0.0, lora: set)
      end
    end

    test "the engine: a step decodes one adapter set, the oldest slot's; sets switch only when needed", %{
      model: model,
      lora: lora,
      base: base
    } do
      {:ok, adapted} = gen(model, lora: [{lora, 1.0}])
      {:ok, ctx} = Context.create(model, n_ctx: 1024, n_seq_max: 4, n_batch: 64, n_threads: 1, flash_attn: false)
      {:ok, engine} = Batch.new(ctx, n_slots: 4, n_batch: 64, n_ctx_slot: 256)
      {:ok, tokens} = Tokenizer.encode(model, @prompt)
      opts = %{max_tokens: @n, stop: [], stream: true, src: 0, reuse: 0}
      # admission order: slot 0 (adapter), 1 (none), 2 (adapter), 3 (none)
      for {slot, set} <- [{0, [{lora.ref, 1.0}]}, {1, []}, {2, [{lora.ref, 1.0}]}, {3, []}] do
        {:ok, s} = Sampler.create(model, temp: 0.0)
        assert {:ok, 0} = Batch.admit(engine, slot, s, tokens, Map.put(opts, :lora, set))
      end

      steps = run_steps(engine, [])
      # the slots that had events in each step: slots 0 and 2 (the oldest's set)
      # until they are done, then 1 and 3; never a mix
      slots_per_step = for events <- steps, do: events |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> Enum.sort()
      {first, rest} = Enum.split_while(slots_per_step, &(&1 == [0, 2]))
      assert length(first) == @n, inspect(slots_per_step)
      assert Enum.all?(rest, &(&1 == [1, 3])), inspect(slots_per_step)
      assert length(rest) == @n
      done = for events <- steps, {:done, slot, {:ok, %{text: t}}} <- events, into: %{}, do: {slot, t}
      assert done == %{0 => adapted, 1 => base, 2 => adapted, 3 => base}
      # the adapter for slots 0 and 2, then none for 1 and 3: two switches, not one per step
      assert {:ok, %{lora_switches: 2}} = Batch.info(engine)
      # adapters of another model, or bad scales, are refused at admission; the slot stays free
      other = load_model!()
      {:ok, lora2} = Lora.load(other, lora.path)
      {:ok, s} = Sampler.create(model, temp: 0.0)
      assert {:error, :model_mismatch} = Batch.admit(engine, 0, s, tokens, Map.put(opts, :lora, [{lora2.ref, 1.0}]))
      assert_raise ArgumentError, fn -> Batch.admit(engine, 0, s, tokens, Map.put(opts, :lora, [{lora.ref, :x}])) end
      assert {:ok, 0} = Batch.admit(engine, 0, s, tokens, opts)
    end

    test "an adapter of another model is refused before it reaches the server", %{lora: lora} do
      other = load_model!()
      server = start_supervised!({Server, model: other, n_parallel: 2, n_ctx: 256, n_threads: 1})
      assert_raise ArgumentError, ~r/another model/, fn -> Server.generate(server, @prompt, lora: [{lora, 1.0}]) end
      assert_raise ArgumentError, fn -> Server.generate(server, @prompt, lora: [{lora, :x}]) end
      assert {:ok, _} = Server.generate(server, @prompt, max_tokens: 4, temp: 0.0)
    end
  end

  @tag :conformance
  test "greedy output at scale 1 equals llama-completion --lora", %{model: model, lora: lora, path: path} do
    args =
      ["-m", model_path(), "--lora", path, "-p", @prompt, "-n", "#{@n}", "--temp", "0", "-t", "1", "-c", "256"] ++
        ~w(-no-cnv --no-display-prompt --simple-io --no-warmup)

    expected = llama_completion!(args)

    assert {:ok, ^expected} =
             LlamaCppEx.generate(model, @prompt,
               max_tokens: @n,
               temp: 0.0,
               n_threads: 1,
               n_ctx: 256,
               lora: [{lora, 1.0}]
             )
  end
end
