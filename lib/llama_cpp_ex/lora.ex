defmodule LlamaCppEx.Lora do
  @moduledoc """
  A LoRA adapter (GGUF, `general.type = "adapter"`, `adapter.type = "lora"`)
  loaded for one model.

  An adapter belongs to the model it was loaded for and keeps that model's
  weights alive. It changes nothing by itself: contexts apply it, each with
  its own scale (`W' = W + scale * alpha / rank * B A`):

      {:ok, model} = LlamaCppEx.Model.load("stories260K.gguf")
      {:ok, lora} = LlamaCppEx.Lora.load(model, "my-adapter.gguf")
      {:ok, ctx} = LlamaCppEx.Context.create(model, lora: [{lora, 0.5}])
      :ok = LlamaCppEx.Context.set_lora(ctx, [{lora, 1.0}])
      LlamaCppEx.generate(model, "Once upon a time", lora: [{lora, 1.0}])

  A scale of `0` is the same as leaving the adapter out. The
  `LlamaCppEx.Server` takes `lora:` per request.

  The adapter is freed when it is garbage collected and no context uses it
  any more (a context keeps the adapters it applies).
  """

  alias LlamaCppEx.{Model, NIF}

  @max_adapters 8

  @enforce_keys [:ref, :model, :path]
  defstruct [:ref, :model, :path, :alpha, n_invocation_tokens: 0]

  @type t :: %__MODULE__{
          ref: reference(),
          model: Model.t(),
          path: String.t(),
          alpha: float() | nil,
          n_invocation_tokens: non_neg_integer()
        }

  @typedoc """
  Adapters with their scales, as contexts, `LlamaCppEx.generate/3` and the
  server take them: `[{adapter, scale}]`, each adapter at most once, at most
  #{@max_adapters} of them, scales finite numbers.
  """
  @type adapters :: [{t(), number()}]

  @doc """
  Loads the adapter at `path` for `model`.

  Returns `{:error, reason}` with the reasons of `LlamaCppEx.Model.load/2` for
  the file (`{:file_not_found, path}`, `{:not_gguf, path}`, ...), `:closed` for
  a freed model, and `{:load_failed, message}` with llama.cpp's explanation
  when the file is not an adapter for this model: corrupt or truncated, another
  architecture, tensors the model does not have or of other shapes. The adapter
  is tried on one token before it is returned.

      {:ok, lora} = LlamaCppEx.Lora.load(model, "my-adapter.gguf")
  """
  @spec load(Model.t(), Path.t()) :: {:ok, t()} | {:error, term()}
  def load(%Model{} = model, path) do
    path = to_string(path)
    if model.vocab_only, do: raise(ArgumentError, "cannot load an adapter for a vocab_only model")

    with :ok <- LlamaCppEx.Model.check_file(path),
         {:ok, ref} <- NIF.lora_load(model.ref, path) do
      info = NIF.lora_info(ref)

      {:ok,
       %__MODULE__{ref: ref, model: model, path: path, alpha: info.alpha, n_invocation_tokens: info.n_invocation_tokens}}
    end
  end

  @doc false
  # Checks a `lora:` option for `model` and turns it into what the NIF takes,
  # [{ref, float}]. Raises ArgumentError for a wrong shape or scale, an adapter
  # given twice or an adapter of another model.
  @spec native!(term(), Model.t()) :: [{reference(), float()}]
  def native!(adapters, %Model{ref: model_ref}) when is_list(adapters) do
    if length(adapters) > @max_adapters,
      do: raise(ArgumentError, ":lora takes at most #{@max_adapters} adapters, got #{length(adapters)}")

    native =
      Enum.map(adapters, fn
        {%__MODULE__{model: %Model{ref: ^model_ref}, ref: ref}, scale} when is_number(scale) ->
          {ref, scale!(scale)}

        {%__MODULE__{}, scale} when is_number(scale) ->
          raise ArgumentError, ":lora holds an adapter loaded for another model"

        {%__MODULE__{}, scale} ->
          raise ArgumentError, "a :lora scale must be a number, got: #{inspect(scale)}"

        other ->
          raise ArgumentError, ":lora must be a list of {%LlamaCppEx.Lora{}, scale}, got: #{inspect(other)}"
      end)

    refs = Enum.map(native, &elem(&1, 0))
    if length(Enum.uniq(refs)) != length(refs), do: raise(ArgumentError, ":lora holds the same adapter twice")
    native
  end

  def native!(other, _model),
    do: raise(ArgumentError, ":lora must be a list of {%LlamaCppEx.Lora{}, scale}, got: #{inspect(other)}")

  # the 32-bit float range, finite
  @float32_max 3.4028234663852886e38
  defp scale!(s) when s >= -@float32_max and s <= @float32_max, do: s / 1
  defp scale!(s), do: raise(ArgumentError, "a :lora scale must fit a 32-bit float, got: #{inspect(s)}")
end
