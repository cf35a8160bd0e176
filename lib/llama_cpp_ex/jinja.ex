defmodule LlamaCppEx.Jinja do
  @moduledoc """
  Jinja chat templates, in Elixir: what models ship in their `tokenizer.chat_template`
  metadata (tool calling, system prompts with tools, thinking switches).

      {:ok, template} = LlamaCppEx.Jinja.compile("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
      {:ok, "<user>Hi"} = LlamaCppEx.Jinja.render(template, %{messages: [%{role: "user", content: "Hi"}]})

  The engine renders exactly as `@huggingface/jinja` (the implementation Hugging Face's
  JavaScript libraries use for chat templates) with the settings chat renderers use
  (`trim_blocks` and `lstrip_blocks` on); the conformance test compares the two byte for
  byte on the real templates shipped with llama.cpp. Where that reference differs from
  Python's Jinja, it is followed: `{{ true }}` prints `true`, lists and dicts print as
  JSON, `tojson` keeps non-ASCII text (`ensure_ascii=False`).

  ## Variables

  Anything a template reads is a variable given to `render/3`: `messages`, `tools`,
  `add_generation_prompt`, `bos_token`, `eos_token`, `enable_thinking`, ... Values are
  plain data: strings, numbers, booleans, `nil`, lists, maps and keyword lists (atom keys
  become strings). Dict keys keep their order when given as a keyword list; a map's keys
  come in Erlang term order (sorted, for maps of up to 32 keys), which is what `tojson`
  then prints.

  ## Untrusted templates

  Templates come from model files. Compiling and rendering run in a separate process
  with a heap limit and a timeout; the interpreter also counts statements and loop
  iterations, macro call depth and output size. Every failure, including
  `raise_exception(...)` in the template, is
  `{:error, {:template_error, %{message: message, line: line}}}` with the template line
  (`nil` when unknown). Nothing a template does can reach anything but its variables.

  Limits (options of `compile/2` and `render/3`): `:max_steps` (statements and loop
  iterations, default 1_000_000), `:max_depth` (macro calls, 64), `:max_output` (bytes
  of output or of any string built, 16 MiB), `:max_heap_bytes` (512 MiB), `:timeout` (ms,
  5000).
  """

  alias LlamaCppEx.Jinja.{Cache, Interpreter, Lexer, Parser, Sandbox, Value}

  defstruct [:source, :ast]

  @typedoc "A compiled template."
  @type t :: %__MODULE__{source: String.t(), ast: list()}

  @type error :: {:error, {:template_error, %{message: String.t(), line: pos_integer() | nil}}}

  @doc """
  Compiles `source`; compiled templates are cached by source (SHA-256), so compiling the
  same template again is a table lookup.

      {:ok, %LlamaCppEx.Jinja{}} = LlamaCppEx.Jinja.compile("{{ 1 + 1 }}")
      {:error, {:template_error, %{line: 1}}} = LlamaCppEx.Jinja.compile("{% if %}")
  """
  @spec compile(String.t(), keyword()) :: {:ok, t()} | error()
  def compile(source, opts \\ [])

  def compile(source, opts) when is_binary(source) do
    {cache?, opts} = Keyword.pop(opts, :cache, true)
    limits = Sandbox.limits!(opts)
    unless String.valid?(source), do: raise(ArgumentError, "a template must be valid UTF-8")

    if cache?,
      do: Cache.fetch(source, fn -> do_compile(source, limits) end),
      else: do_compile(source, limits)
  end

  def compile(other, _opts), do: raise(ArgumentError, "a template must be a string, got: #{inspect(other)}")

  defp do_compile(source, limits) do
    Sandbox.run(
      fn ->
        with {:ok, tokens} <- Lexer.tokenize(source),
             {:ok, ast} <- Parser.parse(tokens) do
          %__MODULE__{source: source, ast: ast}
        else
          {:error, {message, line}} -> throw({:jinja_error, message, line})
        end
      end,
      limits
    )
  end

  @doc """
  Renders a template (compiled, or a source string, compiled through the cache) with
  `vars`, a map or keyword list of variables.

      {:ok, "Hello, Ada!"} = LlamaCppEx.Jinja.render("Hello, {{ name }}!", %{name: "Ada"})

      {:error, {:template_error, %{message: "no", line: 1}}} =
        LlamaCppEx.Jinja.render("{{ raise_exception('no') }}", %{})
  """
  @spec render(t() | String.t(), map() | keyword(), keyword()) :: {:ok, String.t()} | error()
  def render(template, vars, opts \\ [])

  def render(source, vars, opts) when is_binary(source) do
    with {:ok, template} <- compile(source, Keyword.take(opts, Sandbox.option_names())) do
      render(template, vars, opts)
    end
  end

  def render(%__MODULE__{} = template, vars, opts), do: render_values(template, variables!(vars), opts)

  def render(other, _vars, _opts), do: raise(ArgumentError, "expected a template, got: #{inspect(other)}")

  @doc false
  # `values`: variable name => template value (LlamaCppEx.Jinja.Value), already converted
  # (LlamaCppEx.Chat builds messages with their key order this way).
  @spec render_values(t() | String.t(), %{String.t() => Value.t()}, keyword()) :: {:ok, String.t()} | error()
  def render_values(source, values, opts) when is_binary(source) do
    with {:ok, template} <- compile(source, Keyword.take(opts, Sandbox.option_names())) do
      render_values(template, values, opts)
    end
  end

  def render_values(%__MODULE__{ast: ast}, values, opts) do
    limits = Sandbox.limits!(opts)
    Sandbox.run(fn -> Interpreter.render(ast, values, limits) end, limits)
  end

  @doc false
  def variables!(vars) when is_map(vars) or is_list(vars) do
    unless is_map(vars) or Keyword.keyword?(vars),
      do: raise(ArgumentError, "variables must be a map or keyword list, got: #{inspect(vars)}")

    Map.new(vars, fn {name, value} ->
      name =
        cond do
          is_binary(name) -> name
          is_atom(name) -> Atom.to_string(name)
          true -> raise ArgumentError, "variable names must be strings or atoms, got: #{inspect(name)}"
        end

      if name in Interpreter.global_names(),
        do: raise(ArgumentError, "#{inspect(name)} is a built-in name of templates and cannot be a variable")

      {name, Value.from_term(value)}
    end)
  end

  def variables!(other), do: raise(ArgumentError, "variables must be a map or keyword list, got: #{inspect(other)}")
end
