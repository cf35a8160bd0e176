defmodule LlamaCppEx.HTTP.Metrics do
  @moduledoc false
  # Counters of one HTTP server in a public ETS table (owned by its listener,
  # updated by the request handlers), and GET /metrics: Prometheus text
  # format 0.0.4 with those counters and the batching server's gauges.

  @buckets [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]

  def new, do: :ets.new(:llama_cpp_ex_http_metrics, [:public, :set, write_concurrency: true])

  def request(table, endpoint, status), do: bump(table, {:requests, endpoint, status}, 1)

  def tokens(table, prompt, generated) do
    bump(table, :prompt_tokens, prompt)
    bump(table, :generated_tokens, generated)
  end

  @doc "One time to first token, in milliseconds."
  def ttft(table, ms) when is_number(ms) do
    s = ms / 1000
    Enum.each(@buckets, fn le -> if s <= le, do: bump(table, {:ttft, le}, 1) end)
    bump(table, :ttft_count, 1)
    bump(table, :ttft_sum_us, round(ms * 1000))
  end

  def ttft(_table, _), do: :ok

  defp bump(table, key, n), do: :ets.update_counter(table, key, n, {key, 0})

  defp get(table, key) do
    case :ets.lookup(table, key) do
      [{_, v}] -> v
      [] -> 0
    end
  end

  @doc "The exposition text; `stats` is LlamaCppEx.Server.stats/1 or nil."
  @spec render(:ets.tid(), map() | nil) :: iodata()
  def render(table, stats) do
    requests =
      for {{:requests, endpoint, status}, n} <- :ets.tab2list(table) |> Enum.sort(),
          do: [
            "llamacppex_http_requests_total{endpoint=\"",
            endpoint,
            "\",status=\"",
            Integer.to_string(status),
            "\"} ",
            Integer.to_string(n),
            "\n"
          ]

    count = get(table, :ttft_count)

    buckets =
      Enum.map(@buckets, fn le ->
        [
          "llamacppex_time_to_first_token_seconds_bucket{le=\"",
          num(le),
          "\"} ",
          Integer.to_string(get(table, {:ttft, le})),
          "\n"
        ]
      end)

    [
      help("llamacppex_http_requests_total", "counter", "HTTP requests by endpoint and status."),
      requests,
      help("llamacppex_prompt_tokens_total", "counter", "Prompt tokens of finished generations."),
      "llamacppex_prompt_tokens_total #{get(table, :prompt_tokens)}\n",
      help("llamacppex_generated_tokens_total", "counter", "Tokens generated."),
      "llamacppex_generated_tokens_total #{get(table, :generated_tokens)}\n",
      server(stats),
      help("llamacppex_time_to_first_token_seconds", "histogram", "From request arrival to the first token."),
      buckets,
      "llamacppex_time_to_first_token_seconds_bucket{le=\"+Inf\"} #{count}\n",
      "llamacppex_time_to_first_token_seconds_sum #{num(get(table, :ttft_sum_us) / 1_000_000)}\n",
      "llamacppex_time_to_first_token_seconds_count #{count}\n"
    ]
  end

  defp server(nil), do: []

  defp server(stats) do
    [
      help("llamacppex_slots_busy", "gauge", "Sequence slots generating now."),
      "llamacppex_slots_busy #{stats.slots.busy}\n",
      help("llamacppex_slots_total", "gauge", "Sequence slots of the batching server."),
      "llamacppex_slots_total #{stats.slots.total}\n",
      help("llamacppex_queue_depth", "gauge", "Requests waiting for a slot."),
      "llamacppex_queue_depth #{stats.queue.depth}\n",
      help("llamacppex_server_requests_total", "counter", "Requests of the batching server by outcome."),
      for {outcome, n} <- Enum.sort(stats.requests) do
        "llamacppex_server_requests_total{outcome=\"#{outcome}\"} #{n}\n"
      end,
      help("llamacppex_prefix_cache_hit_ratio", "gauge", "Prompt tokens reused over all prompt tokens."),
      "llamacppex_prefix_cache_hit_ratio #{num(stats.prefix_cache.hit_ratio)}\n"
    ]
  end

  defp help(name, type, text), do: ["# HELP ", name, " ", text, "\n# TYPE ", name, " ", type, "\n"]

  defp num(x) when is_integer(x), do: Integer.to_string(x)
  defp num(x), do: :erlang.float_to_binary(x / 1, [:short])
end
