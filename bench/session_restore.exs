# Time to first token of a conversation's next turn on a LlamaCppEx.Server
# that restored the conversation (Server.restore_session/2) against one that
# recomputes it, on both benchmark models.
#
#   mix run bench/session_restore.exs [--history 400] [--rounds 3] [--threads 2]
#
# A conversation of `history` tokens is run on one server and saved
# (save_session/3); then, `rounds` times, a fresh server either restores it and
# gets the next turn (history + 8 tokens), or gets the same turn without it.
# Reported are medians of: the save, the restore call, the next turn's ttft_ms
# (queue + prompt, Completion.ttft_ms) and its cached_tokens, and the saved
# session's size. The synthetic model is made by bench/gen_model.sh.

{opts, _} = OptionParser.parse!(System.argv(), strict: [history: :integer, rounds: :integer, threads: :integer])
history = opts[:history] || 400
rounds = opts[:rounds] || 3
threads = opts[:threads] || 2
shared = Path.expand("../../shared/models", __DIR__)

cache =
  System.get_env("LLAMA_CPP_CACHE") ||
    Path.join(System.get_env("XDG_CACHE_HOME") || Path.expand("~/.cache"), "llama_cpp_ex")

models = [
  {"stories260K (F32)", Path.join(shared, "stories260K.gguf")},
  {"synthetic-130m (Q8_0)", Path.join(cache, "models/synthetic-130m-q8_0.gguf")}
]

alias LlamaCppEx.{Model, Server, Tokenizer}
alias LlamaCppEx.Server.SavedSession

LlamaCppEx.Log.set_level(:none)
median = fn xs -> xs |> Enum.sort() |> Enum.at(div(length(xs), 2)) end
ms = fn f -> :timer.tc(f) |> then(fn {us, r} -> {us / 1000, r} end) end

text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "

IO.puts("history #{history} tokens, #{rounds} rounds, #{threads} threads\n")

IO.puts(
  "| model | saved | save ms | restore ms | ttft ms (restored) | cached | ttft ms (recomputed) | restore + ttft vs recompute |"
)

IO.puts("|---|---|---|---|---|---|---|---|")

for {name, path} <- models do
  if File.exists?(path) do
    {:ok, model} = Model.load(path)
    {:ok, tokens} = Tokenizer.encode(model, String.duplicate(text, div(history, 10) + 1))
    conversation = Enum.take(tokens, history)
    {:ok, more} = Tokenizer.encode(model, " The end of the day came", add_special: false)
    turn = Enum.take(more, 8)
    server_opts = [model: model, n_parallel: 2, n_ctx: history + 64, n_batch: 256, n_threads: threads]

    {:ok, a} = Server.start_link(server_opts)
    {:ok, _} = Server.complete(a, conversation, max_tokens: 1, temp: 0.0, session: :s)
    saves = for _ <- 1..rounds, do: elem(ms.(fn -> {:ok, _} = Server.save_session(a, :s) end), 0)
    {:ok, saved} = Server.save_session(a, :s)
    GenServer.stop(a)
    prompt = saved.tokens ++ turn

    restored =
      for _ <- 1..rounds do
        {:ok, b} = Server.start_link(server_opts)
        {t_restore, :ok} = ms.(fn -> Server.restore_session(b, saved) end)
        {:ok, c} = Server.complete(b, prompt, max_tokens: 1, temp: 0.0, session: :s)
        GenServer.stop(b)
        {t_restore, c.ttft_ms, c.cached_tokens}
      end

    recomputed =
      for _ <- 1..rounds do
        {:ok, b} = Server.start_link(server_opts)
        {:ok, c} = Server.complete(b, prompt, max_tokens: 1, temp: 0.0)
        GenServer.stop(b)
        c.ttft_ms
      end

    t_restore = median.(Enum.map(restored, &elem(&1, 0)))
    ttft = median.(Enum.map(restored, &elem(&1, 1)))
    cached = median.(Enum.map(restored, &elem(&1, 2)))
    ttft_re = median.(recomputed)
    f = &:erlang.float_to_binary(&1 / 1, decimals: 1)
    kib = div(byte_size(SavedSession.to_binary(saved)), 1024)

    IO.puts(
      "| #{name} | #{length(saved.tokens)} tokens, #{kib} KiB | #{f.(median.(saves))} | #{f.(t_restore)} | #{f.(ttft)} | " <>
        "#{cached} | #{f.(ttft_re)} | #{f.(ttft_re / (t_restore + ttft))}x faster |"
    )

    Model.free(model)
  else
    IO.puts("| #{name} | missing: #{path} (bench/gen_model.sh) | | | | | | |")
  end
end
