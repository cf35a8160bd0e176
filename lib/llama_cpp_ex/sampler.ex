defmodule LlamaCppEx.Sampler do
  @moduledoc """
  A llama.cpp sampler chain: how the next token is picked from the logits.

  Options mirror llama.cpp's own sampling parameters (`common_params_sampling`)
  and build the same chain: optional logit bias and grammar first, then the
  samplers named in `:samplers` (in that order, skipping those whose settings
  make them no-ops), then the final choice: greedy when `temp` is `0`,
  mirostat when asked for, otherwise a seeded random draw.

      {:ok, greedy} = LlamaCppEx.Sampler.create(model, temp: 0.0)
      {:ok, creative} = LlamaCppEx.Sampler.create(model, temp: 0.9, top_p: 0.9, seed: 42)
      {:ok, yes_no} = LlamaCppEx.Sampler.create(model, grammar: ~S(root ::= "yes" | "no"))

  ## Options

    * `:seed` - RNG seed, `0..0xFFFFFFFF`, or `:random` (default).
    * `:temp` - temperature (default `0.8`); `0` means greedy.
    * `:dynatemp_range`, `:dynatemp_exponent` - dynamic temperature
      (defaults `0.0`, `1.0`).
    * `:top_k` (default `40`; `0` disables), `:top_p` (`0.95`), `:min_p` (`0.05`),
      `:typical_p` (`1.0`), `:top_n_sigma` (`-1.0`, disabled),
      `:min_keep` (`0`).
    * `:xtc_probability` (`0.0`), `:xtc_threshold` (`0.1`).
    * `:repeat_penalty` (`1.0`), `:frequency_penalty` (`0.0`),
      `:presence_penalty` (`0.0`), `:penalty_last_n` (`64`; `-1` = context size,
      `0` disables; at most 1,048,576).
    * `:dry_multiplier` (`0.0`, disabled), `:dry_base` (`1.75`),
      `:dry_allowed_length` (`2`), `:dry_penalty_last_n` (`-1` = context size),
      `:dry_sequence_breakers` (`["\\n", ":", "\\"", "*"]`, at most 64).
    * `:mirostat` - `0` (off), `1` or `2`; `:mirostat_tau` (`5.0`),
      `:mirostat_eta` (`0.1`).
    * `:logit_bias` - map or list of `{token, bias}`; use `:neg_infinity` as
      bias to ban a token. Biases are clamped to ±1e6 (any number is accepted).
    * Every other number is passed to llama.cpp as a 32-bit float and must be
      within ±3.4e38.
    * `:grammar` - a GBNF grammar; output is constrained to it. An invalid
      grammar returns `{:error, {:invalid_grammar, message}}`, and so does an
      empty one (`""`, blanks or only comments: it is not "no grammar"; leave
      the option out for that), one with groups nested more than 128 deep, or
      more than 16,384 rules (counting those llama.cpp generates: one per
      group, one per optional repetition step), or more than 2^20 elements once
      repetitions are expanded. `:grammar_root` names the start rule (default
      `"root"`).
    * `:json_schema` - a JSON schema (a decoded document: maps with string
      keys, or jiffy's `{[{key, value}]}` form to keep its key order); output
      is constrained to JSON valid under it, through the grammar of
      `LlamaCppEx.Grammar.from_json_schema/2`. A schema it cannot convert
      returns `{:error, {:invalid_json_schema | :unsupported_json_schema,
      message}}`.
    * `:response_format` - `:json` constrains output to any JSON value
      (`LlamaCppEx.Grammar.json/0`); `:text` or `nil` (default) does not.
    * `:grammar`, `:json_schema` and `response_format: :json` each give the
      grammar: at most one of them may be given (ArgumentError otherwise).
    * `:samplers` - order of the middle stages, any of `:penalties`, `:dry`,
      `:top_n_sigma`, `:top_k`, `:typical_p`, `:top_p`, `:min_p`, `:xtc`,
      `:temperature` (default: that order, as llama.cpp).
  """

  import LlamaCppEx.Options
  alias LlamaCppEx.{Context, Grammar, Model, NIF}

  @enforce_keys [:ref, :model]
  defstruct [:ref, :model, grammar?: false, options: []]

  @type t :: %__MODULE__{ref: reference(), model: Model.t(), grammar?: boolean(), options: keyword()}

  @default_order [:penalties, :dry, :top_n_sigma, :top_k, :typical_p, :top_p, :min_p, :xtc, :temperature]

  @defaults [
    seed: :random,
    temp: 0.8,
    dynatemp_range: 0.0,
    dynatemp_exponent: 1.0,
    top_k: 40,
    top_p: 0.95,
    min_p: 0.05,
    typical_p: 1.0,
    top_n_sigma: -1.0,
    min_keep: 0,
    xtc_probability: 0.0,
    xtc_threshold: 0.1,
    repeat_penalty: 1.0,
    frequency_penalty: 0.0,
    presence_penalty: 0.0,
    penalty_last_n: 64,
    dry_multiplier: 0.0,
    dry_base: 1.75,
    dry_allowed_length: 2,
    dry_penalty_last_n: -1,
    dry_sequence_breakers: ["\n", ":", "\"", "*"],
    mirostat: 0,
    mirostat_tau: 5.0,
    mirostat_eta: 0.1,
    logit_bias: [],
    grammar: nil,
    grammar_root: "root",
    json_schema: nil,
    response_format: nil,
    samplers: @default_order
  ]

  @doc false
  def option_keys, do: Keyword.keys(@defaults)

  @doc """
  Builds a sampler chain for `model`. See the module doc for the options.
  """
  @spec create(Model.t(), keyword()) :: {:ok, t()} | {:error, term()}
  def create(%Model{} = model, opts \\ []) do
    opts = Keyword.validate!(opts, @defaults)

    with {:ok, opts} <- json_grammar(opts),
         stages = stages(model, opts),
         grammar? = opts[:grammar] != nil,
         {:ok, ref} <- NIF.sampler_create(model.ref, stages) do
      {:ok, %__MODULE__{ref: ref, model: model, grammar?: grammar?, options: opts}}
    end
  end

  @doc """
  Samples a token from the logits of the last token decoded in `ctx`, and
  accepts it into the chain's state (penalties, grammar, mirostat).

  Returns `{:error, :no_logits}` when nothing has been decoded yet.
  """
  @spec sample(t(), Context.t()) :: {:ok, non_neg_integer()} | {:error, term()}
  def sample(%__MODULE__{ref: ref}, %Context{ref: ctx}), do: NIF.sampler_sample(ref, ctx)

  @doc """
  Feeds a token into the chain's state without sampling (e.g. prompt tokens
  for the repetition penalties, or a token chosen elsewhere).
  """
  @spec accept(t(), non_neg_integer()) :: :ok | {:error, term()}
  def accept(%__MODULE__{ref: ref}, token) when is_integer(token), do: NIF.sampler_accept(ref, token)

  @doc "Resets the chain's state (history, grammar position, RNG is kept)."
  @spec reset(t()) :: :ok | {:error, :closed}
  def reset(%__MODULE__{ref: ref}), do: NIF.sampler_reset(ref)

  @doc "Frees the sampler now. Idempotent; later use returns `{:error, :closed}`."
  @spec free(t()) :: :ok
  def free(%__MODULE__{ref: ref}), do: NIF.sampler_free(ref)

  # ---- building the chain -------------------------------------------------------

  # json_schema: and response_format: :json become the grammar
  defp json_grammar(opts) do
    format =
      case opts[:response_format] do
        f when f in [nil, :text] -> nil
        :json -> :json
        f -> raise ArgumentError, ":response_format must be :json, :text or nil, got: #{inspect(f)}"
      end

    given =
      for {k, v} <- [grammar: opts[:grammar], json_schema: opts[:json_schema], response_format: format], v != nil, do: k

    if length(given) > 1,
      do:
        raise(
          ArgumentError,
          "give at most one of :grammar, :json_schema and response_format: :json, got: #{inspect(given)}"
        )

    case given do
      [:json_schema] ->
        with {:ok, gbnf} <- Grammar.from_json_schema(json_schema!(opts[:json_schema])) do
          {:ok, Keyword.put(opts, :grammar, gbnf)}
        end

      [:response_format] ->
        {:ok, Keyword.put(opts, :grammar, Grammar.json())}

      _ ->
        {:ok, opts}
    end
  end

  defp json_schema!(%{} = schema) when not is_struct(schema), do: schema
  defp json_schema!({pairs} = schema) when is_list(pairs), do: schema

  defp json_schema!(other),
    do: raise(ArgumentError, ":json_schema must be a map (a decoded JSON schema), got: #{inspect(other)}")

  defp stages(model, opts) do
    seed = seed!(opts[:seed])
    temp = f32!(opts, :temp)
    min_keep = int!(opts, :min_keep, 0)

    head =
      logit_bias_stage(model, opts[:logit_bias]) ++
        grammar_stage(opts[:grammar], opts[:grammar_root])

    order = order!(opts[:samplers])
    mirostat = opts[:mirostat]

    tail =
      cond do
        mirostat == 1 ->
          [temp_stage(temp, opts), {:mirostat, seed, f32!(opts, :mirostat_tau), f32!(opts, :mirostat_eta), 100}]

        mirostat == 2 ->
          [temp_stage(temp, opts), {:mirostat_v2, seed, f32!(opts, :mirostat_tau), f32!(opts, :mirostat_eta)}]

        mirostat != 0 ->
          raise ArgumentError, ":mirostat must be 0, 1 or 2, got: #{inspect(mirostat)}"

        temp <= 0 ->
          # Greedy: only stages that can change which logit is largest matter.
          Enum.flat_map(order, &stage(&1, model, opts, seed, min_keep, :greedy)) ++ [{:greedy}]

        true ->
          Enum.flat_map(order, &stage(&1, model, opts, seed, min_keep, :dist)) ++ [{:dist, seed}]
      end

    head ++ tail
  end

  defp stage(:penalties, model, opts, _seed, _mk, _mode) do
    last_n = window!(opts, :penalty_last_n, model)
    repeat = f32!(opts, :repeat_penalty)
    freq = f32!(opts, :frequency_penalty)
    present = f32!(opts, :presence_penalty)
    if repeat <= 0, do: raise(ArgumentError, ":repeat_penalty must be > 0, got: #{repeat}")

    if last_n == 0 or (repeat == 1.0 and freq == 0.0 and present == 0.0),
      do: [],
      else: [{:penalties, last_n, repeat, freq, present}]
  end

  defp stage(:dry, model, opts, _seed, _mk, _mode) do
    mult = f32!(opts, :dry_multiplier)
    # llama.cpp treats a negative window as "off"; -1 means the context size, as in its CLI
    last_n = window!(opts, :dry_penalty_last_n, model)
    breakers = opts[:dry_sequence_breakers]

    unless is_list(breakers) and Enum.all?(breakers, &is_binary/1),
      do: raise(ArgumentError, ":dry_sequence_breakers must be a list of strings")

    if length(breakers) > 64,
      do: raise(ArgumentError, ":dry_sequence_breakers: at most 64 breakers are allowed, got: #{length(breakers)}")

    if mult <= 0,
      do: [],
      else: [
        {:dry, mult, f32!(opts, :dry_base), int!(opts, :dry_allowed_length, 0), last_n, breakers}
      ]
  end

  defp stage(_, _model, _opts, _seed, _mk, :greedy), do: []

  defp stage(:top_n_sigma, _model, opts, _seed, _mk, _),
    do: if((n = f32!(opts, :top_n_sigma)) > 0, do: [{:top_n_sigma, n}], else: [])

  defp stage(:top_k, _model, opts, _seed, _mk, _),
    do: if((k = int!(opts, :top_k, 0)) > 0, do: [{:top_k, k}], else: [])

  defp stage(:typical_p, _model, opts, _seed, mk, _),
    do: if((p = prob!(opts, :typical_p)) < 1.0, do: [{:typical, p, mk}], else: [])

  defp stage(:top_p, _model, opts, _seed, mk, _),
    do: if((p = prob!(opts, :top_p)) < 1.0, do: [{:top_p, p, mk}], else: [])

  defp stage(:min_p, _model, opts, _seed, mk, _),
    do: if((p = prob!(opts, :min_p)) > 0.0, do: [{:min_p, p, mk}], else: [])

  defp stage(:xtc, _model, opts, seed, mk, _) do
    p = prob!(opts, :xtc_probability)
    if p > 0.0, do: [{:xtc, p, prob!(opts, :xtc_threshold), mk, seed}], else: []
  end

  defp stage(:temperature, _model, opts, _seed, _mk, _), do: [temp_stage(f32!(opts, :temp), opts)]

  defp temp_stage(temp, opts) do
    range = f32!(opts, :dynatemp_range)
    if range > 0, do: {:temp_ext, temp, range, f32!(opts, :dynatemp_exponent)}, else: {:temp, temp}
  end

  @max_bias 1.0e6
  defp logit_bias_stage(_model, empty) when empty == [] or empty == %{}, do: []

  defp logit_bias_stage(model, bias) when is_map(bias) or is_list(bias) do
    pairs =
      Enum.map(bias, fn
        # -1e6 already gives probability 0; larger magnitudes break llama.cpp's bucket sort
        {tok, :neg_infinity} when is_integer(tok) -> {tok, -@max_bias}
        {tok, b} when is_integer(tok) and is_number(b) -> {tok, b |> max(-@max_bias) |> min(@max_bias) |> Kernel./(1)}
        other -> raise ArgumentError, "logit_bias entries must be {token, number}, got: #{inspect(other)}"
      end)

    Enum.each(pairs, fn {tok, _} ->
      unless tok >= 0 and tok < model.n_vocab,
        do: raise(ArgumentError, "logit_bias token #{tok} is outside the vocabulary (0..#{model.n_vocab - 1})")
    end)

    [{:logit_bias, pairs}]
  end

  defp logit_bias_stage(_model, other),
    do: raise(ArgumentError, ":logit_bias must be a map or list, got: #{inspect(other)}")

  defp grammar_stage(nil, _root), do: []

  defp grammar_stage(grammar, root) when is_binary(grammar) and is_binary(root) do
    if String.contains?(grammar, <<0>>) or String.contains?(root, <<0>>),
      do: raise(ArgumentError, "grammar must not contain NUL bytes")

    [{:grammar, grammar, root}]
  end

  defp grammar_stage(g, r),
    do: raise(ArgumentError, ":grammar and :grammar_root must be strings, got: #{inspect(g)}, #{inspect(r)}")

  defp order!(order) when is_list(order) do
    Enum.each(order, fn s ->
      unless s in @default_order,
        do: raise(ArgumentError, "unknown sampler #{inspect(s)} in :samplers; known: #{inspect(@default_order)}")
    end)

    Enum.uniq(order)
  end

  defp order!(other), do: raise(ArgumentError, ":samplers must be a list, got: #{inspect(other)}")

  # -1 means the model's context length; windows are capped at 1M tokens
  # (llama.cpp allocates them up front).
  @max_window 1_048_576
  defp window!(opts, key, model) do
    case int!(opts, key, -1) do
      -1 -> min(max(model.n_ctx_train, 0), @max_window)
      n when n <= @max_window -> n
      n -> raise ArgumentError, "#{inspect(key)} must be at most #{@max_window}, got: #{n}"
    end
  end

  defp seed!(:random), do: :rand.uniform(0xFFFFFFFE)
  defp seed!(s) when is_integer(s) and s >= 0 and s <= 0xFFFFFFFF, do: s
  defp seed!(s), do: raise(ArgumentError, ":seed must be :random or an integer in 0..0xFFFFFFFF, got: #{inspect(s)}")

  # Numbers reach llama.cpp as 32-bit floats.
  @float32_max 3.4028234663852886e38
  defp f32!(opts, key) do
    v = num!(opts, key)

    if v < -@float32_max or v > @float32_max,
      do: raise(ArgumentError, "#{inspect(key)} is outside the 32-bit float range (|x| <= 3.4e38), got: #{v}")

    v
  end

  defp prob!(opts, key) do
    v = num!(opts, key)
    if v < 0.0 or v > 1.0, do: raise(ArgumentError, "#{inspect(key)} must be within 0.0..1.0, got: #{v}")
    v
  end

  defimpl Inspect do
    def inspect(s, _opts), do: "#LlamaCppEx.Sampler<temp: #{s.options[:temp]}, grammar: #{s.grammar?}>"
  end
end
