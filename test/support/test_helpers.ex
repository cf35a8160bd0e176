defmodule LlamaCppEx.TestHelpers do
  @moduledoc false
  # Paths shared by the test suites. Models are never copied into the repo.

  @default_model Path.expand("../../../shared/models/stories260K.gguf", __DIR__)
  @default_random Path.expand("../../../shared/models/llama-2-tiny-random.gguf", __DIR__)

  @doc "stories260K.gguf (override with LLAMA_TEST_MODEL)."
  def model_path, do: System.get_env("LLAMA_TEST_MODEL") || @default_model

  @doc "The 32k-vocab random llama (override with LLAMA_TEST_RANDOM_MODEL)."
  def random_model_path, do: System.get_env("LLAMA_TEST_RANDOM_MODEL") || @default_random

  @doc """
  The deterministic test LoRA adapter for stories260K, generated into the
  cache by bench/gen_lora.sh when it is missing (never in the repository).
  """
  def lora_path do
    script = Path.expand("../../bench/gen_lora.sh", __DIR__)

    case System.cmd(script, [model_path()], stderr_to_stdout: false) do
      {out, 0} -> out |> String.trim() |> String.split("\n") |> List.last()
      {out, rc} -> raise "bench/gen_lora.sh failed (#{rc}): #{out}"
    end
  end

  @doc """
  The bin directory of llama.cpp's reference tools built from the pinned
  source (`scripts/llama_cpp.sh tools`), building them if needed. One build
  at a time: test modules run concurrently, and a tool relinked while another
  runs it is not the tool.
  """
  def llama_tools!(tools) do
    script = Path.expand("../../scripts/llama_cpp.sh", __DIR__)

    :global.trans({__MODULE__.LlamaTools, self()}, fn ->
      case System.cmd(script, ["tools" | tools], stderr_to_stdout: false) do
        {out, 0} -> out |> String.trim() |> String.split("\n") |> List.last()
        {out, rc} -> raise "scripts/llama_cpp.sh tools failed (#{rc}): #{out}"
      end
    end)
  end

  @doc "The path of one reference tool (see `llama_tools!/1`)."
  def llama_tool!(name), do: Path.join(llama_tools!([name]), name)

  @doc """
  The text llama.cpp's `llama-completion` generates with `args` (its log
  dropped, the trailing blank line it always prints removed). Now and then,
  on a loaded machine, its output comes back without its last bytes (1 of 6
  parallel runs here): such a run is repeated, so only complete outputs are
  compared.
  """
  def llama_completion!(args, tries \\ 3) do
    bin = llama_tool!("llama-completion")
    {out, 0} = System.cmd("sh", ["-c", ~s(exec "$0" "$@" 2>/dev/null), bin | args])

    cond do
      String.ends_with?(out, "\n\n") -> binary_part(out, 0, byte_size(out) - 2)
      tries > 1 -> llama_completion!(args, tries - 1)
      true -> raise "llama-completion's output is cut: ...#{inspect(String.slice(out, -80, 80))}"
    end
  end

  @doc "The llama.cpp source checkout the NIF was built from, or nil."
  def llama_src do
    case System.get_env("LLAMA_CPP_SRC") do
      nil ->
        script = Path.expand("../../scripts/llama_cpp.sh", __DIR__)

        case System.cmd(script, ["src"], stderr_to_stdout: false) do
          {out, 0} -> out |> String.trim() |> String.split("\n") |> List.last()
          _ -> nil
        end

      src ->
        src
    end
  end

  @doc """
  The environment of a child VM that loads the NIF: under
  scripts/test_asan.sh, the sanitizer runtimes the test VM was started with
  (test_helper.exs keeps them from the other tools the tests start).
  """
  def child_vm_env do
    case :persistent_term.get({__MODULE__, :preload}, nil) do
      nil -> []
      preload -> [{"LD_PRELOAD", preload}]
    end
  end

  @doc "A valid options map for LlamaCppEx.NIF.context_create/2 (merged with overrides)."
  def native_ctx_opts(overrides \\ %{}) do
    Map.merge(
      %{
        n_ctx: 256,
        n_batch: 64,
        n_ubatch: 64,
        n_threads: 1,
        n_threads_batch: 1,
        n_seq_max: 1,
        embeddings: false,
        flash_attn: -1,
        type_k: :f16,
        type_v: :f16,
        pooling: -1
      },
      overrides
    )
  end

  @doc "Loads the test model once per test module."
  def load_model!(path \\ model_path(), opts \\ []) do
    {:ok, model} = LlamaCppEx.Model.load(path, opts)
    model
  end

  @doc """
  Live native object counts once earlier tests' garbage is gone: collects
  every process and waits until the janitor thread has freed what that
  released (the counts stop changing).
  """
  def settled_live_objects do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    settle(LlamaCppEx.live_objects(), 0)
  end

  defp settle(counts, stable) when stable >= 3, do: counts

  defp settle(counts, stable) do
    Process.sleep(10)

    case LlamaCppEx.live_objects() do
      ^counts -> settle(counts, stable + 1)
      other -> settle(other, 0)
    end
  end

  @doc "Waits until fun returns true, up to timeout ms."
  def eventually(fun, timeout \\ 2000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline)
  end

  defp do_eventually(fun, deadline) do
    cond do
      fun.() -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> Process.sleep(5) && do_eventually(fun, deadline)
    end
  end
end
