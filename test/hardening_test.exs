# Regression tests for issue 7 ("Hardening from an adversarial pass"): each
# describe block is one item; each test failed before its fix.
#
# async: false: some tests occupy dirty schedulers, measure time or RSS, or
# count live objects.
defmodule LlamaCppEx.HardeningTest do
  use ExUnit.Case, async: false

  @moduletag :capture_log

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Model, NIF}

  defp tmp_path(name), do: Path.join(System.tmp_dir!(), "lcx_#{name}_#{System.unique_integer([:positive])}")

  # Runs fun in a task; returns {:ok, result} or :timeout.
  defp within(ms, fun) do
    task = Task.async(fun)

    case Task.yield(task, ms) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> {:ok, result}
      _ -> :timeout
    end
  end

  # A load stuck opening a FIFO for reading waits for a writer: be one (from
  # a shell: every dirty IO scheduler may be stuck), so a failing test does
  # not leave the schedulers blocked for the rest of the run.
  defp unblock_fifo(path), do: sh("timeout 1 sh -c 'exec 3>#{path}; sleep 0.2'")

  # A shell command through a port: unlike System.cmd and File, it needs no
  # dirty IO scheduler (in a failing run they may all be blocked).
  defp sh(cmd) do
    port = Port.open({:spawn, cmd}, [:exit_status])

    receive do
      {^port, {:exit_status, status}} -> status
    after
      5000 -> :timeout
    end
  end

  defp rm(path), do: sh("rm -f #{path}")

  describe "item 4: model paths that are not regular files" do
    setup do
      fifo = tmp_path("fifo")
      0 = sh("mkfifo #{fifo}")

      on_exit(fn ->
        # free any load still blocked in open(2) on the FIFO, then remove it
        unblock_fifo(fifo)
        rm(fifo)
      end)

      %{fifo: fifo}
    end

    test "a FIFO is refused at once, from Model.load and from the NIF", %{fifo: fifo} do
      assert {:ok, {:error, {:not_regular_file, :other, ^fifo}}} = within(2000, fn -> Model.load(fifo) end)
      # the native layer checks by itself, without blocking
      assert {:ok, {:error, {:not_regular_file, :other, ^fifo}}} =
               within(2000, fn -> NIF.model_load(fifo, %{}, nil, nil, nil) end)
    end

    test "many FIFO loads at once leave the dirty IO schedulers free", %{fifo: fifo} do
      n = :erlang.system_info(:dirty_io_schedulers) + 1
      tasks = for _ <- 1..n, do: Task.async(fn -> Model.load(fifo) end)
      results = Task.yield_many(tasks, 3000)
      assert Enum.all?(results, &match?({_, {:ok, {:error, {:not_regular_file, _, _}}}}, &1))
      # an unrelated file read still gets a dirty IO scheduler
      assert {:ok, {:ok, _}} = within(2000, fn -> File.read(__ENV__.file) end)
    end

    @tag :model
    test "a symlink to a FIFO is refused; a symlink to a model loads", %{fifo: fifo} do
      link = tmp_path("link")
      File.ln_s!(fifo, link)
      on_exit(fn -> rm(link) end)
      assert {:ok, {:error, {:not_regular_file, :other, ^link}}} = within(2000, fn -> Model.load(link) end)

      good = tmp_path("good_link")
      File.ln_s!(model_path(), good)
      on_exit(fn -> rm(good) end)
      assert {:ok, %Model{}} = Model.load(good, vocab_only: true)
    end

    test "directories, devices and sockets are refused" do
      dir = System.tmp_dir!()
      assert {:error, {:file_error, :eisdir, ^dir}} = Model.load(dir)
      assert {:error, {:file_error, :eisdir, ^dir}} = NIF.model_load(dir, %{}, nil, nil, nil)

      assert {:ok, {:error, {:not_regular_file, :device, "/dev/zero"}}} =
               within(2000, fn -> Model.load("/dev/zero") end)

      assert {:ok, {:error, {:not_regular_file, :device, "/dev/zero"}}} =
               within(2000, fn -> NIF.model_load("/dev/zero", %{}, nil, nil, nil) end)

      sock = tmp_path("sock")
      {:ok, listener} = :gen_tcp.listen(0, ifaddr: {:local, String.to_charlist(sock)})
      on_exit(fn -> rm(sock) end)
      assert {:ok, {:error, {:not_regular_file, :other, ^sock}}} = within(2000, fn -> Model.load(sock) end)

      assert {:ok, {:error, {:not_regular_file, :other, ^sock}}} =
               within(2000, fn -> NIF.model_load(sock, %{}, nil, nil, nil) end)

      :gen_tcp.close(listener)
    end

    test "the native layer checks the GGUF magic itself" do
      path = tmp_path("not_gguf")
      File.write!(path, "not a model at all")
      on_exit(fn -> rm(path) end)
      assert {:error, {:not_gguf, ^path}} = NIF.model_load(path, %{}, nil, nil, nil)

      assert {:error, {:file_not_found, "/nonexistent/x.gguf"}} =
               NIF.model_load("/nonexistent/x.gguf", %{}, nil, nil, nil)
    end
  end
end
