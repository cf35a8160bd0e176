defmodule LlamaCppEx.Server.Batch do
  @moduledoc false
  # The native engine of LlamaCppEx.Server (c_src/batch.c, c_src/slot.c): one
  # context, n slots (sequence i is slot i), advanced one step at a time. Only
  # the server process uses it. Each function is one dirty-CPU NIF call.

  alias LlamaCppEx.{Context, NIF, Sampler}

  @type t :: reference()
  @type slot :: non_neg_integer()
  @type event ::
          {:text, slot(), binary()}
          | {:done, slot(), {:ok, map() | [float()]}}
          | {:error, slot(), term()}

  @doc "An engine over `ctx` (n_seq_max >= n_slots, n_batch >= the step budget)."
  @spec new(Context.t(), keyword()) :: {:ok, t()} | {:error, term()}
  def new(%Context{ref: ref}, opts) do
    NIF.batch_new(ref, %{
      n_slots: Keyword.fetch!(opts, :n_slots),
      n_batch: Keyword.fetch!(opts, :n_batch),
      n_ctx_slot: Keyword.fetch!(opts, :n_ctx_slot),
      embedding: Keyword.get(opts, :embedding, false)
    })
  end

  @doc """
  Starts a generation in a free slot; the first `reuse` prompt tokens are
  taken from sequence `src` (the slot's own or another's). Returns how many
  were reused.
  """
  @spec admit(t(), slot(), Sampler.t(), [integer()], map()) :: {:ok, non_neg_integer()} | {:error, term()}
  def admit(engine, slot, %Sampler{ref: sampler}, tokens, opts),
    do: NIF.batch_admit(engine, slot, sampler, tokens, opts)

  @doc "Starts an embedding of `tokens` in a free slot."
  @spec admit_embed(t(), slot(), [integer()], :mean | :cls | :last) :: :ok | {:error, term()}
  def admit_embed(engine, slot, tokens, pooling), do: NIF.batch_admit_embed(engine, slot, tokens, pooling)

  @doc "One step, leaving out the slots in `skip`."
  @spec step(t(), [slot()]) :: {:ok, [event()], map()} | {:no_kv_slot, [event()]}
  def step(engine, skip), do: NIF.batch_step(engine, skip)

  @doc "Ends a slot's job now; keeps its cells for the prefix cache when `keep`."
  @spec release(t(), slot(), boolean()) :: {:ok, map() | nil}
  def release(engine, slot, keep), do: NIF.batch_release(engine, slot, keep)

  @doc "Drops a free slot's cells from position `from` on."
  @spec purge(t(), slot(), non_neg_integer()) :: :ok
  def purge(engine, slot, from \\ 0), do: NIF.batch_purge(engine, slot, from)

  @doc "A free slot's sequence as a saved state (LlamaCppEx.State), and the positions it holds."
  @spec seq_save(t(), slot()) :: {:ok, binary(), non_neg_integer()} | {:error, term()}
  def seq_save(engine, slot), do: NIF.batch_seq_save(engine, slot)

  @doc """
  Replaces a free slot's sequence with a saved one that holds exactly
  positions `0..n_tokens-1`; on an error the sequence is left empty.
  """
  @spec seq_load(t(), slot(), binary(), pos_integer()) :: :ok | {:error, term()}
  def seq_load(engine, slot, state, n_tokens), do: NIF.batch_seq_load(engine, slot, state, n_tokens)

  @doc "Sizes, and the positions each slot's sequence holds."
  @spec info(t()) :: {:ok, map()}
  def info(engine), do: NIF.batch_info(engine)
end
