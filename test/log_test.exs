defmodule LlamaCppEx.LogTest do
  # llama.cpp's log lines reach Logger through LlamaCppEx.Log. Needs no model.
  # async: false: the native log level is global (test_helper.exs sets it to
  # :none for every other test).
  use ExUnit.Case, async: false

  alias LlamaCppEx.Model

  # An Erlang :logger handler (Elixir's Logger runs on :logger) that sends
  # every event to the test process, so the test can wait for the lines.
  defmodule Forward do
    @moduledoc false
    def log(event, %{config: %{pid: pid}}), do: send(pid, {:logged, event})
  end

  setup do
    level = LlamaCppEx.Log.level()
    :ok = :logger.add_handler(:lcx_log_test, Forward, %{config: %{pid: self()}})

    on_exit(fn ->
      :logger.remove_handler(:lcx_log_test)
      LlamaCppEx.Log.set_level(level)
    end)
  end

  # A file that passes the Elixir magic check; llama.cpp rejects its version.
  defp bad_gguf do
    path = Path.join(System.tmp_dir!(), "lcx_log_test_#{System.unique_integer([:positive])}.gguf")
    File.write!(path, "GGUF" <> :binary.copy(<<0xFF>>, 64))
    on_exit(fn -> File.rm(path) end)
    path
  end

  # The llama.cpp lines logged until none has come for `quiet` ms.
  defp llama_lines(quiet) do
    receive do
      {:logged, %{meta: %{source: :llama_cpp}} = e} ->
        [{e.level, e.msg |> elem(1) |> IO.chardata_to_string()} | llama_lines(quiet)]
    after
      quiet -> []
    end
  end

  test "llama.cpp's lines reach Logger at the set level, one event per line" do
    :ok = LlamaCppEx.Log.set_level(:none)
    path = bad_gguf()
    assert {:error, {:load_failed, msg}} = Model.load(path)
    # the error reason explains, whatever the level
    assert msg =~ "version"
    assert llama_lines(300) == []

    :ok = LlamaCppEx.Log.set_level(:error)
    assert {:error, {:load_failed, _}} = Model.load(bad_gguf())
    assert [_ | _] = lines = llama_lines(300)

    for {level, text} <- lines do
      assert level == :error
      assert text =~ ~r/^\[llama\.cpp\] \S/
      refute text =~ "\n"
    end

    assert Enum.any?(lines, fn {_, text} -> text =~ "version" end)
    # llama.cpp opens the file we checked and opened (/proc/self/fd/N), not the path again
    assert Enum.any?(lines, fn {_, text} -> text =~ "failed to load model" end)
  end
end
