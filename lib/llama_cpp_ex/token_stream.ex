defmodule LlamaCppEx.TokenStream do
  @moduledoc false
  # The consumer's side of a native stream (c_src/generate.c): starting it
  # starts the stream thread, which owns the context and the sampler until it
  # ends; the chunk protocol is LlamaCppEx.ChunkStream's. Meanwhile the thread
  # does not wait: it runs up to Context.stream_window() tokens past its last
  # chunk before it waits to be asked again.

  alias LlamaCppEx.{ChunkStream, Completion, NIF}

  @doc false
  def new(ctx_ref, sampler_ref, tokens, gen, on_complete) do
    ChunkStream.new(fn -> start(ctx_ref, sampler_ref, tokens, gen, on_complete) end)
  end

  defp start(ctx_ref, sampler_ref, tokens, gen, on_complete) do
    ref = make_ref()

    case NIF.stream_start(ctx_ref, sampler_ref, tokens, gen, self(), ref) do
      {:ok, handle} ->
        %{
          ref: ref,
          demand: fn -> NIF.stream_demand(handle) end,
          cancel: fn -> NIF.stream_cancel(handle) end,
          mon: nil,
          completion: &Completion.from_native/1,
          on_complete: on_complete
        }

      {:error, reason} ->
        raise LlamaCppEx.Error, reason: reason
    end
  end
end
