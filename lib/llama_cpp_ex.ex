defmodule LlamaCppEx do
  @moduledoc """
  Run llama.cpp models inside the BEAM.

      {:ok, model} = LlamaCppEx.Model.load("stories260K.gguf")

      {:ok, text} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 64, temp: 0.0)

      model
      |> LlamaCppEx.stream("Once upon a time", max_tokens: 200)
      |> Enum.each(&IO.write/1)

      {:ok, reply} = LlamaCppEx.chat(model, [%{role: "user", content: "Hi"}], template: "chatml")

  Each call tokenizes the prompt, makes a context and a sampler for it (unless
  you pass `context:`), runs llama.cpp's decode/sample loop natively on a dirty
  scheduler, and frees what it made.

  ## Options

  All functions here take:

    * `:max_tokens` - most tokens to generate (default `256`).
    * `:stop` - strings that end generation; the text ends before them.
    * `:logprobs` - `nil` or `0..20`: log-probabilities of every generated
      token with that many alternatives (`LlamaCppEx.Logprob`), in the
      completion and, as `{text, logprobs}` elements, in streams.
    * every `LlamaCppEx.Sampler` option (`:temp`, `:top_k`, `:top_p`, `:seed`,
      `:grammar`, `:json_schema`, `response_format: :json`, ...);
    * every `LlamaCppEx.Context` option (`:n_ctx`, `:n_threads`, ...). Without
      `:n_ctx` the context is sized to fit the prompt plus `:max_tokens`, up to
      the model's training length (beyond it, generation ends with
      `:context_full`). Among them `:lora`, LoRA adapters with their scales
      (`[{%LlamaCppEx.Lora{}, scale}]`, see `LlamaCppEx.Lora`);
    * `:context` - an existing `LlamaCppEx.Context` to use (it is cleared first
      and not freed afterwards);
    * `:add_special` / `:parse_special` - how the prompt is tokenized (defaults
      `true` / `false`; chat functions ignore them).

  Chat functions also take `:template`, `:add_assistant` and `:variables` (see `LlamaCppEx.Chat`).
  Unknown options raise `ArgumentError`.

  ## Streams

  `stream/3` and `stream_chat/3` return lazy streams of text chunks (see
  `LlamaCppEx.Context.stream/4`). Nothing runs until the stream is consumed.
  Each chunk is valid UTF-8 (a multi-byte character is never split), and text
  that could be the start of a stop string is held back until it is known not
  to be one. The native loop does not wait for a consumer that keeps up; text
  made while the consumer is busy arrives coalesced in its next chunk. Halting
  early (`Enum.take/2`, `Stream.take_while/2`) stops generation within
  #{LlamaCppEx.Context.stream_window()} tokens and leaves no messages behind;
  if the consuming process dies, the native loop notices and stops too.

  ## Context size

  Only a prompt that does not fit in the context is an error
  (`{:context_overflow, info}`). Otherwise generation stops at end of
  generation, a stop string, `:max_tokens`, or when the context is full
  (`finish_reason: :context_full`), as llama-server and the OpenAI API do.
  """

  alias LlamaCppEx.{Chat, ChatFormat, Completion, Context, Embedding, Model, NIF, Options, Sampler, Tokenizer}

  @call_keys [context: nil, add_special: true, parse_special: false]
  @stream_keys [on_complete: nil]

  @doc """
  Generates text from `prompt`. Returns only the generated text.

      {:ok, text} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 32, temp: 0.0)
  """
  @spec generate(Model.t(), String.t(), keyword()) :: {:ok, String.t()} | {:error, term()}
  def generate(model, prompt, opts \\ []) do
    with {:ok, %Completion{text: text}} <- complete(model, prompt, opts), do: {:ok, text}
  end

  @doc """
  Like `generate/3`, but returns a `LlamaCppEx.Completion` with the generated
  tokens, the finish reason, token counts and timings.

      {:ok, %LlamaCppEx.Completion{text: text, finish_reason: :max_tokens}} =
        LlamaCppEx.complete(model, "Once upon a time", max_tokens: 16)
  """
  @spec complete(Model.t(), String.t(), keyword()) :: {:ok, Completion.t()} | {:error, term()}
  def complete(%Model{} = model, prompt, opts \\ []) when is_binary(prompt) do
    opts = split!(opts, [])

    with {:ok, tokens} <- encode_prompt(model, prompt, opts.call) do
      run(model, tokens, opts)
    end
  end

  @doc """
  Generates a reply to a conversation, rendered with the model's chat template
  (or `:template`). Returns the reply's content: its text without reasoning
  blocks or tool calls (see `chat_complete/3` for those).

      {:ok, reply} = LlamaCppEx.chat(model, [%{role: "user", content: "Hello"}])

  Takes the options of `LlamaCppEx.Chat.apply_template/3` (`:template`,
  `:tools`, `:tool_choice`, `:enable_thinking`, ...) besides those of `generate/3`.
  """
  @spec chat(Model.t(), [Chat.message()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def chat(model, messages, opts \\ []) do
    with {:ok, %Completion{reply: reply}} <- chat_complete(model, messages, opts), do: {:ok, reply.content}
  end

  @doc """
  Like `chat/3`, returning a `LlamaCppEx.Completion`: its `:text` is what the
  model wrote, and its `:reply` that text read in the template's
  `LlamaCppEx.ChatFormat`, a `LlamaCppEx.ChatReply` with the content, the
  reasoning and the tool calls.

      tools = [%{"type" => "function", "function" => %{"name" => "get_weather", "parameters" => %{...}}}]
      {:ok, %{reply: %{tool_calls: calls}}} = LlamaCppEx.chat_complete(model, messages, tools: tools)
  """
  @spec chat_complete(Model.t(), [Chat.message()], keyword()) :: {:ok, Completion.t()} | {:error, term()}
  def chat_complete(%Model{} = model, messages, opts \\ []) do
    opts = split!(opts, chat: Chat.option_keys())

    with {:ok, tokens, reply} <- Chat.prepare(model, messages, opts.chat),
         {:ok, completion} <- run(model, tokens, chat_opts(opts, reply)) do
      {:ok, Completion.with_reply(completion, reply)}
    end
  end

  @doc """
  A lazy stream of generated text chunks.

      model
      |> LlamaCppEx.stream("Once upon a time", max_tokens: 100)
      |> Enum.each(&IO.write/1)

  Failures (e.g. a prompt longer than the context) raise `LlamaCppEx.Error`
  when the stream is consumed.

  Besides the options of `generate/3`, streams take `:on_complete`, a 1-arity
  function called in the consuming process with the `LlamaCppEx.Completion`
  (finish reason, token counts, timings) when generation ends, including when
  the consumer halts early (`finish_reason: :cancelled`).
  """
  @spec stream(Model.t(), String.t(), keyword()) :: Enumerable.t()
  def stream(%Model{} = model, prompt, opts \\ []) when is_binary(prompt) do
    opts = split!(opts, stream: @stream_keys)
    token_stream(model, fn -> encode_prompt(model, prompt, opts.call) end, opts)
  end

  @doc """
  A lazy stream of the reply to a conversation (see `chat/3` and `stream/3`):
  text chunks of what the model writes, or, with `parse_reply: true` (the
  default when `:tools` are given), the reply's parts as they become known
  (`t:LlamaCppEx.ChatFormat.delta/0`: `{:content, text}`,
  `{:reasoning, text}`, `{:tool_call, index, %LlamaCppEx.ToolCall{}}`, and
  with `:logprobs` `{:logprobs, [%LlamaCppEx.Logprob{}]}` after each chunk's).
  """
  @spec stream_chat(Model.t(), [Chat.message()], keyword()) :: Enumerable.t()
  def stream_chat(%Model{} = model, messages, opts \\ []) do
    opts = split!(opts, chat: Chat.option_keys(), stream: @stream_keys ++ [parse_reply: nil])

    parse? = parse_reply?(opts)

    # rendered when the stream starts: the reply's format (and a tool-call
    # grammar) are known then
    Stream.flat_map([:start], fn :start ->
      {tokens, reply} = chat_prompt!(model, messages, opts.chat)

      stream = token_stream(model, fn -> {:ok, tokens} end, chat_opts(opts, reply))

      if parse?, do: ChatFormat.reply_stream(stream, reply.format, reply.thinking_open, reply.calls), else: stream
    end)
  end

  @doc false
  # Shared with LlamaCppEx.Server.stream_chat/3.
  def parse_reply?(opts) do
    case opts.stream[:parse_reply] do
      nil -> opts.chat[:tools] not in [nil, []]
      b when is_boolean(b) -> b
      other -> raise ArgumentError, ":parse_reply must be a boolean, got: #{inspect(other)}"
    end
  end

  # a chat's sampler and generation options given its reply format: the
  # tool-call grammar tool_choice asks for, special tokens its markers need
  defp chat_opts(opts, reply),
    do: %{opts | sampler: Chat.Tools.constrain(opts.sampler, reply), gen: Context.chat_special(opts.gen, reply)}

  defp chat_prompt!(model, messages, chat) do
    case Chat.prepare(model, messages, chat) do
      {:ok, tokens, reply} -> {tokens, reply}
      {:error, reason} -> raise LlamaCppEx.Error, reason: reason
    end
  end

  @doc """
  Embeds a text, or a list of texts, as vectors of `n_embd` floats.

      {:ok, vector} = LlamaCppEx.embed(model, "Once upon a time")
      {:ok, [v1, v2]} = LlamaCppEx.embed(model, ["a cat", "a dog"])

  Each text is decoded in micro-batches of `:n_ubatch` tokens and pooled
  natively, so a long text never becomes one huge micro-batch (models without
  a KV cache or with non-causal attention, such as BERT, take each text in one
  micro-batch, as llama.cpp requires). The call stops if the calling process
  dies.

  ## Options

    * `:pooling` - how token embeddings become one vector: `:mean` (default),
      `:cls` or `:last`.
    * `:normalize` - scale each vector to unit length (default `true`).
    * `:add_special` - tokenize with BOS/EOS as the model adds them (default `true`).
    * `:n_ctx` - the longest text, in tokens (default: the model's training
      length, or 4096 when the model does not say).
    * `:truncate` - a text longer than `:n_ctx` tokens is cut to its first
      `:n_ctx` tokens (`true`) or the call returns
      `{:error, {:too_long, %{tokens: n, max: n_ctx}}}` (`false`, the default).
    * `:n_ubatch` - tokens per decode step (default `512`).
    * `:n_threads` - compute threads (default `LlamaCppEx.Context.default_threads/0`).
  """
  @spec embed(Model.t(), String.t() | [String.t()], keyword()) ::
          {:ok, [float()] | [[float()]]} | {:error, LlamaCppEx.Error.reason()}
  def embed(model, text_or_texts, opts \\ [])

  def embed(%Model{} = model, text, opts) when is_binary(text) do
    with {:ok, [vector]} <- embed(model, [text], opts), do: {:ok, vector}
  end

  def embed(%Model{} = model, texts, opts) when is_list(texts) do
    opts =
      Keyword.validate!(opts,
        pooling: :mean,
        normalize: true,
        add_special: true,
        n_ctx: nil,
        truncate: false,
        n_ubatch: 512,
        n_threads: Context.default_threads()
      )

    unless opts[:pooling] in [:mean, :cls, :last],
      do: raise(ArgumentError, ":pooling must be :mean, :cls or :last, got: #{inspect(opts[:pooling])}")

    max = opts[:n_ctx] || if(model.n_ctx_train > 0, do: model.n_ctx_train, else: 4096)

    unless is_integer(max) and max > 0,
      do: raise(ArgumentError, ":n_ctx must be a positive integer, got: #{inspect(opts[:n_ctx])}")

    with {:ok, token_lists} <- Embedding.encode_all(model, texts, opts[:add_special]),
         {:ok, token_lists} <- Embedding.fit(token_lists, max, Options.bool!(opts, :truncate)) do
      longest = token_lists |> Enum.map(&length/1) |> Enum.max(fn -> 1 end) |> max(1)
      n_ctx = min(div(longest + 255, 256) * 256, max(max, longest))
      step = min(Options.pos!(opts, :n_ubatch), n_ctx)

      with {:ok, ctx} <- embedding_context(model, n_ctx, step, longest, opts[:n_threads]) do
        try do
          embed_each(ctx, token_lists, opts[:pooling], opts[:normalize], [])
        after
          Context.free(ctx)
        end
      end
    end
  end

  # Steps of n_ubatch tokens where the context allows it; otherwise (models
  # without a KV cache, or with non-causal attention) one micro-batch must
  # hold the longest text.
  defp embedding_context(model, n_ctx, step, longest, n_threads) do
    opts = [n_ctx: n_ctx, embeddings: true, pooling: :none, n_threads: n_threads]

    with {:ok, ctx} <- Context.create(model, [n_batch: step, n_ubatch: step] ++ opts) do
      if ctx.stepwise_embeddings or longest <= step do
        {:ok, ctx}
      else
        Context.free(ctx)
        Context.create(model, [n_batch: n_ctx, n_ubatch: n_ctx] ++ opts)
      end
    end
  end

  defp embed_each(_ctx, [], _pooling, _normalize, acc), do: {:ok, Enum.reverse(acc)}

  defp embed_each(ctx, [tokens | rest], pooling, normalize, acc) do
    case Context.embed(ctx, tokens, pooling: pooling) do
      {:ok, vector} ->
        embed_each(ctx, rest, pooling, normalize, [if(normalize, do: Embedding.normalize(vector), else: vector) | acc])

      error ->
        error
    end
  end

  @doc """
  Counts of live native objects, `%{models: n, contexts: n, samplers: n,
  loras: n}`: useful to check that nothing leaks.
  """
  @spec live_objects() :: %{
          models: non_neg_integer(),
          contexts: non_neg_integer(),
          samplers: non_neg_integer(),
          loras: non_neg_integer()
        }
  def live_objects, do: NIF.live_counts()

  @doc "llama.cpp's description of the CPU features and backends it was built with."
  @spec system_info() :: String.t()
  def system_info, do: NIF.system_info()

  # ---- internals ---------------------------------------------------------------------

  # Validates a call's options once, split by the layer that owns them.
  defp split!(opts, extra) do
    Options.split!(
      opts,
      [gen: Context.generate_keys(), call: @call_keys, sampler: Sampler.option_keys(), context: Context.option_keys()] ++
        extra
    )
  end

  defp encode_prompt(model, prompt, call) do
    Tokenizer.encode(model, prompt, add_special: call[:add_special], parse_special: call[:parse_special])
  end

  defp run(model, tokens, opts) do
    with {:ok, ctx, own_ctx?} <- context_for(model, tokens, opts) do
      try do
        with {:ok, sampler} <- Sampler.create(model, opts.sampler) do
          try do
            Context.generate(ctx, sampler, tokens, opts.gen)
          after
            Sampler.free(sampler)
          end
        end
      after
        if own_ctx?, do: Context.free(ctx)
      end
    end
  end

  defp context_for(model, tokens, opts) do
    if opts.call[:context] && Keyword.has_key?(opts.context, :lora),
      do: raise(ArgumentError, ":lora applies to a context the call creates; set a :context's with Context.set_lora/2")

    case opts.call[:context] do
      %Context{model: %Model{ref: ref}} = ctx when ref == model.ref ->
        with :ok <- Context.clear(ctx), do: {:ok, ctx, false}

      %Context{} ->
        raise ArgumentError, ":context belongs to a different model"

      nil ->
        needed = length(tokens) + opts.gen[:max_tokens]
        ctx_opts = Keyword.put_new_lazy(opts.context, :n_ctx, fn -> default_n_ctx(model, needed) end)
        with {:ok, ctx} <- Context.create(model, ctx_opts), do: {:ok, ctx, true}

      other ->
        raise ArgumentError, ":context must be a LlamaCppEx.Context, got: #{inspect(other)}"
    end
  end

  # Fit the request, in steps of 256 to keep buffer sizes few, capped by the
  # training length (beyond it, generation ends with :context_full).
  defp default_n_ctx(model, needed) do
    rounded = div(needed + 255, 256) * 256
    if model.n_ctx_train > 0, do: max(min(rounded, model.n_ctx_train), min(needed, model.n_ctx_train)), else: rounded
  end

  # The context and sampler are made when the stream starts and freed when it
  # ends (after the native stream has let go of them); the stream itself is
  # Context.stream/4's.
  defp token_stream(model, tokenize, opts) do
    Context.generate_opts(opts.gen)
    on_complete = opts.stream[:on_complete]

    unless is_nil(on_complete) or is_function(on_complete, 1),
      do: raise(ArgumentError, ":on_complete must be a 1-arity function")

    Stream.resource(
      fn -> {:start, tokenize} end,
      fn
        {:start, tokenize} ->
          {ctx, own_ctx?, sampler, tokens} = prepare_stream(model, tokenize, opts)
          inner = Context.stream(ctx, sampler, tokens, opts.gen ++ [on_complete: on_complete])
          {[inner], {:running, ctx, own_ctx?, sampler}}

        state ->
          {:halt, state}
      end,
      fn
        {:start, _} -> :ok
        {:running, ctx, own_ctx?, sampler} -> release(ctx, own_ctx?, sampler)
      end
    )
    |> Stream.flat_map(& &1)
  end

  defp prepare_stream(model, tokenize, opts) do
    tokens = ok!(tokenize.())
    {ctx, own_ctx?} = ok!(context_for(model, tokens, opts))

    case Sampler.create(model, opts.sampler) do
      {:ok, sampler} ->
        {ctx, own_ctx?, sampler, tokens}

      {:error, reason} ->
        if own_ctx?, do: Context.free(ctx)
        raise LlamaCppEx.Error, reason: reason
    end
  end

  defp release(ctx, own_ctx?, sampler) do
    Sampler.free(sampler)
    if own_ctx?, do: Context.free(ctx)
    :ok
  end

  defp ok!({:ok, a, b}), do: {a, b}
  defp ok!({:ok, v}), do: v
  defp ok!({:error, reason}), do: raise(LlamaCppEx.Error, reason: reason)
end
