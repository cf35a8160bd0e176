defmodule Mix.LlamaCppEx do
  @moduledoc false
  # What the llama.* Mix tasks share: their results go to stdout and their
  # diagnostics (Logger, progress) to stderr, so that
  # `mix llama.generate > story.txt` captures the story alone.
  #
  # Mix compiles the project before it runs a task defined in it, so a build's
  # own output ("Compiling 2 files (.ex)") comes before the task starts and
  # stays on stdout; `mix compile` first (as `make demo` does) avoids it.

  @doc "Sends Logger's console output to stderr, then starts the application."
  def start_app do
    logger_to_stderr()
    Mix.Task.run("app.start")
  end

  @doc "A diagnostic line, on stderr."
  def info(message), do: IO.puts(:stderr, message)

  @doc """
  A benchmark model by name, from the project at `root`: "stories" (the
  shared stories260K.gguf, or LLAMA_TEST_MODEL), "synthetic" (made by
  bench/gen_model.sh into the cache on first use) or a path.
  """
  def model_path(root, "stories"),
    do: System.get_env("LLAMA_TEST_MODEL") || Path.expand("../shared/models/stories260K.gguf", root)

  def model_path(root, "synthetic") do
    {out, 0} = System.cmd(Path.join(root, "bench/gen_model.sh"), [], stderr_to_stdout: false)
    out |> String.trim() |> String.split("\n") |> List.last()
  end

  def model_path(_root, path), do: path

  @doc "The shared stories260K model the command-line tasks default to, or a Mix error."
  def default_model! do
    path = Path.expand("../shared/models/stories260K.gguf", File.cwd!())

    if File.exists?(path),
      do: path,
      else: Mix.raise("no --model given and #{path} does not exist")
  end

  @doc "Builds llama.cpp reference tools from the pinned source (scripts/llama_cpp.sh tools); their directory."
  def tools_dir(root, tools) do
    {out, 0} = System.cmd(Path.join(root, "scripts/llama_cpp.sh"), ["tools" | tools])
    out |> String.trim() |> String.split("\n") |> List.last()
  end

  # Elixir 1.15+ logs through the :default handler of Erlang's :logger, whose
  # device can only be set when the handler is added; 1.14 logs through
  # Logger's :console backend, which writes to :user (stdout) by default.
  defp logger_to_stderr do
    case :logger.get_handler_config(:default) do
      {:ok, %{module: :logger_std_h, config: %{type: :standard_io} = config} = handler} ->
        :ok = :logger.remove_handler(:default)
        :ok = :logger.add_handler(:default, :logger_std_h, %{handler | config: %{config | type: :standard_error}})

      _ ->
        Logger.configure_backend(:console, device: :standard_error)
    end

    :ok
  end
end
