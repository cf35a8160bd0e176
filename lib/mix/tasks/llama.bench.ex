defmodule Mix.Tasks.Llama.Bench do
  @shortdoc "Benchmarks the binding against llama.cpp's own llama-bench"
  @moduledoc """
  Measures LlamaCppEx against llama.cpp's own `llama-bench`, built from the same
  pinned source and flags, on the same machine, model, thread count and sizes,
  in one run, and reports ratios.

      mix llama.bench [--models stories,synthetic] [--threads N] [--reps N] [--skip-memory]

  For each model it measures:

    1. prompt processing (pp256, pp512): `Context.decode/2` vs `llama-bench -p`;
    2. generation of 128 tokens (tg128): `LlamaCppEx.generate/3` and
       `LlamaCppEx.stream/3` (wall time seen from Elixir, one-token prompt,
       end-of-generation tokens banned so all 128 are produced) vs
       `llama-bench -n 128` (which decodes one token at a time, no sampling);
    3. the binding's per-token overhead in µs: ours minus native, per token;
    4. the worst wake-up delay of a probe process on a normal scheduler while
       generation runs (native work must stay off normal schedulers).

  Then it loads and frees a model and a context 200 times and reports resident
  memory before and after.

  The table is printed on stdout and written to `bench/results/<date>-<host>.md`;
  progress goes to stderr.
  The synthetic model (~130M parameters, llama architecture, Q8_0, LLaMA SPM
  vocabulary, random weights from a fixed seed) is generated on first use by
  `bench/gen_model.sh` into the cache directory.
  """
  use Mix.Task

  alias LlamaCppEx.{Context, Model, Tokenizer}

  @switches [models: :string, threads: :string, rounds: :integer, reps: :integer, skip_memory: :boolean, out: :string]

  @impl true
  def run(args) do
    {opts, _, invalid} = OptionParser.parse(args, strict: @switches)
    if invalid != [], do: Mix.raise("unknown options #{inspect(invalid)}")
    Mix.LlamaCppEx.start_app()
    LlamaCppEx.Log.set_level(:error)

    threads =
      (opts[:threads] || "1,#{System.schedulers_online()}")
      |> String.split(",", trim: true)
      |> Enum.map(&String.to_integer/1)
      |> Enum.uniq()

    rounds = opts[:rounds] || 5
    reps = opts[:reps] || 3
    models = String.split(opts[:models] || "stories,synthetic", ",", trim: true)
    root = File.cwd!()

    bin = Mix.LlamaCppEx.tools_dir(root, ["llama-bench", "llama-batched-bench"])
    env = llama_env(root)

    rows =
      for name <- models, t <- threads do
        path = Mix.LlamaCppEx.model_path(root, name)
        Mix.LlamaCppEx.info("== #{name}, #{t} thread(s): #{path}")
        {native, ours} = interleaved(bin, path, t, rounds, reps)
        probe = probe_during_generation(path, t)
        {name, path, t, native, Map.put(ours, :probe, probe)}
      end

    memory = if opts[:skip_memory], do: nil, else: memory_check(Mix.LlamaCppEx.model_path(root, hd(models)))

    report = render(rows, memory, rounds, reps, env)
    IO.puts("\n" <> report)
    out = opts[:out] || Path.join([root, "bench", "results", "#{Date.utc_today()}-#{hostname()}.md"])
    File.mkdir_p!(Path.dirname(out))
    File.write!(out, report)
    Mix.LlamaCppEx.info("written to #{Path.relative_to(out, root)}")
  end

  # This machine is shared and noisy: alternate the two sides in rounds and
  # compare medians of the round averages, so drift hits both alike.
  defp interleaved(bin, path, threads, rounds, reps) do
    samples =
      for _ <- 1..rounds do
        {native_bench(bin, path, threads, reps), ours_bench(path, threads, reps)}
      end

    median_of = fn side ->
      keys = samples |> hd() |> elem(side) |> Map.keys()

      Map.new(keys, fn k ->
        rounds_k = Enum.map(samples, &elem(&1, side)[k])
        vals = rounds_k |> Enum.map(& &1.tps) |> Enum.sort()
        loop = rounds_k |> Enum.map(&Map.get(&1, :loop_us)) |> Enum.reject(&is_nil/1) |> Enum.sort()
        loop_us = if loop == [], do: nil, else: Enum.at(loop, div(length(loop), 2))
        {k, %{tps: Enum.at(vals, div(length(vals), 2)), min: hd(vals), max: List.last(vals), loop_us: loop_us}}
      end)
    end

    {median_of.(0), median_of.(1)}
  end

  # ---- native side --------------------------------------------------------------

  defp llama_env(root) do
    {out, 0} = System.cmd(Path.join(root, "scripts/llama_cpp.sh"), ["ensure"])

    for line <- String.split(out, "\n", trim: true), [k, v] = String.split(line, "=", parts: 2), into: %{}, do: {k, v}
  end

  defp native_bench(bin, model, threads, reps) do
    args = ["-m", model, "-p", "256,512", "-n", "128", "-t", "#{threads}", "-r", "#{reps}", "-o", "csv"]
    {csv, 0} = System.cmd(Path.join(bin, "llama-bench"), args, stderr_to_stdout: false)
    [header | rows] = csv |> String.split("\n", trim: true) |> Enum.map(&csv_fields/1)

    Map.new(rows, fn fields ->
      r = Map.new(Enum.zip(header, fields))
      num = fn k -> r[k] |> Float.parse() |> elem(0) end
      key = if num.("n_gen") > 0, do: "tg#{r["n_gen"]}", else: "pp#{r["n_prompt"]}"
      {key, %{tps: num.("avg_ts")}}
    end)
  end

  # llama-bench quotes every CSV field ("a","b",...); none contains a quote.
  defp csv_fields(line) do
    line |> String.split(~r/,(?=(?:[^"]*"[^"]*")*[^"]*$)/) |> Enum.map(&String.trim(&1, "\""))
  end

  # ---- our side -------------------------------------------------------------------

  defp ours_bench(path, threads, reps) do
    {:ok, model} = Model.load(path)
    n_vocab = model.n_vocab
    :rand.seed(:exsss, {1, 2, 3})

    pp =
      for n <- [256, 512], into: %{} do
        {:ok, ctx} = Context.create(model, n_ctx: n, n_batch: 2048, n_ubatch: 512, n_threads: threads)
        tokens = fn -> [bos(model) | for(_ <- 2..n, do: :rand.uniform(n_vocab) - 1)] end

        run_pp = fn ->
          :ok = Context.clear(ctx)
          toks = tokens.()
          measure(fn -> :ok = Context.decode(ctx, toks) end)
        end

        run_pp.()
        times = for _ <- 1..reps, do: run_pp.()
        Context.free(ctx)
        {"pp#{n}", stats(n, times)}
      end

    bias = for t <- eog_tokens(model), into: %{}, do: {t, :neg_infinity}
    {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: threads)
    prompt = ""
    gen_opts = [context: ctx, max_tokens: 128, temp: 0.0, logit_bias: bias, add_special: true]

    # Each run returns {wall µs, µs per token spent in the native loop outside llama_decode}.
    gen = fn ->
      me = self()

      us =
        measure(fn ->
          {:ok, %{generated_tokens: 128} = c} = LlamaCppEx.complete(model, prompt, gen_opts)
          send(me, {:c, c})
        end)

      {us, loop_overhead()}
    end

    stream = fn ->
      me = self()
      opts = [{:on_complete, &send(me, {:c, &1})} | gen_opts]
      us = measure(fn -> true = model |> LlamaCppEx.stream(prompt, opts) |> Enum.count() > 0 end)
      {us, loop_overhead()}
    end

    gen.()
    gen_runs = for _ <- 1..reps, do: gen.()
    stream.()
    stream_runs = for _ <- 1..reps, do: stream.()
    Context.free(ctx)
    Model.free(model)

    Map.merge(pp, %{"tg128" => tg_stats(gen_runs), "tg128 stream" => tg_stats(stream_runs)})
  end

  # Generation (plain and streamed) while a probe on a normal scheduler
  # measures how late it wakes up; kept out of the timed runs above because
  # the probe's own wake-ups compete with the compute threads for the CPUs.
  defp probe_during_generation(path, threads) do
    {:ok, model} = Model.load(path)
    bias = for t <- eog_tokens(model), into: %{}, do: {t, :neg_infinity}
    opts = [max_tokens: 128, temp: 0.0, logit_bias: bias, n_threads: threads]

    {during, us} =
      with_probe(fn ->
        # at least 3 s of generation, so that a percentile means something
        t0 = System.monotonic_time(:microsecond)

        Stream.repeatedly(fn ->
          {:ok, _} = LlamaCppEx.complete(model, "", opts)
          model |> LlamaCppEx.stream("", opts) |> Stream.run()
          System.monotonic_time(:microsecond) - t0
        end)
        |> Enum.find(&(&1 >= 3_000_000))
      end)

    Model.free(model)
    # the same probe for as long, with nothing running: this VM's own noise
    {idle, _} = with_probe(fn -> Process.sleep(max(div(us, 1000), 100)) end)
    %{during: during, idle: idle}
  end

  defp bos(model), do: Tokenizer.bos(model) || 0

  defp eog_tokens(model) do
    specials = Tokenizer.special_tokens(model)
    [specials.eos, specials.eot] |> Enum.reject(&is_nil/1) |> Enum.uniq()
  end

  defp measure(fun) do
    t0 = System.monotonic_time(:microsecond)
    fun.()
    System.monotonic_time(:microsecond) - t0
  end

  defp loop_overhead do
    receive do
      {:c, c} -> c.sample_ms * 1000 / c.generated_tokens
    end
  end

  defp tg_stats(runs) do
    %{tps: tps} = stats(128, Enum.map(runs, &elem(&1, 0)))
    extra = Enum.map(runs, &elem(&1, 1))
    %{tps: tps, loop_us: Enum.sum(extra) / length(extra)}
  end

  # mean of per-repetition rates, as llama-bench computes avg_ts
  defp stats(n, times_us) do
    tps = Enum.map(times_us, &(n * 1_000_000 / &1))
    %{tps: Enum.sum(tps) / length(tps)}
  end

  # A process on a normal scheduler that sleeps 1 ms at a time and records how
  # late it wakes up. Native work that blocked a normal scheduler would show here.
  # Returns %{worst: ms, p99: ms} of the wake-up delays, and fun's result.
  defp with_probe(fun) do
    parent = self()
    probe = spawn(fn -> probe_loop(parent, []) end)
    result = fun.()
    send(probe, :stop)

    receive do
      {:probe, delays} ->
        sorted = Enum.sort(delays)
        n = length(sorted)
        p99 = if n == 0, do: 0, else: Enum.at(sorted, min(n - 1, trunc(n * 0.99)))
        {%{worst: (List.last(sorted) || 0) / 1000, p99: p99 / 1000}, result}
    end
  end

  defp probe_loop(parent, delays) do
    t0 = System.monotonic_time(:microsecond)

    receive do
      :stop -> send(parent, {:probe, delays})
    after
      1 -> probe_loop(parent, [System.monotonic_time(:microsecond) - t0 - 1000 | delays])
    end
  end

  # ---- memory ----------------------------------------------------------------------

  defp memory_check(path) do
    cycle = fn ->
      {:ok, m} = Model.load(path)
      {:ok, c} = Context.create(m, n_ctx: 512)
      :ok = Context.free(c)
      :ok = Model.free(m)
    end

    # warm up allocator pools, then measure
    for _ <- 1..5, do: cycle.()
    :erlang.garbage_collect()
    before = rss_kb()
    for _ <- 1..200, do: cycle.()
    :erlang.garbage_collect()
    after_ = rss_kb()
    %{before_kb: before, after_kb: after_, model: Path.basename(path)}
  end

  defp rss_kb do
    "/proc/#{System.pid()}/status"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn line ->
      case String.split(line) do
        ["VmRSS:", kb, "kB"] -> String.to_integer(kb)
        _ -> nil
      end
    end)
  end

  # ---- report ------------------------------------------------------------------------

  defp render(rows, memory, rounds, reps, env) do
    header = """
    # LlamaCppEx benchmark

    - date: #{DateTime.utc_now() |> DateTime.truncate(:second)}
    - machine: #{cpu_model()}, #{:erlang.system_info(:logical_processors)} logical CPUs, #{System.schedulers_online()} schedulers online
    - llama.cpp: #{env["LLAMA_COMMIT"]} (#{env["LLAMA_BACKEND"]} backend); `llama-bench` built from the same source and flags as the NIF
    - method: #{rounds} rounds, each running `llama-bench -r #{reps}` and then #{reps} timed repetitions of ours (after a warm-up);
      the figures are the medians of the #{rounds} round averages (min–max of the rounds in brackets)
    - ours: wall time seen from Elixir. pp = `Context.decode/2` of BOS + random tokens into a cleared context;
      tg = `LlamaCppEx.complete/3` / `LlamaCppEx.stream/3` from a one-token prompt (BOS) to 128 tokens, greedy sampling,
      end-of-generation banned; llama-bench tg decodes 128 tokens one at a time without sampling
    - last column: measured inside our native loop (`Completion.sample_ms` per token): what the binding does per token
      besides llama_decode (greedy sampling over the whole vocabulary, which llama-bench does not do, detokenizing,
      and for streams sending the chunk); it does not depend on the noise of wall-clock comparisons
    - OTP #{System.otp_release()}, Elixir #{System.version()}; command: `mix llama.bench`
    """

    tables =
      Enum.map_join(rows, "\n", fn {name, path, threads, native, ours} ->
        lines =
          for {test, ours_key, native_key} <- [
                {"pp256 (Context.decode)", "pp256", "pp256"},
                {"pp512 (Context.decode)", "pp512", "pp512"},
                {"tg128 (LlamaCppEx.complete)", "tg128", "tg128"},
                {"tg128 (LlamaCppEx.stream)", "tg128 stream", "tg128"}
              ] do
            o = ours[ours_key]
            n = native[native_key]
            ratio = o.tps / n.tps
            overhead = 1_000_000 / o.tps - 1_000_000 / n.tps

            loop = if o.loop_us, do: fmt(o.loop_us, 1), else: "–"

            "| #{test} | #{fmt(o.tps)} [#{fmt(o.min)}–#{fmt(o.max)}] | #{fmt(n.tps)} [#{fmt(n.min)}–#{fmt(n.max)}] " <>
              "| **#{fmt(ratio, 3)}** | #{fmt(overhead, 1)} | #{loop} |"
          end

        """

        ## #{name} (`#{Path.basename(path)}`), #{threads} thread(s)

        | test | ours t/s | llama-bench t/s | ours / native | ours − native, µs/token | loop work outside llama_decode, µs/token |
        |---|---|---|---|---|---|
        #{Enum.join(lines, "\n")}

        Wake-up delay of a 1 ms timer on a normal scheduler during generation: worst #{fmt(ours.probe.during.worst, 2)} ms,
        p99 #{fmt(ours.probe.during.p99, 2)} ms (the same probe with nothing running: worst #{fmt(ours.probe.idle.worst, 2)} ms,
        p99 #{fmt(ours.probe.idle.p99, 2)} ms).
        """
      end)

    mem =
      case memory do
        nil ->
          ""

        %{before_kb: b, after_kb: a, model: m} ->
          """

          ## Memory

          200 × (load `#{m}`, create a context, free both): resident memory #{fmt(b / 1024, 1)} MiB → #{fmt(a / 1024, 1)} MiB (#{fmt((a - b) * 100 / b, 2)} %).
          """
      end

    header <> tables <> mem
  end

  defp fmt(x, digits \\ 1), do: :erlang.float_to_binary(x / 1, decimals: digits)

  defp cpu_model do
    case File.read("/proc/cpuinfo") do
      {:ok, info} ->
        Regex.run(~r/model name\s*:\s*(.+)/, info, capture: :all_but_first) |> then(&((&1 && hd(&1)) || "unknown CPU"))

      _ ->
        "unknown CPU"
    end
  end

  defp hostname do
    {:ok, name} = :inet.gethostname()
    to_string(name)
  end
end
