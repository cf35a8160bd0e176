defmodule LlamaCppEx.TokenStream do
  @moduledoc false
  # The consumer's side of a native stream (c_src/generate.c): a lazy
  # Stream.resource over the messages of one stream thread.
  #
  # The consumer asks for a chunk when it wants the next element
  # (stream_demand); the thread sends {ref, {:chunk, text}} with all the text
  # ready since the previous chunk as soon as it has some ({ref, {:chunk,
  # text, logprobs}} when logprobs were asked for), one last chunk
  # unasked, then {ref, {:done, result}}. Meanwhile it does not wait: it runs
  # up to Context.stream_window() tokens past its last chunk. Halting cancels
  # the thread, waits for its :done and flushes the mailbox.

  alias LlamaCppEx.{Completion, NIF}

  @doc false
  def new(ctx_ref, sampler_ref, tokens, gen, on_complete) do
    Stream.resource(
      fn -> start(ctx_ref, sampler_ref, tokens, gen, on_complete) end,
      &next/1,
      &stop/1
    )
  end

  defp start(ctx_ref, sampler_ref, tokens, gen, on_complete) do
    ref = make_ref()

    case NIF.stream_start(ctx_ref, sampler_ref, tokens, gen, self(), ref) do
      {:ok, handle} ->
        %{ref: ref, handle: handle, done: false, on_complete: on_complete}

      {:error, reason} ->
        raise LlamaCppEx.Error, reason: reason
    end
  end

  defp next(%{done: {:ok, _}} = state), do: {:halt, state}

  defp next(%{ref: ref, handle: handle} = state) do
    NIF.stream_demand(handle)

    receive do
      {^ref, {:chunk, text}} ->
        {[text], state}

      {^ref, {:chunk, text, logprobs}} ->
        {[{text, LlamaCppEx.Logprob.from_native(logprobs)}], state}

      {^ref, {:done, {:ok, map}}} ->
        # on_complete runs in stop/1, after this state is recorded as done
        {:halt, %{state | done: {:ok, map}}}

      {^ref, {:done, {:error, reason}}} = done ->
        # stop/1 runs next (with this state) and will look for it
        send(self(), done)
        raise LlamaCppEx.Error, reason: reason
    end
  end

  # After the last element, on halt (Enum.take/2) and after a raise above.
  defp stop(%{ref: ref, handle: handle, done: done} = state) do
    result =
      case done do
        {:ok, map} ->
          {:ok, map}

        false ->
          NIF.stream_cancel(handle)

          # the native thread always reports, cancelled or not
          receive do
            {^ref, {:done, result}} -> result
          end
      end

    try do
      with {:ok, map} <- result, do: completed(state, map)
    after
      flush(ref)
    end
  end

  defp completed(%{on_complete: nil}, _map), do: :ok
  defp completed(%{on_complete: fun}, map), do: fun.(Completion.from_native(map))

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end
end
