defmodule LlamaCppEx.StateTest do
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Tokenizer}

  @text "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."

  setup_all do
    model = load_model!()
    {:ok, tokens} = Tokenizer.encode(model, @text)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    %{model: model, tokens: tokens, sampler: sampler}
  end

  defp ctx!(model, opts \\ []) do
    {:ok, ctx} = Context.create(model, Keyword.merge([n_ctx: 256, n_threads: 1], opts))
    ctx
  end

  # The greedy text after decoding `history` and generating from `turn`, in a fresh context.
  defp recomputed(model, sampler, history, turn, opts \\ []) do
    ctx = ctx!(model, opts)
    if history != [], do: :ok = Context.decode(ctx, history)
    {:ok, c} = Context.generate(ctx, sampler, turn, max_tokens: 24)
    c.text
  end

  defp continue(ctx, sampler, turn) do
    {:ok, c} = Context.generate(ctx, sampler, turn, max_tokens: 24)
    c.text
  end

  test "a loaded state continues with the text of a recomputed prompt", %{model: m, tokens: t, sampler: s} do
    {history, turn} = Enum.split(t, length(t) - 3)
    src = ctx!(m)
    :ok = Context.decode(src, history)
    {:ok, state} = Context.save_state(src)
    assert byte_size(state) > 0

    dst = ctx!(m)
    :ok = Context.decode(dst, Enum.take(t, 5))
    assert :ok = Context.load_state(dst, state)
    assert Context.position(dst) == {:ok, length(history)}
    # a state holds no logits: sampling needs a decode first
    assert Sampler.sample(s, dst) == {:error, :no_logits}
    expected = recomputed(m, s, history, turn)
    assert expected != ""
    assert continue(dst, s, turn) == expected
    # the source goes on the same way
    assert continue(src, s, turn) == expected
  end

  test "a conversation saved after a generation resumes it", %{model: m, tokens: t, sampler: s} do
    src = ctx!(m)
    {:ok, first} = Context.generate(src, s, t, max_tokens: 10)
    {:ok, state} = Context.save_state(src)
    {:ok, pos} = Context.position(src)
    turn = Enum.take(t, 4)

    dst = ctx!(m)
    :ok = Context.load_state(dst, state)
    assert Context.position(dst) == {:ok, pos}
    # what the context holds: the prompt and the generated tokens it decoded
    held = Enum.take(t ++ first.tokens, pos)
    assert continue(dst, s, turn) == recomputed(m, s, held, turn)
  end

  test "a sequence moves to another slot and another context", %{model: m, tokens: t, sampler: s} do
    {history, turn} = Enum.split(t, length(t) - 2)
    a = ctx!(m, n_ctx: 512, n_seq_max: 2)
    :ok = Context.decode(a, history)
    {:ok, seq0} = Context.save_sequence(a, 0)
    # an empty sequence saves and loads too
    {:ok, empty} = Context.save_sequence(a, 1)

    b = ctx!(m, n_ctx: 512, n_seq_max: 2)
    :ok = Context.decode(b, Enum.take(t, 7))
    assert :ok = Context.load_sequence(b, 1, seq0)
    # sequence 0 is untouched
    assert Context.position(b) == {:ok, 7}
    {:ok, seq1} = Context.save_sequence(b, 1)

    c = ctx!(m, n_ctx: 512, n_seq_max: 2)
    assert :ok = Context.load_sequence(c, 0, seq1)
    assert Context.position(c) == {:ok, length(history)}
    assert continue(c, s, turn) == recomputed(m, s, history, turn, n_ctx: 512, n_seq_max: 2)

    assert :ok = Context.load_sequence(c, 0, empty)
    assert Context.position(c) == {:ok, 0}
    assert_raise ArgumentError, ~r/sequence id/, fn -> Context.save_sequence(c, 2) end
    assert_raise ArgumentError, ~r/sequence id/, fn -> Context.load_sequence(c, -1, seq0) end
    assert_raise ArgumentError, fn -> Context.load_state(c, :not_a_binary) end
  end

  @tag :tmp_dir
  test "files", %{model: m, tokens: t, sampler: s, tmp_dir: dir} do
    {history, turn} = Enum.split(t, length(t) - 2)
    src = ctx!(m)
    :ok = Context.decode(src, history)
    path = Path.join(dir, "chat.state")
    assert :ok = Context.save_state_file(src, path)
    assert :ok = Context.save_state_file(src, path <> ".seq", sequence: 0)
    assert File.ls!(dir) |> Enum.sort() == ["chat.state", "chat.state.seq"]

    dst = ctx!(m)
    assert :ok = Context.load_state_file(dst, path)
    assert continue(dst, s, turn) == recomputed(m, s, history, turn)
    assert :ok = Context.load_state_file(dst, path <> ".seq", sequence: 0)
    assert Context.position(dst) == {:ok, length(history)}

    missing = Path.join(dir, "nope")
    assert Context.load_state_file(dst, missing) == {:error, {:file_not_found, missing}}
    assert {:error, {:file_error, :eisdir, ^dir}} = Context.load_state_file(dst, dir)
    assert {:error, {:file_error, _, _}} = Context.save_state_file(src, Path.join(missing, "x"))
    # a sequence file is not a whole-context state
    assert {:error, {:invalid_state, _}} = Context.load_state_file(dst, path <> ".seq")
    assert_raise ArgumentError, fn -> Context.load_state_file(dst, path, sequence: :x) end
    assert_raise ArgumentError, fn -> Context.save_state_file(dst, path, seq: 0) end
  end

  describe "bad blobs are errors and leave the context usable" do
    setup %{model: m, tokens: t} do
      src = ctx!(m)
      :ok = Context.decode(src, t)
      {:ok, state} = Context.save_state(src)
      {:ok, seq} = Context.save_sequence(src, 0)
      %{state: state, seq: seq}
    end

    test "empty, truncated, hand-made, sequence-for-state", %{model: m, tokens: t, sampler: s} = ctx do
      dst = ctx!(m)
      :ok = Context.decode(dst, Enum.take(t, 5))
      size = byte_size(ctx.state)

      bad = [
        "",
        "x",
        binary_part(ctx.state, 0, 4),
        binary_part(ctx.state, 0, div(size, 2)),
        binary_part(ctx.state, 0, size - 1),
        ctx.state <> <<0>>,
        <<5::little-32, "llama", 1::little-32, 0xFFFFFFFF::little-32>>,
        <<5::little-32, "gpt-2", 1::little-32, 0::little-32>>,
        <<0xFFFFFFFF::little-32>>,
        ctx.seq,
        :crypto.strong_rand_bytes(size)
      ]

      for blob <- bad do
        assert {:error, {:invalid_state, msg}} = Context.load_state(dst, blob),
               inspect(binary_part(blob, 0, min(16, byte_size(blob))))

        assert is_binary(msg)
        # a rejected blob leaves the context as it was
        assert Context.position(dst) == {:ok, 5}
      end

      for blob <- [
            "",
            binary_part(ctx.seq, 0, 10),
            ctx.state,
            <<0xAF143CD8::little-32, 0::32, 1::little-32, 0xFFFFFFFF::little-32>>
          ] do
        assert {:error, {:invalid_state, _}} = Context.load_sequence(dst, 0, blob)
        assert Context.position(dst) == {:ok, 5}
      end

      # a header that only says "nothing": a valid empty state
      assert :ok = Context.load_state(dst, <<5::little-32, "llama", 1::little-32, 0::little-32>>)
      assert Context.position(dst) == {:ok, 0}
      assert continue(dst, s, t) == recomputed(m, s, [], t)
    end

    test "another model, context size, sequence count, KV type", %{model: m, tokens: t, sampler: s} = ctx do
      other = load_model!(random_model_path())
      {:ok, other_tokens} = Tokenizer.encode(other, "Hello world")
      foreign = ctx!(other)
      :ok = Context.decode(foreign, other_tokens)
      {:ok, foreign_state} = Context.save_state(foreign)
      {:ok, foreign_seq} = Context.save_sequence(foreign, 0)

      dst = ctx!(m)
      assert {:error, {reason, _}} = Context.load_state(dst, foreign_state)
      assert reason in [:invalid_state, :state_load_failed]
      assert {:error, {reason, _}} = Context.load_sequence(dst, 0, foreign_seq)
      assert reason in [:invalid_state, :state_load_failed]
      # and the other way round
      assert {:error, {_, _}} = Context.load_state(foreign, ctx.state)
      assert continue(dst, s, t) == recomputed(m, s, [], t)

      # a bigger context's state fits a smaller one only if its cells do
      big = ctx!(m, n_ctx: 1024)
      :ok = Context.decode(big, List.flatten(List.duplicate(t, 12)))
      {:ok, big_state} = Context.save_state(big)
      assert {:error, {:invalid_state, msg}} = Context.load_state(dst, big_state)
      assert msg =~ "cells"
      assert :ok = Context.load_state(ctx!(m, n_ctx: 1024), big_state)
      # a small state into a bigger context is fine
      assert :ok = Context.load_state(big, ctx.state)
      assert Context.position(big) == {:ok, length(t)}

      two = ctx!(m, n_ctx: 512, n_seq_max: 2)
      assert {:error, {:invalid_state, msg}} = Context.load_state(two, ctx.state)
      assert msg =~ "streams"

      # another K type: llama.cpp's own check, after which the context is empty
      q8 = ctx!(m, type_k: :f32)
      :ok = Context.decode(q8, Enum.take(t, 3))
      assert {:error, {:state_load_failed, _}} = Context.load_state(q8, ctx.state)
      assert Context.position(q8) == {:ok, 0}
      assert continue(q8, s, t) == recomputed(m, s, [], t, type_k: :f32)
      assert continue(dst, s, t) == recomputed(m, s, [], t)
    end
  end

  test "a context a stream holds is :busy; a freed one :closed", %{model: m, tokens: t, sampler: s} do
    ctx = ctx!(m)
    :ok = Context.decode(ctx, t)
    {:ok, state} = Context.save_state(ctx)
    :ok = Context.clear(ctx)

    results =
      ctx
      |> Context.stream(s, t, max_tokens: 100)
      |> Enum.map(fn _ -> {Context.save_state(ctx), Context.load_state(ctx, state)} end)

    assert length(results) >= 3
    assert Enum.all?(Enum.drop(results, -2), &(&1 == {{:error, :busy}, {:error, :busy}})), inspect(results)

    :ok = Context.free(ctx)
    assert Context.save_state(ctx) == {:error, :closed}
    assert Context.load_sequence(ctx, 0, state) == {:error, :closed}
  end

  # Mutated blobs against a live context: never an abort, always :ok or
  # {:error, _}, and the context still generates correctly (checked every so
  # often and at the end). LCX_FUZZ_N sets the count (default 5000).
  @tag timeout: 600_000
  test "fuzz: mutated blobs", %{model: m, tokens: t, sampler: s} do
    fuzz!(m, s, t, String.to_integer(System.get_env("LCX_FUZZ_N", "5000")))
  end

  defp fuzz!(m, s, t, n) do
    seed = String.to_integer(System.get_env("LCX_FUZZ_SEED", "#{:erlang.unique_integer([:positive])}"))
    :rand.seed(:exsss, {seed, 7, 11})
    IO.puts("fuzz: #{n} blobs, LCX_FUZZ_SEED=#{seed}")

    {history, turn} = Enum.split(t, length(t) - 2)
    src = ctx!(m, n_ctx: 512, n_seq_max: 2)
    :ok = Context.decode(src, history)
    {:ok, state} = Context.save_state(src)
    {:ok, seq} = Context.save_sequence(src, 0)
    {:ok, other_seq} = Context.save_sequence(ctx!(m, n_ctx: 512, n_seq_max: 2), 1)
    expected = recomputed(m, s, history, turn, n_ctx: 512, n_seq_max: 2)

    dst = ctx!(m, n_ctx: 512, n_seq_max: 2)

    tally =
      Enum.reduce(1..n, %{}, fn i, tally ->
        {kind, base} = if rem(i, 2) == 0, do: {:state, state}, else: {:seq, seq}
        blob = mutate(base, [state, seq, other_seq])

        result =
          case kind do
            :state -> Context.load_state(dst, blob)
            :seq -> Context.load_sequence(dst, rem(i, 4) |> div(2), blob)
          end

        key =
          case result do
            :ok -> :ok
            {:error, {reason, msg}} when is_binary(msg) -> reason
          end

        # a blob that loaded (a mutation in the K/V data) is decoded over, whatever it gives
        if result == :ok and rem(i, 10) == 0,
          do: assert(match?({:ok, _}, Context.generate(dst, s, turn, max_tokens: 4)))

        if rem(i, 200) == 0, do: check_usable(dst, state, s, turn, expected)
        Map.update(tally, key, 1, &(&1 + 1))
      end)

    IO.puts("fuzz results: #{inspect(tally)}")
    check_usable(dst, state, s, turn, expected)
    assert Map.get(tally, :invalid_state, 0) > 0
  end

  describe "a sliding-window (iSWA) model" do
    # stories260K as a cohere2 model (the llama tensors, without the FFN norms
    # and the output matrix that cohere2 does not have): llama.cpp gives it a
    # base cache and a sliding-window cache of window 32, three layers in four.
    setup do
      swa = load_model!(swa_model_path(32))
      {:ok, sampler} = Sampler.create(swa, temp: 0.0)
      %{swa: swa, sampler: sampler}
    end

    test "a sequence longer than the window moves, and a whole context", %{swa: m, sampler: s} do
      {:ok, long} = Tokenizer.encode(m, String.duplicate("Once upon a time, there was a girl. ", 8))
      assert length(long) > 64
      {history, turn} = Enum.split(long, length(long) - 3)
      a = ctx!(m, n_ctx: 512, n_seq_max: 2)
      :ok = Context.decode(a, history)
      {:ok, seq} = Context.save_sequence(a, 0)
      {:ok, whole} = Context.save_state(a)
      # llama.cpp leaves the cells out of the window: the SWA section holds 32
      assert swa_positions(seq, :seq) == Enum.to_list((length(history) - 32)..(length(history) - 1))
      assert swa_positions(whole, :state) == Enum.to_list(0..(length(history) - 1))

      expected = recomputed(m, s, history, turn)
      b = ctx!(m, n_ctx: 512, n_seq_max: 2)
      :ok = Context.decode(b, Enum.take(long, 5))
      assert :ok = Context.load_sequence(b, 1, seq)
      :ok = Context.clear(b)
      assert :ok = Context.load_sequence(b, 0, seq)
      assert Context.position(b) == {:ok, length(history)}
      assert continue(b, s, turn) == expected
      c = ctx!(m, n_ctx: 512, n_seq_max: 2)
      assert :ok = Context.load_state(c, whole)
      assert Context.position(c) == {:ok, length(history)}
      assert continue(c, s, turn) == expected
    end

    test "an SWA section that does not end where the base one does, or has holes, is refused", %{swa: m} do
      {:ok, long} = Tokenizer.encode(m, String.duplicate("Once upon a time, there was a girl. ", 8))
      a = ctx!(m, n_ctx: 512)
      :ok = Context.decode(a, long)
      {:ok, seq} = Context.save_sequence(a, 0)
      {:ok, whole} = Context.save_state(a)
      top = length(long) - 1
      b = ctx!(m, n_ctx: 512)

      bad = fn blob, kind, fun ->
        cells = swa_cells(blob, kind)
        Enum.reduce(cells, blob, fn {at, pos}, acc -> put_i32(acc, at, fun.(pos)) end)
      end

      # every SWA position one lower: it ends before the base section
      assert {:error, {:invalid_state, msg}} = Context.load_sequence(b, 0, bad.(seq, :seq, &(&1 - 1)))
      assert msg =~ "ends at #{top - 1} in the sliding-window cache"
      # a cell of the window moved below it: a hole in the window, and a masked cell
      hole = bad.(seq, :seq, fn p -> if p == top - 10, do: top - 40, else: p end)
      assert {:error, {:invalid_state, msg}} = Context.load_sequence(b, 0, hole)
      assert msg =~ "misses position #{top - 10}"
      # the oldest one: the window is shorter, but a sequence blob holds no masked cells
      low = top - 31
      masked = bad.(seq, :seq, fn p -> if p == low, do: low - 10, else: p end)
      assert {:error, {:invalid_state, msg}} = Context.load_sequence(b, 0, masked)
      assert msg =~ "holds masked position #{low - 10}"
      # in a whole context masked cells below the window are as llama.cpp left them, in any order
      stale = bad.(whole, :state, fn p -> if p == 3, do: 1, else: if(p == 1, do: 3, else: p) end)
      assert :ok = Context.load_state(b, stale)
      beyond = bad.(whole, :state, fn p -> if p == top - 5, do: top + 40, else: p end)
      assert {:error, {:invalid_state, msg}} = Context.load_state(b, beyond)
      assert msg =~ "ends at #{top + 40} in the sliding-window cache, at #{top}"
      # nothing got in, and the context still works
      assert {:ok, _} = Context.position(b)
      :ok = Context.clear(b)
      :ok = Context.decode(b, Enum.take(long, 4))
    end

    @tag timeout: 600_000
    test "fuzz: mutated blobs of a sliding-window model", %{swa: m, sampler: s} do
      {:ok, long} = Tokenizer.encode(m, String.duplicate("Once upon a time, there was a girl. ", 8))
      fuzz!(m, s, long, div(String.to_integer(System.get_env("LCX_FUZZ_N", "5000")), 5))
    end

    test "a window of 0 is refused: llama.cpp would mask every cell" do
      {:ok, m} = LlamaCppEx.Model.load(swa_model_path(0))
      ctx = ctx!(m)
      assert {:error, {:state_unsupported, msg}} = Context.save_state(ctx)
      assert msg =~ "window of 0"
      assert {:error, {:state_unsupported, _}} = Context.load_sequence(ctx, 0, "x")
    end
  end

  defp swa_model_path(window) do
    alias LlamaCppEx.TestGGUF
    g = TestGGUF.parse(File.read!(model_path()))

    kvs =
      Enum.map(g.kvs, fn
        {"general.architecture", t, _} -> {"general.architecture", t, "cohere2"}
        {"llama." <> k, t, v} -> {"cohere2." <> k, t, v}
        kv -> kv
      end)

    # drop tensors cohere2 does not create; GGUF wants the data of the rest contiguous, in order
    sorted = Enum.sort_by(g.tensors, & &1.offset)
    ends = Enum.map(Enum.drop(sorted, 1), & &1.offset) ++ [byte_size(g.data)]

    {tensors, data} =
      Enum.zip(sorted, ends)
      |> Enum.reject(fn {t, _} -> t.name =~ "ffn_norm" or t.name == "output.weight" end)
      |> Enum.map_reduce([], fn {t, e}, acc ->
        {%{t | offset: IO.iodata_length(acc)}, [acc, binary_part(g.data, t.offset, e - t.offset)]}
      end)

    %{g | kvs: kvs, tensors: tensors, data: IO.iodata_to_binary(data)}
    |> TestGGUF.put("cohere2.attention.sliding_window", :u32, window)
    |> TestGGUF.put("cohere2.logit_scale", :f32, 1.0)
    |> TestGGUF.put("cohere2.attention.layer_norm_epsilon", :f32, 1.0e-5)
    |> TestGGUF.write_tmp!()
  end

  # The cells of the last (SWA) cache section of a blob: {offset of the position, position}.
  defp swa_cells(blob, kind) do
    start =
      case kind do
        :seq -> 8
        :state -> 4 + :binary.decode_unsigned(binary_part(blob, 0, 4), :little)
      end

    {_base, at} = walk_cache(blob, start)
    {cells, _} = walk_cache(blob, at)
    cells
  end

  defp swa_positions(blob, kind), do: blob |> swa_cells(kind) |> Enum.map(&elem(&1, 1)) |> Enum.sort()

  defp put_i32(blob, at, v) do
    <<pre::binary-size(at), _::32, post::binary>> = blob
    pre <> <<v::little-signed-32>> <> post
  end

  # One cache section from offset at: its cells and the offset after it.
  defp walk_cache(blob, at) do
    <<_::binary-size(at), n_stream::little-32, _::binary>> = blob

    Enum.reduce(1..n_stream, {[], at + 4}, fn _, {cells, at} ->
      <<_::binary-size(at), n::little-32, _::binary>> = blob
      {mine, at} = walk_cells(blob, at + 4, n)
      at = if n > 0, do: walk_layers(blob, at, n), else: at
      {cells ++ mine, at}
    end)
  end

  defp walk_cells(_blob, at, 0), do: {[], at}

  defp walk_cells(blob, at, n) do
    Enum.map_reduce(1..n, at, fn _, at ->
      <<_::binary-size(at), pos::little-signed-32, n_seq::little-32, _::binary>> = blob
      {{at, pos}, at + 8 + 4 * n_seq}
    end)
  end

  defp walk_layers(blob, at, cells) do
    <<_::binary-size(at), v_trans::little-32, n_layer::little-32, _::binary>> = blob
    at = at + 8

    at =
      Enum.reduce(1..n_layer, at, fn _, at ->
        <<_::binary-size(at), _type::32, row::little-64, _::binary>> = blob
        at + 12 + row * cells
      end)

    Enum.reduce(1..n_layer, at, fn _, at ->
      if v_trans == 1 do
        <<_::binary-size(at), _type::32, el::little-32, n_embd::little-32, _::binary>> = blob
        at + 12 + el * n_embd * cells
      else
        <<_::binary-size(at), _type::32, row::little-64, _::binary>> = blob
        at + 12 + row * cells
      end
    end)
  end

  defp check_usable(ctx, state, sampler, turn, expected) do
    assert :ok = Context.load_state(ctx, state)
    assert continue(ctx, sampler, turn) == expected
  end

  @edits [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE]

  # One random mutation of blob; most land in the first KB (headers and cells).
  defp mutate(blob, others) do
    size = byte_size(blob)
    at = fn -> if :rand.uniform() < 0.8, do: :rand.uniform(min(size, 1024)) - 1, else: :rand.uniform(size) - 1 end

    case :rand.uniform(7) do
      1 ->
        # bit flips
        Enum.reduce(1..:rand.uniform(4), blob, fn _, b -> flip(b, at.()) end)

      2 ->
        binary_part(blob, 0, :rand.uniform(size) - 1)

      3 ->
        # a 32-bit field set to an edge value (aligned or not)
        pos = min(at.(), size - 4)
        v = Enum.random(@edits)
        <<pre::binary-size(pos), _::32, rest::binary>> = blob
        <<pre::binary, v::little-32, rest::binary>>

      4 ->
        # a splice of another blob
        other = Enum.random(others)
        cut = :rand.uniform(size) - 1
        from = min(:rand.uniform(byte_size(other)) - 1, cut)
        binary_part(blob, 0, cut) <> binary_part(other, from, byte_size(other) - from)

      5 ->
        :crypto.strong_rand_bytes(:rand.uniform(2048) - 1)

      6 ->
        # random bytes over a stretch
        pos = at.()
        len = min(:rand.uniform(16), size - pos)
        <<pre::binary-size(pos), _::binary-size(len), rest::binary>> = blob
        <<pre::binary, :crypto.strong_rand_bytes(len)::binary, rest::binary>>

      7 ->
        # inserted or dropped bytes
        pos = at.()
        <<pre::binary-size(pos), rest::binary>> = blob

        k = min(byte_size(rest), :rand.uniform(8))

        if :rand.uniform(2) == 1,
          do: pre <> :crypto.strong_rand_bytes(k) <> rest,
          else: pre <> binary_part(rest, k, byte_size(rest) - k)
    end
  end

  defp flip(b, pos) do
    <<pre::binary-size(pos), byte, rest::binary>> = b
    <<pre::binary, Bitwise.bxor(byte, Bitwise.bsl(1, :rand.uniform(8) - 1)), rest::binary>>
  end
end
