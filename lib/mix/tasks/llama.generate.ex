defmodule Mix.Tasks.Llama.Generate do
  @shortdoc "Generates text from a GGUF model, streaming it to the terminal"
  @moduledoc """
  Generates text from a GGUF model and streams it to the terminal as it comes,
  then prints a timing line.

      mix llama.generate --model PATH --prompt TEXT [options]

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
    stop: :keep
  ]

  @impl true
  def run(args) do
    {opts, rest, invalid} =
      OptionParser.parse(args, strict: @switches, aliases: [m: :model, p: :prompt, n: :max_tokens])

    if invalid != [] or rest != [] do
      Mix.raise("unknown arguments: #{inspect(invalid ++ rest)}; see `mix help llama.generate`")
    end

    Mix.Task.run("app.start")

    model_path = opts[:model] || System.get_env("LLAMA_MODEL") || default_model()
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

    receive do
      {:completion, c} ->
        IO.puts("")

        IO.puts(
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
    end
  end

  defp take(opts, mapping) do
    for {from, to} <- mapping, Keyword.has_key?(opts, from), do: {to, opts[from]}
  end

  defp grammar(nil), do: []
  defp grammar(file), do: [grammar: File.read!(file)]

  defp default_model do
    path = Path.expand("../shared/models/stories260K.gguf", File.cwd!())

    if File.exists?(path),
      do: path,
      else: Mix.raise("no --model given and #{path} does not exist")
  end
end
