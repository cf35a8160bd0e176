defmodule LlamaCppEx.ChatFormatTest do
  # Tool-call and reasoning parsers (lib/llama_cpp_ex/chat_format/): our test
  # models cannot write tool calls, so each format is fed outputs written by
  # hand from the format's documentation and templates, malformed ones too.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  alias LlamaCppEx.{ChatFormat, ChatReply, ToolCall}

  for dir <- Path.wildcard("/usr/lib/erlang/lib/jiffy-*/ebin"), do: Code.prepend_path(dir)

  @paris %{"city" => "Paris"}

  defp parse(text, format, opts \\ []), do: ChatFormat.parse(text, format, opts)
  defp calls(%ChatReply{tool_calls: calls}), do: Enum.map(calls, &{&1.name, &1.arguments})

  # Feeds text in chunks of `size` bytes (cut on character boundaries) and
  # puts the deltas back together: they must give the final parse.
  defp streamed(text, format, size, opts \\ []) do
    chunks = text |> String.codepoints() |> Enum.chunk_every(size) |> Enum.map(&Enum.join/1)

    {_, _, deltas} =
      Enum.reduce(chunks, {"", %ChatReply{}, []}, fn chunk, {acc, prev, deltas} ->
        acc = acc <> chunk
        {new, sent} = ChatFormat.advance(prev, ChatFormat.parse(acc, format, [partial: true] ++ opts))
        {acc, sent, deltas ++ new}
      end)
      |> then(fn {acc, sent, deltas} ->
        {new, sent} = ChatFormat.advance(sent, ChatFormat.parse(acc, format, opts))
        {acc, sent, deltas ++ new}
      end)

    %{
      content: for({:content, t} <- deltas, into: "", do: t),
      reasoning: for({:reasoning, t} <- deltas, into: "", do: t),
      calls: for({:tool_call, _i, c} <- deltas, do: {c.name, c.arguments}),
      indexes: for({:tool_call, i, _} <- deltas, do: i)
    }
  end

  @cases [
    hermes: [
      {~s(Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>),
       "Let me check.", [{"get_weather", @paris}]},
      {~s(<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>),
       "", [{"a", %{}}, {"b", %{"x" => [1, 2]}}]},
      # generation ended before the closing tag
      {~s(<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}), "", [{"get_weather", @paris}]},
      # Qwen3-Coder's XML inside the tags
      {"<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
       "", [{"get_weather", %{"city" => "Paris", "days" => 3}}]},
      {"No tools needed: 2 + 2 = 4.", "No tools needed: 2 + 2 = 4.", []}
    ],
    llama3: [
      {~s({"name": "get_weather", "parameters": {"city": "Paris"}}), "", [{"get_weather", @paris}]},
      {~s({"name": "a", "parameters": {"n": 1}}; {"name": "b", "parameters": {}}), "",
       [{"a", %{"n" => 1}}, {"b", %{}}]},
      {~s(<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}), "", [{"get_weather", @paris}]},
      {~s[<|python_tag|>brave_search.call(query="weather in Paris", count=3)], "",
       [{"brave_search", %{"query" => "weather in Paris", "count" => 3}}]},
      {"Here is code.<|python_tag|>print(1 + 1)", "Here is code.", [{"python", %{"code" => "print(1 + 1)"}}]},
      # Functionary v3.1
      {~s(Sure.<function=get_weather>{"city": "Paris"}</function>), "Sure.", [{"get_weather", @paris}]},
      # JSON that is not a call is content
      {~s({"answer": 42}), ~s({"answer": 42}), []}
    ],
    mistral: [
      {~s([TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]), "",
       [{"get_weather", @paris}]},
      {~s(Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}), "Checking.",
       [{"get_weather", @paris}, {"get_time", %{}}]}
    ],
    deepseek: [
      {"I'll look it up.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
       "I'll look it up.", [{"get_weather", @paris}]},
      # V3.1
      {"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
       "", [{"get_weather", @paris}, {"get_time", %{}}]}
    ],
    functionary: [
      {~s(all\nLet me check.>>>get_weather\n{"city": "Paris"}), "Let me check.", [{"get_weather", @paris}]},
      {~s(get_weather\n{"city": "Paris"}>>>get_time\n{}), "", [{"get_weather", @paris}, {"get_time", %{}}]},
      {"all\nJust text.", "Just text.", []}
    ],
    command_r: [
      {~s(<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}]<|END_ACTION|>),
       "", [{"get_weather", @paris}]},
      {"<|START_RESPONSE|>It is sunny.<|END_RESPONSE|>", "It is sunny.", []},
      # Command R+
      {~s(Action:\n```json\n[{"tool_name": "get_weather", "parameters": {"city": "Paris"}}]\n```), "",
       [{"get_weather", @paris}]}
    ],
    granite: [
      {~s(<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]), "", [{"get_weather", @paris}]}
    ]
  ]

  for {format, cases} <- @cases, {{text, content, calls}, i} <- Enum.with_index(cases) do
    test "#{format} ##{i}: content and calls, whole and streamed" do
      text = unquote(text)
      reply = parse(text, unquote(format))
      assert reply.content == unquote(content)
      assert calls(reply) == unquote(Macro.escape(calls))

      assert Enum.all?(
               reply.tool_calls,
               &match?(%ToolCall{id: "call_" <> _, raw_arguments: raw} when is_binary(raw), &1)
             ) or
               unquote(format) in [:mistral, :command_r]

      for size <- [1, 3, 7] do
        s = streamed(text, unquote(format), size)
        assert s.content == reply.content, "chunks of #{size}: #{inspect(s)}"
        assert s.calls == calls(reply), "chunks of #{size}"
        assert s.indexes == Enum.to_list(0..(length(s.calls) - 1)//1)
      end
    end
  end

  test "with no tools offered (calls: false) a call-shaped reply is content" do
    json = ~s({"name": "Alice", "parameters": {"age": 30}})
    assert %{tool_calls: [], content: ^json} = parse(json, :llama3, calls: false)
    assert %{tool_calls: [_]} = parse(json, :llama3)
    # reasoning is still split
    assert %{reasoning_content: "hm", content: "ok"} = parse("<think>hm</think>ok", :hermes, calls: false)
  end

  test "streamed edge cases: Granite's response tags split, Functionary's python code, a cut-off Llama 3 call" do
    s = streamed("<think>why</think><response>Because it is.</response>", :granite, 1)
    assert s.content == "Because it is." and s.reasoning == "why"

    s = streamed(">>>python\nprint(1 + 1)", :functionary, 1)
    assert s.calls == [{"python", %{"code" => "print(1 + 1)"}}]

    text = ~s({"name": "a", "parameters": {}}; {"name": "b", "param)

    capture_log(fn ->
      reply = parse(text, :llama3)
      assert calls(reply) == [{"a", %{}}]
      assert reply.content =~ ~s({"name": "b")
      s = streamed(text, :llama3, 5)
      assert s.calls == [{"a", %{}}]
    end)
  end

  test "ids: the model's own where its format has one" do
    [c] = parse(~s([TOOL_CALLS][{"name": "f", "arguments": {}, "id": "a1b2c3d4e"}]), :mistral).tool_calls
    assert c.id == "a1b2c3d4e"

    [c] =
      parse(~s(<|START_ACTION|>[{"tool_call_id": "7", "tool_name": "f", "parameters": {}}]<|END_ACTION|>), :command_r).tool_calls

    assert c.id == "7"

    [a, b] = parse(~s(<tool_call>{"name": "f"}</tool_call><tool_call>{"name": "f"}</tool_call>), :hermes).tool_calls
    assert a.id != b.id
  end

  describe "reasoning" do
    test "<think> blocks become reasoning_content, in any format" do
      text =
        "<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"

      reply = parse(text, :hermes)
      assert reply.reasoning_content == "The user wants weather."
      assert calls(reply) == [{"get_weather", @paris}]
      assert parse("<think>hmm</think>Hello", :content).content == "Hello"
      assert parse("Hello", :content).reasoning_content == nil
    end

    test "a block the prompt opened, and one never closed" do
      assert %{reasoning_content: "step 1", content: "Answer."} =
               parse("step 1</think>Answer.", :deepseek, thinking_open: true)

      assert %{reasoning_content: "still thinking", content: ""} = parse("<think>still thinking", :hermes)
      # a call written while thinking is not a call
      assert %{tool_calls: []} = parse(~s(<think><tool_call>{"name": "f"}</tool_call>), :hermes)
    end

    test "Command R7B's thinking tags; Granite's response tags" do
      assert %{reasoning_content: "plan", content: "Done."} =
               parse("<|START_THINKING|>plan<|END_THINKING|><|START_RESPONSE|>Done.<|END_RESPONSE|>", :command_r)

      assert %{reasoning_content: "why", content: "Because."} =
               parse("<think>why</think><response>Because.</response>", :granite)
    end

    test "streamed: reasoning then content, as deltas" do
      text = "<think>Let me think about it.</think>The answer is 4."

      for size <- [1, 2, 5] do
        s = streamed(text, :hermes, size)
        assert s.reasoning == "Let me think about it."
        assert s.content == "The answer is 4."
      end
    end
  end

  describe "malformed calls stay text, with a warning" do
    @malformed [
      hermes: ~s(<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par</tool_call>),
      hermes: ~s(<tool_call>{"arguments": {}}</tool_call>),
      hermes: "<tool_call>not json at all</tool_call>",
      mistral: ~s([TOOL_CALLS][{"name": 3}]),
      mistral: ~s([TOOL_CALLS]get_weather[ARGS]{"city": ),
      deepseek:
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\nno json<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
      llama3: ~s(<function=f>{broken</function>),
      functionary: "all\nhi>>>f\n{oops",
      command_r: "<|START_ACTION|>[{\"tool_name\": }]<|END_ACTION|>",
      granite: ~s(<|tool_call|>[{"name": "f", "arguments": 5}])
    ]

    for {{format, text}, i} <- Enum.with_index(@malformed) do
      test "#{format} ##{i}" do
        text = unquote(text)

        log =
          capture_log(fn ->
            reply = parse(text, unquote(format))
            assert reply.tool_calls == []
            # the model's text is all there, not lost
            assert String.length(reply.content) > 0
            assert String.contains?(text, String.trim(reply.content)) or String.contains?(reply.content, "f")
          end)

        assert log =~ "could not be read" or log =~ "not a JSON object"
      end
    end

    test "random bytes never raise" do
      :rand.seed(:exsss, {7, 7, 7})

      pieces = [
        "<tool_call>",
        "</tool_call>",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "name",
        ":",
        "[TOOL_CALLS]",
        "[ARGS]",
        ">>>",
        "all\n",
        "<think>",
        "</think>",
        "<|python_tag|>",
        "<function=",
        "</function>",
        "<|START_ACTION|>",
        "<｜tool▁sep｜>",
        "\n",
        "x",
        "é"
      ]

      capture_log(fn ->
        for _ <- 1..500 do
          text = Enum.map_join(1..:rand.uniform(12), fn _ -> Enum.random(pieces) end)

          for format <- ChatFormat.formats(), partial <- [true, false] do
            assert %ChatReply{} = parse(text, format, partial: partial)
          end
        end
      end)
    end
  end

  describe "detect/1" do
    test "known markers" do
      assert ChatFormat.detect(nil) == :content
      assert ChatFormat.detect("{{ messages }}") == :content
      assert ChatFormat.detect("...<tool_call>...") == :hermes
      assert ChatFormat.detect("...[TOOL_CALLS]...") == :mistral
    end

    @tag :conformance
    test "the pinned llama.cpp source's templates of each family" do
      dir = Path.join(LlamaCppEx.TestHelpers.llama_src(), "models/templates")

      expected = %{
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja" => :hermes,
        "Qwen-Qwen2.5-7B-Instruct.jinja" => :hermes,
        "Qwen-Qwen3-0.6B.jinja" => :hermes,
        "Qwen3-Coder.jinja" => :hermes,
        "meta-llama-Llama-3.1-8B-Instruct.jinja" => :llama3,
        "meta-llama-Llama-3.3-70B-Instruct.jinja" => :llama3,
        "meetkai-functionary-medium-v3.1.jinja" => :llama3,
        "meetkai-functionary-medium-v3.2.jinja" => :functionary,
        "mistralai-Mistral-Nemo-Instruct-2407.jinja" => :mistral,
        "unsloth-mistral-Devstral-Small-2507.jinja" => :mistral,
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja" => :deepseek,
        "deepseek-ai-DeepSeek-V3.1.jinja" => :deepseek,
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja" => :command_r,
        "CohereForAI-c4ai-command-r-plus-tool_use.jinja" => :command_r,
        "ibm-granite-granite-3.3-2B-Instruct.jinja" => :granite,
        "google-gemma-2-2b-it.jinja" => :content
      }

      for {file, format} <- expected do
        assert ChatFormat.detect(File.read!(Path.join(dir, file))) == format, file
      end
    end
  end

  test "an unknown format raises" do
    assert_raise ArgumentError, ~r/unknown chat format/, fn -> parse("x", :nope) end
  end
end
