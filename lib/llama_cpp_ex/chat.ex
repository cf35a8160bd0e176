defmodule LlamaCppEx.Chat do
  @moduledoc """
  Chat templates: turning a list of messages into the prompt a chat model expects.

  Rendering uses llama.cpp's `llama_chat_apply_template`, which recognises the
  model's own template (its `tokenizer.chat_template` metadata) or one of the
  built-in formats by name (see `builtin_templates/0`).

      messages = [
        %{role: "system", content: "You are terse."},
        %{role: "user", content: "Hi!"}
      ]
      {:ok, prompt} = LlamaCppEx.Chat.apply_template(model, messages, template: "chatml")

  `tokenize/3` goes one step further and is what `LlamaCppEx.chat/3` uses: the
  template's own text is tokenized with special-token parsing, while message
  contents are tokenized with `parse_special: false`, so text a user typed,
  such as `"<|im_start|>system"`, stays plain text and cannot forge control
  tokens.
  """

  alias LlamaCppEx.{Model, NIF, Tokenizer}

  @type role :: String.t() | atom()
  @type message :: %{required(:role) => role(), required(:content) => String.t()} | {role(), String.t()}

  @doc "Names of llama.cpp's built-in chat templates (e.g. `\"chatml\"`, `\"llama3\"`)."
  @spec builtin_templates() :: [String.t()]
  def builtin_templates, do: NIF.chat_builtin_templates()

  @doc """
  Renders `messages` into a prompt string.

  ## Options

    * `:template` - a built-in template name or a template string; default the
      model's own template. `{:error, :no_template}` when neither exists.
    * `:add_assistant` - end with the start of an assistant turn (default `true`).
  """
  @spec apply_template(Model.t() | nil, [message()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def apply_template(model, messages, opts \\ []) do
    opts = Keyword.validate!(opts, template: nil, add_assistant: true)

    with {:ok, template} <- resolve_template(model, opts[:template]) do
      NIF.chat_apply_template(template, normalize!(messages), add_assistant!(opts))
    end
  end

  @doc """
  Renders and tokenizes `messages` for `model`, keeping message contents from
  being read as special tokens (see the module doc). Takes the options of
  `apply_template/3`.

  When no message contains special-token text, the result is exactly
  `Tokenizer.encode(model, rendered, parse_special: true)`, what llama.cpp's own
  tools feed the model. When one does, the template's text and the contents are
  tokenized separately so that text stays plain text.
  """
  @spec tokenize(Model.t(), [message()], keyword()) :: {:ok, [Tokenizer.token()]} | {:error, term()}
  def tokenize(%Model{} = model, messages, opts \\ []) do
    opts = Keyword.validate!(opts, template: nil, add_assistant: true)
    messages = normalize!(messages)

    with {:ok, template} <- resolve_template(model, opts[:template]),
         {:ok, rendered} <- NIF.chat_apply_template(template, messages, add_assistant!(opts)),
         {:ok, forging?} <- any_special_text?(model, messages) do
      if forging?,
        do: tokenize_separately(model, template, messages, add_assistant!(opts)),
        else: Tokenizer.encode(model, rendered, add_special: true, parse_special: true)
    end
  end

  # A content holds special-token text exactly when parsing specials changes its tokens.
  defp any_special_text?(model, messages) do
    Enum.reduce_while(messages, {:ok, false}, fn {_role, content}, acc ->
      with {:ok, plain} <- Tokenizer.encode(model, content, add_special: false, parse_special: false),
           {:ok, parsed} <- Tokenizer.encode(model, content, add_special: false, parse_special: true) do
        if plain == parsed, do: {:cont, acc}, else: {:halt, {:ok, true}}
      else
        error -> {:halt, error}
      end
    end)
  end

  # Render with unique markers in place of the contents, then tokenize the
  # template's text with special-token parsing and each content without.
  # (SentencePiece vocabularies give each separately tokenized piece its
  # leading space; that small difference is the price of safety here.)
  defp tokenize_separately(model, template, messages, add_assistant) do
    # a fresh random nonce each call: a user cannot predict, hence cannot embed, a marker
    nonce = Base.encode16(:crypto.strong_rand_bytes(12))
    markers = Enum.map(0..(length(messages) - 1)//1, &"\u0001#{nonce}:#{&1}\u0001")
    marked = Enum.zip_with(messages, markers, fn {role, _}, marker -> {role, marker} end)

    with {:ok, rendered} <- NIF.chat_apply_template(template, marked, add_assistant),
         {:ok, parts} <- split_on_markers(rendered, markers, Enum.map(messages, &elem(&1, 1))) do
      tokenize_parts(model, parts)
    end
  end

  defp split_on_markers(rendered, markers, contents) do
    Enum.zip(markers, contents)
    |> Enum.reduce_while({rendered, []}, fn {marker, content}, {rest, acc} ->
      case String.split(rest, marker, parts: 2) do
        [before, remaining] -> {:cont, {remaining, [{:user, content}, {:template, before} | acc]}}
        [_] -> {:halt, :missing}
      end
    end)
    |> case do
      :missing -> {:error, :template_rewrites_content}
      {rest, acc} -> {:ok, Enum.reverse([{:template, rest} | acc])}
    end
  end

  defp tokenize_parts(model, parts) do
    parts
    |> Enum.reject(fn {_, text} -> text == "" end)
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {{kind, text}, i}, {:ok, acc} ->
      opts = [add_special: i == 0, parse_special: kind == :template]

      case Tokenizer.encode(model, text, opts) do
        {:ok, toks} -> {:cont, {:ok, [toks | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, acc |> Enum.reverse() |> Enum.concat()}
      error -> error
    end
  end

  defp resolve_template(model, nil) do
    case model do
      %Model{chat_template: t} when is_binary(t) -> {:ok, t}
      _ -> {:error, :no_template}
    end
  end

  defp resolve_template(_model, template) when is_binary(template) do
    if String.contains?(template, <<0>>), do: raise(ArgumentError, "template must not contain NUL bytes")
    {:ok, template}
  end

  defp resolve_template(_model, other), do: raise(ArgumentError, ":template must be a string, got: #{inspect(other)}")

  defp add_assistant!(opts) do
    case opts[:add_assistant] do
      b when is_boolean(b) -> b
      other -> raise ArgumentError, ":add_assistant must be a boolean, got: #{inspect(other)}"
    end
  end

  @doc false
  def normalize!(messages) when is_list(messages) do
    if messages != [] and Keyword.keyword?(messages) and Keyword.has_key?(messages, :content),
      do: raise(ArgumentError, "messages must be a list of messages, got a keyword list: #{inspect(messages)}")

    Enum.map(messages, fn
      %{role: role, content: content} ->
        pair!(role, content)

      %{"role" => role, "content" => content} ->
        pair!(role, content)

      {role, content} ->
        pair!(role, content)

      other ->
        raise ArgumentError, "a message must be %{role: _, content: _} or {role, content}, got: #{inspect(other)}"
    end)
  end

  def normalize!(other), do: raise(ArgumentError, "messages must be a list, got: #{inspect(other)}")

  defp pair!(role, content)
       when (is_binary(role) or (is_atom(role) and role not in [nil, true, false])) and is_binary(content) do
    role = to_string(role)

    cond do
      not String.valid?(content) or not String.valid?(role) ->
        raise ArgumentError, "message role and content must be valid UTF-8"

      String.contains?(content, <<0>>) or String.contains?(role, <<0>>) ->
        raise ArgumentError, "message role and content must not contain NUL bytes"

      true ->
        {role, content}
    end
  end

  defp pair!(role, content),
    do:
      raise(
        ArgumentError,
        "message role must be a string or atom and content a string, got: #{inspect({role, content})}"
      )
end
