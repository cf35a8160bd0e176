defmodule LlamaCppEx.Server.Stream do
  @moduledoc false
  # The consumer's side of a server stream: a lazy Stream.resource. Starting
  # it tokenizes the prompt, builds the sampler and submits the request (in the
  # consumer's process). Each element asks the server for the next chunk
  # ({:demand, ref}); the server sends {ref, {:chunk, text}} with all the text
  # ready since the last one, one last chunk unasked, then {ref, {:done, result}}.
  # Halting sends {:cancel, ref} and waits for the :done (the slot is freed
  # at the next step), then flushes the mailbox. A server that goes down
  # raises LlamaCppEx.Error{reason: {:server_down, reason}}.

  alias LlamaCppEx.Server

  def new(server, opts, tokenize) do
    Stream.resource(fn -> start(server, opts, tokenize) end, &next/1, &stop/1)
  end

  defp start(server, opts, tokenize) do
    case Server.request(server, opts, tokenize, :stream) do
      {:ok, pid, req} ->
        mon = Process.monitor(pid)

        case Server.submit(pid, [req]) do
          :ok ->
            %{pid: pid, ref: req.ref, mon: mon, done: nil, on_complete: opts.stream[:on_complete]}

          {:error, reason} ->
            Process.demonitor(mon, [:flush])
            raise LlamaCppEx.Error, reason: reason
        end

      {:error, reason} ->
        raise LlamaCppEx.Error, reason: reason
    end
  end

  defp next(%{done: {:ok, _}} = st), do: {:halt, st}

  defp next(%{pid: pid, ref: ref, mon: mon} = st) do
    send(pid, {:demand, ref})

    receive do
      {^ref, {:chunk, text}} ->
        {[text], st}

      {^ref, {:chunk, text, logprobs}} ->
        {[{text, logprobs}], st}

      {^ref, {:done, {:ok, completion}}} ->
        {:halt, %{st | done: {:ok, completion}}}

      {^ref, {:done, {:error, reason}}} = done ->
        # stop/1 runs next with this state and looks for it
        send(self(), done)
        raise LlamaCppEx.Error, reason: reason

      {:DOWN, ^mon, :process, _, reason} = down ->
        send(self(), down)
        raise LlamaCppEx.Error, reason: {:server_down, reason}
    end
  end

  defp stop(%{pid: pid, ref: ref, mon: mon} = st) do
    result =
      case st.done do
        {:ok, completion} ->
          {:ok, completion}

        nil ->
          send(pid, {:cancel, ref})

          receive do
            {^ref, {:done, result}} -> result
            {:DOWN, ^mon, :process, _, reason} -> {:error, {:server_down, reason}}
          end
      end

    Process.demonitor(mon, [:flush])
    flush(ref)

    case {result, st.on_complete} do
      {{:ok, completion}, fun} when is_function(fun, 1) -> fun.(completion)
      _ -> :ok
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
