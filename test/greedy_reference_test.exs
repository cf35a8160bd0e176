# Greedy generation must match llama.cpp's own reference tool byte for byte.
#
# How the expected texts were produced (details and raw output in
# test/support/reference_outputs.md):
#
#   tool:    llama-simple (examples/simple/simple.cpp) of llama.cpp
#            commit de3ff815ea7d559ee917f063901b8986f038abc6, CPU build,
#            built by `scripts/llama_cpp.sh tools llama-simple`
#   model:   /work/shared/models/stories260K.gguf
#   commands:
#     BIN=~/.cache/llama_cpp_ex/build/de3ff815ea7d-cpu-024f9030648e/bin
#     $BIN/llama-simple -m /work/shared/models/stories260K.gguf -n 32 "Once upon a time"
#     $BIN/llama-simple -m /work/shared/models/stories260K.gguf -n 32 "The little dog"
#     $BIN/llama-simple -m /work/shared/models/stories260K.gguf -n 32 "Lily and Ben went to the park"
#     $BIN/llama-simple -m /work/shared/models/stories260K.gguf -n 32 "One day"
#
# llama-simple tokenizes with add_special=true, parse_special=true (BOS prepended),
# samples with the greedy sampler only, and `-n 32` counts generated tokens only.
# It echoes the prompt as "<s> <prompt>" and ends with "\n"; the expected strings
# below are its stdout without that echo and without the final newline. All four
# runs generated 32 tokens without reaching an end-of-generation token, so the
# expected finish_reason is :max_tokens.
defmodule LlamaCppEx.GreedyReferenceTest do
  use ExUnit.Case, async: false

  @moduletag :model

  # The expected texts belong to stories260K; a model substituted through
  # LLAMA_TEST_MODEL cannot be compared against them.
  @model_path LlamaCppEx.TestHelpers.model_path()
  unless is_binary(@model_path) and Path.basename(@model_path) == "stories260K.gguf" do
    @moduletag skip: "greedy reference texts were recorded with stories260K.gguf, not #{inspect(@model_path)}"
  end

  @max_tokens 32

  # {prompt, expected continuation, generated tokens, finish_reason}
  @references [
    {"Once upon a time",
     ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw", 32, :max_tokens},
    {"The little dog",
     " was a little girl named Lily. She loved to play with her toys and her toys. One day, she saw a big", 32,
     :max_tokens},
    {"Lily and Ben went to the park",
     ". They saw a big box with a big box. They wanted to play with it. They wanted to play with the bo", 32,
     :max_tokens},
    {"One day", ", a little girl named Lily went to the park with her mom. She saw a big box with a big box", 32,
     :max_tokens}
  ]

  for {prompt, expected, expected_n, expected_finish} <- @references do
    test "greedy completion of #{inspect(prompt)} matches llama-simple" do
      {:ok, model} = LlamaCppEx.Model.load(LlamaCppEx.TestHelpers.model_path(), [])

      try do
        assert {:ok, %LlamaCppEx.Completion{} = completion} =
                 LlamaCppEx.complete(model, unquote(prompt), max_tokens: @max_tokens, temp: 0.0)

        %LlamaCppEx.Completion{text: text, generated_tokens: n} = completion
        assert text == unquote(expected)
        assert n == unquote(expected_n)
        assert completion.finish_reason == unquote(expected_finish)
      after
        LlamaCppEx.Model.free(model)
      end
    end
  end

  test "prompt tokenization matches llama-simple (add_special and parse_special)" do
    {:ok, model} = LlamaCppEx.Model.load(LlamaCppEx.TestHelpers.model_path(), [])

    try do
      assert LlamaCppEx.Tokenizer.encode(model, "Once upon a time",
               add_special: true,
               parse_special: true
             ) == {:ok, [1, 403, 407, 261, 378]}
    after
      LlamaCppEx.Model.free(model)
    end
  end
end
