defmodule Mix.Tasks.Llama.Server do
  @shortdoc "Serves a GGUF model over an OpenAI-compatible HTTP API"
  @moduledoc """
  Starts `LlamaCppEx.HTTP` on a model: the OpenAI endpoints
  (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
  `/v1/models`), `/health`, `/metrics`, `/tokenize`, `/detokenize` and a
  chat page at `/`. Runs until interrupted (Ctrl-C twice).

      mix llama.server --model PATH [options]

  ## Options

    * `--model PATH` (`-m`) - GGUF file (default: `../shared/models/stories260K.gguf`
      when present, or `$LLAMA_MODEL`).
    * `--host ADDR` - address to listen on (default `127.0.0.1`, loopback only).
    * `--port N` - TCP port (default `8080`; `0` picks a free one, printed).
    * `--parallel N` (`-np`) - sequence slots (default `4`).
    * `--ctx-size N` (`-c`) - context cells per slot (default the model's, at most 2048).
    * `--threads N` (`-t`) - CPU threads.
    * `--api-key KEY` - require `Authorization: Bearer KEY` everywhere but `/health`
      (or set `$LLAMA_API_KEY`).
    * `--alias NAME` - the model's name in responses (default its file name).
    * `--chat-template NAME` - a built-in template or template text.
    * `--no-embeddings` - do not start the embedding server behind `/v1/embeddings`.
    * `--max-queue N` - requests that may wait for a slot (default `64`; past it, 503).
    * `--verbose` (`-v`) - llama.cpp's log on stderr.
  """
  use Mix.Task

  @switches [
    model: :string,
    host: :string,
    port: :integer,
    parallel: :integer,
    ctx_size: :integer,
    threads: :integer,
    api_key: :string,
    alias: :string,
    chat_template: :string,
    embeddings: :boolean,
    max_queue: :integer,
    verbose: :boolean
  ]

  @impl true
  def run(args) do
    {opts, rest, invalid} =
      OptionParser.parse(args,
        strict: @switches,
        aliases: [m: :model, c: :ctx_size, t: :threads, v: :verbose, np: :parallel]
      )

    if invalid != [] or rest != [],
      do: Mix.raise("unknown arguments: #{inspect(invalid ++ rest)}; see `mix help llama.server`")

    Mix.LlamaCppEx.start_app()
    LlamaCppEx.Log.set_level(if opts[:verbose], do: :info, else: :error)

    path = opts[:model] || System.get_env("LLAMA_MODEL") || Mix.LlamaCppEx.default_model!()

    model =
      case LlamaCppEx.Model.load(path) do
        {:ok, model} -> model
        {:error, reason} -> Mix.raise("cannot load #{path}: #{inspect(reason)}")
      end

    common = [model: model] ++ if(opts[:threads], do: [n_threads: opts[:threads]], else: [])

    server =
      common ++
        [n_parallel: opts[:parallel] || 4] ++
        if(opts[:ctx_size], do: [n_ctx: opts[:ctx_size]], else: []) ++
        if(opts[:max_queue], do: [max_queue: opts[:max_queue]], else: [])

    embeddings = if opts[:embeddings] == false, do: nil, else: common ++ [n_parallel: 2]

    http_opts = [
      server: server,
      embeddings: embeddings,
      ip: opts[:host] || "127.0.0.1",
      port: Keyword.get(opts, :port, 8080),
      api_key: opts[:api_key] || System.get_env("LLAMA_API_KEY"),
      model_id: opts[:alias],
      chat_template: opts[:chat_template]
    ]

    {:ok, http} =
      try do
        LlamaCppEx.HTTP.start_link(http_opts)
      rescue
        e in ArgumentError -> Mix.raise(Exception.message(e))
      end

    Mix.LlamaCppEx.info("llama.server: #{Path.basename(path)} on #{LlamaCppEx.HTTP.url(http)} (chat page at /)")
    IO.puts("listening on #{LlamaCppEx.HTTP.url(http)}")
    Process.sleep(:infinity)
  end
end
