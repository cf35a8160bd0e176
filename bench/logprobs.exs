# What `logprobs:` costs per generated token, on both test models.
#
#   mix run bench/logprobs.exs [--tokens 200] [--rounds 7]
#
# For each model and each setting (off, 0, 5, 20 alternatives), the same greedy
# generation runs `rounds` times; reported are medians per generated token of
#   * loop: the completion's :sample_ms, the loop's work outside llama_decode
#     (sampling, text, and with logprobs the log-softmax and top-n selection);
#   * total: the wall time of the call, which also counts building the
#     returned terms (a map and two binaries per token and per alternative).
# The difference from "off" is the cost of the option.

{opts, _} = OptionParser.parse!(System.argv(), strict: [tokens: :integer, rounds: :integer])
tokens = opts[:tokens] || 200
rounds = opts[:rounds] || 7
shared = Path.expand("../../shared/models", __DIR__)

models = [
  {"stories260K", Path.join(shared, "stories260K.gguf")},
  {"llama-2-tiny-random (32k vocab)", Path.join(shared, "llama-2-tiny-random.gguf")}
]

LlamaCppEx.Log.set_level(:none)
median = fn xs -> xs |> Enum.sort() |> Enum.at(div(length(xs), 2)) end

IO.puts("| model | n_vocab | logprobs | loop µs/token | Δ loop | total µs/token | Δ total |")
IO.puts("|---|---|---|---|---|---|---|")

for {name, path} <- models do
  {:ok, model} = LlamaCppEx.Model.load(path)
  {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: tokens + 64, n_threads: 1)
  run_opts = [max_tokens: tokens, temp: 0.0, context: ctx, stop: []]

  measure = fn lp ->
    samples =
      for _ <- 1..rounds do
        {us, {:ok, c}} = :timer.tc(fn -> LlamaCppEx.complete(model, "Once upon a time", run_opts ++ [logprobs: lp]) end)
        n = max(c.generated_tokens, 1)
        {c.sample_ms * 1000 / n, us / n}
      end

    {median.(Enum.map(samples, &elem(&1, 0))), median.(Enum.map(samples, &elem(&1, 1)))}
  end

  measure.(nil)
  {loop0, total0} = measure.(nil)

  for lp <- [nil, 0, 5, 20] do
    {loop, total} = if lp == nil, do: {loop0, total0}, else: measure.(lp)
    f = &:erlang.float_to_binary(&1 / 1, decimals: 1)

    IO.puts(
      "| #{name} | #{model.n_vocab} | #{inspect(lp)} | #{f.(loop)} | #{f.(loop - loop0)} | #{f.(total)} | #{f.(total - total0)} |"
    )
  end
end
