defmodule LlamaCppEx.Model do
  @moduledoc """
  A GGUF model loaded into memory.

  The struct carries the native reference plus facts read once at load time, so
  `inspect/1` shows which model it is. Among them, three facts about the
  vocabulary bound the work of tokenizer calls (`LlamaCppEx.Tokenizer` picks a
  normal or a dirty scheduler from them): `max_piece_bytes` (the longest
  token text), `n_user_defined_tokens` (tokens matched literally in every
  text before tokenizing) and `n_special_tokens` (those plus the control and
  unknown tokens matched with `parse_special: true`). The weights are freed when the model is
  garbage collected or when `free/1` is called; contexts and samplers made from
  the model keep the weights alive until they are gone too.

      {:ok, model} = LlamaCppEx.Model.load("stories260K.gguf")
      model.n_vocab     #=> 512
      LlamaCppEx.Model.architecture(model) #=> "llama"
  """

  import LlamaCppEx.Options
  alias LlamaCppEx.NIF

  @enforce_keys [:ref, :path]
  defstruct [
    :ref,
    :path,
    :desc,
    :architecture,
    :size,
    :n_params,
    :n_ctx_train,
    :n_embd,
    :n_layer,
    :n_head,
    :n_head_kv,
    :n_vocab,
    :chat_template,
    vocab_only: false,
    max_piece_bytes: 0,
    n_user_defined_tokens: 0,
    n_special_tokens: 0
  ]

  @type t :: %__MODULE__{
          ref: reference(),
          path: String.t(),
          desc: String.t(),
          architecture: String.t() | nil,
          size: non_neg_integer(),
          n_params: non_neg_integer(),
          n_ctx_train: integer(),
          n_embd: integer(),
          n_layer: integer(),
          n_head: integer(),
          n_head_kv: integer(),
          n_vocab: pos_integer(),
          chat_template: String.t() | nil,
          vocab_only: boolean(),
          max_piece_bytes: non_neg_integer(),
          n_user_defined_tokens: non_neg_integer(),
          n_special_tokens: non_neg_integer()
        }

  @typedoc """
  Why a load failed:

    * `{:file_not_found, path}` / `{:file_error, posix, path}`: the file cannot be read;
    * `{:not_regular_file, type, path}`: the path is a FIFO, socket or device
      (`type` as in `File.Stat`: `:device` or `:other`), refused without opening it;
    * `{:not_gguf, path}`: the file does not start with the GGUF magic;
    * `:load_cancelled`: the progress callback asked to stop;
    * `{:load_failed, message}`: llama.cpp rejected the file (corrupt, truncated,
      unsupported architecture); `message` is llama.cpp's own explanation. Also
      a vocabulary with a token whose text is longer than 8192 bytes (real
      ones stay at or below 512): sampling with a grammar recurses once per
      byte of a candidate token.
  """
  @type load_error ::
          {:file_not_found, String.t()}
          | {:file_error, File.posix(), String.t()}
          | {:not_regular_file, :device | :other, String.t()}
          | {:not_gguf, String.t()}
          | :load_cancelled
          | {:load_failed, String.t()}

  @load_opts [n_gpu_layers: 0, use_mmap: true, use_mlock: false, vocab_only: false, warmup: true, progress: nil]

  @doc """
  Loads a GGUF model.

  ## Options

    * `:n_gpu_layers` - layers to offload to the GPU (default `0`; `-1` means all).
      Ignored by CPU builds.
    * `:use_mmap` - map the file instead of reading it (default `true`).
    * `:use_mlock` - lock the weights in RAM (default `false`).
    * `:vocab_only` - load only the vocabulary, for tokenizing (default `false`).
    * `:warmup` - decode one token on one thread before returning (default
      `true`), as llama.cpp's own tools do. Besides warming caches, this is a
      safety check: a file whose parameters make llama.cpp's kernels assert
      is rejected here with `{:error, {:load_failed, _}}`, where the assertion
      can be caught, instead of aborting the VM at its first real decode.
    * `:progress` - a 1-arity function called with the progress (a float from
      0.0 to 1.0) that can return `:cancel` (or `false`) to stop loading (the
      loader waits for each answer, so cancelling is exact; an exception in the
      function is logged and ignored), or a pid that receives
      `{:llama_load_progress, float}` messages.

  ## Examples

      {:ok, model} = LlamaCppEx.Model.load("model.gguf", use_mmap: true)

      LlamaCppEx.Model.load("model.gguf",
        progress: fn p -> IO.puts("loading: \#{round(p * 100)}%") end
      )
  """
  @spec load(Path.t(), keyword()) :: {:ok, t()} | {:error, load_error()}
  def load(path, opts \\ []) do
    opts = Keyword.validate!(opts, @load_opts)
    path = to_string(path)

    native = %{
      n_gpu_layers: int!(opts, :n_gpu_layers),
      use_mmap: bool!(opts, :use_mmap),
      use_mlock: bool!(opts, :use_mlock),
      vocab_only: bool!(opts, :vocab_only),
      warmup: bool!(opts, :warmup)
    }

    with :ok <- check_file(path) do
      do_load(path, native, opts[:progress])
    end
  end

  defp do_load(path, native, nil), do: finish_load(NIF.model_load(path, native, nil, nil, nil), path, native)

  defp do_load(path, native, pid) when is_pid(pid) do
    # notify only: the relay forwards reports and never holds the load up
    relay = spawn_relay(fn p -> send(pid, {:llama_load_progress, p}) end)
    result = NIF.model_load(path, native, nil, relay, nil)
    stop_relay(relay)
    finish_load(result, path, native)
  end

  defp do_load(path, native, fun) when is_function(fun, 1) do
    # Each report waits for the function's answer, so :cancel is exact. A
    # function that raises is logged and loading goes on; if the relay dies
    # (the caller died), a monitor cancels the load.
    relay = spawn_relay(fun)
    handle = NIF.load_handle(relay)
    result = NIF.model_load(path, native, handle, relay, handle)
    stop_relay(relay)
    finish_load(result, path, native)
  end

  defp do_load(_path, _native, other) do
    raise ArgumentError, ":progress must be a 1-arity function or a pid, got: #{inspect(other)}"
  end

  # Progress reports run on a relay process so a slow or failing callback
  # cannot disturb the loading (dirty IO) thread beyond its own report.
  defp spawn_relay(fun) do
    caller = self()

    spawn(fn ->
      ref = Process.monitor(caller)
      relay_loop(fun, ref)
    end)
  end

  defp relay_loop(fun, ref) do
    receive do
      {:load_progress, handle, progress} ->
        result =
          try do
            fun.(progress)
          catch
            kind, reason ->
              require Logger
              Logger.warning("LlamaCppEx.Model.load progress callback failed: " <> Exception.format(kind, reason))
              :ok
          end

        if handle, do: NIF.load_answer(handle, result not in [:cancel, false])
        relay_loop(fun, ref)

      {:stop, from} ->
        send(from, {:relay_stopped, self()})

      {:DOWN, ^ref, _, _, _} ->
        :ok
    end
  end

  defp stop_relay(relay) do
    mref = Process.monitor(relay)
    send(relay, {:stop, self()})

    receive do
      {:relay_stopped, ^relay} -> Process.demonitor(mref, [:flush])
      {:DOWN, ^mref, _, _, _} -> :ok
    end
  end

  defp finish_load({:ok, ref}, path, native) do
    {:ok, info} = NIF.model_info(ref)

    {:ok,
     struct!(
       __MODULE__,
       Map.merge(Map.drop(info, [:has_encoder, :has_decoder]), %{ref: ref, path: path, vocab_only: native.vocab_only})
     )}
  end

  defp finish_load({:error, _} = error, _path, _native), do: error

  @doc false
  # stat, never open: opening a FIFO for reading blocks until a writer comes
  # (and holds a dirty IO scheduler meanwhile). The native layer checks again
  # on the file it opens, without blocking, and reads the GGUF magic. Also
  # LlamaCppEx.Lora's (adapters are GGUF files too).
  def check_file(path) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :regular}} -> :ok
      {:ok, %File.Stat{type: :directory}} -> {:error, {:file_error, :eisdir, path}}
      {:ok, %File.Stat{type: type}} -> {:error, {:not_regular_file, type, path}}
      {:error, :enoent} -> {:error, {:file_not_found, path}}
      {:error, posix} -> {:error, {:file_error, posix, path}}
    end
  end

  @doc """
  Frees the model's weights now instead of at garbage collection.

  Idempotent. Afterwards, functions taking this model return `{:error, :closed}`.
  Contexts and samplers already made from it keep working: the weights are
  released when the last of them is freed.
  """
  @spec free(t()) :: :ok
  def free(%__MODULE__{ref: ref}), do: NIF.model_free(ref)

  @doc "A short description of the model, e.g. `\"llama ?B all F32\"`."
  @spec desc(t()) :: String.t()
  def desc(%__MODULE__{desc: desc}), do: desc

  @doc "Total size of the weights in bytes."
  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{size: size}), do: size

  @doc "Number of parameters."
  @spec n_params(t()) :: non_neg_integer()
  def n_params(%__MODULE__{n_params: n}), do: n

  @doc "Context length the model was trained with (from its metadata)."
  @spec n_ctx_train(t()) :: integer()
  def n_ctx_train(%__MODULE__{n_ctx_train: n}), do: n

  @doc "Embedding size."
  @spec n_embd(t()) :: integer()
  def n_embd(%__MODULE__{n_embd: n}), do: n

  @doc "Number of layers."
  @spec n_layer(t()) :: integer()
  def n_layer(%__MODULE__{n_layer: n}), do: n

  @doc "Number of attention heads."
  @spec n_head(t()) :: integer()
  def n_head(%__MODULE__{n_head: n}), do: n

  @doc "Vocabulary size."
  @spec n_vocab(t()) :: pos_integer()
  def n_vocab(%__MODULE__{n_vocab: n}), do: n

  @doc "The `general.architecture` of the model, e.g. `\"llama\"`."
  @spec architecture(t()) :: String.t() | nil
  def architecture(%__MODULE__{architecture: a}), do: a

  @doc """
  The model's chat template (`tokenizer.chat_template`), or `nil`.

  With a name, returns the named template stored in the model
  (`tokenizer.chat_template.<name>`), `nil` when there is none, or
  `{:error, :closed}` once the model is freed (the default template is read at
  load and stays available).
  """
  @spec chat_template(t(), String.t() | nil) :: String.t() | nil | {:error, :closed}
  def chat_template(model, name \\ nil)
  def chat_template(%__MODULE__{chat_template: t}, nil), do: t

  def chat_template(%__MODULE__{ref: ref}, name) when is_binary(name) do
    case NIF.model_chat_template(ref, name) do
      {:ok, t} -> t
      {:error, :closed} = error -> error
    end
  end

  @doc """
  All GGUF metadata key/values as a map of strings (arrays are summarised by
  llama.cpp as `[...]`-style strings).

      {:ok, meta} = LlamaCppEx.Model.metadata(model)
      meta["general.architecture"] #=> "llama"
  """
  @spec metadata(t()) :: {:ok, %{String.t() => String.t()}} | {:error, :closed}
  def metadata(%__MODULE__{ref: ref}), do: NIF.model_metadata(ref)

  defimpl Inspect do
    def inspect(m, _opts) do
      "#LlamaCppEx.Model<#{Path.basename(m.path)} #{m.architecture || "?"} #{m.desc}, " <>
        "n_vocab: #{m.n_vocab}, n_ctx_train: #{m.n_ctx_train}>"
    end
  end
end
