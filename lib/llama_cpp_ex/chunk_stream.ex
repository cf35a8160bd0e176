defmodule LlamaCppEx.ChunkStream do
  @moduledoc false
  # The consumer's side of every stream of text chunks: a lazy
  # Stream.resource over the messages of one producer, either a native stream
  # thread (c_src/generate.c, via LlamaCppEx.TokenStream) or a
  # LlamaCppEx.Server request (LlamaCppEx.Server.Stream). Both speak the same
  # protocol, tagged with `ref`:
  #
  #   * the consumer asks for a chunk when it wants the next element (demand);
  #   * the producer sends {ref, {:chunk, text}} with all the text ready since
  #     the previous chunk ({ref, {:chunk, text, logprobs}} when logprobs were
  #     asked for), one last chunk unasked, then {ref, {:done, result}};
  #   * halting early cancels the producer, waits for its :done (it always
  #     reports) and flushes the mailbox.
  #
  # A producer started with a monitor (the server) that goes down raises
  # LlamaCppEx.Error{reason: {:server_down, reason}}; failures raise
  # LlamaCppEx.Error{reason: reason}.

  @type producer :: %{
          required(:ref) => reference(),
          required(:demand) => (() -> any()),
          required(:cancel) => (() -> any()),
          # a monitor of the producer's process, if it has one
          required(:mon) => reference() | nil,
          # the :done result's {:ok, value} as a LlamaCppEx.Completion
          required(:completion) => (term() -> LlamaCppEx.Completion.t()),
          required(:on_complete) => nil | (LlamaCppEx.Completion.t() -> any())
        }

  @doc "A lazy stream over the producer that `start` (run when the stream starts) returns."
  @spec new((() -> producer())) :: Enumerable.t()
  def new(start) do
    Stream.resource(fn -> Map.put(start.(), :done, nil) end, &next/1, &stop/1)
  end

  defp next(%{done: {:ok, _}} = st), do: {:halt, st}

  defp next(%{ref: ref, mon: mon} = st) do
    st.demand.()

    receive do
      {^ref, {:chunk, text}} ->
        {[text], st}

      {^ref, {:chunk, text, logprobs}} ->
        {[{text, LlamaCppEx.Logprob.from_native(logprobs)}], st}

      {^ref, {:done, {:ok, value}}} ->
        # on_complete runs in stop/1, after this state is recorded as done
        {:halt, %{st | done: {:ok, value}}}

      {^ref, {:done, {:error, reason}}} = done ->
        # stop/1 runs next (with this state) and looks for it
        send(self(), done)
        raise LlamaCppEx.Error, reason: reason

      {:DOWN, ^mon, :process, _, reason} = down when mon != nil ->
        send(self(), down)
        raise LlamaCppEx.Error, reason: {:server_down, reason}
    end
  end

  # After the last element, on halt (Enum.take/2) and after a raise above.
  defp stop(%{ref: ref, mon: mon} = st) do
    result =
      case st.done do
        {:ok, value} ->
          {:ok, value}

        nil ->
          st.cancel.()

          receive do
            {^ref, {:done, result}} -> result
            {:DOWN, ^mon, :process, _, reason} when mon != nil -> {:error, {:server_down, reason}}
          end
      end

    if mon, do: Process.demonitor(mon, [:flush])

    try do
      case {result, st.on_complete} do
        {{:ok, value}, fun} when is_function(fun, 1) -> fun.(st.completion.(value))
        _ -> :ok
      end
    after
      flush(ref)
    end
  end

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end
end
