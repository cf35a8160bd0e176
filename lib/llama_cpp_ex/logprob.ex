defmodule LlamaCppEx.Logprob do
  @moduledoc """
  The log-probability of one generated token, with the most likely
  alternatives at its position.

  Asked for with `logprobs: n` (`0..#{20}`) on `LlamaCppEx.complete/3`,
  `LlamaCppEx.Context.generate/4`, streams and `LlamaCppEx.Server`. The
  probabilities are the model's distribution at that position **before
  sampling**: the softmax of the raw logits, with no temperature, penalties,
  logit bias or grammar applied (so a token forced by a grammar may have a
  low log-probability, and the sampled token need not be in `:top`). With
  greedy sampling and no grammar, the chosen token is the first of `:top`.

    * `:token` - the token id.
    * `:text` - its text, with special tokens rendered (`"</s>"`) and bytes
      that do not form a character on their own replaced by U+FFFD.
    * `:bytes` - its exact bytes (a multi-byte character may span tokens).
    * `:logprob` - natural log of its probability, or `:neg_infinity` for a
      token the model rules out (a logit of minus infinity).
    * `:top` - the `n` most likely tokens, most likely first (ties: the lower
      id first), as `LlamaCppEx.Logprob` structs whose `:top` is `[]`.

  `LlamaCppEx.Context.logprobs/1` returns the whole distribution at the last
  decoded position.
  """

  defstruct [:token, :text, :bytes, :logprob, top: []]

  @max 20

  @type logprob :: float() | :neg_infinity
  @type t :: %__MODULE__{
          token: non_neg_integer(),
          text: String.t(),
          bytes: binary(),
          logprob: logprob(),
          top: [t()]
        }

  @doc "The largest `:logprobs` value accepted."
  @spec max() :: pos_integer()
  def max, do: @max

  @doc false
  def from_native(nil), do: nil
  def from_native(list) when is_list(list), do: Enum.map(list, &one/1)

  defp one(%{top: top} = map), do: %__MODULE__{struct!(__MODULE__, map) | top: Enum.map(top, &one/1)}
  defp one(map), do: struct!(__MODULE__, map)

  @doc false
  # The :logprobs option: nil (off) or 0..20 alternatives; the native side takes -1 for off.
  def option!(nil), do: -1
  def option!(n) when is_integer(n) and n >= 0 and n <= @max, do: n

  def option!(other),
    do: raise(ArgumentError, ":logprobs must be nil or an integer in 0..#{@max}, got: #{inspect(other)}")
end
