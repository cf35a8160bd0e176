defmodule LlamaCppEx.GrammarCheckConformanceTest do
  # c_src/grammar_check.c reads GBNF text as llama.cpp's parser does; a
  # difference would let a grammar past the limits. This runs the differential
  # test (test/native/grammar_check_diff.cpp) against the pinned llama.cpp's
  # own parser, built from its source tree.
  use ExUnit.Case, async: true
  @moduletag :conformance
  @moduletag timeout: 600_000

  test "the grammar pre-check agrees with llama.cpp's parser on random grammar text" do
    script = Path.expand("../scripts/grammar_check_diff.sh", __DIR__)
    {out, status} = System.cmd(script, ["100000", "7"], stderr_to_stdout: true)
    assert status == 0, out
    assert out =~ "0 mismatches"
  end
end
