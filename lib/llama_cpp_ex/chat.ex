defmodule LlamaCppEx.Chat do
  @moduledoc """
  Chat templates: turning a list of messages into the prompt a chat model expects.

  The model's own template (its `tokenizer.chat_template` metadata) and any
  template string with Jinja tags are rendered by `LlamaCppEx.Jinja` (compiled
  once per template and cached), with the variables chat templates expect:
  `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, plus whatever
  `:variables` adds (`tools`, `enable_thinking`, `date_string`, ...). llama.cpp's
  built-in formats stay available by name (`template: "chatml"`, see
  `builtin_templates/0`), rendered by `llama_chat_apply_template`; so does a
  string without Jinja tags, which llama.cpp treats as a name.

      {:ok, prompt} =
        LlamaCppEx.Chat.apply_template(model, messages,
          variables: [tools: tools, enable_thinking: false]
        )

  With a Jinja template, a message is a map that may carry more than `:role`
  and `:content`: `tool_calls`, `tool_call_id`, `name`, `reasoning_content`, a
  `nil` content or a list of content parts are passed to the template as they are.

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

  alias LlamaCppEx.Chat.Tools
  alias LlamaCppEx.{Jinja, Model, NIF, Tokenizer}

  @type role :: String.t() | atom()
  @type message ::
          %{required(:role) => role(), optional(:content) => term(), optional(atom()) => term()} | {role(), String.t()}

  @options [template: nil, add_assistant: true, variables: [], tools: nil, tool_choice: :auto, enable_thinking: nil]

  @doc false
  # The chat options (apply_template/3, tokenize/3, and the chat functions of
  # LlamaCppEx and LlamaCppEx.Server) and their defaults.
  def option_keys, do: @options

  @doc "Names of llama.cpp's built-in chat templates (e.g. `\"chatml\"`, `\"llama3\"`)."
  @spec builtin_templates() :: [String.t()]
  def builtin_templates, do: NIF.chat_builtin_templates()

  @doc """
  Renders `messages` into a prompt string.

  ## Options

    * `:template` - a built-in template name or a template string; default the
      model's own template. `{:error, :no_template}` when neither exists.
    * `:add_assistant` - end with the start of an assistant turn (default `true`);
      `add_generation_prompt` in Jinja templates.
    * `:variables` - more template variables (map or keyword list), e.g.
      `date_string: "26 Jul 2024"`; Jinja templates only. They may
      override `bos_token`/`eos_token`, not `messages` or `add_generation_prompt`.
    * `:tools` - OpenAI function definitions (`%{"type" => "function",
      "function" => %{"name" => .., "description" => .., "parameters" => schema}}`,
      string or atom keys), given to the template as `tools`.
    * `:tool_choice` - `:auto` (default: the tools are offered), `:none` (they
      are not given to the template), `:required` or `{:function, name}` (only
      that tool is given); OpenAI's strings and `%{"type" => "function",
      "function" => %{"name" => name}}` are accepted too. `:required` and a
      named function also constrain the reply with a grammar to one call of
      the offered tools, its arguments following the tool's `parameters`
      schema (Hermes, Llama 3, Granite and Mistral's older `[TOOL_CALLS][..]`
      formats; for the others, and when you give a `:grammar` of your own,
      the choice only shapes the prompt).
    * `:enable_thinking` - `true`/`false` for the templates that switch
      reasoning on and off (Qwen 3, DeepSeek, Granite, ...); default: the
      template's own.

  A Jinja template that fails (`raise_exception` in the template, a runtime
  error, a sandbox limit) gives `{:error, {:template_error, %{message:, line:}}}`.
  """
  @spec apply_template(Model.t() | nil, [message()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def apply_template(model, messages, opts \\ []) do
    opts = Keyword.validate!(opts, @options)

    with {:ok, template} <- resolve_template(model, opts[:template]) do
      messages = prepare!(template, messages)
      render(model, template, messages, add_assistant!(opts), variables!(opts))
    end
  end

  defp prepare!({:jinja, _}, messages), do: jinja_messages!(messages)
  defp prepare!({:native, _}, messages), do: normalize!(messages)

  defp render(_model, {:native, template}, messages, add_assistant, _variables),
    do: NIF.chat_apply_template(template, messages, add_assistant)

  defp render(model, {:jinja, source}, messages, add_assistant, variables) do
    vars =
      special_token_variables(model)
      |> Map.merge(variables)
      |> Jinja.variables!()
      |> Map.merge(%{"messages" => messages, "add_generation_prompt" => add_assistant})

    Jinja.render_values(source, vars, [])
  end

  # bos_token / eos_token as the model writes them ("" without a model or token)
  defp special_token_variables(nil), do: %{"bos_token" => "", "eos_token" => ""}

  defp special_token_variables(%Model{} = model) do
    Map.new([{"bos_token", Tokenizer.bos(model)}, {"eos_token", Tokenizer.eos(model)}], fn {name, token} ->
      text =
        with id when is_integer(id) <- token,
             {:ok, text} <- Tokenizer.token_to_piece(model, id, special: true) do
          text
        else
          _ -> ""
        end

      {name, text}
    end)
  end

  defp variables!(opts) do
    vars = opts[:variables]

    unless is_map(vars) or Keyword.keyword?(vars),
      do: raise(ArgumentError, ":variables must be a map or keyword list, got: #{inspect(vars)}")

    vars =
      Map.new(vars, fn {k, v} ->
        name = if is_atom(k), do: Atom.to_string(k), else: k

        if name in ["messages", "add_generation_prompt"],
          do: raise(ArgumentError, ":variables cannot set #{name} (pass messages and :add_assistant)")

        {name, v}
      end)

    vars =
      case Tools.offered(opts[:tools], opts[:tool_choice]) do
        nil -> vars
        tools -> Map.put(vars, "tools", tools)
      end

    case opts[:enable_thinking] do
      nil -> vars
      b when is_boolean(b) -> Map.put(vars, "enable_thinking", b)
      other -> raise ArgumentError, ":enable_thinking must be a boolean or nil, got: #{inspect(other)}"
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
    with {:ok, tokens, _reply} <- prepare(model, messages, opts), do: {:ok, tokens}
  end

  @doc false
  # tokenize/3, and how to read the reply: {:ok, tokens, %{format, thinking_open, grammar}}
  # (the LlamaCppEx.ChatFormat of the template, whether the prompt ends inside
  # a reasoning block the template opened, and the grammar that makes the
  # reply a tool call when tool_choice requires one, or nil).
  def prepare(%Model{} = model, messages, opts) do
    opts = Keyword.validate!(opts, @options)
    add_assistant = add_assistant!(opts)
    variables = variables!(opts)

    with {:ok, template} <- resolve_template(model, opts[:template]),
         messages = prepare!(template, messages),
         :ok <- no_special_text_beside_contents(model, template, messages, variables),
         {:ok, rendered} <- render(model, template, messages, add_assistant, variables),
         {:ok, forging?} <- any_special_text?(model, contents(template, messages)),
         {:ok, tokens} <-
           if(forging?,
             do: tokenize_separately(model, template, messages, add_assistant, variables),
             else: Tokenizer.encode(model, rendered, add_special: add_special?(template, model), parse_special: true)
           ) do
      format = reply_format(template)

      {:ok, tokens,
       %{
         format: format,
         special: format in [:llama3, :mistral, :granite, :command_r, :deepseek],
         calls: Tools.offered(opts[:tools], opts[:tool_choice]) != nil,
         thinking_open: thinking_open?(rendered),
         grammar:
           Tools.grammar(opts[:tools], opts[:tool_choice], format, template_source(template), thinking_open?(rendered))
       }}
    end
  end

  defp template_source({_, source}), do: source

  defp reply_format({:jinja, source}), do: LlamaCppEx.ChatFormat.detect(source)
  defp reply_format({:native, _}), do: :content

  defp thinking_open?(rendered), do: rendered |> String.trim_trailing() |> String.ends_with?("<think>")

  # Contents are tokenized apart when they hold special-token text (below);
  # the other strings a template renders, tools and a turn's tool calls,
  # names and reasoning, cannot be: holding such text, they would forge
  # control tokens, so they are refused: {:error, {:special_token_text, field}}.
  defp no_special_text_beside_contents(_model, {:native, _}, _messages, _variables), do: :ok

  defp no_special_text_beside_contents(model, {:jinja, _}, messages, variables) do
    fields =
      [{"tools", strings(Map.get(variables, "tools"))}] ++
        for {:obj, pairs} <- messages,
            {k, v} <- pairs,
            k not in ["role", "content"],
            do: {"messages[].#{k}", strings(v)}

    Enum.reduce_while(fields, :ok, fn {field, texts}, :ok ->
      case any_special_text?(model, texts) do
        {:ok, false} -> {:cont, :ok}
        {:ok, true} -> {:halt, {:error, {:special_token_text, field}}}
        error -> {:halt, error}
      end
    end)
  end

  # every string in a value (maps, lists, Jinja values)
  defp strings(s) when is_binary(s), do: [s]
  defp strings({:obj, pairs}), do: Enum.flat_map(pairs, fn {k, v} -> strings(k) ++ strings(v) end)
  defp strings(%{} = m) when not is_struct(m), do: Enum.flat_map(m, fn {k, v} -> strings(k) ++ strings(v) end)
  defp strings(l) when is_list(l), do: Enum.flat_map(l, &strings/1)
  defp strings(_), do: []

  # A Jinja template writes bos_token itself; a native one relies on the tokenizer.
  defp add_special?({:jinja, _}, _model), do: false
  defp add_special?({:native, _}, _model), do: true

  # The message contents that are strings (a Jinja message may have none, or parts).
  defp contents({:native, _}, messages), do: Enum.map(messages, &elem(&1, 1))

  defp contents({:jinja, _}, messages) do
    for {:obj, pairs} <- messages, {"content", c} when is_binary(c) <- [List.keyfind(pairs, "content", 0)], do: c
  end

  defp with_contents({:native, _}, messages, new), do: Enum.zip_with(messages, new, fn {role, _}, c -> {role, c} end)

  defp with_contents({:jinja, _}, messages, new) do
    {out, []} =
      Enum.map_reduce(messages, new, fn {:obj, pairs} = m, new ->
        case List.keyfind(pairs, "content", 0) do
          {"content", c} when is_binary(c) ->
            [replacement | rest] = new
            {{:obj, List.keyreplace(pairs, "content", 0, {"content", replacement})}, rest}

          _ ->
            {m, new}
        end
      end)

    out
  end

  # A content holds special-token text exactly when parsing specials changes its tokens.
  defp any_special_text?(model, contents) do
    Enum.reduce_while(contents, {:ok, false}, fn content, acc ->
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
  defp tokenize_separately(model, template, messages, add_assistant, variables) do
    # a fresh random nonce each call: a user cannot predict, hence cannot embed, a marker
    nonce = Base.encode16(:crypto.strong_rand_bytes(12))
    contents = contents(template, messages)
    markers = Enum.map(0..(length(contents) - 1)//1, &"\u0001#{nonce}:#{&1}\u0001")
    marked = with_contents(template, messages, markers)

    with {:ok, rendered} <- render(model, template, marked, add_assistant, variables),
         {:ok, parts} <- split_on_markers(rendered, markers, contents) do
      tokenize_parts(model, parts, add_special?(template, model))
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

  defp tokenize_parts(model, parts, add_special) do
    parts
    |> Enum.reject(fn {_, text} -> text == "" end)
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {{kind, text}, i}, {:ok, acc} ->
      opts = [add_special: add_special and i == 0, parse_special: kind == :template]

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

  # {:jinja, source} for a template with Jinja tags (the model's own, or given);
  # {:native, name_or_text} for llama.cpp's built-in formats, chosen by name.
  defp resolve_template(model, nil) do
    case model do
      %Model{chat_template: t} when is_binary(t) -> {:ok, classify(t)}
      _ -> {:error, :no_template}
    end
  end

  defp resolve_template(_model, template) when is_binary(template) do
    if String.contains?(template, <<0>>), do: raise(ArgumentError, "template must not contain NUL bytes")
    unless String.valid?(template), do: raise(ArgumentError, "template must be valid UTF-8")
    {:ok, classify(template)}
  end

  defp resolve_template(_model, other), do: raise(ArgumentError, ":template must be a string, got: #{inspect(other)}")

  defp classify(template) do
    if String.contains?(template, ["{{", "{%"]), do: {:jinja, template}, else: {:native, template}
  end

  # Messages for a Jinja template: dicts with role and content first, then the other
  # keys in key order; the values checked by LlamaCppEx.Jinja.Value.from_term/1.
  defp jinja_messages!(messages) when is_list(messages) do
    if messages != [] and Keyword.keyword?(messages),
      do: raise(ArgumentError, "messages must be a list of messages, got a keyword list: #{inspect(messages)}")

    Enum.map(messages, fn
      {role, content} ->
        {role, content} = pair!(role, content)
        {:obj, [{"role", role}, {"content", content}]}

      %{} = message when not is_struct(message) ->
        fields = Map.new(message, fn {k, v} -> {if(is_atom(k), do: Atom.to_string(k), else: k), v} end)

        role =
          case fields do
            %{"role" => role} when is_binary(role) or (is_atom(role) and role not in [nil, true, false]) ->
              to_string(role)

            _ ->
              raise ArgumentError, "a message needs a :role (string or atom), got: #{inspect(message)}"
          end

        {:obj, rest} = LlamaCppEx.Jinja.Value.from_term(Map.drop(fields, ["role", "content"]))

        content =
          case Map.fetch(fields, "content") do
            {:ok, c} -> [{"content", LlamaCppEx.Jinja.Value.from_term(c)}]
            :error -> []
          end

        {:obj, [{"role", role} | content] ++ rest}

      other ->
        raise ArgumentError, "a message must be %{role: _, content: _} or {role, content}, got: #{inspect(other)}"
    end)
  end

  defp jinja_messages!(other), do: raise(ArgumentError, "messages must be a list, got: #{inspect(other)}")

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
