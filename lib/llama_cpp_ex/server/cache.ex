defmodule LlamaCppEx.Server.Cache do
  @moduledoc false
  # The prefix cache's index: what the KV cache holds for each slot's
  # sequence, as token ids, and who may reuse it.
  #
  # A slot keeps its cells when its job ends (its tokens stay here, marked
  # idle, with the time of last use). A new request may start from the
  # longest prefix of its prompt that any sequence of its cache scope holds,
  # busy or idle: it is put at the start of the request's sequence by
  # llama_memory_seq_cp (c_src/batch.c), and only the rest is computed.
  #
  # The entries are at most one per sequence (n_parallel, and llama.cpp
  # allows 256), so the longest cached prefix is found by comparing the
  # prompt with every entry: tokens are kept as 32-bit big-endian binaries and
  # compared by :binary.longest_common_prefix/1, a BIF, which compares 16
  # entries of 2,000 tokens in a few microseconds. A radix tree would find the
  # same prefix by walking its edges in Elixir, slower for this many entries,
  # and would have to be kept in step with every sequence that llama.cpp
  # changes; this index is the sequences themselves.
  #
  # Which free slot a request gets: the slot of its session (the one that
  # served the session last, if it still holds that session's tokens), else a
  # free slot whose cells it keeps entirely (empty, or holding only a prefix
  # of the prompt), else the least recently used free slot: that is where
  # cached prefixes are evicted, least recently used first. (A slot that holds
  # a few tokens of the prompt, such as BOS, is not taken for that: its other
  # cells are worth more than the copy of a short prefix.) Under KV pressure
  # (llama_decode finds no cells) the server purges idle entries, least
  # recently used first (evict/1).
  #
  # Cells: a job's own tokens form a block of cells; a sequence that starts
  # from another's prefix shares the first blocks of that sequence (a unified
  # KV cache tags the same cells with both sequences). A block's cells live
  # while a sequence references them, so the cells used are, per block, the
  # longest reference to it. With one KV stream per sequence nothing is
  # shared: the cells are the sum of the sequences.

  defstruct seqs: %{}, unified: true, enabled: true, tick: 0, next_block: 0

  @type slot :: non_neg_integer()
  @type t :: %__MODULE__{}

  @empty %{tokens: <<>>, scope: nil, session: nil, used: 0, busy: false, blocks: []}

  @spec new(pos_integer(), keyword()) :: t()
  def new(n_slots, opts \\ []) do
    %__MODULE__{
      seqs: Map.new(0..(n_slots - 1), &{&1, @empty}),
      unified: Keyword.get(opts, :unified, true),
      enabled: Keyword.get(opts, :enabled, true)
    }
  end

  @doc "Token ids as the binary this index compares."
  @spec key([integer()]) :: binary()
  def key(tokens), do: for(t <- tokens, into: <<>>, do: <<t::32>>)

  @doc """
  Where a request with prompt `key` goes among the `free` slots, and where its
  prefix comes from: `{slot, src, reuse}` (src == slot: the slot's own cells).
  """
  @spec choose(t(), [slot()], binary(), term(), term()) :: {slot(), slot(), non_neg_integer()}
  def choose(%__MODULE__{enabled: false} = c, free, _key, _scope, _session) do
    slot = lru(c, free)
    {slot, slot, 0}
  end

  def choose(%__MODULE__{} = c, free, key, scope, session) do
    own = fn slot -> match(c.seqs[slot], key, scope) end

    slot =
      session_slot(c, free, scope, session) ||
        lossless(c, free, own) ||
        lru(c, free)

    {src, reuse} =
      c.seqs
      |> Enum.map(fn {s, seq} -> {s, match(seq, key, scope)} end)
      |> Enum.max_by(fn {s, n} -> {n, s == slot} end)

    if reuse > own.(slot), do: {slot, src, reuse}, else: {slot, slot, own.(slot)}
  end

  defp session_slot(_c, _free, _scope, nil), do: nil

  defp session_slot(c, free, scope, session) do
    Enum.find(free, fn s -> c.seqs[s].session == session and c.seqs[s].scope == scope and c.seqs[s].tokens != <<>> end)
  end

  # a free slot whose cells the request keeps entirely (empty, or all a
  # prefix of the prompt), the most of them first
  defp lossless(c, free, own) do
    case for(s <- free, own.(s) == div(byte_size(c.seqs[s].tokens), 4), do: s) do
      [] -> nil
      slots -> Enum.max_by(slots, own)
    end
  end

  defp lru(c, free), do: Enum.min_by(free, &{c.seqs[&1].tokens != <<>>, c.seqs[&1].used})

  defp match(%{scope: scope, tokens: tokens}, key, scope), do: div(:binary.longest_common_prefix([tokens, key]), 4)
  defp match(_seq, _key, _scope), do: 0

  @doc "A job started in `slot` with prompt `key`, its first `reused` tokens from `src`."
  @spec admit(t(), slot(), binary(), term(), term(), slot(), non_neg_integer()) :: t()
  def admit(%__MODULE__{} = c, slot, key, scope, session, src, reused) do
    shared = take_blocks(c.seqs[src].blocks, reused)
    n = div(byte_size(key), 4)
    {own, next} = if n > reused, do: {[{c.next_block, reused, n - reused}], c.next_block + 1}, else: {[], c.next_block}
    seq = %{tokens: key, scope: scope, session: session, used: c.tick + 1, busy: true, blocks: shared ++ own}
    %{c | seqs: Map.put(c.seqs, slot, seq), tick: c.tick + 1, next_block: next}
  end

  @doc "The job in `slot` ended; its sequence holds `content` (token ids as a key)."
  @spec finish(t(), slot(), binary()) :: t()
  def finish(%__MODULE__{} = c, slot, content) do
    seq = c.seqs[slot]
    n = div(byte_size(content), 4)

    blocks =
      case take_blocks(seq.blocks, n) do
        [] ->
          []

        taken ->
          # the job's own (last) block grew with the generated tokens
          {id, start, _} = List.last(taken)
          List.replace_at(taken, -1, {id, start, n - start})
      end

    seq = %{seq | tokens: content, busy: false, used: c.tick + 1, blocks: blocks}
    %{c | seqs: Map.put(c.seqs, slot, seq), tick: c.tick + 1}
  end

  @doc "A saved session (`key`, its scope and id) was loaded into the free `slot`: an idle entry."
  @spec restore(t(), slot(), binary(), term(), term()) :: t()
  def restore(%__MODULE__{} = c, slot, key, scope, session) do
    blocks = [{c.next_block, 0, div(byte_size(key), 4)}]
    seq = %{tokens: key, scope: scope, session: session, used: c.tick + 1, busy: false, blocks: blocks}
    %{c | seqs: Map.put(c.seqs, slot, seq), tick: c.tick + 1, next_block: c.next_block + 1}
  end

  @doc """
  The idle slot that holds `session` of `scope` (the most recently used of
  them): `{:ok, slot}`, `:busy` when only a running job holds it, or `:error`.
  """
  @spec session(t(), term(), term()) :: {:ok, slot()} | :busy | :error
  def session(%__MODULE__{seqs: seqs}, session, scope) do
    held = for {s, seq} <- seqs, seq.session == session, seq.scope == scope, seq.tokens != <<>>, do: {s, seq}

    case Enum.reject(held, fn {_s, seq} -> seq.busy end) do
      [] when held != [] -> :busy
      [] -> :error
      idle -> {:ok, idle |> Enum.max_by(fn {_s, seq} -> seq.used end) |> elem(0)}
    end
  end

  @doc "The token ids of a key."
  @spec tokens(binary()) :: [non_neg_integer()]
  def tokens(key), do: for(<<t::32 <- key>>, do: t)

  @doc "The slot's sequence holds nothing any more."
  @spec drop(t(), slot()) :: t()
  def drop(%__MODULE__{} = c, slot), do: %{c | seqs: Map.put(c.seqs, slot, @empty)}

  @doc "The least recently used idle entry that holds cells, to purge under KV pressure."
  @spec evict(t()) :: slot() | nil
  def evict(%__MODULE__{seqs: seqs}) do
    seqs
    |> Enum.filter(fn {_s, seq} -> not seq.busy and seq.tokens != <<>> end)
    |> Enum.min_by(fn {_s, seq} -> seq.used end, fn -> {nil, nil} end)
    |> elem(0)
  end

  @doc "Tokens held by each slot's sequence."
  @spec held(t()) :: %{slot() => non_neg_integer()}
  def held(%__MODULE__{seqs: seqs}), do: Map.new(seqs, fn {s, seq} -> {s, div(byte_size(seq.tokens), 4)} end)

  @doc "KV cells in use (see the module comment)."
  @spec cells(t()) :: non_neg_integer()
  def cells(%__MODULE__{unified: false, seqs: seqs}) do
    seqs |> Enum.map(fn {_s, seq} -> div(byte_size(seq.tokens), 4) end) |> Enum.sum()
  end

  def cells(%__MODULE__{seqs: seqs}) do
    seqs
    |> Enum.flat_map(fn {_s, seq} -> seq.blocks end)
    |> Enum.reduce(%{}, fn {id, _start, len}, acc -> Map.update(acc, id, len, &max(&1, len)) end)
    |> Map.values()
    |> Enum.sum()
  end

  # the blocks covering the first n positions (the last one cut at n)
  defp take_blocks(blocks, n) do
    Enum.flat_map(blocks, fn {id, start, len} ->
      cond do
        start >= n -> []
        start + len <= n -> [{id, start, len}]
        true -> [{id, start, n - start}]
      end
    end)
  end
end
