defmodule LlamaCppEx.GrammarLimitsTest do
  # llama.cpp's grammar code recurses once per nested group and once per rule of
  # a chain (parsing) and once per code point of a candidate token (sampling).
  # Grammars past the limits are refused before llama.cpp sees them; the rest
  # runs on stacks sized for the limits (c_src/grammar_check.c, grammar_stack.c).
  # Calls that would overflow a stack without that sizing run in a child VM with
  # the smallest dirty scheduler stacks the VM allows (+sssdcpu 20), so a
  # regression is a failed test, not a dead test run.
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Sampler, TestGGUF}

  @prompt "Once upon a time"

  setup_all do
    %{model: load_model!()}
  end

  defp assert_works(model) do
    assert {:ok, text} = LlamaCppEx.generate(model, @prompt, max_tokens: 4, temp: 0.0)
    assert text != ""
  end

  defp invalid_grammar(model, grammar) do
    assert {:error, {:invalid_grammar, msg}} = Sampler.create(model, grammar: grammar)
    msg
  end

  defp nested(depth), do: String.duplicate("(", depth) <> ~S("a") <> String.duplicate(")", depth)

  # a left chain: llama.cpp's left-recursion check recurses once per rule
  defp chain(n, sep) do
    "root ::= r0" <>
      sep <> Enum.map_join(0..(n - 1), "", &"r#{&1} ::= r#{&1 + 1} \"a\"#{sep}") <> "r#{n} ::= \"a\"\n"
  end

  # Runs `code` in a fresh VM with this build and returns {output, exit status}.
  defp in_child_vm(code) do
    ebin = Path.dirname(:code.which(LlamaCppEx))
    script = Path.join(System.tmp_dir!(), "lcx_grammar_#{System.unique_integer([:positive])}.exs")
    File.write!(script, "Application.ensure_all_started(:llama_cpp_ex)\n" <> code)
    on_exit(fn -> File.rm(script) end)

    System.cmd(System.find_executable("elixir"), ["--erl", "+sssdcpu 20", "-pa", ebin, script],
      stderr_to_stdout: true,
      env: child_vm_env()
    )
  end

  defp tmp_model(bytes) do
    path = Path.join(System.tmp_dir!(), "lcx_grammar_#{System.unique_integer([:positive])}.gguf")
    File.write!(path, bytes)
    on_exit(fn -> File.rm(path) end)
    path
  end

  describe "grammar text is read as llama.cpp reads it" do
    test "a comment ended by \\r cannot hide nesting from the limit", %{model: model} do
      # llama.cpp ends a comment at \r: everything after it is grammar
      msg = invalid_grammar(model, "root ::= x #\rx ::= " <> nested(1000))
      assert msg =~ "nested too deeply"
      assert msg =~ "line 2"
      assert_works(model)
    end

    test "a comment ended by \\r cannot hide a 20,000-rule chain", %{model: model} do
      assert invalid_grammar(model, chain(20_000, " #\r")) =~ "too many rules"
      assert_works(model)
    end

    test "nesting is counted outside literals, classes and comments only", %{model: model} do
      assert {:ok, _} = Sampler.create(model, grammar: ~S<root ::= "((((" [(] "\"(" # ((((> <> "\n")
      assert {:ok, _} = Sampler.create(model, grammar: ~S<root ::= "#" ("a" | "b") [#\]] "\\">)
      assert {:ok, _} = Sampler.create(model, grammar: "root ::= " <> nested(128))
      assert invalid_grammar(model, "root ::= " <> nested(129)) =~ "more than 128"
      # an escaped quote does not end a literal, so the parens are literal text
      assert {:ok, _} = Sampler.create(model, grammar: "root ::= \"\\\"" <> String.duplicate("(", 300) <> "\"")
    end

    test "a repetition whose maximum is below its minimum is an error", %{model: model} do
      # llama.cpp would generate max - min (wrapping to ~2^64) rules: memory runs out
      assert invalid_grammar(model, ~S(root ::= "a"{5,3})) =~ "maximum is below its minimum"
      assert_works(model)
    end

    test "a grammar that expands past 2^20 elements is an error", %{model: model} do
      literal = ~s("#{String.duplicate("a", 1000)}")
      assert invalid_grammar(model, "root ::= #{literal}{2000}") =~ "more than 1048576 elements"
    end

    test "syntax errors name the line and column", %{model: model} do
      assert invalid_grammar(model, "root ::= \"a\"\nb ::= \"b\" ]") =~
               "expecting newline or end (at line 2, column 11)"

      assert invalid_grammar(model, ~S(root ::= "\q")) =~ "unknown escape"
    end

    test "an empty grammar is an error, not \"no grammar\"", %{model: model} do
      for g <- ["", "  \n\t", "# only a comment\n", "#\r#\r\n"] do
        assert invalid_grammar(model, g) =~ "empty", inspect(g)
      end

      assert {:error, {:invalid_grammar, _}} = LlamaCppEx.generate(model, @prompt, grammar: "", max_tokens: 2)
    end

    test "deep grammars within the limits parse, and re-parse on reset, on a sized stack" do
      # A 5,000-rule left chain and x{0,1999} (x nullable) recurse 5,000 and
      # 2,000 levels deep in llama.cpp's left-recursion check: more than a
      # dirty scheduler's stack holds. (The old check counted the chain as one
      # rule: its comment hid the rest until \n.)
      code = """
      {:ok, m} = LlamaCppEx.Model.load(#{inspect(model_path())})
      for g <- [#{inspect(chain(5000, " #\r"), printable_limit: :infinity)}, "root ::= x{0,1999}\\nx ::= \\"a\\"?\\n"] do
        {:ok, s} = LlamaCppEx.Sampler.create(m, grammar: g)
        :ok = LlamaCppEx.Sampler.reset(s)
      end
      IO.puts("DONE")
      """

      {out, status} = in_child_vm(code)
      assert status == 0, "child VM exited with status #{status}:\n#{out}"
      assert out =~ "DONE"
    end
  end

  describe "token texts (a crafted vocabulary)" do
    setup do
      %{bytes: File.read!(model_path())}
    end

    test "a token text longer than 8192 bytes is refused at load", %{bytes: bytes} do
      for n <- [8193, 1_000_000] do
        path = tmp_model(TestGGUF.replace_token(bytes, 300, String.duplicate("x", n)))
        assert {:error, {:load_failed, msg}} = LlamaCppEx.Model.load(path)
        assert msg =~ "token 300's text is longer than 8192 bytes"
      end

      path = tmp_model(TestGGUF.replace_token(bytes, 300, String.duplicate("x", 8192)))
      assert {:ok, _} = LlamaCppEx.Model.load(path, vocab_only: true)
    end

    test "grammar sampling over long tokens runs on a stack sized for them", %{bytes: bytes} do
      # Grammar matching recurses once per code point of each candidate: a
      # token of 1,000 x's overflowed a dirty scheduler's stack.
      paths = for n <- [1000, 8192], do: tmp_model(TestGGUF.replace_token(bytes, 300, String.duplicate("x", n)))

      code = """
      for path <- #{inspect(paths)} do
        {:ok, m} = LlamaCppEx.Model.load(path)
        opts = [max_tokens: 3, temp: 0.0, grammar: "root ::= [x]*"]
        {:ok, text} = LlamaCppEx.generate(m, "Once", opts)
        true = text =~ ~r/^x*$/
        chunks = m |> LlamaCppEx.stream("Once", opts) |> Enum.to_list()
        true = Enum.join(chunks) == text
        {:ok, ctx} = LlamaCppEx.Context.create(m, n_ctx: 64)
        {:ok, s} = LlamaCppEx.Sampler.create(m, grammar: "root ::= [x]*", temp: 0.0)
        {:ok, tokens} = LlamaCppEx.Tokenizer.encode(m, "Once")
        :ok = LlamaCppEx.Context.decode(ctx, tokens)
        {:ok, token} = LlamaCppEx.Sampler.sample(s, ctx)
        true = is_integer(token)
        # the batching server samples every slot in its step NIF
        {:ok, server} = LlamaCppEx.Server.start_link(model: m, n_parallel: 2, n_ctx: 64, n_threads: 1)
        {:ok, ^text} = LlamaCppEx.Server.generate(server, "Once", opts)
        {:ok, _} = LlamaCppEx.Server.generate(server, "Once", max_tokens: 3, temp: 0.0, json_schema: %{"type" => "string"})
        GenServer.stop(server)
      end
      IO.puts("DONE")
      """

      {out, status} = in_child_vm(code)
      assert status == 0, "child VM exited with status #{status}:\n#{out}"
      assert out =~ "DONE"
    end
  end

  # ---- property: no grammar text crashes -------------------------------------------------

  for dir <- Path.wildcard("/usr/lib/erlang/lib/proper-*/ebin"), do: Code.prepend_path(dir)
  @proper_skip not Code.ensure_loaded?(:proper) && "PropEr is not available (Debian's erlang-proper)"

  @fragments [
    "root",
    "a",
    "b",
    "x-1",
    " ::= ",
    "::=",
    ":",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "#c",
    "# (\r",
    "#",
    "|",
    "(",
    ")",
    "\"",
    ~S("ab"),
    "[",
    "]",
    "^",
    "-",
    "[a-z]",
    ~S([^"]),
    "\\",
    "\\x4",
    "\\x41",
    "\\u00e9",
    "\\U0001F600",
    "\\n",
    "\\q",
    "\\\"",
    "\\]",
    "*",
    "+",
    "?",
    "{",
    "}",
    ",",
    "{2}",
    "{0,3}",
    "{2,}",
    "{3,1}",
    "{2001}",
    "{0,2001}",
    "7",
    ".",
    "<",
    ">",
    "!",
    "<[12]>",
    "<[99999999999999999999999]>",
    "<tok>",
    "é",
    <<0xF0>>,
    <<0xC3>>,
    <<0x80>>,
    "((",
    "))",
    ~S("a"*),
    "a{1000}",
    ~S[("a"{40}){40}]
  ]

  defp grammar_text do
    alias :proper_types, as: T
    fragments = T.bind(T.list(T.elements(@fragments)), &Enum.join/1, false)
    prefix = T.elements(["root ::= ", "root ::= x #\rx ::= ", "root ::= x # \nx ::= ", ""])
    core = T.elements(["", "\"a\"", "x", "\"(\"", "[)]"])

    nesting =
      T.bind(
        T.tuple([prefix, T.integer(0, 1000), core]),
        fn {p, n, c} -> p <> String.duplicate("(", n) <> c <> String.duplicate(")", n) end,
        false
      )

    chains =
      T.bind(
        T.tuple([T.oneof([T.integer(1, 300), T.exactly(17_000)]), T.elements(["\n", " #\r", "\r\n"])]),
        fn {n, sep} -> chain(n, sep) end,
        false
      )

    prefixed = T.bind(T.tuple([prefix, fragments]), fn {p, f} -> p <> f end, false)
    T.frequency([{3, fragments}, {2, prefixed}, {1, nesting}, {1, chains}])
  end

  @tag skip: @proper_skip
  @tag timeout: 300_000
  test "property: any grammar text gives a sampler, an error or ArgumentError, and never a crash", %{model: model} do
    prop =
      :proper.forall(grammar_text(), fn g ->
        try do
          case Sampler.create(model, grammar: g, temp: 0.0) do
            {:ok, s} ->
              Sampler.reset(s) == :ok and
                match?(
                  {tag, _} when tag in [:ok, :error],
                  LlamaCppEx.generate(model, @prompt, grammar: g, max_tokens: 3)
                )

            {:error, {:invalid_grammar, msg}} ->
              is_binary(msg)
          end
        rescue
          ArgumentError -> true
        end
      end)

    assert :proper.quickcheck(prop, [{:numtests, 300}, :quiet, :long_result]) == true
    assert_works(model)
  end
end
