defmodule LlamaCppEx.State do
  @moduledoc """
  Saved state: a context's KV cache, or one sequence of it, as a binary or a
  file, so that a conversation can be put aside and resumed (in another
  sequence, another context of the same model and settings, or after a
  restart) without recomputing its prompt.

  The functions are also reachable from `LlamaCppEx.Context`
  (`Context.save_state/1`, `Context.load_state/2`, ...).

      {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: 2048)
      :ok = LlamaCppEx.Context.decode(ctx, conversation_tokens)
      {:ok, state} = LlamaCppEx.Context.save_state(ctx)

      # later, in a new context of the same model and settings
      :ok = LlamaCppEx.Context.load_state(ctx2, state)
      {:ok, completion} = LlamaCppEx.Context.generate(ctx2, sampler, next_turn_tokens)

  What a state holds is the KV cache: the positions of each sequence and
  their keys and values. The context's position (`Context.position/1`)
  follows from it. It holds no logits, so after a load the next step is a
  decode (`generate/4` with at least one token, `decode/2`): to resume a
  conversation exactly where it stopped, save it before its last token and
  pass that token to `generate/4`.

  A blob is checked against the context before llama.cpp sees it: its
  architecture, KV stream count (the context's `:n_seq_max` and
  `:kv_unified`), every cell's position and sequences (each sequence must
  hold positions `0..n-1`), the layer headers and the exact length. A blob
  that fails is `{:error, {:invalid_state, message}}` and the context is left
  as it was. llama.cpp itself checks the layer count, K/V types and row sizes
  (a state of another model of the same architecture, or another `:type_k`):
  it fails with `{:error, {:state_load_failed, message}}` after emptying the
  target (the whole context, or the sequence), which is then left empty.
  A model with recurrent or hybrid memory is `{:error, {:state_unsupported, _}}`.
  """

  alias LlamaCppEx.{Context, NIF}

  @typedoc "See `LlamaCppEx.Error`."
  @type reason :: LlamaCppEx.Error.reason()

  @doc """
  The whole KV cache of `ctx` (every sequence) as a binary.

      {:ok, state} = LlamaCppEx.State.save(ctx)
  """
  @spec save(Context.t()) :: {:ok, binary()} | {:error, reason()}
  def save(%Context{ref: ref}), do: NIF.context_state_save(ref)

  @doc """
  Replaces the whole KV cache of `ctx` with `state` (from `save/1` on a
  context of the same model, `:n_seq_max`, `:kv_unified` and KV types, and
  with at least as many cells).

      :ok = LlamaCppEx.State.load(ctx, state)
  """
  @spec load(Context.t(), binary()) :: :ok | {:error, reason()}
  def load(%Context{ref: ref}, state), do: NIF.context_state_load(ref, state)

  @doc """
  Sequence `seq_id` of `ctx` as a binary (all its cells, none of other sequences).

      {:ok, saved} = LlamaCppEx.State.save_sequence(ctx, 0)
  """
  @spec save_sequence(Context.t(), non_neg_integer()) :: {:ok, binary()} | {:error, reason()}
  def save_sequence(%Context{ref: ref}, seq_id), do: NIF.context_seq_save(ref, seq_id)

  @doc """
  Replaces sequence `seq_id` of `ctx` with a sequence saved by
  `save_sequence/2` (from any sequence of a context of the same model and
  settings); other sequences are kept.

      :ok = LlamaCppEx.State.load_sequence(ctx, 1, saved)
  """
  @spec load_sequence(Context.t(), non_neg_integer(), binary()) :: :ok | {:error, reason()}
  def load_sequence(%Context{ref: ref}, seq_id, state), do: NIF.context_seq_load(ref, seq_id, state)

  @doc """
  Saves the state of `ctx` to `path` (written to a temporary file next to it
  and renamed, so a crash never leaves half a file).

  ## Options

    * `:sequence` - save only this sequence (`save_sequence/2`) instead of the
      whole context.

  File errors are `{:error, {:file_error, posix, path}}`.

      :ok = LlamaCppEx.State.save_file(ctx, "chat.state")
  """
  @spec save_file(Context.t(), Path.t(), keyword()) :: :ok | {:error, reason()}
  def save_file(%Context{} = ctx, path, opts \\ []) do
    opts = Keyword.validate!(opts, sequence: nil)
    path = IO.chardata_to_string(path)
    tmp = path <> ".tmp-#{System.unique_integer([:positive])}"

    with {:ok, state} <- save_for(ctx, opts[:sequence]),
         :ok <- file(File.write(tmp, state), tmp),
         :ok <- file(File.rename(tmp, path), path) do
      :ok
    else
      error ->
        File.rm(tmp)
        error
    end
  end

  @doc """
  Loads a state saved by `save_file/3` into `ctx`.

  ## Options

    * `:sequence` - the file holds one sequence (saved with `sequence:`):
      load it into this sequence.

  A missing file is `{:error, {:file_not_found, path}}`, another file error
  `{:error, {:file_error, posix, path}}`.

      :ok = LlamaCppEx.State.load_file(ctx, "chat.state")
  """
  @spec load_file(Context.t(), Path.t(), keyword()) :: :ok | {:error, reason()}
  def load_file(%Context{} = ctx, path, opts \\ []) do
    opts = Keyword.validate!(opts, sequence: nil)
    path = IO.chardata_to_string(path)

    seq = opts[:sequence] && seq!(opts[:sequence])

    case File.read(path) do
      {:ok, state} when is_nil(seq) -> load(ctx, state)
      {:ok, state} -> load_sequence(ctx, seq, state)
      {:error, :enoent} -> {:error, {:file_not_found, path}}
      {:error, posix} -> {:error, {:file_error, posix, path}}
    end
  end

  defp save_for(ctx, nil), do: save(ctx)
  defp save_for(ctx, seq), do: save_sequence(ctx, seq!(seq))

  defp seq!(seq) when is_integer(seq) and seq >= 0, do: seq
  defp seq!(other), do: raise(ArgumentError, ":sequence must be a non-negative integer, got: #{inspect(other)}")

  defp file(:ok, _path), do: :ok
  defp file({:error, posix}, path), do: {:error, {:file_error, posix, path}}
end
