defmodule LlamaCppEx.HTTP.Generate do
  @moduledoc false
  # POST /v1/chat/completions and POST /v1/completions. Each choice (`n`,
  # and each prompt of a completion batch) is one request to the batching
  # server, made by a worker process linked to the handler, so the choices
  # run as parallel sequences. Streams: a worker consumes its server stream
  # and hands the handler one chunk at a time (waiting for an ack, so a slow
  # client slows its generation instead of filling a mailbox); when a send
  # fails (the client went away) the handler kills its workers, and the
  # server frees their slots at the next step (a request ends when its caller
  # dies).

  alias LlamaCppEx.{Completion, Model, Server}
  alias LlamaCppEx.HTTP.{Error, Metrics, Params, SSE}

  @doc "POST /v1/chat/completions"
  def chat(conn, body) do
    with {:ok, settings} <- settings(conn.config.server),
         {:ok, p} <- Params.chat(body, %{max_tokens: settings.n_ctx}) do
      opts = p.opts ++ logprobs_opt(p.logprobs) ++ [template: template(conn.config, settings.model)]
      jobs = for j <- 0..(p.n - 1), do: {j, p.input, seeded(opts, j)}
      run(conn, :chat, p, jobs)
    end
  end

  @doc "POST /v1/completions"
  def completion(conn, body) do
    with {:ok, settings} <- settings(conn.config.server),
         {:ok, p} <- Params.completion(body, %{max_tokens: settings.n_ctx}) do
      opts = p.opts ++ logprobs_opt(p.logprobs)

      jobs = for {prompt, i} <- Enum.with_index(p.input), j <- 0..(p.n - 1), do: {i * p.n + j, prompt, seeded(opts, j)}

      run(conn, :text, p, jobs)
    end
  end

  defp settings(server) do
    case Server.settings(server) do
      {:ok, s} -> {:ok, s}
      {:error, reason} -> {:error, Error.from_reason(reason)}
    end
  end

  # a model without a chat template gets chatml, as llama-server does
  defp template(%{chat_template: t}, _model) when is_binary(t), do: t
  defp template(_config, model), do: if(Model.chat_template(model), do: nil, else: "chatml")

  defp logprobs_opt(nil), do: []
  defp logprobs_opt(n), do: [logprobs: n]

  # choice j > 0 of a seeded request gets its own seed, or every choice would be the same
  defp seeded(opts, 0), do: opts

  defp seeded(opts, j) do
    case opts[:seed] do
      nil -> opts
      s -> Keyword.put(opts, :seed, rem(s + j, 0x1_0000_0000))
    end
  end

  # ---- running the requests ------------------------------------------------------------------

  defp run(conn, kind, %{stream: false} = p, jobs) do
    tag = make_ref()
    parent = self()
    server = conn.config.server

    workers =
      for {idx, input, opts} <- jobs do
        spawn_link(fn -> send(parent, {tag, idx, guarded(fn -> complete(server, kind, input, opts) end)}) end)
      end

    results = collect(tag, length(workers), %{})

    case Enum.find(Enum.sort(results), fn {_, r} -> not match?({:ok, _}, r) end) do
      nil ->
        choices = Enum.sort(results) |> Enum.map(fn {idx, {:ok, c}} -> {idx, c} end)
        completions = Enum.map(choices, &elem(&1, 1))
        Enum.each(completions, &Metrics.ttft(conn.config.metrics, &1.ttft_ms))
        usage = usage(completions)
        Metrics.tokens(conn.config.metrics, usage["prompt_tokens"], usage["completion_tokens"])
        {:json, 200, response(conn, kind, p, choices, usage)}

      {_, failure} ->
        failure_error(failure)
    end
  end

  defp run(conn, kind, %{stream: true} = p, jobs) do
    tag = make_ref()
    parent = self()
    server = conn.config.server

    workers =
      Map.new(jobs, fn {idx, input, opts} ->
        {idx, spawn_link(fn -> stream_worker(parent, tag, server, kind, idx, input, opts) end)}
      end)

    st = %{
      conn: conn,
      kind: kind,
      p: p,
      tag: tag,
      workers: workers,
      id: id(kind),
      created: System.os_time(:second),
      pending: MapSet.new(Enum.map(jobs, &elem(&1, 0))),
      done: [],
      # choices that streamed a tool call (their finish_reason is "tool_calls")
      called: MapSet.new(),
      started: false
    }

    stream_loop(st)
  end

  defp complete(server, :chat, messages, opts), do: Server.chat_complete(server, messages, opts)
  defp complete(server, :text, prompt, opts), do: Server.complete(server, prompt, opts)

  defp stream_worker(parent, tag, server, kind, idx, input, opts) do
    result =
      guarded(fn ->
        # the completion reaches the handler after the stream's last element
        # (a parsed chat reply hands out its rest when the text has ended)
        me = self()
        on_complete = fn c -> send(me, {tag, :completion, c}) end
        opts = [on_complete: on_complete] ++ opts

        # a chat's reply is streamed as its parts (content, reasoning, tool
        # calls, and each chunk's logprobs when asked for)
        stream =
          case kind do
            :chat -> Server.stream_chat(server, input, [parse_reply: true] ++ opts)
            :text -> Server.stream(server, input, opts)
          end

        Enum.each(stream, fn chunk ->
          send(parent, {tag, idx, {:chunk, chunk}})

          receive do
            {^tag, :ack} -> :ok
          end
        end)

        receive do
          {^tag, :completion, c} -> send(parent, {tag, idx, {:done, c}})
        end

        :ok
      end)

    case result do
      :ok -> :ok
      failure -> send(parent, {tag, idx, failure})
    end
  end

  # what the option checks of the core API raise is the client's fault
  defp guarded(fun) do
    fun.()
  rescue
    e in LlamaCppEx.Error -> {:error, e.reason}
    e in ArgumentError -> {:bad, Exception.message(e)}
  end

  defp failure_error({:error, reason}), do: {:error, Error.from_reason(reason)}
  defp failure_error({:bad, message}), do: {:error, Error.bad_request(message)}

  defp collect(_tag, 0, acc), do: acc

  defp collect(tag, n, acc) do
    receive do
      {^tag, idx, result} -> collect(tag, n - 1, Map.put(acc, idx, result))
    end
  end

  # ---- streaming -----------------------------------------------------------------------------

  defp stream_loop(%{pending: pending} = st) do
    if MapSet.size(pending) == 0 do
      finish_stream(st)
    else
      tag = st.tag

      receive do
        {^tag, idx, msg} -> stream_msg(st, idx, msg)
      end
    end
  end

  # a failure before anything was sent is an HTTP error; after, an error event
  defp stream_msg(%{started: false} = st, _idx, failure) when elem(failure, 0) in [:error, :bad] do
    stop_workers(st)
    failure_error(failure)
  end

  defp stream_msg(%{started: true} = st, _idx, failure) when elem(failure, 0) in [:error, :bad] do
    stop_workers(st)
    {:error, e} = failure_error(failure)
    _ = SSE.event(st.conn.mod, Error.body(e))
    _ = SSE.close(st.conn.mod)
    {:sent, 200}
  end

  defp stream_msg(st, idx, msg) do
    with {:ok, st} <- start_stream(st),
         {:ok, st} <- deliver(st, idx, msg) do
      stream_loop(st)
    else
      :closed ->
        stop_workers(st)
        {:sent, 200}
    end
  end

  defp start_stream(%{started: true} = st), do: {:ok, st}

  defp start_stream(st) do
    Metrics.ttft(st.conn.config.metrics, (System.monotonic_time(:microsecond) - st.conn.t0) / 1000)

    with :ok <- SSE.open(st.conn.mod),
         :ok <- role_chunks(st) do
      {:ok, %{st | started: true}}
    end
  end

  # the first chunk of each chat choice carries the role, as OpenAI's do
  defp role_chunks(%{kind: :chat} = st) do
    Enum.reduce_while(st.pending, :ok, fn idx, :ok ->
      delta = %{"role" => "assistant", "content" => ""}

      case SSE.event(st.conn.mod, chunk(st, idx, delta, nil, nil)) do
        :ok -> {:cont, :ok}
        :closed -> {:halt, :closed}
      end
    end)
  end

  defp role_chunks(_st), do: :ok

  defp deliver(st, idx, {:chunk, {:content, text}}), do: deliver(st, idx, {:chunk, text})

  defp deliver(st, idx, {:chunk, {:reasoning, text}}), do: send_delta(st, idx, %{"reasoning_content" => text})

  defp deliver(st, idx, {:chunk, {:logprobs, lps}}) do
    with :ok <- SSE.event(st.conn.mod, chunk(st, idx, %{}, nil, format_logprobs(:chat, lps))) do
      send(st.workers[idx], {st.tag, :ack})
      {:ok, st}
    end
  end

  defp deliver(st, idx, {:chunk, {:tool_call, i, %LlamaCppEx.ToolCall{} = t}}) do
    st = %{st | called: MapSet.put(st.called, idx)}
    send_delta(st, idx, %{"tool_calls" => [Map.put(tool_call(t), "index", i)]})
  end

  defp deliver(st, idx, {:chunk, chunk}) do
    {text, logprobs} =
      case chunk do
        {text, lps} -> {text, lps}
        text -> {text, nil}
      end

    result =
      if text == "" and logprobs in [nil, []] do
        :ok
      else
        delta = if st.kind == :chat, do: %{"content" => text}, else: text
        SSE.event(st.conn.mod, chunk(st, idx, delta, nil, logprobs && format_logprobs(st.kind, logprobs)))
      end

    with :ok <- result do
      send(st.workers[idx], {st.tag, :ack})
      {:ok, st}
    end
  end

  defp deliver(st, idx, {:done, %Completion{} = c}) do
    delta = if st.kind == :chat, do: %{}, else: ""
    finish = if MapSet.member?(st.called, idx), do: "tool_calls", else: finish_reason(c)

    with :ok <- SSE.event(st.conn.mod, chunk(st, idx, delta, finish, nil)) do
      {:ok, %{st | pending: MapSet.delete(st.pending, idx), done: [c | st.done]}}
    end
  end

  defp send_delta(st, idx, delta) do
    with :ok <- SSE.event(st.conn.mod, chunk(st, idx, delta, nil, nil)) do
      send(st.workers[idx], {st.tag, :ack})
      {:ok, st}
    end
  end

  defp finish_stream(st) do
    usage = usage(st.done)
    Metrics.tokens(st.conn.config.metrics, usage["prompt_tokens"], usage["completion_tokens"])

    result =
      if st.p.include_usage do
        SSE.event(st.conn.mod, %{
          "id" => st.id,
          "object" => object(st.kind, true),
          "created" => st.created,
          "model" => st.conn.config.model_id,
          "choices" => [],
          "usage" => usage
        })
      else
        :ok
      end

    with :ok <- result, do: SSE.close(st.conn.mod)
    {:sent, 200}
  end

  defp stop_workers(st) do
    Enum.each(Map.values(st.workers), fn pid ->
      Process.unlink(pid)
      Process.exit(pid, :kill)
    end)

    flush(st.tag)
  end

  defp flush(tag) do
    receive do
      {^tag, _, _} -> flush(tag)
    after
      0 -> :ok
    end
  end

  defp chunk(st, idx, delta, finish, logprobs) do
    choice =
      case st.kind do
        :chat -> %{"index" => idx, "delta" => delta, "logprobs" => logprobs, "finish_reason" => finish}
        :text -> %{"index" => idx, "text" => delta, "logprobs" => logprobs, "finish_reason" => finish}
      end

    base = %{
      "id" => st.id,
      "object" => object(st.kind, true),
      "created" => st.created,
      "model" => st.conn.config.model_id,
      "system_fingerprint" => fingerprint(),
      "choices" => [choice]
    }

    if st.p.include_usage, do: Map.put(base, "usage", nil), else: base
  end

  # ---- response shapes -----------------------------------------------------------------------

  defp response(conn, kind, p, choices, usage) do
    %{
      "id" => id(kind),
      "object" => object(kind, false),
      "created" => System.os_time(:second),
      "model" => conn.config.model_id,
      "system_fingerprint" => fingerprint(),
      "choices" => Enum.map(choices, fn {idx, c} -> choice(kind, p, idx, c) end),
      "usage" => usage
    }
  end

  defp choice(:chat, _p, idx, %Completion{} = c) do
    %{
      "index" => idx,
      "message" => message(c),
      "logprobs" => c.logprobs && format_logprobs(:chat, c.logprobs),
      "finish_reason" => finish_reason(c)
    }
  end

  defp choice(:text, _p, idx, %Completion{} = c) do
    %{
      "index" => idx,
      "text" => c.text,
      "logprobs" => c.logprobs && format_logprobs(:text, c.logprobs),
      "finish_reason" => finish_reason(c)
    }
  end

  # the reply read in the template's format: content, reasoning, tool calls
  defp message(%Completion{reply: nil, text: text}), do: %{"role" => "assistant", "content" => text, "refusal" => nil}

  defp message(%Completion{reply: reply}) do
    base = %{
      "role" => "assistant",
      "content" => if(reply.content == "" and reply.tool_calls != [], do: nil, else: reply.content),
      "refusal" => nil
    }

    base
    |> then(&if(reply.reasoning_content, do: Map.put(&1, "reasoning_content", reply.reasoning_content), else: &1))
    |> then(
      &if(reply.tool_calls != [],
        do: Map.put(&1, "tool_calls", Enum.map(reply.tool_calls, fn t -> tool_call(t) end)),
        else: &1
      )
    )
  end

  defp tool_call(%LlamaCppEx.ToolCall{} = t),
    do: %{"id" => t.id, "type" => "function", "function" => %{"name" => t.name, "arguments" => t.raw_arguments}}

  # one prompt's tokens (choices of one prompt share it), all completions' tokens
  defp usage(completions) do
    prompt = completions |> Enum.map(& &1.prompt_tokens) |> Enum.uniq() |> Enum.sum()
    generated = completions |> Enum.map(& &1.generated_tokens) |> Enum.sum()
    cached = completions |> Enum.map(&(&1.cached_tokens || 0)) |> Enum.max(fn -> 0 end)

    %{
      "prompt_tokens" => prompt,
      "completion_tokens" => generated,
      "total_tokens" => prompt + generated,
      "prompt_tokens_details" => %{"cached_tokens" => cached}
    }
  end

  @doc false
  def finish_reason(%Completion{reply: %{tool_calls: [_ | _]}}), do: "tool_calls"
  def finish_reason(%Completion{finish_reason: r}) when r in [:max_tokens, :context_full], do: "length"
  def finish_reason(%Completion{}), do: "stop"

  defp format_logprobs(:chat, lps) do
    %{
      "content" =>
        Enum.map(lps, fn lp ->
          Map.put(token_logprob(lp), "top_logprobs", Enum.map(lp.top, &token_logprob/1))
        end),
      "refusal" => nil
    }
  end

  defp format_logprobs(:text, lps) do
    offsets = lps |> Enum.scan(0, &(byte_size(&1.text) + &2)) |> then(&[0 | &1]) |> Enum.drop(-1)

    %{
      "tokens" => Enum.map(lps, & &1.text),
      "token_logprobs" => Enum.map(lps, &logprob(&1.logprob)),
      "top_logprobs" => Enum.map(lps, fn lp -> Map.new(lp.top, &{&1.text, logprob(&1.logprob)}) end),
      "text_offset" => offsets
    }
  end

  defp token_logprob(lp),
    do: %{"token" => lp.text, "logprob" => logprob(lp.logprob), "bytes" => :binary.bin_to_list(lp.bytes)}

  # OpenAI's figure for a token that cannot occur
  defp logprob(:neg_infinity), do: -9999.0
  defp logprob(x), do: x

  defp object(:chat, false), do: "chat.completion"
  defp object(:chat, true), do: "chat.completion.chunk"
  defp object(:text, _), do: "text_completion"

  defp id(:chat), do: "chatcmpl-" <> random_id()
  defp id(:text), do: "cmpl-" <> random_id()

  defp random_id, do: Base.encode16(:crypto.strong_rand_bytes(12), case: :lower)

  defp fingerprint, do: "llama_cpp_ex"
end
