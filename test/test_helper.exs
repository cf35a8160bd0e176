# Test suites and their tags; `make test` (and CI) runs them all with
# `mix test --include model --include conformance --include slow`.
#   :model        - needs ../shared/models/stories260K.gguf (LLAMA_TEST_MODEL overrides it)
#                   and llama-2-tiny-random.gguf; runs by default when the first is there,
#                   excluded with a note when it is not
#   :conformance  - needs the llama.cpp source tree (tokenizer test vectors); excluded by default
#   :slow         - long-running (leak loops, big inputs); excluded by default
# The model suites on the sanitizer build of the NIF: scripts/test_asan.sh (`make test-asan`).
#
# Many tests provoke llama.cpp's errors on purpose. Its log is off here: the
# lines reach Logger asynchronously (through a native thread and the
# LlamaCppEx.Log process), so they could land after their test's log capture,
# and what they say is also in the error reasons the tests check
# (test/log_test.exs tests the forwarding itself). capture_log: any other
# Logger output is shown only with the failure of the test that logged it.
model = LlamaCppEx.TestHelpers.model_path()

exclude =
  if File.exists?(model) do
    [:conformance, :slow]
  else
    IO.puts("test_helper: #{model} not found: the :model suites are excluded")
    [:model, :conformance, :slow]
  end

# Under scripts/test_asan.sh the VM runs with the sanitizer runtimes in
# LD_PRELOAD; the tools tests start (curl, node, chromium, llama.cpp's own)
# must not inherit them (curl hung with them). The VM's own preload is done.
# Child VMs that load the NIF (LlamaCppEx.TestHelpers.child_vm_env/0) get it back.
:persistent_term.put({LlamaCppEx.TestHelpers, :preload}, System.get_env("LD_PRELOAD"))
System.delete_env("LD_PRELOAD")

LlamaCppEx.Log.set_level(:none)
ExUnit.start(exclude: exclude, capture_log: true)
