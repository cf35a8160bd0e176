defmodule LlamaCppEx.ChatFormat do
  @moduledoc """
  Parsing what a chat model writes: its reasoning, its reply and the tool
  calls in it, for the formats of the major model families.

  | format | models | a call looks like |
  |---|---|---|
  | `:hermes` | Hermes 2 Pro, Qwen 2.5 / 3, many others | `<tool_call>{"name": .., "arguments": {..}}</tool_call>` |
  | `:llama3` | Llama 3.1 / 3.2 / 3.3, Functionary v3.1 | `{"name": .., "parameters": {..}}`, `<|python_tag|>..`, `<function=name>{..}</function>` |
  | `:mistral` | Mistral Nemo, Small, Magistral, Devstral | `[TOOL_CALLS][{"name": .., "arguments": {..}}]`, `[TOOL_CALLS]name[ARGS]{..}` |
  | `:deepseek` | DeepSeek V3, R1, V3.1 | `<｜tool▁call▁begin｜>function<｜tool▁sep｜>name` + a JSON block |
  | `:functionary` | Functionary v3.2 | `>>>name\\n{..}` (`>>>all\\n` for text) |
  | `:command_r` | Command R7B, Command A, Command R+ | `<|START_ACTION|>[{"tool_name": .., "parameters": {..}}]<|END_ACTION|>` |
  | `:granite` | Granite 3.x | `<|tool_call|>[{"name": .., "arguments": {..}}]` |
  | `:content` | anything else | no calls: all text is content |

  Reasoning in `<think>...</think>` (or Command R7B's thinking tags) becomes
  `reasoning_content` in every format; pass `thinking_open: true` when the
  prompt already opened the block (the template's generation prompt ends
  with `<think>`).

  A call that cannot be read (broken JSON, a missing name) stays in the
  content, as the text the model wrote, with a warning logged: parsing never
  fails.

  `detect/1` picks the format from a chat template's text. For streams,
  `parse/3` with `partial: true` holds back what may still become a call or
  a tag, and `advance/2` turns successive parses into deltas.
  """

  require Logger

  alias LlamaCppEx.{ChatReply, ToolCall}
  alias LlamaCppEx.ChatFormat.{CommandR, DeepSeek, Functionary, Granite, Hermes, Llama3, Mistral, Reasoning}

  @type format :: :hermes | :llama3 | :mistral | :deepseek | :functionary | :command_r | :granite | :content

  @modules %{
    hermes: Hermes,
    llama3: Llama3,
    mistral: Mistral,
    deepseek: DeepSeek,
    functionary: Functionary,
    command_r: CommandR,
    granite: Granite
  }

  @doc "The formats `parse/3` knows."
  @spec formats() :: [format()]
  def formats, do: Map.keys(@modules) ++ [:content]

  @doc """
  The format of a chat template, from the markers its text uses (as
  llama.cpp's format detection did): `:content` when it shows none.
  """
  @spec detect(String.t() | nil) :: format()
  def detect(nil), do: :content

  def detect(template) when is_binary(template) do
    cond do
      template =~ "<｜tool▁calls▁begin｜>" -> :deepseek
      template =~ "[TOOL_CALLS]" -> :mistral
      template =~ "<|START_ACTION|>" or template =~ "Action:\\n```json" or template =~ "Action: ```json" -> :command_r
      template =~ "<|tool_call|>" -> :granite
      template =~ ">>>all" or (template =~ ">>>" and template =~ "recipient") -> :functionary
      template =~ "<function=" and template =~ "<|start_header_id|>" and not (template =~ "<tool_call>") -> :llama3
      template =~ "<tool_call>" -> :hermes
      template =~ "<|start_header_id|>" and (template =~ "<|python_tag|>" or template =~ "ipython") -> :llama3
      true -> :content
    end
  end

  @doc """
  Parses a model's output.

  ## Options

    * `:partial` - the output is still being streamed: hold back what may
      become a call or a tag (default `false`).
    * `:thinking_open` - the prompt opened a `<think>` block (default `false`).
    * `:calls` - read tool calls (default `true`); `false` when no tools were
      offered: what looks like a call stays content (a Llama 3 reply that is
      a JSON object with a `"name"` is then an answer, not a call).
  """
  @spec parse(String.t(), format(), keyword()) :: ChatReply.t()
  def parse(text, format, opts \\ []) when is_binary(text) do
    opts = Keyword.validate!(opts, partial: false, thinking_open: false, calls: true)
    partial? = opts[:partial]
    {reasoning, rest, held} = Reasoning.split(text, opts[:thinking_open], partial?)

    parts =
      case @modules[format] do
        nil when format == :content -> [{:text, rest}]
        nil -> raise ArgumentError, "unknown chat format #{inspect(format)}; known: #{inspect(formats())}"
        mod -> mod.parse(rest, partial?)
      end ++ [{:held, held}]

    {content, calls} = assemble(parts, partial?, opts[:calls])
    %ChatReply{content: content, reasoning_content: reasoning, tool_calls: calls}
  end

  defp assemble(parts, partial?, calls?) do
    {texts, calls} =
      Enum.reduce(parts, {[], []}, fn
        {:text, t}, {texts, calls} ->
          {[t | texts], calls}

        {:held, _}, acc ->
          acc

        {:malformed, raw}, {texts, calls} ->
          unless partial?,
            do: Logger.warning("LlamaCppEx.ChatFormat: a tool call could not be read, kept as text: #{inspect(raw)}")

          {[raw | texts], calls}

        {:call, c}, {texts, calls} when not calls? ->
          {[c.raw | texts], calls}

        {:call, c}, {texts, calls} ->
          case tool_call(c) do
            {:ok, call} -> {texts, [call | calls]}
            :error -> {[c.raw | texts], calls}
          end
      end)

    content = texts |> Enum.reverse() |> IO.iodata_to_binary() |> tidy(calls != [] or partial?)
    {content, Enum.reverse(calls)}
  end

  # text before calls: the whitespace the format puts before them goes; while
  # streaming, trailing whitespace waits (a call may follow)
  defp tidy(text, true), do: String.trim_trailing(text)
  defp tidy(text, false), do: text

  defp tool_call(%{name: name, arguments: args, id: id} = c) when is_map(args) do
    {:ok, %ToolCall{id: id || ToolCall.new_id(), name: name, arguments: args, raw_arguments: encode(args, c)}}
  end

  defp tool_call(%{arguments: args} = c) when is_binary(args) do
    case LlamaCppEx.ChatFormat.Scan.decode(args) do
      {:ok, map} when is_map(map) ->
        {:ok, %ToolCall{id: c.id || ToolCall.new_id(), name: c.name, arguments: map, raw_arguments: args}}

      _ ->
        Logger.warning(
          "LlamaCppEx.ChatFormat: tool call arguments are not a JSON object, kept as text: #{inspect(c.raw)}"
        )

        :error
    end
  end

  defp encode(args, _c), do: IO.iodata_to_binary(:jiffy.encode(args, [:use_nil]))

  @typedoc "A change between two parses of a growing output."
  @type delta ::
          {:content, String.t()}
          | {:reasoning, String.t()}
          | {:tool_call, non_neg_integer(), ToolCall.t()}
          | {:logprobs, [LlamaCppEx.Logprob.t()]}

  @doc """
  Streams: what a new parse of the growing output (`partial: true`, the last
  one without) adds to what was handed out so far (`sent`, a
  `LlamaCppEx.ChatReply`, `%ChatReply{}` at the start). Returns the deltas
  (new reasoning, new content, each new tool call with its index) and the
  new `sent`. What was handed out is never taken back: text that changed
  rather than grew, or calls that a later parse no longer sees, are not
  repeated.
  """
  @spec advance(ChatReply.t(), ChatReply.t()) :: {[delta()], ChatReply.t()}
  def advance(%ChatReply{} = sent, %ChatReply{} = new) do
    reasoning = grown(sent.reasoning_content || "", new.reasoning_content || "")
    content = grown(sent.content, new.content)
    n = length(sent.tool_calls)
    added = Enum.drop(new.tool_calls, n)
    calls = added |> Enum.with_index(n) |> Enum.map(fn {c, i} -> {:tool_call, i, c} end)
    deltas = Enum.reject([{:reasoning, reasoning}, {:content, content}], &(elem(&1, 1) == "")) ++ calls

    sent = %ChatReply{
      reasoning_content: if(sent.reasoning_content || reasoning != "", do: (sent.reasoning_content || "") <> reasoning),
      content: sent.content <> content,
      tool_calls: sent.tool_calls ++ added
    }

    {deltas, sent}
  end

  # what was added at the end; text that changed rather than grew is not repeated
  defp grown(old, new) do
    if String.starts_with?(new, old), do: binary_part(new, byte_size(old), byte_size(new) - byte_size(old)), else: ""
  end

  @doc """
  A stream of deltas (`t:delta/0`) from a stream of text chunks (binaries, or
  `{text, logprobs}`) of a chat reply in `format`: reasoning, content and
  tool calls as they become known; what may still become a call or a tag is
  held back until it is known, and the last parse, when the text stream ends,
  hands out the rest. With `logprobs:`, each chunk's log-probabilities follow
  its deltas as `{:logprobs, list}` (tokens, not text: a token's text may be
  held back, or be part of a call).
  """
  @spec reply_stream(Enumerable.t(), format(), boolean(), boolean()) :: Enumerable.t()
  def reply_stream(chunks, format, thinking_open?, calls? \\ true) do
    opts = [thinking_open: thinking_open?, calls: calls?]

    Stream.transform(
      chunks,
      fn -> {"", %ChatReply{}} end,
      fn chunk, {text, sent} ->
        text = text <> chunk_text(chunk)
        {deltas, sent} = advance(sent, parse(text, format, [partial: true] ++ opts))
        {deltas ++ chunk_logprobs(chunk), {text, sent}}
      end,
      fn {text, sent} ->
        {deltas, sent} = advance(sent, parse(text, format, opts))
        {deltas, {text, sent}}
      end,
      fn _ -> :ok end
    )
  end

  defp chunk_text({text, _logprobs}), do: text
  defp chunk_text(text) when is_binary(text), do: text

  defp chunk_logprobs({_text, [_ | _] = logprobs}), do: [{:logprobs, logprobs}]
  defp chunk_logprobs(_chunk), do: []
end
