defmodule LlamaCppEx.Server.Stream do
  @moduledoc false
  # The consumer's side of a server stream. Starting it tokenizes the prompt,
  # builds the sampler and submits the request (in the consumer's process);
  # demand is {:demand, ref} to the server, halting sends {:cancel, ref} (the
  # slot is freed at the next step); the chunk protocol is
  # LlamaCppEx.ChunkStream's. A server that goes down raises
  # LlamaCppEx.Error{reason: {:server_down, reason}}.

  alias LlamaCppEx.{ChunkStream, Server}

  def new(server, opts, tokenize) do
    ChunkStream.new(fn -> start(server, opts, tokenize) end)
  end

  defp start(server, opts, tokenize) do
    case Server.request(server, opts, tokenize, :stream) do
      {:ok, pid, req} ->
        mon = Process.monitor(pid)

        case Server.submit(pid, [req]) do
          :ok ->
            %{
              ref: req.ref,
              demand: fn -> send(pid, {:demand, req.ref}) end,
              cancel: fn -> send(pid, {:cancel, req.ref}) end,
              mon: mon,
              completion: & &1,
              on_complete: opts.stream[:on_complete]
            }

          {:error, reason} ->
            Process.demonitor(mon, [:flush])
            raise LlamaCppEx.Error, reason: reason
        end

      {:error, reason} ->
        raise LlamaCppEx.Error, reason: reason
    end
  end
end
