# Tokenizer conformance against llama.cpp's own test vectors.
#
# This is a port of llama.cpp's tests/test-tokenizer-0.cpp (commit
# de3ff815ea7d559ee917f063901b8986f038abc6) and of the registrations in
# tests/CMakeLists.txt (`llama_test(test-tokenizer-0 ... models/ggml-vocab-<name>.gguf)`):
#
#   * the vocabulary is loaded with vocab_only = true;
#   * `<vocab>.gguf.inp` is split on the exact separator "\n__ggml_vocab_test__\n",
#     so the newline in front of each separator is not part of the input, every other
#     byte is, a file that ends with the separator has no trailing empty input, and one
#     that does not (gemma-4) has the rest of the file as its last input;
#   * `<vocab>.gguf.out` holds one line per input, stripped, ids separated by spaces
#     (an empty line is the empty token list);
#   * differing input/output counts fail the test;
#   * pairs go into a std::map keyed by input (a repeated input keeps its last output);
#   * tokenization is common_tokenize(ctx, text, add_special = false, parse_special = false);
#   * ids are compared for exact equality. Upstream only prints the detokenized text and
#     never asserts a round trip, so neither does this test.
#
# The vocab list is fixed (the 15 upstream registrations at the pinned commit), because the
# source path is only known when the tests run. At that commit every one of them loads and
# passes with upstream's code (see test/support/reference_outputs.md), so @unloadable is
# empty; add `"name" => "reason"` there if a future pin ships a vocab llama.cpp cannot load.
defmodule LlamaCppEx.TokenizerConformanceTest do
  use ExUnit.Case, async: false

  @moduletag :conformance
  @moduletag timeout: 120_000

  @vocabs ~w(bert-bge command-r deepseek-coder deepseek-llm falcon gemma-4 gpt-2
             llama-bpe llama-spm mpt phi-3 qwen2 qwen35 refact starcoder)

  # vocab name => reason, for vocabs that llama.cpp itself cannot load at the pinned commit
  @unloadable %{}

  @separator "\n__ggml_vocab_test__\n"

  # Upstream's flags (tests/test-tokenizer-0.cpp).
  @add_special false
  @parse_special false

  # The source tree is only known at run time, but test files are compiled when the
  # suite runs, so it can be resolved here to tag skips.
  @llama_src LlamaCppEx.TestHelpers.llama_src()
  @models_dir @llama_src && Path.join(@llama_src, "models")

  if is_nil(@llama_src) do
    @moduletag skip:
                 "llama.cpp source checkout not found (LlamaCppEx.TestHelpers.llama_src/0 returned nil); " <>
                   "run scripts/llama_cpp.sh src or set LLAMA_CPP_SRC"
  end

  for name <- @vocabs do
    vocab = "ggml-vocab-#{name}.gguf"

    cond do
      reason = @unloadable[name] ->
        @tag skip: "#{vocab}: #{reason}"

      @models_dir &&
          not Enum.all?(["", ".inp", ".out"], &File.regular?(Path.join(@models_dir, vocab <> &1))) ->
        @tag skip: "#{vocab} or its .inp/.out test vectors are missing from #{@models_dir}"

      true ->
        :ok
    end

    @tag vocab: name
    test "#{vocab} tokenizes like upstream test-tokenizer-0" do
      check_vocab(Path.join(@models_dir, unquote(vocab)))
    end
  end

  defp check_vocab(path) do
    tests = read_tests(path <> ".inp", path <> ".out")
    assert map_size(tests) > 0, "no test vectors read for #{path}"

    {:ok, model} = LlamaCppEx.Model.load(path, vocab_only: true)

    mismatches =
      try do
        for {input, expected} <- Enum.sort(tests),
            got =
              LlamaCppEx.Tokenizer.encode(model, input,
                add_special: @add_special,
                parse_special: @parse_special
              ),
            got != {:ok, expected} do
          {input, expected, got}
        end
      after
        LlamaCppEx.Model.free(model)
      end

    if mismatches != [] do
      shown =
        mismatches
        |> Enum.take(5)
        |> Enum.map_join("\n", fn {input, expected, got} ->
          "  input:    #{inspect(input, binaries: :as_strings)}\n" <>
            "  expected: #{inspect(expected, limit: :infinity, charlists: :as_lists)}\n" <>
            "  got:      #{inspect(got, limit: :infinity, charlists: :as_lists)}\n"
        end)

      flunk(
        "#{Path.basename(path)}: #{length(mismatches)} of #{map_size(tests)} vectors differ " <>
          "from llama.cpp (first #{min(length(mismatches), 5)}):\n" <> shown
      )
    end
  end

  # Same parsing as read_tests() in tests/test-tokenizer-0.cpp.
  defp read_tests(inp_path, out_path) do
    inputs = split_inputs(File.read!(inp_path), [])

    outputs =
      out_path
      |> File.read!()
      |> getlines()
      |> Enum.map(fn line -> line |> String.trim() |> String.split(" ", trim: true) end)
      |> Enum.map(fn ids -> Enum.map(ids, &String.to_integer/1) end)

    if length(inputs) != length(outputs) do
      flunk("#{inp_path} has #{length(inputs)} inputs but #{out_path} has #{length(outputs)} lines")
    end

    # std::map semantics: a repeated input keeps the last expected output.
    Map.new(Enum.zip(inputs, outputs))
  end

  defp split_inputs("", acc), do: Enum.reverse(acc)

  defp split_inputs(raw, acc) do
    case :binary.match(raw, @separator) do
      :nomatch ->
        Enum.reverse([raw | acc])

      {pos, len} ->
        <<input::binary-size(pos), _::binary-size(len), rest::binary>> = raw
        split_inputs(rest, [input | acc])
    end
  end

  # std::getline over a whole file: a final "\n" does not start another line.
  defp getlines(""), do: []

  defp getlines(data) do
    lines = String.split(data, "\n")
    if List.last(lines) == "", do: Enum.drop(lines, -1), else: lines
  end
end
