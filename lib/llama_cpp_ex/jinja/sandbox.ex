defmodule LlamaCppEx.Jinja.Sandbox do
  @moduledoc false
  # Templates come from model files and are untrusted. Compiling and rendering run in a
  # process of their own with a heap limit and a wall-clock timeout (killed when either is
  # exceeded), on top of the counted limits the interpreter enforces (steps, macro depth,
  # output size). Nothing in a template can reach anything but its data: there is no
  # attribute access to Elixir terms, no atom is made from template input, and no code
  # is evaluated.

  @defaults [
    max_steps: 1_000_000,
    max_depth: 64,
    max_output: 16 * 1024 * 1024,
    max_heap_bytes: 512 * 1024 * 1024,
    timeout: 5_000
  ]

  @type limits :: %{
          max_steps: pos_integer(),
          max_depth: pos_integer(),
          max_output: pos_integer(),
          max_heap_bytes: pos_integer(),
          timeout: pos_integer()
        }

  @spec option_names() :: [atom()]
  def option_names, do: Keyword.keys(@defaults)

  @doc "Validated limits from options (raises ArgumentError on bad values)."
  @spec limits!(keyword()) :: limits()
  def limits!(opts) do
    opts = Keyword.validate!(opts, @defaults)

    for {key, value} <- opts,
        not (is_integer(value) and value > 0),
        do: raise(ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(value)}")

    Map.new(opts)
  end

  @doc "Runs `fun` in a limited process; `{:ok, result}` or `{:error, {:template_error, info}}`."
  @spec run((() -> term()), limits()) :: {:ok, term()} | {:error, {:template_error, map()}}
  def run(fun, limits) do
    parent = self()
    tag = make_ref()
    words = div(limits.max_heap_bytes, :erlang.system_info(:wordsize))

    {pid, mon} =
      :erlang.spawn_opt(
        fn -> send(parent, {tag, guarded(fun)}) end,
        [:monitor, {:max_heap_size, %{size: words, kill: true, error_logger: false}}]
      )

    receive do
      {^tag, result} ->
        Process.demonitor(mon, [:flush])
        result

      {:DOWN, ^mon, :process, ^pid, reason} ->
        error(
          "template rendering was stopped (#{inspect(reason)}): it used more than #{limits.max_heap_bytes} bytes",
          nil
        )
    after
      limits.timeout ->
        Process.exit(pid, :kill)
        Process.demonitor(mon, [:flush])

        receive do
          {^tag, _} -> :ok
        after
          0 -> :ok
        end

        error("template rendering took longer than #{limits.timeout} ms", nil)
    end
  end

  defp guarded(fun) do
    {:ok, fun.()}
  catch
    {:jinja_error, message, line} ->
      error(message, line)

    {:jinja_error, message} ->
      error(message, nil)

    kind, reason ->
      where = __STACKTRACE__ |> Enum.take(1) |> Exception.format_stacktrace() |> String.trim()
      error("internal error: #{Exception.format_banner(kind, reason)} (#{where})", nil)
  end

  @doc false
  def error(message, line), do: {:error, {:template_error, %{message: message, line: line}}}
end
