defmodule LlamaCppEx.Server.Request do
  @moduledoc false
  # One request to LlamaCppEx.Server, as the server process keeps it. Built
  # and validated by the caller (tokens, sampler, options), so a bad request
  # never reaches the server's batch; the server adds its bookkeeping.

  @enforce_keys [:ref, :pid, :kind, :tokens]
  defstruct [
    :ref,
    # the caller (for a stream: its consumer); monitored
    :pid,
    # :call (blocking), :stream or :embed
    :kind,
    :tokens,
    # the prompt as a LlamaCppEx.Server.Cache key
    key: <<>>,
    # a chat's reply format (LlamaCppEx.Chat.prepare/3), for the caller's own use
    reply: nil,
    sampler: nil,
    # LoRA adapters as the engine takes them: [{ref, scale}]
    lora: [],
    max_tokens: 256,
    stop: [],
    # alternatives per token, -1: off
    logprobs: -1,
    # context shift, and the positions it keeps (-1: the BOS token)
    context_shift: false,
    # special tokens in the text
    special: false,
    n_keep: -1,
    priority: :normal,
    scope: nil,
    session: nil,
    timeout: :infinity,
    # embeddings
    pooling: :mean,
    normalize: true,
    # the server's bookkeeping
    mon: nil,
    timer: nil,
    slot: nil,
    order: nil,
    submitted_at: nil,
    admitted_at: nil,
    # streams: chunks asked for and sent, text (and logprobs, newest first) not
    # sent yet, tokens since the last chunk
    demanded: 0,
    sent: 0,
    pending: "",
    pending_lp: [],
    unsent: 0
  ]

  @type t :: %__MODULE__{}
end
