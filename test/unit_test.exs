defmodule LlamaCppEx.UnitTest do
  # Tests that need no model file.
  use ExUnit.Case, async: true

  alias LlamaCppEx.{Chat, Completion, Model}

  test "the native library is loaded and reports its build" do
    assert LlamaCppEx.system_info() =~ "CPU"
    assert %{models: _, contexts: _, samplers: _} = LlamaCppEx.live_objects()
  end

  test "model load errors name the problem" do
    assert {:error, {:file_not_found, "/nonexistent.gguf"}} = Model.load("/nonexistent.gguf")
    path = Path.join(System.tmp_dir!(), "lcx_not_gguf_#{System.unique_integer([:positive])}")
    File.write!(path, "hello, not a model")
    assert {:error, {:not_gguf, ^path}} = Model.load(path)
    File.write!(path, "GGUF" <> :binary.copy(<<0xFF>>, 64))
    assert {:error, {:load_failed, msg}} = Model.load(path)
    assert is_binary(msg) and msg != ""
    File.rm!(path)
    assert {:error, {:file_error, :eisdir, _}} = Model.load(System.tmp_dir!())
  end

  test "model load options are validated" do
    assert_raise ArgumentError, fn -> Model.load("/x.gguf", bogus: 1) end
    assert_raise ArgumentError, fn -> Model.load("/x.gguf", use_mmap: :yes) end
  end

  test "built-in chat templates render without a model" do
    assert "chatml" in Chat.builtin_templates()

    {:ok, prompt} =
      Chat.apply_template(nil, [%{role: "system", content: "Be brief."}, {"user", "Hi"}], template: "chatml")

    assert prompt ==
             "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    assert {:error, :no_template} = Chat.apply_template(nil, [{"user", "Hi"}])
    assert_raise ArgumentError, fn -> Chat.apply_template(nil, [:bad], template: "chatml") end
    assert_raise ArgumentError, fn -> Chat.apply_template(nil, [{"user", <<0xFF>>}], template: "chatml") end
  end

  test "default compute threads leave a core to the schedulers" do
    n = LlamaCppEx.Context.default_threads()
    assert is_integer(n) and n >= 1
    assert n == 1 or n < System.schedulers_online()
  end

  describe "build script" do
    @script Path.expand("../scripts/llama_cpp.sh", __DIR__)

    test "a tarball with the wrong checksum stops the build and is removed" do
      cache = Path.join(System.tmp_dir!(), "lcx_cache_#{System.unique_integer([:positive])}")
      tarball = Path.join([cache, "downloads", "node-llama-cpp-3.22.1.tgz"])
      File.mkdir_p!(Path.dirname(tarball))
      File.write!(tarball, "not the package")
      {out, status} = System.cmd(@script, ["src"], env: [{"LLAMA_CPP_CACHE", cache}], stderr_to_stdout: true)
      assert status != 0
      assert out =~ "checksum mismatch for node-llama-cpp-3.22.1.tgz"
      refute File.exists?(tarball)
      File.rm_rf!(cache)
    end

    test "bad settings are refused with a clear message" do
      {out, status} = System.cmd(@script, ["ensure"], env: [{"LLAMA_BACKEND", "bogus"}], stderr_to_stdout: true)
      assert status != 0 and out =~ "LLAMA_BACKEND must be cpu, cuda, vulkan or metal"
      {out, status} = System.cmd(@script, ["ensure"], env: [{"LLAMA_CPP_SRC", "/nonexistent"}], stderr_to_stdout: true)
      assert status != 0 and out =~ "has no include/llama.h"
    end
  end

  test "completion rates" do
    c = %Completion{prompt_tokens: 10, prompt_ms: 5.0, generated_tokens: 100, generation_ms: 50.0}
    assert Completion.prompt_tokens_per_second(c) == 2000.0
    assert Completion.tokens_per_second(c) == 2000.0
    assert Completion.tokens_per_second(%Completion{}) == 0.0
  end

  test "native log level can be changed" do
    level = LlamaCppEx.Log.level()
    assert :ok = LlamaCppEx.Log.set_level(:debug)
    assert LlamaCppEx.Log.level() == :debug
    assert :ok = LlamaCppEx.Log.set_level(level)
    assert_raise ArgumentError, fn -> LlamaCppEx.Log.set_level(:loud) end
  end

  test "native functions reject wrong terms with ArgumentError" do
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.context_decode(make_ref(), [1]) end
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.tokenize(:model, "x", true, false) end
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.model_load(<<"a", 0, "b">>, %{}, nil, nil, nil) end
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.chat_apply_template("chatml", [{1, 2}], true) end
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.stream_cancel(self()) end
    assert_raise ArgumentError, fn -> LlamaCppEx.NIF.set_log_handler(:x, 3) end
  end
end
