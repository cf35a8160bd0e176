defmodule LlamaCppEx.Context do
  @moduledoc """
  An inference context: the KV cache and compute buffers for running a model.

  A context keeps its model alive. It is not shared between concurrent users
  by llama.cpp itself; here every call takes the context's lock, so two
  processes using one context are serialized rather than corrupting it.

      {:ok, ctx} = LlamaCppEx.Context.create(model, n_ctx: 1024)
      {:ok, sampler} = LlamaCppEx.Sampler.create(model, temp: 0.0)
      {:ok, tokens} = LlamaCppEx.Tokenizer.encode(model, "Once upon a time")
      {:ok, completion} = LlamaCppEx.Context.generate(ctx, sampler, tokens, max_tokens: 32)
      completion.text
  """

  import LlamaCppEx.Options
  alias LlamaCppEx.{Completion, Lora, Model, NIF, Options, Sampler}

  @typedoc "See `LlamaCppEx.Error`."
  @type reason :: LlamaCppEx.Error.reason()

  @enforce_keys [:ref, :model]
  defstruct [
    :ref,
    :model,
    :n_ctx,
    :n_batch,
    :n_ubatch,
    :n_seq_max,
    :n_threads,
    :n_threads_batch,
    embeddings: false,
    stepwise_embeddings: true
  ]

  @type t :: %__MODULE__{
          ref: reference(),
          model: Model.t(),
          n_ctx: pos_integer(),
          n_batch: pos_integer(),
          n_ubatch: pos_integer(),
          n_seq_max: pos_integer(),
          n_threads: pos_integer(),
          n_threads_batch: pos_integer(),
          embeddings: boolean(),
          stepwise_embeddings: boolean()
        }

  # tokens a stream's native loop may run past its last chunk (STREAM_WINDOW in c_src/generate.c)
  @stream_window 16
  @generate_keys [max_tokens: 256, stop: [], logprobs: nil, context_shift: false, n_keep: nil, special: nil]
  @int32_max 2_147_483_647
  # LCX_MAX_STOPS in c_src/text.h
  @max_stops 64

  @doc false
  def stream_window, do: @stream_window

  @cache_types [:f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1, :iq4_nl]
  @pooling %{unspecified: -1, none: 0, mean: 1, cls: 2, last: 3, rank: 4}

  @doc false
  def option_keys,
    do: [
      :n_ctx,
      :n_batch,
      :n_ubatch,
      :n_threads,
      :n_threads_batch,
      :n_seq_max,
      :embeddings,
      :flash_attn,
      :type_k,
      :type_v,
      :pooling,
      :max_memory,
      :kv_unified,
      :lora
    ]

  @doc """
  Creates a context for `model`.

  ## Options

    * `:n_ctx` - context size in tokens (default `2048`; `0` takes the model's
      training length).
    * `:n_batch` - most tokens one `llama_decode` call may take (default `2048`,
      at most `n_ctx`).
    * `:n_ubatch` - physical micro-batch size (default `512`).
    * `:n_threads` / `:n_threads_batch` - CPU threads for generation and for
      prompt processing (default: `default_threads/0`; at most the number of
      available CPUs).
    * `:n_seq_max` - independent sequences (default `1`).
    * `:embeddings` - extract embeddings (default `false`).
    * `:flash_attn` - `:auto`, `true` or `false` (default `:auto`).
    * `:type_k` / `:type_v` - KV cache element types, one of
      #{Enum.map_join(@cache_types, ", ", &"`#{inspect(&1)}`")} (default `:f16`).
      A quantized type stores values in blocks (32 for all of these) and needs
      a model whose K (or V) head size the block divides; otherwise the result
      is `{:error, {:unsupported_kv_type, %{cache: :k | :v, type: type,
      block_size: 32, head_size: n}}}`. A quantized `:type_v` also needs flash
      attention.
    * `:pooling` - embedding pooling: `:unspecified` (model default), `:none`,
      `:mean`, `:cls`, `:last` or `:rank`.
    * `:max_memory` - most bytes the context may allocate (default: the
      physical RAM). The KV cache, output and compute buffers are sized
      before anything is allocated, as llama.cpp will size them (each of the
      `:n_seq_max` sequences gets at least 256 cells), and a context that would
      need more is refused with `{:error, {:context_too_large, %{needed: n,
      available: limit, kv_cache: kv}}}` instead of being OOM-killed.
    * `:kv_unified` - with `n_seq_max > 1`: one KV cache shared by all
      sequences (`true`: each may use all `n_ctx` cells, and cells can belong to
      several sequences) or one part of `n_ctx / n_seq_max` cells per
      sequence (`false`, the default, as llama.cpp).
    * `:lora` - LoRA adapters to apply, `[{%LlamaCppEx.Lora{}, scale}]`
      (default `[]`; see `set_lora/2`).
  """
  @spec create(Model.t(), keyword()) :: {:ok, t()} | {:error, term()}
  def create(%Model{} = model, opts \\ []) do
    threads = default_threads()

    opts =
      Keyword.validate!(opts,
        n_ctx: 2048,
        n_batch: 2048,
        n_ubatch: 512,
        n_threads: threads,
        n_threads_batch: nil,
        n_seq_max: 1,
        embeddings: false,
        flash_attn: :auto,
        type_k: :f16,
        type_v: :f16,
        pooling: :unspecified,
        max_memory: nil,
        kv_unified: false,
        lora: []
      )

    if model.vocab_only, do: raise(ArgumentError, "cannot create a context for a vocab_only model")
    n_ctx = non_neg!(opts, :n_ctx)
    n_batch = pos!(opts, :n_batch)
    n_batch = if n_ctx > 0, do: min(n_batch, n_ctx), else: n_batch
    n_threads = threads!(opts, :n_threads)

    native = %{
      n_ctx: n_ctx,
      n_batch: n_batch,
      n_ubatch: min(pos!(opts, :n_ubatch), n_batch),
      n_threads: n_threads,
      n_threads_batch: if(opts[:n_threads_batch], do: threads!(opts, :n_threads_batch), else: n_threads),
      n_seq_max: pos!(opts, :n_seq_max),
      embeddings: bool!(opts, :embeddings),
      flash_attn: flash!(opts[:flash_attn]),
      type_k: cache_type!(opts, :type_k),
      type_v: cache_type!(opts, :type_v),
      pooling: Map.get(@pooling, opts[:pooling]) || raise(ArgumentError, "unknown :pooling #{inspect(opts[:pooling])}"),
      max_memory: max_memory!(opts[:max_memory]),
      kv_unified: bool!(opts, :kv_unified),
      lora: Lora.native!(opts[:lora], model)
    }

    if native.n_seq_max > native.n_batch and n_ctx > 0,
      do: raise(ArgumentError, ":n_seq_max (#{native.n_seq_max}) must be at most n_batch (#{native.n_batch})")

    with {:ok, ref} <- NIF.context_create(model.ref, native),
         {:ok, info} <- NIF.context_info(ref) do
      {:ok, struct!(__MODULE__, Map.merge(info, %{ref: ref, model: model, embeddings: native.embeddings}))}
    end
  end

  @doc """
  The default number of compute threads: the physical cores, less one left
  to the BEAM's own schedulers (at least one).

  llama.cpp's tools use every physical core. Inside a running system, compute
  threads that occupy every core compete with the schedulers: a process on a
  normal scheduler then waits for the OS to preempt a compute thread (several
  milliseconds on a 2-core machine), and a stream's consumer delays every
  token it is sent. Pass `n_threads:` explicitly to use every core.
  """
  @spec default_threads() :: pos_integer()
  def default_threads do
    cores =
      case physical_cores(:erlang.system_info(:cpu_topology)) do
        0 -> System.schedulers_online()
        n -> n
      end

    max(1, min(cores, System.schedulers_online()) - 1)
  end

  # cpu_topology: nodes > processors > cores > threads; a core without
  # threads is given as {:logical, id}.
  defp physical_cores(:undefined), do: 0

  defp physical_cores(topology) when is_list(topology) do
    Enum.reduce(topology, 0, fn
      {:core, _}, acc -> acc + 1
      {:core, _info, _}, acc -> acc + 1
      {_level, children}, acc when is_list(children) -> acc + physical_cores(children)
      {_level, _info, children}, acc when is_list(children) -> acc + physical_cores(children)
      _, acc -> acc
    end)
  end

  @doc """
  Sets the LoRA adapters the context applies, replacing those it had:
  `[{%LlamaCppEx.Lora{}, scale}]` (`[]` removes them all).

  The adapters take effect from the next decode; what the context already
  holds (its KV cache) stays as it was computed, so call `clear/1` for a
  fresh start under the new adapters. Setting the same adapters and scales
  again changes nothing. Raises `ArgumentError` for an adapter of another
  model, a scale that is not a finite number or an adapter given twice.

      :ok = LlamaCppEx.Context.set_lora(ctx, [{lora, 0.5}])
  """
  @spec set_lora(t(), Lora.adapters()) :: :ok | {:error, reason()}
  def set_lora(%__MODULE__{ref: ref, model: model}, adapters) do
    NIF.context_set_lora(ref, Lora.native!(adapters, model))
  end

  @doc """
  Decodes `tokens` (appending them to the context's sequence), in batches of
  at most `n_batch`. Afterwards the logits of the last token can be sampled.

  Returns `{:error, {:context_overflow, info}}` if the tokens do not fit,
  `{:error, {:invalid_token, {id, n_vocab}}}` for ids outside the vocabulary.
  """
  @spec decode(t(), [non_neg_integer()]) :: :ok | {:error, term()}
  def decode(%__MODULE__{ref: ref}, tokens) when is_list(tokens), do: NIF.context_decode(ref, tokens)

  @doc """
  Generates up to `:max_tokens` tokens after decoding `tokens`.

  The decode-sample loop runs natively on a dirty scheduler. `tokens` is
  appended to whatever the context holds already (call `clear/1` first for a
  fresh start). Only a prompt that does not fit in the context's free space is
  an error (`{:error, {:context_overflow, info}}`, before any work); otherwise
  generation runs until end of generation, a stop string, `:max_tokens`, or
  until the context is full (`finish_reason: :context_full`), as llama-server
  and the OpenAI API do.

  The call is cancelled (`finish_reason: :cancelled`) when the calling process
  dies, or when the context or the sampler is freed meanwhile.

  ## Options

    * `:max_tokens` - most tokens to generate (default `256`).
    * `:stop` - list of strings; generation ends before the first occurrence of
      any of them (the stop string itself is not part of the text).
    * `:logprobs` - `nil` (default) or `0..#{LlamaCppEx.Logprob.max()}`: the
      completion's `:logprobs` then holds a `LlamaCppEx.Logprob` for every
      generated token with that many alternatives. Off, it costs nothing.
    * `:context_shift` - `true` to go on when the context is full instead of
      ending with `:context_full`: the oldest half of the sequence after its
      first `:n_keep` positions is dropped and the rest moved back
      (`llama_memory_seq_rm` + `llama_memory_seq_add`, as llama.cpp's CLI
      does), so generation runs up to `:max_tokens` with a sliding window.
      The completion's `:discarded_tokens` counts what was dropped. A context
      whose memory cannot shift (llama.cpp's `llama_memory_can_shift`: M-RoPE
      models, some sliding-window caches) returns
      `{:error, :shift_unsupported}` before any work. Default `false`.
    * `:n_keep` - positions at the start of the sequence a shift never drops,
      at most up to the end of the prompt, as llama.cpp's CLI counts them
      (default: the BOS token when the sequence starts with it, else none).
    * `:special` - `true` to keep special tokens in the text as their text
      (`"<|python_tag|>"`); by default they render as `""`, except in chats
      whose format marks tool calls or reasoning with them (Llama 3, Mistral,
      Granite, Command R, DeepSeek), where the chat functions turn it on so
      `LlamaCppEx.ChatFormat` sees the markers.
  """
  @spec generate(t(), Sampler.t(), [non_neg_integer()], keyword()) :: {:ok, Completion.t()} | {:error, reason()}
  def generate(%__MODULE__{} = ctx, %Sampler{} = sampler, tokens, opts \\ []) when is_list(tokens) do
    gen = opts |> Keyword.validate!(@generate_keys) |> generate_opts()

    with {:ok, map} <- NIF.generate(ctx.ref, sampler.ref, tokens, gen) do
      {:ok, Completion.from_native(map)}
    end
  end

  @doc """
  Like `generate/4`, as a lazy stream of text chunks.

  Nothing runs until the stream is consumed. The generation then runs on a
  native thread of its own, which owns the context and the sampler until it
  ends: any other use of them meanwhile returns `{:error, :busy}`.

  Chunks are valid UTF-8 and never hold text that may be the start of a stop
  string. The native loop does not wait for the consumer: text produced while
  the consumer is busy is coalesced into the next chunk, and the loop runs at
  most #{@stream_window} tokens past the last chunk it sent before it waits to be asked
  again, so halting the stream (`Enum.take/2`) stops generation within that
  window. Failures raise `LlamaCppEx.Error` when consumed.

  ## Options

    * `:max_tokens`, `:stop` - as for `generate/4`.
    * `:logprobs` - as for `generate/4`; the stream's elements are then
      `{text, [LlamaCppEx.Logprob.t()]}` tuples: each chunk's text with the
      log-probabilities of the tokens generated since the previous chunk (a
      chunk's text may be empty while its tokens' text is held back).
    * `:on_complete` - a 1-arity function called in the consuming process with
      the `LlamaCppEx.Completion` when generation ends, including when the
      consumer halts early (`finish_reason: :cancelled`).
  """
  @spec stream(t(), Sampler.t(), [non_neg_integer()], keyword()) :: Enumerable.t()
  def stream(%__MODULE__{} = ctx, %Sampler{} = sampler, tokens, opts \\ []) when is_list(tokens) do
    opts = Keyword.validate!(opts, [on_complete: nil] ++ @generate_keys)
    on_complete = opts[:on_complete]

    unless is_nil(on_complete) or is_function(on_complete, 1),
      do: raise(ArgumentError, ":on_complete must be a 1-arity function")

    LlamaCppEx.TokenStream.new(ctx.ref, sampler.ref, tokens, generate_opts(opts), on_complete)
  end

  @doc false
  # The generation options (generate/4, stream/4, the facade, the server) and their defaults.
  def generate_keys, do: @generate_keys

  @doc false
  def generate_opts(opts) do
    max = opts[:max_tokens]

    unless is_integer(max) and max > 0 and max <= @int32_max,
      do: raise(ArgumentError, ":max_tokens must be a positive integer (at most 2^31 - 1), got: #{inspect(max)}")

    stop = List.wrap(opts[:stop])

    unless length(stop) <= @max_stops and Enum.all?(stop, &(is_binary(&1) and &1 != "" and String.valid?(&1))),
      do:
        raise(
          ArgumentError,
          ":stop must be a list of at most #{@max_stops} non-empty UTF-8 strings, got: #{inspect(opts[:stop])}"
        )

    n_keep = opts[:n_keep]

    unless is_nil(n_keep) or (is_integer(n_keep) and n_keep >= 0 and n_keep < 2_147_483_647),
      do: raise(ArgumentError, ":n_keep must be nil or a non-negative integer, got: #{inspect(n_keep)}")

    %{
      max_tokens: max,
      stop: stop,
      logprobs: LlamaCppEx.Logprob.option!(opts[:logprobs]),
      context_shift: Options.bool!(opts, :context_shift),
      n_keep: n_keep || -1,
      special: special!(opts[:special])
    }
  end

  defp special!(s) when is_nil(s) or is_boolean(s), do: s
  defp special!(other), do: raise(ArgumentError, ":special must be a boolean, got: #{inspect(other)}")

  @doc false
  # A chat whose format writes its tool-call or reasoning markers as special
  # tokens needs them in the text (unless the caller said otherwise).
  def chat_special(%{special: nil} = gen, %{special: true}), do: %{gen | special: true}
  def chat_special(gen, _reply) when is_map(gen), do: gen

  def chat_special(gen, reply) when is_list(gen) do
    if gen[:special] == nil and reply[:special] == true, do: Keyword.put(gen, :special, true), else: gen
  end

  @doc """
  The model's distribution over the whole vocabulary at the last position
  decoded: a list of `n_vocab` natural-log probabilities (the log-softmax of
  the raw logits, as `LlamaCppEx.Logprob` reports them), indexed by token id.
  `{:error, :no_logits}` before anything was decoded.
  """
  @spec logprobs(t()) :: {:ok, [LlamaCppEx.Logprob.logprob()]} | {:error, reason()}
  def logprobs(%__MODULE__{ref: ref}), do: NIF.context_logprobs(ref)

  @doc """
  The pooled embedding of `tokens` (a list of `n_embd` floats).

  The context must have been created with `embeddings: true`. With a context
  pooling of `:mean`, `:cls` or `:last` (or a model whose default pooling is
  one of them), `tokens` must fit in one micro-batch (`n_ubatch`). With
  `pooling: :none`, pass the pooling here (`pooling: :mean`, `:cls` or
  `:last`): the tokens are then decoded in `n_ubatch` steps and pooled
  natively, so they only need to fit in the context. That needs a context
  whose `:stepwise_embeddings` is `true` (a KV cache and causal attention);
  otherwise, as for BERT-like models, one micro-batch must hold them. The context's memory is cleared
  before and after. The call stops when the calling process dies.
  `LlamaCppEx.embed/3` does all of this for you.
  """
  @spec embed(t(), [non_neg_integer()], keyword()) :: {:ok, [float()]} | {:error, reason()}
  def embed(%__MODULE__{ref: ref}, tokens, opts \\ []) when is_list(tokens) do
    opts = Keyword.validate!(opts, pooling: nil)

    unless opts[:pooling] in [nil, :mean, :cls, :last],
      do: raise(ArgumentError, ":pooling must be :mean, :cls or :last, got: #{inspect(opts[:pooling])}")

    NIF.context_embed(ref, tokens, opts[:pooling])
  end

  @doc """
  The whole KV cache as a binary, to resume with `load_state/2`. See
  `LlamaCppEx.State` for what a state holds and how loads are checked.
  """
  @spec save_state(t()) :: {:ok, binary()} | {:error, reason()}
  defdelegate save_state(ctx), to: LlamaCppEx.State, as: :save

  @doc "Replaces the KV cache with a state from `save_state/1`. See `LlamaCppEx.State.load/2`."
  @spec load_state(t(), binary()) :: :ok | {:error, reason()}
  defdelegate load_state(ctx, state), to: LlamaCppEx.State, as: :load

  @doc "One sequence of the KV cache as a binary. See `LlamaCppEx.State.save_sequence/2`."
  @spec save_sequence(t(), non_neg_integer()) :: {:ok, binary()} | {:error, reason()}
  defdelegate save_sequence(ctx, seq_id), to: LlamaCppEx.State

  @doc "Replaces one sequence with a saved one. See `LlamaCppEx.State.load_sequence/3`."
  @spec load_sequence(t(), non_neg_integer(), binary()) :: :ok | {:error, reason()}
  defdelegate load_sequence(ctx, seq_id, state), to: LlamaCppEx.State

  @doc "`save_state/1` (or a sequence, `sequence: id`) to a file. See `LlamaCppEx.State.save_file/3`."
  @spec save_state_file(t(), Path.t(), keyword()) :: :ok | {:error, reason()}
  defdelegate save_state_file(ctx, path, opts \\ []), to: LlamaCppEx.State, as: :save_file

  @doc "Loads a file from `save_state_file/3`. See `LlamaCppEx.State.load_file/3`."
  @spec load_state_file(t(), Path.t(), keyword()) :: :ok | {:error, reason()}
  defdelegate load_state_file(ctx, path, opts \\ []), to: LlamaCppEx.State, as: :load_file

  @doc "Removes everything from the context's memory (KV cache)."
  @spec clear(t()) :: :ok | {:error, :closed}
  def clear(%__MODULE__{ref: ref}), do: NIF.context_clear(ref)

  @doc "The context size in tokens."
  @spec n_ctx(t()) :: pos_integer()
  def n_ctx(%__MODULE__{n_ctx: n}), do: n

  @doc "The position the next decoded token will take (tokens held in sequence 0)."
  @spec position(t()) :: {:ok, non_neg_integer()} | {:error, :closed}
  def position(%__MODULE__{ref: ref}), do: NIF.context_position(ref)

  @doc """
  Frees the context now, aborting any decode running on it. Idempotent; later
  calls on the context return `{:error, :closed}`.
  """
  @spec free(t()) :: :ok
  def free(%__MODULE__{ref: ref}), do: NIF.context_free(ref)

  defp max_memory!(nil), do: nil
  defp max_memory!(n) when is_integer(n) and n > 0 and n <= 0x7FFF_FFFF_FFFF_FFFF, do: n

  defp max_memory!(other),
    do: raise(ArgumentError, ":max_memory must be a positive integer (bytes) or nil, got: #{inspect(other)}")

  defp flash!(:auto), do: -1
  defp flash!(true), do: 1
  defp flash!(false), do: 0
  defp flash!(other), do: raise(ArgumentError, ":flash_attn must be :auto, true or false, got: #{inspect(other)}")

  defp cache_type!(opts, key) do
    v = opts[key]

    if v in @cache_types,
      do: v,
      else: raise(ArgumentError, "#{inspect(key)} must be one of #{inspect(@cache_types)}, got: #{inspect(v)}")
  end

  # More compute threads than CPUs only makes every token slower.
  defp threads!(opts, key) do
    cpus = :erlang.system_info(:logical_processors_available)
    cpus = if is_integer(cpus), do: cpus, else: :erlang.system_info(:logical_processors)
    n = pos!(opts, key)

    if is_integer(cpus) and n > cpus,
      do: raise(ArgumentError, "#{inspect(key)} must be at most the #{cpus} available CPUs, got: #{n}")

    n
  end

  defimpl Inspect do
    def inspect(c, _opts),
      do: "#LlamaCppEx.Context<n_ctx: #{c.n_ctx}, n_batch: #{c.n_batch}, n_threads: #{c.n_threads}>"
  end
end
