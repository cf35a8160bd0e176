# Test suites and their tags; `make test` (and CI) runs them all with
# `mix test --include model --include conformance --include slow`.
#   :model        - needs ../shared/models/stories260K.gguf (LLAMA_TEST_MODEL overrides it)
#                   and llama-2-tiny-random.gguf; runs by default when the first is there,
#                   excluded with a note when it is not
#   :conformance  - needs the llama.cpp source tree (tokenizer test vectors); excluded by default
#   :slow         - long-running (leak loops, big inputs); excluded by default
# The model suites on the sanitizer build of the NIF: scripts/test_asan.sh (`make test-asan`).
#
# capture_log: llama.cpp's log lines (many tests provoke its errors on purpose)
# are shown only with the failures of the tests that logged them.
model = LlamaCppEx.TestHelpers.model_path()

exclude =
  if File.exists?(model) do
    [:conformance, :slow]
  else
    IO.puts("test_helper: #{model} not found: the :model suites are excluded")
    [:model, :conformance, :slow]
  end

ExUnit.start(exclude: exclude, capture_log: true)
