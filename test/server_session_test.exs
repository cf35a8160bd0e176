defmodule LlamaCppEx.ServerSessionTest do
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Context, Sampler, Server, Tokenizer}
  alias LlamaCppEx.Server.SavedSession

  @first "Once upon a time, there was a little girl named Lily."
  @next " One day, her mom said"

  setup_all do
    model = load_model!()
    {:ok, first} = Tokenizer.encode(model, @first)
    {:ok, next} = Tokenizer.encode(model, @next, add_special: false)
    %{model: model, first: first, next: next}
  end

  defp start!(model, opts \\ []) do
    opts = Keyword.merge([model: model, n_parallel: 2, n_ctx: 256, n_batch: 64, n_threads: 1], opts)
    start_supervised!({Server, opts}, id: make_ref())
  end

  # the unbatched path in a fresh context, with the server's attention (no flash attention)
  defp recomputed(model, tokens, max_tokens) do
    {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 1, flash_attn: false)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    {:ok, c} = Context.generate(ctx, sampler, tokens, max_tokens: max_tokens)
    c.text
  end

  # a first turn in session "s1" (scope :tenant), saved
  defp first_turn(server, first, opts \\ []) do
    scope = Keyword.get(opts, :scope, :tenant)
    {:ok, c} = Server.complete(server, first, max_tokens: 12, temp: 0.0, session: "s1", cache_scope: scope)
    {:ok, saved} = Server.save_session(server, "s1", cache_scope: scope)
    {c, saved}
  end

  defp tmp_path(name), do: Path.join(System.tmp_dir!(), "lcx-#{System.unique_integer([:positive])}-#{name}")

  test "a saved session survives a restart: the continuation reuses it and has the recomputed text",
       %{model: m, first: first, next: next} do
    # not supervised: it is stopped for good
    {:ok, a} = Server.start_link(model: m, n_parallel: 2, n_ctx: 256, n_batch: 64, n_threads: 1)
    {c1, saved} = first_turn(a, first)
    # the slot holds the prompt and the generated tokens it decoded (all but the last)
    assert saved.tokens == Enum.take(first ++ c1.tokens, length(saved.tokens))
    assert length(saved.tokens) in (length(first) + c1.generated_tokens - 1)..(length(first) + c1.generated_tokens)
    assert saved.session == "s1" and saved.scope == :tenant
    assert Server.stats(a).prefix_cache.sessions_saved == 1

    path = tmp_path("s1.session")
    on_exit(fn -> File.rm(path) end)
    assert :ok = SavedSession.write_file(saved, path)
    :ok = GenServer.stop(a)
    refute Process.alive?(a)

    b = start!(m)
    {:ok, loaded} = SavedSession.read_file(path)
    assert loaded == saved
    assert :ok = Server.restore_session(b, loaded)
    stats = Server.stats(b)
    assert stats.prefix_cache.sessions_restored == 1
    assert length(saved.tokens) in Map.values(stats.prefix_cache.held)

    prompt = saved.tokens ++ next
    {:ok, c2} = Server.complete(b, prompt, max_tokens: 20, temp: 0.0, session: "s1", cache_scope: :tenant)
    assert c2.cached_tokens == length(saved.tokens)
    assert Server.stats(b).cached_tokens == length(saved.tokens)
    expected = recomputed(m, prompt, 20)
    assert expected != ""
    assert c2.text == expected
  end

  test "another scope, another session, a busy or empty server: no saved session", %{model: m, first: first} do
    server = start!(m)
    assert Server.save_session(server, "s1") == {:error, :not_found}
    {_c, _saved} = first_turn(server, first)
    assert Server.save_session(server, "s1", cache_scope: :other) == {:error, :not_found}
    assert Server.save_session(server, "s2", cache_scope: :tenant) == {:error, :not_found}

    # a stream suspended after its first chunk keeps its slot busy
    stream = Server.stream(server, first, max_tokens: 200, temp: 0.0, session: "s1", cache_scope: :tenant)
    {:suspended, chunk, cont} = Enumerable.reduce(stream, {:cont, nil}, fn x, _ -> {:suspend, x} end)
    assert is_binary(chunk)
    assert Server.save_session(server, "s1", cache_scope: :tenant) == {:error, :busy}
    cont.({:halt, nil})
    assert eventually(fn -> Server.stats(server).slots.busy == 0 end, 5000)
    assert {:ok, %SavedSession{}} = Server.save_session(server, "s1", cache_scope: :tenant)

    assert_raise ArgumentError, fn -> Server.save_session(server, "s1", scope: :tenant) end
  end

  test "bad saved sessions are refused and the server goes on serving", %{model: m, first: first, next: next} do
    source = start!(m)
    {_c, saved} = first_turn(source, first)
    server = start!(m, n_parallel: 2)
    reference = Server.generate(server, first, max_tokens: 16, temp: 0.0)
    remade = fn tokens, state -> SavedSession.new(saved.session, saved.scope, tokens, state) end
    <<head::binary-size(64), byte, rest::binary>> = saved.state

    bad = [
      # parts that do not belong together
      {%{saved | tokens: saved.tokens ++ next}, ~r/checksum/},
      # tokens that are not what the cells hold
      {remade.(saved.tokens ++ next, saved.state), ~r/positions/},
      {remade.(Enum.drop(saved.tokens, 1), saved.state), ~r/positions/},
      {remade.([100_000 | saved.tokens], saved.state), ~r/vocabulary/},
      {remade.([], saved.state), ~r/tokens/},
      # a damaged state
      {remade.(saved.tokens, binary_part(saved.state, 0, byte_size(saved.state) - 9)), ~r/./},
      {remade.(saved.tokens, saved.state <> <<0>>), ~r/after the state/},
      {remade.(saved.tokens, <<head::binary, Bitwise.bxor(byte, 0xFF), rest::binary>>), ~r/./},
      {remade.(saved.tokens, "not a state"), ~r/./}
    ]

    for {s, why} <- bad do
      assert {:error, {reason, msg}} = Server.restore_session(server, s)
      assert reason in [:invalid_state, :state_load_failed]
      assert msg =~ why, "#{inspect(s)}: #{msg}"
      assert Server.generate(server, first, max_tokens: 16, temp: 0.0) == reference
    end

    assert Server.stats(server).prefix_cache.sessions_restored == 0
    assert_raise ArgumentError, fn -> Server.restore_session(server, %{saved | tokens: :nope}) end
    assert_raise ArgumentError, fn -> Server.restore_session(server, saved.state) end

    # the good one still goes in
    assert :ok = Server.restore_session(server, saved)

    {:ok, c} =
      Server.complete(server, saved.tokens ++ next, max_tokens: 8, temp: 0.0, session: "s1", cache_scope: :tenant)

    assert c.cached_tokens == length(saved.tokens)
  end

  test "a server of another KV layout, slot size or model refuses the session", %{model: m, first: first} do
    {_c, saved} = first_turn(start!(m), first)
    n = length(saved.tokens)

    # one KV cache for all slots (one stream) against one per slot (two)
    unified = start!(m, kv_unified: true)
    assert {:error, {:invalid_state, msg}} = Server.restore_session(unified, saved)
    assert msg =~ "KV streams"
    # another number of slots is another number of streams
    assert {:error, {:invalid_state, _}} = Server.restore_session(start!(m, n_parallel: 3), saved)
    # a slot too small for the session
    small = start!(m, n_ctx: n - 1)
    assert {:error, {:invalid_state, msg}} = Server.restore_session(small, saved)
    assert msg =~ "a slot holds"
    # a larger slot is fine
    assert :ok = Server.restore_session(start!(m, n_ctx: 512), saved)

    # another model of the same architecture (1 layer, the session has 5)
    {:ok, other} = LlamaCppEx.Model.load(random_model_path())
    random = start!(other, n_ctx: 128)
    assert {:error, {reason, _}} = Server.restore_session(random, saved)
    assert reason in [:invalid_state, :state_load_failed]
    assert {:ok, _} = Server.generate(random, "Hello", max_tokens: 4, temp: 0.0)

    for s <- [unified, small] do
      assert {:ok, text} = Server.generate(s, first, max_tokens: 8, temp: 0.0)
      assert text != ""
    end
  end

  test "a unified server's sessions go to a unified server", %{model: m, first: first, next: next} do
    {_c, saved} = first_turn(start!(m, kv_unified: true), first)
    assert {:error, {:invalid_state, _}} = Server.restore_session(start!(m), saved)
    server = start!(m, kv_unified: true)
    assert :ok = Server.restore_session(server, saved)

    {:ok, c} =
      Server.complete(server, saved.tokens ++ next, max_tokens: 8, temp: 0.0, session: "s1", cache_scope: :tenant)

    assert c.cached_tokens == length(saved.tokens)
  end

  test "saved sessions as binaries and files; what is not one is refused", %{model: m, first: first} do
    {_c, saved} = first_turn(start!(m), first)
    assert SavedSession.from_binary(SavedSession.to_binary(saved)) == {:ok, saved}
    assert {:error, {:invalid_state, _}} = SavedSession.from_binary("nope")
    assert {:error, {:invalid_state, _}} = SavedSession.from_binary(:erlang.term_to_binary({:a, 1}))
    bin = SavedSession.to_binary(saved)
    assert {:error, {:invalid_state, _}} = SavedSession.from_binary(binary_part(bin, 0, byte_size(bin) - 1))
    missing = tmp_path("missing")
    assert SavedSession.read_file(missing) == {:error, {:file_not_found, missing}}
    assert {:error, {:file_error, _, _}} = SavedSession.write_file(saved, "/nonexistent-dir/x.session")
    assert inspect(saved) =~ "#{length(saved.tokens)} tokens"
  end

  test "a restore while every slot is busy is refused; it goes in once one is free", %{model: m, first: first} do
    {_c, saved} = first_turn(start!(m, n_parallel: 1), first)
    server = start!(m, n_parallel: 1)
    stream = Server.stream(server, first, max_tokens: 200, temp: 0.0)
    {:suspended, _chunk, cont} = Enumerable.reduce(stream, {:cont, nil}, fn x, _ -> {:suspend, x} end)
    assert Server.restore_session(server, saved) == {:error, :busy}
    cont.({:halt, nil})
    assert eventually(fn -> Server.stats(server).slots.busy == 0 end, 5000)
    assert :ok = Server.restore_session(server, saved)
    assert Server.stats(server).prefix_cache.held == %{0 => length(saved.tokens)}
  end

  test "an embedding server keeps no sessions", %{model: m} do
    server = start!(m, embeddings: true, n_ctx: 64)
    assert Server.save_session(server, "s1") == {:error, :embeddings_only}
  end
end
