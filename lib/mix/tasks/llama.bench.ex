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

  The table is printed and written to `bench/results/<date>-<host>.md`.
  The synthetic model (~130M parameters, llama architecture, Q8_0, LLaMA SPM
  vocabulary, random weights from a fixed seed) is generated on first use by
  `bench/gen_model.sh` into the cache directory.
  """
  use Mix.Task

  alias LlamaCppEx.{Context, Model, Tokenizer}

  @switches [models: :string, threads: :integer, reps: :integer, skip_memory: :boolean, out: :string]

  @impl true
  def run(args) do
    {opts, _, invalid} = OptionParser.parse(args, strict: @switches)
    if invalid != [], do: Mix.raise("unknown options #{inspect(invalid)}")
    Mix.Task.run("app.start")
    LlamaCppEx.Log.set_level(:error)

    threads = opts[:threads] || System.schedulers_online()
    reps = opts[:reps] || 5
    models = String.split(opts[:models] || "stories,synthetic", ",", trim: true)
    root = File.cwd!()

    bin = tools_dir(root)
    env = llama_env(root)

    rows =
      Enum.flat_map(models, fn name ->
        path = model_path(root, name)
        Mix.shell().info("== #{name}: #{path}")
        native = native_bench(bin, path, threads, reps)
        ours = ours_bench(path, threads, reps)
        [{name, path, native, ours}]
      end)

    memory = if opts[:skip_memory], do: nil, else: memory_check(model_path(root, hd(models)))

    report = render(rows, memory, threads, reps, env)
    IO.puts("\n" <> report)
    out = opts[:out] || Path.join([root, "bench", "results", "#{Date.utc_today()}-#{hostname()}.md"])
    File.mkdir_p!(Path.dirname(out))
    File.write!(out, report)
    Mix.shell().info("written to #{Path.relative_to(out, root)}")
  end

  # ---- native side --------------------------------------------------------------

  defp tools_dir(root) do
    {out, 0} = System.cmd(Path.join(root, "scripts/llama_cpp.sh"), ["tools", "llama-bench", "llama-batched-bench"])
    out |> String.trim() |> String.split("\n") |> List.last()
  end

  defp llama_env(root) do
    {out, 0} = System.cmd(Path.join(root, "scripts/llama_cpp.sh"), ["ensure"])

    for line <- String.split(out, "\n", trim: true), [k, v] = String.split(line, "=", parts: 2), into: %{}, do: {k, v}
  end

  defp model_path(root, "stories"),
    do: System.get_env("LLAMA_TEST_MODEL") || Path.expand("../shared/models/stories260K.gguf", root)

  defp model_path(root, "synthetic") do
    {out, 0} = System.cmd(Path.join(root, "bench/gen_model.sh"), [], stderr_to_stdout: false)
    out |> String.trim() |> String.split("\n") |> List.last()
  end

  defp model_path(_root, path), do: path

  defp native_bench(bin, model, threads, reps) do
    args = ["-m", model, "-p", "256,512", "-n", "128", "-t", "#{threads}", "-r", "#{reps}", "-o", "csv"]
    {csv, 0} = System.cmd(Path.join(bin, "llama-bench"), args, stderr_to_stdout: false)
    [header | rows] = csv |> String.split("\n", trim: true) |> Enum.map(&csv_fields/1)

    Map.new(rows, fn fields ->
      r = Map.new(Enum.zip(header, fields))
      num = fn k -> r[k] |> Float.parse() |> elem(0) end
      key = if num.("n_gen") > 0, do: "tg#{r["n_gen"]}", else: "pp#{r["n_prompt"]}"
      {key, %{tps: num.("avg_ts"), tps_sd: num.("stddev_ts")}}
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

    gen = fn ->
      measure(fn -> {:ok, %{generated_tokens: 128}} = LlamaCppEx.complete(model, prompt, gen_opts) end)
    end

    stream = fn ->
      measure(fn ->
        n = model |> LlamaCppEx.stream(prompt, gen_opts) |> Enum.count()
        true = n > 0
      end)
    end

    gen.()
    stream.()
    {probe, gen_times} = with_probe(fn -> for _ <- 1..reps, do: gen.() end)
    {probe2, stream_times} = with_probe(fn -> for _ <- 1..reps, do: stream.() end)
    Context.free(ctx)
    Model.free(model)

    Map.merge(pp, %{
      "tg128" => stats(128, gen_times),
      "tg128 stream" => stats(128, stream_times),
      probe_max_ms: max(probe, probe2)
    })
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

  defp stats(n, times_us) do
    tps = Enum.map(times_us, &(n * 1_000_000 / &1))
    mean = Enum.sum(tps) / length(tps)
    sd = :math.sqrt(Enum.sum(Enum.map(tps, &((&1 - mean) ** 2))) / max(length(tps) - 1, 1))
    %{tps: mean, tps_sd: sd}
  end

  # A process on a normal scheduler that sleeps 1 ms at a time and records how
  # late it wakes up. Native work that blocked a normal scheduler would show here.
  defp with_probe(fun) do
    parent = self()
    probe = spawn(fn -> probe_loop(parent, 0) end)
    result = fun.()
    send(probe, :stop)

    receive do
      {:probe, max_us} -> {max_us / 1000, result}
    end
  end

  defp probe_loop(parent, worst) do
    t0 = System.monotonic_time(:microsecond)

    receive do
      :stop -> send(parent, {:probe, worst})
    after
      1 ->
        late = System.monotonic_time(:microsecond) - t0 - 1000
        probe_loop(parent, max(worst, late))
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

  defp render(rows, memory, threads, reps, env) do
    header = """
    # LlamaCppEx benchmark

    - date: #{DateTime.utc_now() |> DateTime.truncate(:second)}
    - machine: #{cpu_model()}, #{System.schedulers_online()} schedulers online, #{:erlang.system_info(:logical_processors)} logical CPUs
    - llama.cpp: #{env["LLAMA_COMMIT"]} (#{env["LLAMA_BACKEND"]} backend), same build for both sides
    - threads: #{threads}, repetitions: #{reps} (+1 warm-up), OTP #{System.otp_release()}, Elixir #{System.version()}
    - command: `mix llama.bench`
    """

    tables =
      Enum.map_join(rows, "\n", fn {name, path, native, ours} ->
        lines =
          for {test, ours_key, native_key} <- [
                {"pp256 (Context.decode)", "pp256", "pp256"},
                {"pp512 (Context.decode)", "pp512", "pp512"},
                {"tg128 (LlamaCppEx.generate)", "tg128", "tg128"},
                {"tg128 (LlamaCppEx.stream)", "tg128 stream", "tg128"}
              ] do
            o = ours[ours_key]
            n = native[native_key]
            ratio = o.tps / n.tps

            overhead =
              if String.starts_with?(native_key, "tg"),
                do: fmt(1_000_000 / o.tps - 1_000_000 / n.tps, 1),
                else: fmt(1_000_000 / o.tps - 1_000_000 / n.tps, 2)

            "| #{test} | #{fmt(o.tps)} ± #{fmt(o.tps_sd)} | #{fmt(n.tps)} ± #{fmt(n.tps_sd)} | **#{fmt(ratio, 3)}** | #{overhead} |"
          end

        """

        ## #{name} (`#{Path.basename(path)}`)

        | test | ours t/s | llama-bench t/s | ours / native | overhead µs/token |
        |---|---|---|---|---|
        #{Enum.join(lines, "\n")}

        Worst wake-up delay of a normal-scheduler probe during generation: #{fmt(ours.probe_max_ms, 2)} ms.
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
