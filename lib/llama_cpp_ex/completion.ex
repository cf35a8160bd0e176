defmodule LlamaCppEx.Completion do
  @moduledoc """
  The result of a generation: the text, the generated token ids, why it ended,
  token counts and timings.

    * `:finish_reason` - `:eog` (the model ended its turn), `:max_tokens`,
      `:stop` (a stop string was produced; it is not part of `:text`),
      `:context_full` (the context has no room for another token) or
      `:cancelled` (a stream consumer stopped early, the caller died, or the
      context or sampler was freed).
    * `:text` - always valid UTF-8: bytes of the model's tokens that do not
      form a character are replaced by U+FFFD (`:tokens` keeps the exact ids).
    * `:prompt_ms` / `:generation_ms` - wall time of prompt processing and of
      the token loop; `prompt_tokens_per_second/1` and
      `tokens_per_second/1` derive rates from them.
    * `:sample_ms` - the part of `:generation_ms` spent outside `llama_decode`:
      sampling, turning tokens into text, stop strings and, for streams,
      sending chunks and waiting for the consumer to ask for more.
    * `:discarded_tokens` - positions dropped by context shifts
      (`context_shift: true`); `0` otherwise.
    * `:reply` - chats only (`chat_complete/3`): the reply read as a
      `LlamaCppEx.ChatReply` (content, reasoning, tool calls) in the
      template's `LlamaCppEx.ChatFormat`; `nil` for plain completions.
    * `:logprobs` - with the `:logprobs` option, a `LlamaCppEx.Logprob` for
      each generated token (`nil` otherwise).
    * `:cached_tokens`, `:queue_ms`, `:ttft_ms` - set by `LlamaCppEx.Server`
      (`nil` elsewhere): prompt tokens taken from the prefix cache, time spent
      waiting for a slot, and time from submission to the first token (queue
      wait included). There `:prompt_ms` runs from admission to the first
      token and `:sample_ms` is this request's own sampling and text work.
  """

  defstruct text: "",
            tokens: [],
            finish_reason: :max_tokens,
            prompt_tokens: 0,
            generated_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            sample_ms: 0.0,
            logprobs: nil,
            reply: nil,
            discarded_tokens: 0,
            cached_tokens: nil,
            queue_ms: nil,
            ttft_ms: nil

  @type finish_reason :: :eog | :max_tokens | :stop | :context_full | :cancelled
  @type t :: %__MODULE__{
          text: String.t(),
          tokens: [non_neg_integer()],
          finish_reason: finish_reason(),
          prompt_tokens: non_neg_integer(),
          generated_tokens: non_neg_integer(),
          prompt_ms: float(),
          generation_ms: float(),
          sample_ms: float(),
          logprobs: [LlamaCppEx.Logprob.t()] | nil,
          reply: LlamaCppEx.ChatReply.t() | nil,
          discarded_tokens: non_neg_integer(),
          cached_tokens: non_neg_integer() | nil,
          queue_ms: float() | nil,
          ttft_ms: float() | nil
        }

  @doc false
  def from_native(map) do
    map = Map.update(map, :logprobs, nil, &LlamaCppEx.Logprob.from_native/1)
    struct!(__MODULE__, map)
  end

  @doc false
  # A chat's completion with its reply read in the template's format.
  def with_reply(%__MODULE__{text: text} = c, %{format: format, thinking_open: open?, calls: calls?}),
    do: %{c | reply: LlamaCppEx.ChatFormat.parse(text, format, thinking_open: open?, calls: calls?)}

  @doc "Prompt processing speed in tokens per second."
  @spec prompt_tokens_per_second(t()) :: float()
  def prompt_tokens_per_second(%__MODULE__{prompt_tokens: n, prompt_ms: ms}), do: rate(n, ms)

  @doc "Generation speed in tokens per second."
  @spec tokens_per_second(t()) :: float()
  def tokens_per_second(%__MODULE__{generated_tokens: n, generation_ms: ms}), do: rate(n, ms)

  defp rate(_n, ms) when ms <= 0, do: 0.0
  defp rate(n, ms), do: n * 1000.0 / ms
end
