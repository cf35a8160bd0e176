defmodule Mix.Tasks.Llama.Generate do
  @shortdoc "Generates text from a GGUF model, streaming it to the terminal"
  @moduledoc """
  Generates text from a GGUF model and streams it to stdout as it comes.

      mix llama.generate --model PATH --prompt TEXT [options]

  Only the prompt and the generated text go to stdout. Everything else goes to
  stderr: errors always, and with `--verbose` llama.cpp's log and a line of
  prompt and generation speeds. Without `--verbose` llama.cpp's log is off;
  an error still names its cause (llama.cpp's error lines are part of it).

  ## Options

    * `--model PATH` (`-m`) - GGUF file (default: `../shared/models/stories260K.gguf`
      when present, or `$LLAMA_MODEL`).
    * `--prompt TEXT` (`-p`) - the prompt (default `"Once upon a time"`).
    * `-n N` / `--max-tokens N` - most tokens to generate (default 128).
    * `--temp T`, `--top-k K`, `--top-p P`, `--min-p P`, `--seed S`,
      `--repeat-penalty R` - sampling.
    * `--n-ctx N`, `--threads N` - context size and CPU threads.
    * `--grammar-file FILE` - constrain output with a GBNF grammar.
    * `--stop TEXT` - stop string (repeatable).
    * `--verbose` (`-v`) - show llama.cpp's log (from `:info` up) and the
      timings on stderr.
  """
  use Mix.Task

  @switches [
    model: :string,
    prompt: :string,
    max_tokens: :integer,
    temp: :float,
    top_k: :integer,
    top_p: :float,
    min_p: :float,
    seed: :integer,
    repeat_penalty: :float,
    n_ctx: :integer,
    threads: :integer,
    grammar_file: :string,
    stop: :keep,
    verbose: :boolean
  ]

  @impl true
  def run(args) do
    {opts, rest, invalid} =
      OptionParser.parse(args, strict: @switches, aliases: [m: :model, p: :prompt, n: :max_tokens, v: :verbose])

    if invalid != [] or rest != [] do
      Mix.raise("unknown arguments: #{inspect(invalid ++ rest)}; see `mix help llama.generate`")
    end

    Mix.LlamaCppEx.start_app()
    verbose = opts[:verbose] || false
    LlamaCppEx.Log.set_level(if verbose, do: :info, else: :none)

    model_path = opts[:model] || System.get_env("LLAMA_MODEL") || Mix.LlamaCppEx.default_model!()
    prompt = opts[:prompt] || "Once upon a time"

    model =
      case LlamaCppEx.Model.load(model_path) do
        {:ok, model} -> model
        {:error, reason} -> Mix.raise("cannot load #{model_path}: #{inspect(reason)}")
      end

    gen_opts =
      [max_tokens: opts[:max_tokens] || 128, on_complete: &send(self(), {:completion, &1})] ++
        take(opts,
          temp: :temp,
          top_k: :top_k,
          top_p: :top_p,
          min_p: :min_p,
          seed: :seed,
          repeat_penalty: :repeat_penalty,
          n_ctx: :n_ctx,
          n_threads: :threads
        ) ++
        grammar(opts[:grammar_file]) ++
        case Keyword.get_values(opts, :stop) do
          [] -> []
          stops -> [stop: stops]
        end

    IO.write(prompt)

    try do
      model |> LlamaCppEx.stream(prompt, gen_opts) |> Enum.each(&IO.write/1)
    rescue
      e in LlamaCppEx.Error -> Mix.raise(Exception.message(e))
    end

    IO.puts("")

    receive do
      {:completion, c} when verbose ->
        Mix.LlamaCppEx.info(
          :io_lib.format(
            "~n[prompt: ~B tokens, ~.1f tokens/s | generated: ~B tokens, ~.1f tokens/s | finish: ~s]",
            [
              c.prompt_tokens,
              LlamaCppEx.Completion.prompt_tokens_per_second(c),
              c.generated_tokens,
              LlamaCppEx.Completion.tokens_per_second(c),
              c.finish_reason
            ]
          )
        )

      {:completion, _} ->
        :ok
    end
  end

  defp take(opts, mapping) do
    for {from, to} <- mapping, Keyword.has_key?(opts, from), do: {to, opts[from]}
  end

  defp grammar(nil), do: []
  defp grammar(file), do: [grammar: File.read!(file)]
end
