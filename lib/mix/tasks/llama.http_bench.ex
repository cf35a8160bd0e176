defmodule Mix.Tasks.Llama.HttpBench do
  @shortdoc "Benchmarks LlamaCppEx.HTTP against llama-server, side by side"
  @moduledoc """
  Drives `LlamaCppEx.HTTP` and upstream `llama-server` (built from the same
  pinned source and flags into the cache) with the same load generator
  (`bench/http_load.mjs`: N concurrent streaming chat clients, fixed prompts,
  fixed `max_tokens`, greedy, end of generation banned), on the same model
  with the same slots, cells per slot and threads, in one run, alternating
  the two servers round by round. Prints a markdown report on stdout:
  aggregate generated tokens/s, p50/p99 time to first token and between
  streamed chunks, at each client count, and the ratios.

      mix llama.http_bench [--model stories|synthetic|PATH ...] [--clients 1,4,16]
                           [--rounds 3] [--threads 2] [--parallel 16] [--max-tokens 64]
                           [--requests 4]

  Progress goes to stderr.
  """
  use Mix.Task

  @switches [
    model: :keep,
    clients: :string,
    rounds: :integer,
    threads: :integer,
    parallel: :integer,
    max_tokens: :integer,
    requests: :integer
  ]

  @impl true
  def run(args) do
    {opts, _} = OptionParser.parse!(args, strict: @switches)
    Mix.LlamaCppEx.start_app()
    LlamaCppEx.Log.set_level(:error)
    root = File.cwd!()

    cfg = %{
      clients: (opts[:clients] || "1,4,16") |> String.split(",") |> Enum.map(&String.to_integer/1),
      rounds: opts[:rounds] || 3,
      threads: opts[:threads] || 2,
      parallel: opts[:parallel] || 16,
      max_tokens: opts[:max_tokens] || 64,
      requests: opts[:requests] || 4,
      n_ctx: 256
    }

    bin = Mix.LlamaCppEx.tools_dir(root, ["llama-server"])
    names = Keyword.get_values(opts, :model) |> then(&if(&1 == [], do: ["stories", "synthetic"], else: &1))

    results =
      for name <- names do
        path = Mix.LlamaCppEx.model_path(root, name)
        Mix.LlamaCppEx.info("http_bench: #{Path.basename(path)}")
        {path, bench_model(cfg, bin, path, root)}
      end

    IO.puts(report(cfg, results))
  end

  defp bench_model(cfg, bin, path, root) do
    {:ok, model} = LlamaCppEx.Model.load(path)
    eos = LlamaCppEx.Tokenizer.special_tokens(model).eos || 2

    {:ok, http} =
      LlamaCppEx.HTTP.start_link(
        server: [model: model, n_parallel: cfg.parallel, n_ctx: cfg.n_ctx, n_threads: cfg.threads, flash_attn: false],
        port: 0,
        max_connections: 256
      )

    ours = LlamaCppEx.HTTP.url(http)
    {upstream, port} = start_llama_server(cfg, bin, path)
    # each server's first requests pay for first use (code loading, buffers): not measured
    for url <- [ours, upstream], do: load(root, url, 2, %{cfg | requests: 1, max_tokens: 8}, eos)

    try do
      rows =
        for n <- cfg.clients do
          runs =
            for round <- 1..cfg.rounds do
              a = load(root, ours, n, cfg, eos)
              b = load(root, upstream, n, cfg, eos)

              Mix.LlamaCppEx.info(
                "  #{n} clients, round #{round}: ours #{a["tokens_per_s"]} t/s, llama-server #{b["tokens_per_s"]} t/s" <>
                  errors_note(a, b)
              )

              {a, b}
            end

          # the ratio of each round (the two servers measured minutes apart at most), then their median
          ratios =
            runs
            |> Enum.map(fn {a, b} -> if b["tokens_per_s"] > 0, do: a["tokens_per_s"] / b["tokens_per_s"], else: 0.0 end)
            |> Enum.sort()

          {n, median_of(Enum.map(runs, &elem(&1, 0))), median_of(Enum.map(runs, &elem(&1, 1))), ratios}
        end

      rows
    after
      LlamaCppEx.HTTP.stop(http)
      {:os_pid, pid} = Port.info(port, :os_pid)
      System.cmd("kill", ["#{pid}"])
    end
  end

  defp start_llama_server(cfg, bin, path) do
    {:ok, sock} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, p} = :inet.port(sock)
    :gen_tcp.close(sock)

    args =
      ~w(-m #{path} --host 127.0.0.1 --port #{p} -np #{cfg.parallel} -c #{cfg.parallel * cfg.n_ctx} -t #{cfg.threads}) ++
        ~w(-fa off --no-webui --no-kv-unified --log-disable)

    port = Port.open({:spawn_executable, Path.join(bin, "llama-server")}, [:binary, :exit_status, args: args])
    url = "http://127.0.0.1:#{p}"
    wait_healthy(url, 600)
    {url, port}
  end

  defp wait_healthy(url, 0), do: Mix.raise("llama-server did not come up at #{url}")

  defp wait_healthy(url, tries) do
    case System.cmd("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", url <> "/health"]) do
      {"200", 0} ->
        :ok

      _ ->
        Process.sleep(100)
        wait_healthy(url, tries - 1)
    end
  end

  defp load(root, url, n, cfg, eos) do
    args = [Path.join(root, "bench/http_load.mjs"), url, "#{n}", "#{cfg.requests}", "#{cfg.max_tokens}", "#{eos}"]
    {out, 0} = System.cmd("node", args)
    :jiffy.decode(out |> String.split("\n", trim: true) |> List.last(), [:return_maps])
  end

  defp errors_note(a, b) do
    for(
      {who, r} <- [ours: a, llama_server: b],
      (r["errors"] || 0) > 0,
      do: " (#{who}: #{r["errors"]} failed: #{r["first_error"]})"
    )
    |> Enum.join()
  end

  defp median_of(runs) do
    keys = ["tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"]

    Map.new(keys, fn k ->
      xs = runs |> Enum.map(& &1[k]) |> Enum.sort()
      {k, Enum.at(xs, div(length(xs), 2))}
    end)
    |> Map.put("errors", runs |> Enum.map(&(&1["errors"] || 0)) |> Enum.sum())
  end

  defp report(cfg, results) do
    {load1, load5, load15} = load_average()

    header = """
    # LlamaCppEx.HTTP vs llama-server

    - date: #{DateTime.utc_now() |> DateTime.truncate(:second)}; #{cfg.threads} thread(s); #{cfg.parallel} slots of #{cfg.n_ctx} cells (split KV, flash attention off) on both
    - load: `bench/http_load.mjs`: N clients, #{cfg.requests} streaming chat requests each, #{cfg.max_tokens} tokens per reply (end of generation banned), greedy
    - median of #{cfg.rounds} rounds, each running ours then llama-server; the ratio is each round's, their median and range
    - machine: #{System.schedulers_online()} logical CPUs, load average at the end #{load1} #{load5} #{load15}

    """

    tables =
      for {path, rows} <- results do
        """
        ## #{Path.basename(path)}

        | clients | ours t/s | llama-server t/s | ÷ (median of rounds; range) | TTFT p50 ours / theirs ms | TTFT p99 ours / theirs ms | gap p50 ours / theirs ms | gap p99 ours / theirs ms | failed requests ours / theirs |
        |---|---|---|---|---|---|---|---|---|
        """ <>
          Enum.map_join(rows, "\n", fn {n, a, b, ratios} ->
            "| #{n} | #{a["tokens_per_s"]} | #{b["tokens_per_s"]} | **#{fmt2(Enum.at(ratios, div(length(ratios), 2)))}** " <>
              "(#{fmt2(hd(ratios))}–#{fmt2(List.last(ratios))}) | " <>
              "#{a["ttft_p50_ms"]} / #{b["ttft_p50_ms"]} | #{a["ttft_p99_ms"]} / #{b["ttft_p99_ms"]} | " <>
              "#{a["gap_p50_ms"]} / #{b["gap_p50_ms"]} | #{a["gap_p99_ms"]} / #{b["gap_p99_ms"]} | " <>
              "#{a["errors"]} / #{b["errors"]} |"
          end)
      end

    header <> Enum.join(tables, "\n\n") <> "\n"
  end

  defp fmt2(x), do: :erlang.float_to_binary(x / 1, decimals: 2)

  defp load_average do
    case File.read("/proc/loadavg") do
      {:ok, s} -> s |> String.split() |> Enum.take(3) |> List.to_tuple()
      _ -> {"?", "?", "?"}
    end
  end
end
