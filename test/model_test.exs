# LlamaCppEx.Model: loading, introspection, load errors, progress, vocab_only,
# explicit free and the model's lifetime under its contexts.
#
# async: false because several tests compare LlamaCppEx.live_objects() counts,
# which are global to the VM (ExUnit runs sync modules after all async ones,
# one at a time).
defmodule LlamaCppEx.ModelTest do
  use ExUnit.Case, async: false

  @moduletag :model
  # llama.cpp logs errors for every corrupt file below; keep them out of the output.
  @moduletag :capture_log

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Model, NIF, Sampler, Tokenizer}

  # Greedy continuation of "Once upon a time" by stories260K (see
  # test/support/reference_outputs.md): the first 8 tokens.
  @prompt_tokens [1, 403, 407, 261, 378]
  @greedy_8 ", there was a little girl"

  setup_all do
    %{model: load_model!()}
  end

  defp tmp_file(name, data) do
    path = Path.join(System.tmp_dir!(), "llama_cpp_ex_model_test_#{System.unique_integer([:positive])}_#{name}")
    File.write!(path, data)
    on_exit(fn -> File.rm(path) end)
    path
  end

  # Generates 8 greedy tokens after "Once upon a time" with fresh objects.
  defp assert_model_works(model) do
    # one thread: the result does not depend on it, and it keeps the check fast on a busy machine
    assert {:ok, @greedy_8} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 8, temp: 0.0, n_threads: 1)
  end

  # llama.cpp's log lines reach Logger through the LlamaCppEx.Log process; a
  # call to it returns once the lines already sent are logged, so they fall
  # inside the test's log capture instead of spilling into the output later.
  defp sync_native_log, do: LlamaCppEx.Log.level()

  defp collect(tag) do
    receive do
      {^tag, p} -> [p | collect(tag)]
    after
      0 -> []
    end
  end

  describe "introspection" do
    test "load returns a model struct with the facts of stories260K", %{model: model} do
      assert %Model{} = model
      assert model.path == model_path()
      assert model.vocab_only == false
      assert is_reference(model.ref)
    end

    test "every accessor", %{model: model} do
      desc = Model.desc(model)
      assert is_binary(desc) and desc =~ "llama"
      # stories260K is all F32: 4 bytes per parameter
      assert Model.n_params(model) == 292_800
      assert Model.size(model) == 4 * Model.n_params(model)
      assert Model.size(model) < File.stat!(model_path()).size
      assert Model.n_ctx_train(model) == 2048
      assert Model.n_embd(model) == 64
      assert Model.n_layer(model) == 5
      assert Model.n_head(model) == 8
      assert model.n_head_kv == 4
      assert Model.n_vocab(model) == 512
      assert Model.architecture(model) == "llama"
      # stories260K has no tokenizer.chat_template
      assert Model.chat_template(model) == nil
      assert Model.chat_template(model, "tool_use") == nil
    end

    test "metadata is the map of GGUF key/values as strings", %{model: model} do
      assert {:ok, meta} = Model.metadata(model)
      assert meta["general.architecture"] == "llama"
      assert meta["llama.block_count"] == "5"
      assert meta["llama.context_length"] == "2048"
      assert meta["llama.embedding_length"] == "64"
      assert meta["tokenizer.ggml.model"] == "llama"
      assert meta["tokenizer.ggml.bos_token_id"] == "1"
      assert meta["tokenizer.ggml.eos_token_id"] == "2"
      refute Map.has_key?(meta, "tokenizer.chat_template")
      assert Enum.all?(meta, fn {k, v} -> is_binary(k) and is_binary(v) end)
    end

    test "inspect names the file", %{model: model} do
      assert inspect(model) =~ "stories260K.gguf"
      assert inspect(model) =~ "n_vocab: 512"
    end

    test "loading without mmap gives the same model" do
      {:ok, m} = Model.load(model_path(), use_mmap: false, n_gpu_layers: -1)

      try do
        assert Model.n_params(m) == 292_800
        assert_model_works(m)
      after
        Model.free(m)
      end
    end

    test "a charlist path is accepted" do
      {:ok, m} = Model.load(String.to_charlist(model_path()))
      assert m.path == model_path()
      Model.free(m)
    end
  end

  describe "load errors" do
    test "missing file" do
      path = Path.join(System.tmp_dir!(), "llama_cpp_ex_no_such_model_#{System.unique_integer([:positive])}.gguf")
      assert Model.load(path) == {:error, {:file_not_found, path}}
    end

    test "a directory" do
      dir = System.tmp_dir!()
      assert {:error, {:file_error, :eisdir, ^dir}} = Model.load(dir)
    end

    test "a file that is not GGUF" do
      path = tmp_file("plain.txt", "this is plain text, not a GGUF model\n")
      assert Model.load(path) == {:error, {:not_gguf, path}}
      empty = tmp_file("empty.gguf", "")
      assert Model.load(empty) == {:error, {:not_gguf, empty}}
    end

    test "the real model truncated to its first 4 KB", %{model: model} do
      <<head::binary-size(4096), _::binary>> = File.read!(model_path())
      path = tmp_file("truncated.gguf", head)
      assert {:error, {:load_failed, msg}} = Model.load(path)
      assert is_binary(msg) and msg != ""
      # llama.cpp's own explanation, not only its generic last line
      assert msg =~ "key-value pairs"
      # the VM and the already loaded model are unaffected
      assert_model_works(model)
      sync_native_log()
    end

    test "the real model with its tensor data cut short" do
      bin = File.read!(model_path())
      path = tmp_file("cut.gguf", binary_part(bin, 0, byte_size(bin) - 1024))
      assert {:error, {:load_failed, msg}} = Model.load(path)
      assert msg =~ "not within the file bounds"
      sync_native_log()
    end

    test "GGUF magic followed by garbage", %{model: model} do
      garbage = for i <- 1..4096, into: <<>>, do: <<rem(i * 7919, 256)>>
      path = tmp_file("garbage.gguf", "GGUF" <> garbage)
      assert {:error, {:load_failed, msg}} = Model.load(path)
      assert is_binary(msg) and msg != ""
      assert msg =~ "version"

      # a valid version with absurd counts and lengths must not allocate or crash
      huge =
        "GGUF" <> <<3::little-32, 0::little-64, 1::little-64, 0xFFFFFFFFFFFF::little-64>> <> :binary.copy(<<0>>, 64)

      assert {:error, {:load_failed, msg}} = Model.load(tmp_file("huge.gguf", huge))
      assert msg != ""

      # header only: no architecture
      assert {:error, {:load_failed, msg}} =
               Model.load(tmp_file("empty_v3.gguf", "GGUF" <> <<3::little-32, 0::little-64, 0::little-64>>))

      assert msg =~ "architecture"

      assert_model_works(model)
      sync_native_log()
    end

    test "the native loader checks the file itself (bypassing the Elixir magic check)" do
      path = tmp_file("not_gguf.bin", "hello, this is not a GGUF file at all")
      opts = %{n_gpu_layers: 0, use_mmap: true, use_mlock: false, vocab_only: false}
      # the same reasons as Model.load/2 (the native layer opens and checks the file itself)
      assert {:error, {:not_gguf, ^path}} = NIF.model_load(path, opts, nil, nil, nil)
      assert {:error, {:file_not_found, _}} = NIF.model_load(path <> ".missing", opts, nil, nil, nil)
      assert_raise ArgumentError, fn -> NIF.model_load(<<"a", 0, "b">>, opts, nil, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load("", opts, nil, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load(model_path(), [], nil, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load(model_path(), %{n_gpu_layers: "x"}, nil, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load(model_path(), %{use_mmap: 1}, nil, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load(model_path(), opts, :not_a_handle, nil, nil) end
      assert_raise ArgumentError, fn -> NIF.model_load(model_path(), opts, nil, :not_a_pid, nil) end
      sync_native_log()
    end

    test "failed loads leak nothing" do
      before = settled_live_objects()
      path = tmp_file("t.gguf", binary_part(File.read!(model_path()), 0, 4096))
      for _ <- 1..5, do: assert({:error, {:load_failed, _}} = Model.load(path))
      assert LlamaCppEx.live_objects() == before
      sync_native_log()
    end

    test "a path with a NUL byte is an error, not a crash" do
      assert {:error, {:file_error, _, _}} = Model.load(<<"a", 0, "b.gguf">>)
    end
  end

  describe "progress" do
    test "a function receives increasing floats ending at 1.0" do
      me = self()
      {:ok, m} = Model.load(model_path(), progress: fn p -> send(me, {:progress, p}) end)
      Model.free(m)
      # all calls are delivered before load/2 returns
      values = collect(:progress)
      assert length(values) >= 2
      assert Enum.all?(values, &(is_float(&1) and &1 >= 0.0 and &1 <= 1.0))
      assert values == Enum.sort(values)
      assert List.first(values) < 1.0
      assert List.last(values) == 1.0
    end

    test "a pid receives {:llama_load_progress, p} messages" do
      {:ok, m} = Model.load(model_path(), progress: self())
      Model.free(m)
      values = collect(:llama_load_progress)
      assert length(values) >= 2
      assert values == Enum.sort(values)
      assert List.last(values) == 1.0
    end

    test "a cancelled load handle stops the native loader and leaks nothing" do
      before = settled_live_objects()
      opts = %{n_gpu_layers: 0, use_mmap: true, use_mlock: false, vocab_only: false}

      for _ <- 1..3 do
        handle = NIF.load_handle(self())
        assert :ok = NIF.load_cancel(handle)
        assert NIF.model_load(model_path(), opts, handle, nil, nil) == {:error, :load_cancelled}
      end

      assert LlamaCppEx.live_objects() == before
    end

    test "a callback returning :cancel (or false) cancels the load without leaking" do
      before = settled_live_objects()

      for _ <- 1..5 do
        assert Model.load(model_path(), progress: fn _ -> :cancel end) == {:error, :load_cancelled}
        assert Model.load(model_path(), progress: fn _ -> false end) == {:error, :load_cancelled}
      end

      assert LlamaCppEx.live_objects() == before
    end

    test "a callback returning :cancel either cancels or completes, and never leaks" do
      before = settled_live_objects()

      for _ <- 1..5 do
        case Model.load(model_path(), progress: fn _ -> :cancel end) do
          {:error, :load_cancelled} -> :ok
          {:ok, m} -> Model.free(m)
        end
      end

      assert LlamaCppEx.live_objects() == before
    end

    test "a callback that raises does not break the load" do
      assert {:ok, m} = Model.load(model_path(), progress: fn _ -> raise "boom" end)
      assert_model_works(m)
      Model.free(m)
    end

    test "other progress values raise" do
      assert_raise ArgumentError, fn -> Model.load(model_path(), progress: :yes) end
      assert_raise ArgumentError, fn -> Model.load(model_path(), progress: fn _, _ -> :ok end) end
    end
  end

  describe "vocab_only" do
    test "loads the vocabulary: tokenizes like the full model, but has no weights", %{model: full} do
      assert {:ok, v} = Model.load(model_path(), vocab_only: true)

      try do
        assert v.vocab_only
        assert Model.n_vocab(v) == 512
        assert {:ok, @prompt_tokens} = Tokenizer.encode(v, "Once upon a time")
        assert Tokenizer.encode(v, "The little dog") == Tokenizer.encode(full, "The little dog")
        assert {:ok, "Once upon a time"} = Tokenizer.decode(v, tl(@prompt_tokens))
        assert Tokenizer.special_tokens(v).eos == 2
        assert_raise ArgumentError, ~r/vocab_only/, fn -> Context.create(v) end
        # the native layer refuses too
        assert_raise ArgumentError, fn -> NIF.context_create(v.ref, native_ctx_opts()) end
        assert_raise ArgumentError, fn -> LlamaCppEx.generate(v, "Once", max_tokens: 2) end
      after
        Model.free(v)
      end
    end
  end

  describe "free" do
    test "is idempotent; afterwards the model answers {:error, :closed}" do
      {:ok, m} = Model.load(model_path())
      assert :ok = Model.free(m)
      assert :ok = Model.free(m)
      assert Model.metadata(m) == {:error, :closed}
      assert Tokenizer.encode(m, "Once upon a time") == {:error, :closed}
      assert Tokenizer.decode(m, [403]) == {:error, :closed}
      assert Tokenizer.token_to_piece(m, 403) == {:error, :closed}
      assert Context.create(m) == {:error, :closed}
      assert Sampler.create(m, temp: 0.0) == {:error, :closed}
      assert LlamaCppEx.generate(m, "Once", max_tokens: 2) == {:error, :closed}
      assert LlamaCppEx.Chat.tokenize(m, [{"user", "hi"}], template: "chatml") == {:error, :closed}
      assert Model.chat_template(m, "tool_use") == {:error, :closed}
      assert Tokenizer.special_tokens(m) == {:error, :closed}
      # the cached facts stay readable
      assert Model.n_vocab(m) == 512
    end

    test "a context made before free keeps working; the weights go with the last dependant" do
      before = settled_live_objects()
      {:ok, m} = Model.load(model_path())
      {:ok, ctx} = Context.create(m, n_ctx: 256, n_threads: 1)
      {:ok, sampler} = Sampler.create(m, temp: 0.0)
      assert LlamaCppEx.live_objects().models == before.models + 1

      assert :ok = Model.free(m)
      # still held by the context and the sampler
      assert LlamaCppEx.live_objects().models == before.models + 1

      assert {:ok, %{text: @greedy_8, generated_tokens: 8}} =
               Context.generate(ctx, sampler, @prompt_tokens, max_tokens: 8)

      assert :ok = Context.clear(ctx)
      assert {:ok, %{text: @greedy_8}} = Context.generate(ctx, sampler, @prompt_tokens, max_tokens: 8)

      assert :ok = Context.free(ctx)
      assert LlamaCppEx.live_objects().models == before.models + 1
      assert :ok = Sampler.free(sampler)
      assert eventually(fn -> LlamaCppEx.live_objects() == before end)
    end

    test "garbage collection of a dropped context releases a freed model" do
      before = settled_live_objects()

      task =
        Task.async(fn ->
          {:ok, m} = Model.load(model_path())
          {:ok, _ctx} = Context.create(m, n_ctx: 256)
          :ok = Model.free(m)
          LlamaCppEx.live_objects()
        end)

      during = Task.await(task)
      assert during.models == before.models + 1
      assert during.contexts == before.contexts + 1
      # the task's heap (holding the context) is gone
      assert eventually(fn -> LlamaCppEx.live_objects() == before end)
    end
  end

  describe "options" do
    test "unknown options raise" do
      assert_raise ArgumentError, ~r/unknown keys/, fn -> Model.load(model_path(), bogus: 1) end
      assert_raise ArgumentError, fn -> Model.load(model_path(), n_ctx: 512) end
    end

    test "wrong types raise" do
      assert_raise ArgumentError, ~r/n_gpu_layers/, fn -> Model.load(model_path(), n_gpu_layers: "x") end
      assert_raise ArgumentError, fn -> Model.load(model_path(), n_gpu_layers: 1.5) end
      assert_raise ArgumentError, ~r/use_mmap/, fn -> Model.load(model_path(), use_mmap: 1) end
      assert_raise ArgumentError, ~r/use_mlock/, fn -> Model.load(model_path(), use_mlock: "no") end
      assert_raise ArgumentError, ~r/vocab_only/, fn -> Model.load(model_path(), vocab_only: nil) end
    end
  end

  describe "free ordering" do
    test "contexts and samplers released by GC are freed before the model they read" do
      {:ok, m} = Model.load(model_path())
      before = settled_live_objects()

      # their only references die with this process: destructors queue them
      Task.async(fn ->
        for _ <- 1..20 do
          {:ok, _} = LlamaCppEx.Context.create(m, n_ctx: 256, n_threads: 1)
          {:ok, _} = LlamaCppEx.Sampler.create(m, temp: 0.0)
        end

        :ok
      end)
      |> Task.await()

      # freed at once: the weights must outlive every queued context and sampler
      assert :ok = Model.free(m)
      assert eventually(fn -> LlamaCppEx.live_objects() == %{before | models: before.models - 1} end, 10_000)
    end
  end
end
