defmodule LlamaCppEx.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :llama_cpp_ex,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:llama_cpp_ex] ++ Mix.compilers(),
      deps: [],
      elixirc_paths: elixirc_paths(Mix.env()),
      test_coverage: [summary: [threshold: 0]],
      description: "Elixir bindings for llama.cpp through a C NIF",
      docs: [main: "readme", extras: ["README.md", "docs/architecture.md"]]
    ]
  end

  def application do
    [extra_applications: [:logger, :crypto], mod: {LlamaCppEx.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end

defmodule Mix.Tasks.Compile.LlamaCppEx do
  @moduledoc false
  # Builds the NIF. `scripts/llama_cpp.sh ensure` fetches and builds the pinned
  # llama.cpp static libraries into the user cache when they are missing (and does
  # nothing otherwise); `make` then compiles c_src/ into priv/llama_cpp_ex_nif.so,
  # tracking header dependencies, so only changed C files are rebuilt.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = Path.dirname(__ENV__.file)
    {out, status} = System.cmd(Path.join(root, "scripts/llama_cpp.sh"), ["ensure"], cd: root, stderr_to_stdout: false)

    if status != 0 do
      Mix.raise("building llama.cpp failed (scripts/llama_cpp.sh ensure exited with #{status})")
    end

    vars =
      out
      |> String.split("\n", trim: true)
      |> Enum.flat_map(fn line ->
        case String.split(line, "=", parts: 2) do
          [k, v] -> ["#{k}=#{v}"]
          _ -> []
        end
      end)

    make = System.find_executable("gmake") || System.find_executable("make") || Mix.raise("make not found")

    args = [
      "--no-print-directory",
      "-s",
      "nif",
      "MIX_APP_PATH=#{Mix.Project.app_path()}",
      "PRIV_DIR=#{Path.join(root, "priv")}" | vars
    ]

    case System.cmd(make, args, cd: root, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> {:ok, []}
      {_, code} -> Mix.raise("compiling the NIF failed (make exited with #{code})")
    end
  end

  @impl true
  def clean do
    File.rm_rf!(Path.join(Mix.Project.app_path(), "obj"))
    File.rm(Path.join(Path.dirname(__ENV__.file), "priv/llama_cpp_ex_nif.so"))
    :ok
  end
end
