defmodule LlamaCppEx.Server do
  @moduledoc """
  Serves many concurrent callers from one model with continuous batching.

  A server owns one model and one context with `:n_parallel` sequence slots.
  Every step it builds one batch holding one token for each generating
  request plus chunks of prompts being absorbed (within `:n_batch` tokens per
  step), decodes it once, samples every request with its own sampler chain and
  hands each caller its text. Requests join at the next step and leave the
  moment they finish; there is no batching timer.

      children = [
        {LlamaCppEx.Server, model_path: "model.gguf", n_parallel: 8, name: MyApp.LLM}
      ]

      {:ok, text} = LlamaCppEx.Server.generate(MyApp.LLM, "Once upon a time", max_tokens: 64)

      MyApp.LLM
      |> LlamaCppEx.Server.stream("Once upon a time", temp: 0.7)
      |> Enum.each(&IO.write/1)

  ## Starting

  `start_link/1` and `child_spec/1` take:

    * `:model` - a loaded `LlamaCppEx.Model`, or `:model_path` and
      `:model_options` (for `LlamaCppEx.Model.load/2`): the server loads it
      after it has started, so a supervisor is not held up. Calls made while
      it loads wait until it is done (within their `:timeout`); if loading
      fails, the server stops and those callers get
      `{:error, {:server_down, reason}}`.
    * `:n_parallel` - sequence slots, i.e. requests generating at once (default `4`).
    * `:n_ctx` - cells **per slot**: the longest prompt plus generation of one
      request (default the model's training length, at most 2048). A prompt
      longer than that is refused (`{:context_overflow, info}`); a generation
      that reaches it ends with `finish_reason: :context_full`.
    * `:kv_unified` - one stream of `:n_ctx` cells per slot (`false`, the
      default) or one KV cache for all slots (`true`), where slots share the
      cells of a common prefix instead of copying them, and which may be
      overcommitted (`:kv_cells`); but each sequence's attention then spans
      the cells of all, and its output equals the unbatched path only up to
      rounding. See `docs/architecture.md` for the figures.
    * `:kv_cells` - total cells of a unified cache (default `n_ctx * n_parallel`).
      Fewer overcommits: idle cached prefixes are purged when the cells run
      out, and a request that still cannot fit ends with `:context_full`.
    * `:n_batch` - tokens per step, the chunked-prefill budget (default `256`,
      at least `:n_parallel`): a long prompt is absorbed in chunks while the
      other requests keep getting a token every step. `:n_ubatch` (default
      `512`) is llama.cpp's micro-batch.
    * `:n_threads`, `:n_threads_batch`, `:type_k`, `:type_v` - as for
      `LlamaCppEx.Context.create/2`.
    * `:flash_attn` - as for `LlamaCppEx.Context.create/2`, but `false` by
      default for generation: llama.cpp's CPU flash attention rounds
      differently with the number of tokens in a batch, so a request's output
      would depend on what else is batched with it. `:auto` for an embedding
      server, as `LlamaCppEx.embed/3` uses.
    * `:max_queue` - requests that may wait for a slot (default `64`); past
      it a request gets `{:error, :overloaded}` at once.
    * `:starvation_limit` - see *Priorities* (default `4`).
    * `:prefix_cache` - reuse cached prompt prefixes (default `true`).
    * `:embeddings` - an embedding server (default `false`): it serves
      `embed/3` only.
    * `:name` - a name to register the server under.

  ## Requests

  `generate/3`, `complete/3`, `stream/3`, `chat/3`, `chat_complete/3` and
  `stream_chat/3` take the options of the same functions of `LlamaCppEx`
  (a prompt is a string, or a list of token ids that is used as it is):
  `:max_tokens`, `:stop`, `:logprobs` (per token, and per chunk in
  streams, as `{text, logprobs}` elements), `:context_shift`/`:n_keep` (a
  slot that reaches the end of its cells drops the oldest half and goes on;
  refused with `:shift_unsupported` by a unified KV cache of several slots,
  whose sequences share cells), every `LlamaCppEx.Sampler` option (`:temp`,
  `:seed`, `:grammar`, `:json_schema`, `:response_format`, ...), `:add_special`/`:parse_special`, and for chats
  `:template`/`:add_assistant`/`:variables`; context options belong to the server and
  are refused. Each request is tokenized and its sampler built in the calling
  process, so a bad request (an unknown option, an invalid grammar or JSON schema, a prompt
  longer than a slot) fails alone, before it reaches the server. Also:

    * `:priority` - `:high`, `:normal` (default) or `:low`.
    * `:timeout` - milliseconds (default `:infinity`): past it, the request
      returns `{:error, :timeout}` (a stream raises) and its slot is freed.
    * `:ref` - a reference of your own (`make_ref/0`) that `cancel/2` takes.
    * `:session` - a conversation id: the next turn goes to the slot that
      holds the conversation, if it is free.
    * `:cache_scope` - a tenant: prefixes are shared only between requests of
      the same scope (default `nil`, one scope for all).
    * `:lora` - LoRA adapters of the server's model with their scales,
      `[{%LlamaCppEx.Lora{}, scale}]` (default `[]`). llama.cpp applies
      adapters to a whole context, so a step decodes only requests with the
      same adapters and scales: those of the oldest running request; the
      others wait for a step of their own set (as llama-server does), and the
      context switches adapters only when the set changes. Prefixes are
      shared only between requests with the same adapters.

  A request ends when it finishes, when its caller dies, on `cancel/2`, on
  its timeout, or when its stream is halted; its slot goes to the next
  waiting request at the next step. Failures are `{:error, reason}`;
  besides those of `LlamaCppEx`: `:overloaded`, `:timeout`,
  `:context_full` (KV pressure, before any token), `:embeddings_only`,
  `{:server_down, reason}` (the server stopped or crashed while the request
  waited). A cancelled request returns `{:ok, %Completion{finish_reason: :cancelled}}`.

  ## Priorities

  Higher classes are admitted first, first come, first served within a
  class. A class passed over `:starvation_limit` times in a row while it
  waits goes next, so a `:low` request waits for at most that many
  admissions of others (the n-th in line for at most n × (limit + 1)).

  ## Prefix cache

  A slot keeps its cells after its request ends. A new request starts from
  the longest prefix of its prompt held by any slot of its cache scope, busy
  or idle, copied into its own sequence (in a unified cache the cells are
  shared, not copied), and computes only the rest: a long system prompt is
  computed once. `stats/1` shows the hit ratio; `Completion.cached_tokens`
  the tokens a request reused.

  ## Saved sessions

  A conversation's cells can outlive the server: `save_session/3` takes the
  idle slot that last served a `:session` (in a `:cache_scope`) and returns a
  `LlamaCppEx.Server.SavedSession` (its tokens and KV cells); after a restart,
  `restore_session/3` loads it into a free slot of the new server as an idle
  cache entry of that session, and the next turn reuses it like any cached
  prefix (`Completion.cached_tokens`, `stats/1`'s `prefix_cache`), computing
  only the new tokens. The new server must have the same model and KV
  layout (`:kv_unified`, `:n_parallel` with split KV, `:type_k`/`:type_v`);
  anything else, or a damaged saved session, is refused with
  `{:error, reason}` and the server is unaffected.

      {:ok, _} = LlamaCppEx.Server.chat(server, messages, session: "user-42")
      {:ok, saved} = LlamaCppEx.Server.save_session(server, "user-42")
      :ok = LlamaCppEx.Server.SavedSession.write_file(saved, "user-42.session")

      # in the restarted server
      {:ok, saved} = LlamaCppEx.Server.SavedSession.read_file("user-42.session")
      :ok = LlamaCppEx.Server.restore_session(server, saved)
      {:ok, reply} = LlamaCppEx.Server.chat(server, messages ++ next_turn, session: "user-42")

  A chat's next turn reuses the saved tokens when its rendered prompt starts
  with them; the cells hold the prompt and the reply's tokens but the last.

  ## Performance

  The server's own work (building the batch, sampling, text, the NIF call and
  the process's bookkeeping) is a few per cent of a step; the rest is
  `llama_decode` (`stats/1` shows it, `mix llama.server_bench` measures it
  against llama.cpp's `llama-batched-bench`). On a machine with few cores,
  the BEAM's schedulers spin while they wait for work and take CPU from the
  compute threads: run the VM with `+sbwt none +sbwtdcpu none +sbwtdio none`
  (e.g. `ELIXIR_ERL_OPTIONS`), which made single-stream decoding about 10 %
  faster on a 2-core machine.

  ## Output

  With the default `kv_unified: false` and `flash_attn: false`, on an F32
  model a request's tokens are exactly those of `LlamaCppEx.generate/3` for
  the same prompt and options (`flash_attn: false` there too), whatever else
  is in the batch and however its prompt was split into steps, greedy or
  seeded. With quantized weights (e.g. Q8_0) llama.cpp's matrix kernels round
  differently with the number of rows of a step, and with a unified cache or
  flash attention the attention does: outputs are then equal up to
  floating-point rounding, which can change a greedy choice where two tokens
  are nearly tied. See `docs/architecture.md` (*Batching server*).
  """

  alias LlamaCppEx.{Chat, Completion, Context, Embedding, Options, Sampler, Tokenizer}
  alias LlamaCppEx.Server.{Loop, Queue, Request, SavedSession}

  @type server :: GenServer.server()

  @start_opts [
    model: nil,
    model_path: nil,
    model_options: [],
    n_parallel: 4,
    n_ctx: nil,
    kv_unified: false,
    kv_cells: nil,
    n_batch: 256,
    n_ubatch: 512,
    n_threads: nil,
    n_threads_batch: nil,
    flash_attn: nil,
    type_k: :f16,
    type_v: :f16,
    max_queue: 64,
    starvation_limit: 4,
    prefix_cache: true,
    embeddings: false,
    name: nil
  ]

  @call_keys [add_special: true, parse_special: false]
  @request_keys [priority: :normal, timeout: :infinity, ref: nil, session: nil, cache_scope: nil, lora: []]
  @stream_keys [on_complete: nil]

  @doc "A child specification: `{LlamaCppEx.Server, opts}` in a supervisor's children."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name) || __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}
  end

  @doc """
  Starts a server (see the module doc for the options).

      {:ok, server} = LlamaCppEx.Server.start_link(model: model, n_parallel: 8)
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, @start_opts)

    case {opts[:model], opts[:model_path]} do
      {%LlamaCppEx.Model{}, nil} -> :ok
      {nil, path} when is_binary(path) -> :ok
      _ -> raise ArgumentError, "give either :model (a LlamaCppEx.Model) or :model_path"
    end

    n = Options.pos!(opts, :n_parallel)
    if opts[:n_ctx], do: Options.pos!(opts, :n_ctx)
    if opts[:kv_cells], do: Options.pos!(opts, :kv_cells)
    n_batch = Options.pos!(opts, :n_batch)
    Options.pos!(opts, :n_ubatch)
    Options.non_neg!(opts, :max_queue)
    Options.pos!(opts, :starvation_limit)
    Options.bool!(opts, :kv_unified)
    Options.bool!(opts, :prefix_cache)
    Options.bool!(opts, :embeddings)

    if n_batch < n, do: raise(ArgumentError, ":n_batch (#{n_batch}) must be at least :n_parallel (#{n})")

    if opts[:kv_cells] && opts[:n_ctx] && opts[:kv_cells] < opts[:n_ctx],
      do: raise(ArgumentError, ":kv_cells must be at least :n_ctx")

    opts =
      opts
      |> Keyword.put(:n_threads, opts[:n_threads] || Context.default_threads())
      |> Keyword.put(
        :flash_attn,
        if(is_nil(opts[:flash_attn]), do: opts[:embeddings] && :auto, else: opts[:flash_attn])
      )

    Loop.start_link(opts)
  end

  # ---- generation ---------------------------------------------------------------------------

  @doc """
  Generates text from `prompt`; returns only the text (see `complete/3`).

      {:ok, text} = LlamaCppEx.Server.generate(server, "Once upon a time", max_tokens: 32, temp: 0.0)
  """
  @spec generate(server(), String.t() | [integer()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def generate(server, prompt, opts \\ []) do
    with {:ok, %Completion{text: text}} <- complete(server, prompt, opts), do: {:ok, text}
  end

  @doc """
  Like `generate/3`, returning a `LlamaCppEx.Completion`, with the finish
  reason, token counts and timings, including `:queue_ms`, `:ttft_ms` (time
  to first token from submission) and `:cached_tokens`.

      {:ok, %LlamaCppEx.Completion{ttft_ms: ttft}} = LlamaCppEx.Server.complete(server, "Hi", max_tokens: 8)
  """
  @spec complete(server(), String.t() | [integer()], keyword()) :: {:ok, Completion.t()} | {:error, term()}
  def complete(server, prompt, opts \\ []) when is_binary(prompt) or is_list(prompt) do
    opts = split!(opts, [])
    call(server, opts, &encode(&1, prompt, opts.call))
  end

  @doc """
  A reply to a conversation, rendered with the model's chat template (or
  `:template`); returns the reply text.

      {:ok, reply} = LlamaCppEx.Server.chat(server, [%{role: "user", content: "Hello"}], session: "user-42")
  """
  @spec chat(server(), [Chat.message()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def chat(server, messages, opts \\ []) do
    with {:ok, %Completion{reply: reply}} <- chat_complete(server, messages, opts), do: {:ok, reply.content}
  end

  @doc """
  Like `chat/3`, returning a `LlamaCppEx.Completion` whose `:reply` is the
  reply read in the template's format (content, reasoning, tool calls), as
  `LlamaCppEx.chat_complete/3` does.
  """
  @spec chat_complete(server(), [Chat.message()], keyword()) :: {:ok, Completion.t()} | {:error, term()}
  def chat_complete(server, messages, opts \\ []) do
    opts = split!(opts, chat: Chat.option_keys())

    with {:ok, completion, reply} <- call(server, opts, &Chat.prepare(&1, messages, opts.chat)),
         do: {:ok, Completion.with_reply(completion, reply)}
  end

  @doc """
  A lazy stream of text chunks (valid UTF-8, never the start of a stop
  string). Nothing is sent to the server until the stream is consumed.
  Halting it (`Enum.take/2`) frees the slot at the next step; the server runs
  at most #{LlamaCppEx.Context.stream_window()} tokens past the last chunk
  its consumer took. Failures raise `LlamaCppEx.Error` (e.g.
  `reason: {:server_down, reason}` if the server stops). Takes `:on_complete`
  as `LlamaCppEx.stream/3` does.

      server |> LlamaCppEx.Server.stream("Once upon a time") |> Enum.each(&IO.write/1)
  """
  @spec stream(server(), String.t() | [integer()], keyword()) :: Enumerable.t()
  def stream(server, prompt, opts \\ []) when is_binary(prompt) or is_list(prompt) do
    opts = split!(opts, stream: @stream_keys)
    LlamaCppEx.Server.Stream.new(server, opts, &encode(&1, prompt, opts.call))
  end

  @doc "A lazy stream of the reply to a conversation (see `chat/3` and `stream/3`)."
  @spec stream_chat(server(), [Chat.message()], keyword()) :: Enumerable.t()
  def stream_chat(server, messages, opts \\ []) do
    opts = split!(opts, chat: Chat.option_keys(), stream: @stream_keys ++ [parse_reply: nil])

    parse? = LlamaCppEx.parse_reply?(opts)

    # rendered when the stream starts: the reply's format (and a tool-call
    # grammar) are known then
    Stream.flat_map([:start], fn :start ->
      {tokens, reply} =
        with {:ok, %{model: model}} <- settings(server, opts.request[:timeout]),
             {:ok, tokens, reply} <- Chat.prepare(model, messages, opts.chat) do
          {tokens, reply}
        else
          {:error, reason} -> raise LlamaCppEx.Error, reason: reason
        end

      stream = LlamaCppEx.Server.Stream.new(server, opts, fn _model -> {:ok, tokens, reply} end)

      if parse?,
        do: LlamaCppEx.ChatFormat.reply_stream(stream, reply.format, reply.thinking_open, reply.calls),
        else: stream
    end)
  end

  @doc """
  Cancels the request made with `ref: ref`: its caller gets
  `{:ok, %Completion{finish_reason: :cancelled}}` with the text so far (a
  stream ends). `{:error, :not_found}` if no such request is running or waiting.

      ref = make_ref()
      task = Task.async(fn -> LlamaCppEx.Server.generate(server, "Once", ref: ref) end)
      :ok = LlamaCppEx.Server.cancel(server, ref)
  """
  @spec cancel(server(), reference()) :: :ok | {:error, :not_found}
  def cancel(server, ref) when is_reference(ref), do: GenServer.call(server, {:cancel, ref})

  @doc """
  What the server is doing: slots busy and total, queue depth (per class),
  request counts, prompt and generated tokens (totals, and per second of
  stepping), the prefix cache's hit ratio (prompt tokens reused over all
  prompt tokens) and what each slot holds, KV cells used, and the steps: per
  number of generating sequences, the time of a step, of a cycle (from one
  step's start to the next's, so including the hops between the server
  process and the dirty scheduler) and the share of the cycle spent outside
  `llama_decode`.
  """
  @spec stats(server()) :: map()
  def stats(server), do: GenServer.call(server, :stats)

  # ---- saved sessions ---------------------------------------------------------------------------

  @doc """
  Takes a conversation out of the prefix cache, to resume it later (after a
  restart, or on another server with the same model and settings) with
  `restore_session/3` instead of recomputing it.

  The conversation is the idle slot that last served `session` (the
  `:session` of its requests) in `:cache_scope` (default `nil`): its token
  ids and KV cells, as a `LlamaCppEx.Server.SavedSession`. The slot keeps
  them. `{:error, :not_found}` when no slot holds the session (it was
  evicted, or never ran), `{:error, :busy}` while a request of it runs.

  Options: `:cache_scope`, `:timeout` (milliseconds, default `:infinity`).

      {:ok, _} = LlamaCppEx.Server.chat(server, messages, session: "user-42", max_tokens: 64)
      {:ok, saved} = LlamaCppEx.Server.save_session(server, "user-42")
  """
  @spec save_session(server(), term(), keyword()) :: {:ok, SavedSession.t()} | {:error, term()}
  def save_session(server, session, opts \\ []) do
    opts = Keyword.validate!(opts, cache_scope: nil, timeout: :infinity)
    timeout!(opts[:timeout])
    control(server, {:save_session, session, opts[:cache_scope]}, opts[:timeout])
  end

  @doc """
  Puts a saved conversation (`save_session/3`) back in the prefix cache: its
  cells are loaded into a free slot (the least recently used one, whose
  cached prefix it replaces) and recorded there as idle, with its session
  and scope. The next request of that session whose prompt starts with the
  saved tokens reuses them like any cached prefix: its
  `Completion.cached_tokens` counts them and only the rest of its prompt is
  computed (with `prefix_cache: true`, the default; without it the cells are
  loaded but not reused).

  The server must run the same model with the same KV layout: `:kv_unified`,
  and for `kv_unified: false` the same `:n_parallel` (one KV stream per
  slot), `:type_k`/`:type_v`, and a slot at least as large as the saved
  tokens. A saved session that does not fit, whose checksum does not match
  its parts, or whose state fails the native checks
  (`LlamaCppEx.State`) is `{:error, {:invalid_state, message}}` or
  `{:error, {:state_load_failed, message}}`; the server goes on as before (the
  chosen slot is left empty). `{:error, :busy}` when every slot runs a
  request. With a unified cache that is overcommitted (`:kv_cells`), loading
  needs free cells; idle prefixes are not evicted for it.

  Options: `:timeout` (milliseconds, default `:infinity`).

      {:ok, saved} = LlamaCppEx.Server.SavedSession.read_file("user-42.session")
      :ok = LlamaCppEx.Server.restore_session(server, saved)
      {:ok, reply} = LlamaCppEx.Server.chat(server, messages, session: "user-42")
  """
  @spec restore_session(server(), SavedSession.t(), keyword()) :: :ok | {:error, term()}
  def restore_session(server, saved, opts \\ [])

  def restore_session(server, %SavedSession{tokens: tokens, state: state} = saved, opts)
      when is_list(tokens) and is_binary(state) do
    opts = Keyword.validate!(opts, timeout: :infinity)
    timeout!(opts[:timeout])
    control(server, {:restore_session, saved}, opts[:timeout])
  end

  def restore_session(_server, other, _opts) do
    raise ArgumentError,
          "expected a LlamaCppEx.Server.SavedSession with a token list and a binary state, got: #{inspect(other)}"
  end

  # a call to the server process itself (it waits while the server loads)
  defp control(server, msg, timeout) do
    GenServer.call(server, msg, timeout)
  catch
    :exit, {:timeout, _} -> {:error, :timeout}
    :exit, {:noproc, _} -> {:error, {:server_down, :noproc}}
    :exit, {reason, _} -> {:error, {:server_down, reason}}
  end

  @doc """
  The server's model and sizes, once it has loaded (waits while it loads, up
  to `timeout`): `%{model: LlamaCppEx.Model.t(), n_ctx: cells per slot,
  embeddings: boolean}`. Used by `LlamaCppEx.HTTP` for `/v1/models` and
  `/tokenize`.

      {:ok, %{model: model, n_ctx: n_ctx}} = LlamaCppEx.Server.settings(server)
  """
  @spec settings(server(), timeout()) ::
          {:ok, %{model: LlamaCppEx.Model.t(), n_ctx: pos_integer(), embeddings: boolean()}} | {:error, term()}
  def settings(server, timeout \\ :infinity) do
    with {:ok, _pid, cfg} <- config(server, timeout),
         do: {:ok, %{model: cfg.model, n_ctx: cfg.n_ctx_slot, embeddings: cfg.embedding}}
  end

  # ---- embeddings -------------------------------------------------------------------------------

  @doc """
  Embeds a text, or a list of texts, on a server started with
  `embeddings: true`. The texts of concurrent callers are decoded together,
  each in its own sequence, a chunk per step; the vectors equal
  `LlamaCppEx.embed/3`'s (within floating-point noise).

  Options: `:pooling` (`:mean`, `:cls`, `:last`), `:normalize` (default
  `true`), `:add_special` (default `true`), `:truncate` (cut texts longer
  than the server's `:n_ctx`; otherwise `{:error, {:too_long, info}}`),
  `:priority` and `:timeout`.

      {:ok, [v1, v2]} = LlamaCppEx.Server.embed(server, ["a cat", "a dog"])
  """
  @spec embed(server(), String.t() | [String.t()], keyword()) :: {:ok, [float()] | [[float()]]} | {:error, term()}
  def embed(server, text_or_texts, opts \\ [])

  def embed(server, text, opts) when is_binary(text) do
    with {:ok, [vector]} <- embed(server, [text], opts), do: {:ok, vector}
  end

  def embed(server, texts, opts) when is_list(texts) do
    opts =
      Keyword.validate!(opts,
        pooling: :mean,
        normalize: true,
        add_special: true,
        truncate: false,
        priority: :normal,
        timeout: :infinity
      )

    unless opts[:pooling] in [:mean, :cls, :last],
      do: raise(ArgumentError, ":pooling must be :mean, :cls or :last, got: #{inspect(opts[:pooling])}")

    Options.bool!(opts, :normalize)
    priority!(opts[:priority])
    timeout!(opts[:timeout])

    with {:ok, pid, cfg} <- config(server, opts[:timeout]),
         :ok <- if(cfg.embedding, do: :ok, else: {:error, :embeddings_disabled}),
         {:ok, lists} <- Embedding.encode_all(cfg.model, texts, opts[:add_special]),
         {:ok, lists} <- Embedding.fit(lists, cfg.n_ctx_slot, Options.bool!(opts, :truncate)) do
      reqs =
        for tokens <- lists do
          %Request{
            ref: make_ref(),
            pid: self(),
            kind: :embed,
            tokens: tokens,
            pooling: opts[:pooling],
            normalize: opts[:normalize],
            priority: opts[:priority],
            timeout: opts[:timeout]
          }
        end

      mon = Process.monitor(pid)

      case submit(pid, reqs) do
        :ok ->
          results = Enum.map(reqs, &await(&1.ref, mon))
          Process.demonitor(mon, [:flush])

          case Enum.find(results, &match?({:error, _}, &1)) do
            nil -> {:ok, Enum.map(results, fn {:ok, v} -> v end)}
            error -> error
          end

        error ->
          Process.demonitor(mon, [:flush])
          error
      end
    end
  end

  # ---- the caller's half of a request -----------------------------------------------------------

  defp split!(opts, extra) do
    opts =
      Options.split!(
        opts,
        [gen: Context.generate_keys(), call: @call_keys, request: @request_keys, sampler: Sampler.option_keys()] ++
          extra
      )

    priority!(opts.request[:priority])
    timeout!(opts.request[:timeout])

    unless is_nil(opts.request[:ref]) or is_reference(opts.request[:ref]),
      do: raise(ArgumentError, ":ref must be a reference, got: #{inspect(opts.request[:ref])}")

    if opts[:stream] do
      f = opts.stream[:on_complete]
      unless is_nil(f) or is_function(f, 1), do: raise(ArgumentError, ":on_complete must be a 1-arity function")
    end

    %{opts | gen: Context.generate_opts(opts.gen)}
  end

  defp priority!(p) do
    unless p in Queue.classes(),
      do: raise(ArgumentError, ":priority must be :high, :normal or :low, got: #{inspect(p)}")
  end

  defp timeout!(t) do
    unless t == :infinity or (is_integer(t) and t > 0),
      do: raise(ArgumentError, ":timeout must be a positive integer or :infinity, got: #{inspect(t)}")
  end

  # a prompt given as token ids is checked natively (ids in range) when it is admitted
  defp encode(_model, tokens, _call) when is_list(tokens) do
    if Enum.all?(tokens, &(is_integer(&1) and &1 >= -2_147_483_648 and &1 <= 2_147_483_647)),
      do: {:ok, tokens},
      else: raise(ArgumentError, "a prompt must be a string or a list of token ids")
  end

  defp encode(model, prompt, call) do
    Tokenizer.encode(model, prompt, add_special: call[:add_special], parse_special: call[:parse_special])
  end

  # tokenize may return {:ok, tokens, extra} (a chat's reply format): the
  # result is then {:ok, completion, extra}
  defp call(server, opts, tokenize) do
    with {:ok, pid, req} <- request(server, opts, tokenize, :call) do
      mon = Process.monitor(pid)

      case submit(pid, [req]) do
        :ok ->
          result = await(req.ref, mon)
          Process.demonitor(mon, [:flush])

          case {result, req.reply} do
            {{:ok, completion}, reply} when reply != nil -> {:ok, completion, reply}
            _ -> result
          end

        error ->
          Process.demonitor(mon, [:flush])
          Sampler.free(req.sampler)
          error
      end
    end
  end

  @doc false
  # Tokenizes, checks and builds a request in the calling process: {:ok, pid, request}.
  def request(server, opts, tokenize, kind) do
    with {:ok, pid, cfg} <- config(server, opts.request[:timeout]),
         :ok <- if(cfg.embedding, do: {:error, :embeddings_only}, else: :ok),
         lora = LlamaCppEx.Lora.native!(opts.request[:lora], cfg.model),
         {:ok, tokens, reply} <- tokenized(tokenize.(cfg.model)),
         :ok <- check_prompt(tokens, opts.gen, cfg),
         {:ok, sampler} <- Sampler.create(cfg.model, Chat.Tools.constrain(opts.sampler, reply)) do
      r = opts.request

      {:ok, pid,
       %Request{
         ref: r[:ref] || make_ref(),
         pid: self(),
         kind: kind,
         tokens: tokens,
         key: LlamaCppEx.Server.Cache.key(tokens),
         reply: reply,
         sampler: sampler,
         max_tokens: opts.gen.max_tokens,
         stop: opts.gen.stop,
         logprobs: opts.gen.logprobs,
         special: Context.chat_special(opts.gen, reply || %{}).special == true,
         context_shift: opts.gen.context_shift,
         n_keep: opts.gen.n_keep,
         priority: r[:priority],
         timeout: r[:timeout],
         session: r[:session],
         scope: cache_scope(r[:cache_scope], lora),
         lora: lora
       }}
    end
  end

  # prefixes computed under other adapters differ: a scope of their own
  defp cache_scope(scope, lora) do
    case lora |> Enum.reject(&(elem(&1, 1) == 0.0)) |> Enum.sort() do
      [] -> scope
      set -> {scope, {:lora, set}}
    end
  end

  defp tokenized({:ok, tokens}), do: {:ok, tokens, nil}
  defp tokenized({:ok, tokens, extra}), do: {:ok, tokens, extra}
  defp tokenized(error), do: error

  defp check_prompt([], _gen, _cfg), do: {:error, :empty_prompt}

  defp check_prompt(tokens, gen, cfg) do
    n = length(tokens)

    if n > cfg.n_ctx_slot,
      do:
        {:error,
         {:context_overflow, %{position: 0, prompt_tokens: n, max_tokens: gen.max_tokens, n_ctx: cfg.n_ctx_slot}}},
      else: :ok
  end

  # The server's model and sizes; waits while the server is loading.
  defp config(server, timeout) do
    case GenServer.whereis(server) do
      nil ->
        {:error, {:server_down, :noproc}}

      pid ->
        try do
          {:ok, cfg} = GenServer.call(pid, :config, timeout)
          {:ok, pid, cfg}
        catch
          :exit, {:timeout, _} -> {:error, :timeout}
          :exit, {reason, _} -> {:error, {:server_down, reason}}
        end
    end
  end

  @doc false
  def submit(pid, reqs) do
    GenServer.call(pid, {:submit, reqs}, :infinity)
  catch
    :exit, {reason, _} -> {:error, {:server_down, reason}}
  end

  @doc false
  def await(ref, mon) do
    receive do
      {^ref, {:done, result}} ->
        result

      {:DOWN, ^mon, :process, _, reason} ->
        # the other requests of this caller waiting on the same monitor see it too
        send(self(), {:DOWN, mon, :process, nil, reason})
        {:error, {:server_down, reason}}
    end
  end
end
