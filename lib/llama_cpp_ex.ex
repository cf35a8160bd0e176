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
    * every `LlamaCppEx.Sampler` option (`:temp`, `:top_k`, `:top_p`, `:seed`,
      `:grammar`, ...);
    * every `LlamaCppEx.Context` option (`:n_ctx`, `:n_threads`, ...). Without
      `:n_ctx` the context is sized to fit the prompt plus `:max_tokens`, up to
      the model's training length;
    * `:context` - an existing `LlamaCppEx.Context` to use (it is cleared first
      and not freed afterwards);
    * `:add_special` / `:parse_special` - how the prompt is tokenized (defaults
      `true` / `false`; chat functions ignore them).

  Chat functions also take `:template` and `:add_assistant` (see `LlamaCppEx.Chat`).
  Unknown options raise `ArgumentError`.

  ## Streams

  `stream/3` and `stream_chat/3` return lazy streams of text chunks. Nothing
  runs until the stream is consumed. Each chunk is valid UTF-8 up to its end
  (a multi-byte character is never split), and text that could be the start of
  a stop string is held back until it is known not to be one. Halting early
  (`Enum.take/2`, `Stream.take_while/2`) stops generation within one token and
  leaves no messages behind; if the consuming process dies, the native loop
  notices and stops too.
  """

  alias LlamaCppEx.{Chat, Completion, Context, Model, NIF, Sampler, Tokenizer}

  @gen_keys [max_tokens: 256, stop: [], context: nil, add_special: true, parse_special: false]
  @chat_keys [template: nil, add_assistant: true]
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
    opts = validate!(opts, [])

    with {:ok, tokens} <- encode_prompt(model, prompt, opts) do
      run(model, tokens, opts)
    end
  end

  @doc """
  Generates a reply to a conversation, rendered with the model's chat template
  (or `:template`). Returns the reply text.

      {:ok, reply} = LlamaCppEx.chat(model, [%{role: "user", content: "Hello"}])
  """
  @spec chat(Model.t(), [Chat.message()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def chat(model, messages, opts \\ []) do
    with {:ok, %Completion{text: text}} <- chat_complete(model, messages, opts), do: {:ok, text}
  end

  @doc "Like `chat/3`, returning a `LlamaCppEx.Completion`."
  @spec chat_complete(Model.t(), [Chat.message()], keyword()) :: {:ok, Completion.t()} | {:error, term()}
  def chat_complete(%Model{} = model, messages, opts \\ []) do
    opts = validate!(opts, @chat_keys)

    with {:ok, tokens} <- Chat.tokenize(model, messages, Keyword.take(opts, Keyword.keys(@chat_keys))) do
      run(model, tokens, opts)
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
    opts = validate!(opts, @stream_keys)
    token_stream(model, fn -> encode_prompt(model, prompt, opts) end, opts)
  end

  @doc "A lazy stream of the reply to a conversation (see `chat/3` and `stream/3`)."
  @spec stream_chat(Model.t(), [Chat.message()], keyword()) :: Enumerable.t()
  def stream_chat(%Model{} = model, messages, opts \\ []) do
    opts = validate!(opts, @chat_keys ++ @stream_keys)
    token_stream(model, fn -> Chat.tokenize(model, messages, Keyword.take(opts, Keyword.keys(@chat_keys))) end, opts)
  end

  @doc """
  Embeds a text, or a list of texts, as vectors of `n_embd` floats.

      {:ok, vector} = LlamaCppEx.embed(model, "Once upon a time")
      {:ok, [v1, v2]} = LlamaCppEx.embed(model, ["a cat", "a dog"])

  ## Options

    * `:pooling` - how token embeddings become one vector: `:mean` (default),
      `:cls` or `:last`.
    * `:normalize` - scale each vector to unit length (default `true`).
    * `:add_special` - tokenize with BOS/EOS as the model adds them (default `true`).
    * `:n_threads` - compute threads (default `LlamaCppEx.Context.default_threads/0`).
  """
  @spec embed(Model.t(), String.t() | [String.t()], keyword()) ::
          {:ok, [float()] | [[float()]]} | {:error, term()}
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
        n_threads: Context.default_threads()
      )

    unless opts[:pooling] in [:mean, :cls, :last],
      do: raise(ArgumentError, ":pooling must be :mean, :cls or :last, got: #{inspect(opts[:pooling])}")

    with {:ok, token_lists} <- encode_all(model, texts, opts[:add_special]) do
      # one micro-batch must hold the longest text
      longest = token_lists |> Enum.map(&length/1) |> Enum.max(fn -> 1 end) |> max(1)
      size = div(longest + 255, 256) * 256

      ctx_opts = [
        n_ctx: size,
        n_batch: size,
        n_ubatch: size,
        embeddings: true,
        pooling: opts[:pooling],
        n_threads: opts[:n_threads]
      ]

      with {:ok, ctx} <- Context.create(model, ctx_opts) do
        try do
          embed_each(ctx, token_lists, opts[:normalize], [])
        after
          Context.free(ctx)
        end
      end
    end
  end

  defp encode_all(model, texts, add_special) do
    Enum.reduce_while(texts, {:ok, []}, fn
      text, {:ok, acc} when is_binary(text) ->
        case Tokenizer.encode(model, text, add_special: add_special) do
          {:ok, tokens} -> {:cont, {:ok, [tokens | acc]}}
          error -> {:halt, error}
        end

      other, _ ->
        raise ArgumentError, "texts must be strings, got: #{inspect(other)}"
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp embed_each(_ctx, [], _normalize, acc), do: {:ok, Enum.reverse(acc)}

  defp embed_each(ctx, [tokens | rest], normalize, acc) do
    case Context.embed(ctx, tokens) do
      {:ok, vector} -> embed_each(ctx, rest, normalize, [if(normalize, do: l2(vector), else: vector) | acc])
      error -> error
    end
  end

  defp l2(vector) do
    norm = :math.sqrt(Enum.reduce(vector, 0.0, &(&1 * &1 + &2)))
    if norm > 0, do: Enum.map(vector, &(&1 / norm)), else: vector
  end

  @doc """
  Counts of live native objects, `%{models: n, contexts: n, samplers: n}`:
  useful to check that nothing leaks.
  """
  @spec live_objects() :: %{models: non_neg_integer(), contexts: non_neg_integer(), samplers: non_neg_integer()}
  def live_objects, do: NIF.live_counts()

  @doc "llama.cpp's description of the CPU features and backends it was built with."
  @spec system_info() :: String.t()
  def system_info, do: NIF.system_info()

  # ---- internals ---------------------------------------------------------------------

  defp validate!(opts, extra) do
    keys = @gen_keys ++ extra ++ Enum.map(Sampler.option_keys() ++ Context.option_keys(), &{&1, :__default__})
    opts = Keyword.validate!(opts, keys)
    Enum.reject(opts, fn {_k, v} -> v == :__default__ end)
  end

  defp encode_prompt(model, prompt, opts) do
    Tokenizer.encode(model, prompt, add_special: opts[:add_special], parse_special: opts[:parse_special])
  end

  defp run(model, tokens, opts) do
    gen = Context.generate_opts(opts)

    with {:ok, ctx, own_ctx?} <- context_for(model, tokens, gen.max_tokens, opts) do
      try do
        with {:ok, sampler} <- Sampler.create(model, Keyword.take(opts, Sampler.option_keys())) do
          try do
            with {:ok, map} <- NIF.generate(ctx.ref, sampler.ref, tokens, gen) do
              {:ok, Completion.from_native(map)}
            end
          after
            Sampler.free(sampler)
          end
        end
      after
        if own_ctx?, do: Context.free(ctx)
      end
    end
  end

  defp context_for(model, tokens, max_tokens, opts) do
    case opts[:context] do
      %Context{model: %Model{ref: ref}} = ctx when ref == model.ref ->
        with :ok <- Context.clear(ctx), do: {:ok, ctx, false}

      %Context{} ->
        raise ArgumentError, ":context belongs to a different model"

      nil ->
        ctx_opts = Keyword.take(opts, Context.option_keys())
        ctx_opts = Keyword.put_new_lazy(ctx_opts, :n_ctx, fn -> default_n_ctx(model, length(tokens) + max_tokens) end)

        with {:ok, ctx} <- Context.create(model, ctx_opts), do: {:ok, ctx, true}

      other ->
        raise ArgumentError, ":context must be a LlamaCppEx.Context, got: #{inspect(other)}"
    end
  end

  # Fit the request, in steps of 256 to keep buffer sizes few, capped by the
  # training length (beyond it, the request is a context overflow).
  defp default_n_ctx(model, needed) do
    rounded = div(needed + 255, 256) * 256
    if model.n_ctx_train > 0, do: max(min(rounded, model.n_ctx_train), min(needed, model.n_ctx_train)), else: rounded
  end

  defp token_stream(model, tokenize, opts) do
    Stream.resource(
      fn -> start_stream(model, tokenize, opts) end,
      &next_chunk/1,
      &stop_stream/1
    )
  end

  defp start_stream(model, tokenize, opts) do
    gen = Context.generate_opts(opts)
    on_complete = opts[:on_complete]

    unless is_nil(on_complete) or is_function(on_complete, 1),
      do: raise(ArgumentError, ":on_complete must be a 1-arity function")

    tokens = ok!(tokenize.())
    {ctx, own_ctx?} = ok!(context_for(model, tokens, gen.max_tokens, opts))

    sampler =
      case Sampler.create(model, Keyword.take(opts, Sampler.option_keys())) do
        {:ok, s} ->
          s

        {:error, reason} ->
          if own_ctx?, do: Context.free(ctx)
          raise LlamaCppEx.Error, reason: reason
      end

    ref = make_ref()
    # The generation runs on a native thread of its own; it sends
    # {ref, {:chunk, text}} as chunks are asked for and {ref, {:done, result}} last.
    case NIF.stream_start(ctx.ref, sampler.ref, tokens, gen, self(), ref) do
      {:ok, handle} ->
        %{
          ref: ref,
          handle: handle,
          done: false,
          ctx: ctx,
          own_ctx?: own_ctx?,
          sampler: sampler,
          on_complete: on_complete
        }

      {:error, reason} ->
        Sampler.free(sampler)
        if own_ctx?, do: Context.free(ctx)
        raise LlamaCppEx.Error, reason: reason
    end
  end

  defp ok!({:ok, a, b}), do: {a, b}
  defp ok!({:ok, v}), do: v
  defp ok!({:error, reason}), do: raise(LlamaCppEx.Error, reason: reason)

  defp next_chunk(%{done: {:ok, _}} = state), do: {:halt, state}

  defp next_chunk(%{ref: ref, handle: handle} = state) do
    # Ask for exactly one more chunk: the native loop never runs more than one
    # token ahead of what the consumer has asked for.
    NIF.stream_demand(handle)

    receive do
      {^ref, {:chunk, text}} ->
        {[text], state}

      {^ref, {:done, {:ok, map}}} ->
        # on_complete runs in stop_stream/1, after this state is recorded as done
        {:halt, %{state | done: {:ok, map}}}

      {^ref, {:done, {:error, reason}}} = done ->
        # stop_stream/1 runs next (with this state) and will look for it
        send(self(), done)
        raise LlamaCppEx.Error, reason: reason
    end
  end

  # After the last element, on halt (Enum.take/2) and after a raise above.
  defp stop_stream(%{ref: ref, handle: handle, done: done} = state) do
    result =
      case done do
        {:ok, map} ->
          {:ok, map}

        false ->
          NIF.stream_cancel(handle)

          # the native thread always reports, cancelled or not
          receive do
            {^ref, {:done, result}} -> result
          end
      end

    try do
      with {:ok, map} <- result, do: completed(state, map)
    after
      release(state)
      flush(ref)
    end
  end

  defp release(%{sampler: sampler, ctx: ctx, own_ctx?: own_ctx?}) do
    Sampler.free(sampler)
    if own_ctx?, do: Context.free(ctx)
    :ok
  end

  defp completed(%{on_complete: nil}, _map), do: :ok
  defp completed(%{on_complete: fun}, map), do: fun.(Completion.from_native(map))

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end
end
