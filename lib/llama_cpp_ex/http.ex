defmodule LlamaCppEx.HTTP do
  @moduledoc """
  An OpenAI-compatible HTTP server on top of `LlamaCppEx.Server`.

      children = [
        {LlamaCppEx.Server, model_path: "model.gguf", n_parallel: 8, name: MyApp.LLM},
        {LlamaCppEx.HTTP, server: MyApp.LLM, port: 8080}
      ]

  or, with the server started by the HTTP server itself (and an embedding
  server on the same file):

      {LlamaCppEx.HTTP, server: [model_path: "model.gguf", n_parallel: 4],
                        embeddings: [model_path: "model.gguf"], port: 0}

  Then any OpenAI client talks to it (`base_url: "http://127.0.0.1:8080/v1"`).
  From a shell: `mix llama.server --model PATH`.

  ## Endpoints

    * `POST /v1/chat/completions`, `POST /v1/completions` - OpenAI's fields,
      mapped to the options of `LlamaCppEx.Server`: `messages` (content a
      string or text parts) / `prompt` (a string, strings, or token ids),
      `max_tokens` / `max_completion_tokens` (default: until the model ends or
      its slot's context is full), `temperature`, `top_p`, `stop`, `seed`, `n`
      (each choice its own sequence, in parallel), `presence_penalty`,
      `frequency_penalty`, `logit_bias` (`-100` or `false` bans a token),
      `logprobs` / `top_logprobs`, `response_format` (`json_object`,
      `json_schema`), `stream` with `stream_options.include_usage`
      (Server-Sent Events ending with `data: [DONE]`), and llama.cpp's
      `top_k`, `min_p`, `typical_p`, `repeat_penalty`, `repeat_last_n`,
      `mirostat*`, `dry_*`, `xtc_*`, `grammar`, `json_schema`, `n_predict`.
      `finish_reason` is `"stop"` (end of turn or a stop string) or
      `"length"`. Unknown fields are ignored; a known one of the wrong type is
      a 400 naming it.
    * `POST /v1/embeddings` (`input` a string or strings, `encoding_format`
      `float` or `base64`) when `:embeddings` is given.
    * `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text),
      `POST /tokenize`, `POST /detokenize` (llama-server's shapes), `GET /`
      (a chat page).

  Errors are OpenAI error objects: 400 (bad JSON or field), 401 (no or a
  wrong key), 404, 405, 413 (body or headers too large; httpd's own page),
  431 (too many headers), 503 with `Retry-After` when the server's queue is
  full. A client that disconnects from a stream has its requests cancelled:
  their slots are free at the next step.

  ## Options

    * `:server` - a running `LlamaCppEx.Server` (name or pid), or its
      options (a keyword list) to start one linked to this process (required).
    * `:embeddings` - the same for `/v1/embeddings` (started with
      `embeddings: true`); default none (a 400 there).
    * `:port` - TCP port (default `8080`); `0` picks a free one (`port/1`).
    * `:ip` - address to listen on (default `{127, 0, 0, 1}`, loopback only).
    * `:api_key` - when set, every path but `/health` needs
      `Authorization: Bearer KEY` (or `X-Api-Key`); compared in constant time.
    * `:model_id` - the model's name in responses (default its file name).
    * `:chat_template` - template for chats (default the model's own, or
      `"chatml"` when it has none, as llama-server).
    * Limits: `:max_body` (bytes, default 8 MiB), `:max_header_size`
      (request line and headers, default 16 KiB), `:max_headers` (count,
      default 100), `:max_uri_size` (default 8 KiB), `:max_connections`
      (default 128; more are refused by httpd), `:idle_timeout` (ms a
      connection may wait for its next request, default 15 s, rounded to
      seconds; a request must have arrived whole within it, so a client
      that stalls or trickles is dropped), `:min_bytes_per_second` (default
      `nil`, off: httpd measures it over the connection's whole life, each
      second, including while a reply streams and between keep-alive
      requests, so any limit drops the keep-alive connections of streaming
      clients after their reply),
      `:max_keep_alive_requests` (default 1000).
    * `:name` - register the process.

  The HTTP layer is OTP's own `:httpd` (inets); JSON is jiffy (Debian's
  `erlang-jiffy`). See `docs/architecture.md` (*HTTP server*).
  """

  alias LlamaCppEx.HTTP.{JSON, Listener}

  @defaults [
    server: nil,
    embeddings: nil,
    port: 8080,
    ip: {127, 0, 0, 1},
    api_key: nil,
    model_id: nil,
    chat_template: nil,
    max_body: 8 * 1024 * 1024,
    max_header_size: 16 * 1024,
    max_headers: 100,
    max_uri_size: 8 * 1024,
    max_connections: 128,
    idle_timeout: 15_000,
    min_bytes_per_second: nil,
    max_keep_alive_requests: 1000,
    name: nil
  ]

  @doc "A child specification: `{LlamaCppEx.HTTP, opts}`."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name) || __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}
  end

  @doc """
  Starts the HTTP server (see the module doc for the options).

      {:ok, http} = LlamaCppEx.HTTP.start_link(server: MyApp.LLM, port: 0)
      port = LlamaCppEx.HTTP.port(http)
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, @defaults)
    JSON.ensure!()
    {:ok, _} = Application.ensure_all_started(:inets)
    preload()

    if is_nil(opts[:server]), do: raise(ArgumentError, ":server is required (a LlamaCppEx.Server or its options)")

    port = opts[:port]

    unless is_integer(port) and port in 0..65_535,
      do: raise(ArgumentError, ":port must be an integer in 0..65535, got: #{inspect(port)}")

    unless match?({:ok, _}, ip(opts[:ip])),
      do: raise(ArgumentError, ":ip must be an address tuple or string, got: #{inspect(opts[:ip])}")

    key = opts[:api_key]

    unless is_nil(key) or (is_binary(key) and key != ""),
      do: raise(ArgumentError, ":api_key must be nil or a non-empty string")

    for k <-
          [:max_body, :max_header_size, :max_headers, :max_uri_size, :max_connections, :idle_timeout] ++
            [:max_keep_alive_requests] do
      LlamaCppEx.Options.pos!(opts, k)
    end

    unless opts[:min_bytes_per_second] == nil, do: LlamaCppEx.Options.pos!(opts, :min_bytes_per_second)

    for k <- [:model_id, :chat_template] do
      unless is_nil(opts[k]) or is_binary(opts[k]), do: raise(ArgumentError, "#{inspect(k)} must be a string")
    end

    {:ok, ip} = ip(opts[:ip])
    opts = Keyword.put(opts, :ip, ip)
    gen_opts = if opts[:name], do: [name: opts[:name]], else: []
    Listener.start_link({opts, gen_opts})
  end

  defp ip(t) when is_tuple(t) and tuple_size(t) in [4, 8],
    do: if(:inet.ntoa(t) |> is_list(), do: {:ok, t}, else: :error)

  defp ip(s) when is_binary(s), do: :inet.parse_address(String.to_charlist(s))
  defp ip(_), do: :error

  @doc "The TCP port the server listens on (the one picked for `port: 0`)."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(http), do: GenServer.call(http, :port)

  @doc "The base URL of the server, e.g. `\"http://127.0.0.1:8080\"`."
  @spec url(GenServer.server()) :: String.t()
  def url(http) do
    ip = GenServer.call(http, :ip)
    host = if tuple_size(ip) == 8, do: "[#{:inet.ntoa(ip)}]", else: to_string(:inet.ntoa(ip))
    "http://#{host}:#{port(http)}"
  end

  @doc "Stops the server (and the batching servers it started)."
  @spec stop(GenServer.server()) :: :ok
  def stop(http), do: GenServer.stop(http)

  # Outside a release (`mix run`, iex) modules load on first use, and jiffy's
  # NIF with its first call: 60 ms or more that would otherwise go to the
  # first request's time to first token.
  defp preload do
    _ = JSON.encode!(%{})
    {:ok, modules} = :application.get_key(:llama_cpp_ex, :modules)
    Enum.each(modules, &Code.ensure_loaded/1)
  end
end
