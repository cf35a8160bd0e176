defmodule LlamaCppEx.Log do
  @moduledoc """
  Forwards llama.cpp's and ggml's log output to Elixir's `Logger`.

  The native library filters by level before anything crosses into Elixir, so
  lines below the configured level cost nothing. The level defaults to
  `:warning` and can be set in config or at run time:

      config :llama_cpp_ex, log_level: :info   # :debug | :info | :warning | :error | :none

      LlamaCppEx.Log.set_level(:debug)

  llama.cpp writes some lines in pieces (a start and continuations); they are
  joined before being logged, one Logger call per line, with metadata
  `source: :llama_cpp`.
  """
  use GenServer
  require Logger

  @levels %{debug: 1, info: 2, warning: 3, error: 4, none: 5}

  @typedoc "A log level; `:none` turns native logging off."
  @type level :: :debug | :info | :warning | :error | :none

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Sets the lowest native log level that reaches Logger.

      iex> LlamaCppEx.Log.set_level(:error)
      :ok
      iex> LlamaCppEx.Log.set_level(:warning)
      :ok
  """
  @spec set_level(level()) :: :ok
  def set_level(level) when is_map_key(@levels, level) do
    GenServer.call(__MODULE__, {:set_level, level})
  end

  def set_level(other), do: raise(ArgumentError, "unknown log level #{inspect(other)}")

  @doc "The current native log level."
  @spec level() :: level()
  def level, do: GenServer.call(__MODULE__, :level)

  @impl true
  def init(_opts) do
    level = Application.get_env(:llama_cpp_ex, :log_level, :warning)
    level = if is_map_key(@levels, level), do: level, else: :warning
    :ok = LlamaCppEx.NIF.set_log_handler(self(), Map.fetch!(@levels, level))
    {:ok, %{level: level, partial: nil}}
  end

  @impl true
  def handle_call({:set_level, level}, _from, state) do
    :ok = LlamaCppEx.NIF.set_log_handler(self(), Map.fetch!(@levels, level))
    {:reply, :ok, %{state | level: level}}
  end

  def handle_call(:level, _from, state), do: {:reply, state.level, state}

  @impl true
  def handle_info({:llama_log, :cont, text}, %{partial: {level, acc}} = state) do
    emit(%{state | partial: {level, [acc | text]}})
  end

  def handle_info({:llama_log, :cont, text}, state) do
    emit(%{state | partial: {:info, text}})
  end

  def handle_info({:llama_log, level, text}, state) do
    state = flush(state)
    emit(%{state | partial: {level, text}})
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    LlamaCppEx.NIF.set_log_handler(nil, 5)
    flush(state)
  end

  # A line is complete once it ends with a newline.
  defp emit(%{partial: {_level, acc}} = state) do
    if String.ends_with?(IO.iodata_to_binary(acc), "\n") do
      {:noreply, flush(state)}
    else
      {:noreply, state}
    end
  end

  defp flush(%{partial: nil} = state), do: state

  defp flush(%{partial: {level, acc}} = state) do
    text = acc |> IO.iodata_to_binary() |> String.trim_trailing()

    if text != "" do
      Logger.log(logger_level(level), "[llama.cpp] " <> text, source: :llama_cpp)
    end

    %{state | partial: nil}
  end

  defp logger_level(:warn), do: :warning
  defp logger_level(:error), do: :error
  defp logger_level(:info), do: :info
  defp logger_level(_), do: :debug
end
