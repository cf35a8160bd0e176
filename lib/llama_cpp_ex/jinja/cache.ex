defmodule LlamaCppEx.Jinja.Cache do
  @moduledoc false
  # Compiled templates by the SHA-256 of their source, in an ETS table this process owns
  # (started by LlamaCppEx.Application). Bounded: when it holds @max entries it is
  # emptied before the next one goes in (models have one or a few templates each).
  use GenServer

  @table __MODULE__
  @max 256

  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    {:ok, nil}
  end

  @doc "The cached value for `source`, or computes it with `fun` (cached when {:ok, _})."
  @spec fetch(String.t(), (() -> {:ok, term()} | {:error, term()})) :: {:ok, term()} | {:error, term()}
  def fetch(source, fun) do
    key = :crypto.hash(:sha256, source)

    case lookup(key) do
      {:ok, value} ->
        {:ok, value}

      :miss ->
        with {:ok, value} <- fun.() do
          store(key, value)
          {:ok, value}
        end
    end
  end

  defp lookup(key) do
    case :ets.whereis(@table) do
      :undefined ->
        :miss

      _ ->
        case :ets.lookup(@table, key) do
          [{^key, value}] -> {:ok, value}
          [] -> :miss
        end
    end
  end

  defp store(key, value) do
    if :ets.whereis(@table) != :undefined do
      if :ets.info(@table, :size) >= @max, do: :ets.delete_all_objects(@table)
      :ets.insert(@table, {key, value})
    end
  end

  @doc false
  def clear, do: if(:ets.whereis(@table) != :undefined, do: :ets.delete_all_objects(@table))
end
