defmodule Mix.Tasks.Llama.StateBench do
  @shortdoc "Times resuming a conversation from saved state against recomputing it"
  @moduledoc """
  Times resuming a conversation of `--tokens` tokens (default 1000) from a
  saved state (`LlamaCppEx.Context.load_state/2`, from a binary and from a
  file) against recomputing it (`Context.decode/2` of the same tokens into a
  cleared context), and checks that both continue with the same greedy text.

      mix llama.state_bench [--models stories,synthetic] [--tokens N] [--threads N] [--reps N]

  `stories` is the shared stories260K.gguf; `synthetic` the ~130M Q8_0 model
  of `bench/gen_model.sh` in the cache directory (skipped when absent). Each
  figure is the median of `--reps` runs (default 3). The table goes to stdout.
  """
  use Mix.Task

  alias LlamaCppEx.{Context, Model, Sampler}

  @impl true
  def run(argv) do
    {opts, _} =
      OptionParser.parse!(argv, strict: [models: :string, tokens: :integer, threads: :integer, reps: :integer])

    Mix.Task.run("app.start")
    n = opts[:tokens] || 1000
    threads = opts[:threads] || Context.default_threads()
    reps = opts[:reps] || 3
    models = String.split(opts[:models] || "stories,synthetic", ",")

    IO.puts("| model | tokens | recompute ms | save ms | state MB | load ms | load file ms | speed-up | same text |")
    IO.puts("|---|---|---|---|---|---|---|---|---|")

    for name <- models, path = model_path(name), path != nil do
      IO.puts(row(name, path, n, threads, reps))
    end
  end

  defp model_path("stories"), do: Path.expand("../shared/models/stories260K.gguf", File.cwd!())

  defp model_path("synthetic") do
    path = Path.expand("~/.cache/llama_cpp_ex/models/synthetic-130m-q8_0.gguf")
    if File.exists?(path), do: path, else: IO.puts(:stderr, "synthetic model absent: skipped") && nil
  end

  defp model_path(other), do: Mix.raise("unknown model #{other} (stories, synthetic)")

  defp row(name, path, n, threads, reps) do
    {:ok, model} = Model.load(path)
    :rand.seed(:exsss, {1, 2, 3})
    tokens = for _ <- 1..n, do: :rand.uniform(model.n_vocab - 1)
    {:ok, sampler} = Sampler.create(model, temp: 0.0)
    opts = [n_ctx: n + 256, n_batch: 512, n_threads: threads]
    {:ok, ctx} = Context.create(model, opts)
    {:ok, other} = Context.create(model, opts)
    turn = [Enum.random(1..(model.n_vocab - 1))]

    recompute = median(reps, fn -> :ok = Context.clear(ctx) end, fn -> :ok = Context.decode(ctx, tokens) end)
    {:ok, expected} = Context.generate(ctx, sampler, turn, max_tokens: 16)
    :ok = Context.clear(ctx)
    :ok = Context.decode(ctx, tokens)

    save = median(reps, fn -> :ok end, fn -> {:ok, _} = Context.save_state(ctx) end)
    {:ok, state} = Context.save_state(ctx)
    load = median(reps, fn -> :ok = Context.clear(other) end, fn -> :ok = Context.load_state(other, state) end)

    file = Path.join(System.tmp_dir!(), "llama_state_bench_#{System.unique_integer([:positive])}")
    :ok = Context.save_state_file(ctx, file)

    load_file = median(reps, fn -> :ok = Context.clear(other) end, fn -> :ok = Context.load_state_file(other, file) end)

    File.rm(file)
    {:ok, resumed} = Context.generate(other, sampler, turn, max_tokens: 16)

    "| #{name} | #{n} | #{ms(recompute)} | #{ms(save)} | #{Float.round(byte_size(state) / 1.0e6, 1)} | " <>
      "#{ms(load)} | #{ms(load_file)} | #{Float.round(recompute / load, 1)}x | #{resumed.tokens == expected.tokens} |"
  end

  defp median(reps, before, fun) do
    times =
      for _ <- 1..reps do
        before.()
        {us, _} = :timer.tc(fun)
        us
      end

    times |> Enum.sort() |> Enum.at(div(reps, 2))
  end

  defp ms(us), do: Float.round(us / 1000, 2)
end
