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
