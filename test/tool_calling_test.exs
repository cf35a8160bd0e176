defmodule LlamaCppEx.ToolCallingTest do
  # tools:/tool_choice: on the chat functions, end to end: our test models
  # cannot decide to call a tool, so a grammar makes stories260K write a call
  # in the Hermes format of a Jinja template that offers tools, and the reply
  # is read back on the core API, the server, streams and the HTTP API.
  use ExUnit.Case, async: false
  @moduletag :model

  import LlamaCppEx.TestHelpers
  import LlamaCppEx.HTTPHelpers
  alias LlamaCppEx.{ChatReply, Server, ToolCall}

  for dir <- Path.wildcard("/usr/lib/erlang/lib/jiffy-*/ebin"), do: Code.prepend_path(dir)

  # A Hermes-style template: the tools go into the system turn, calls come
  # back in <tool_call> tags (what ChatFormat.detect/1 reads it as).
  @template """
  {%- if tools %}<|im_start|>system
  You may call these tools:
  {% for t in tools %}{{ t.function.name }}: {{ t.function.description }}
  {% endfor %}Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
  {% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
  {{ m.content }}<|im_end|>
  {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
  {% endif %}
  """

  @tools [
    %{
      "type" => "function",
      "function" => %{
        "name" => "get_weather",
        "description" => "The weather in a city",
        "parameters" => %{"type" => "object", "properties" => %{"city" => %{"type" => "string"}}}
      }
    },
    %{type: "function", function: %{name: "get_time", description: "The time"}}
  ]

  @messages [%{role: "user", content: "What is the weather in Paris?"}]

  # the model writes some words, then the call
  @grammar ~S"""
  root ::= "Let me check." "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
  """

  @opts [template: @template, tools: @tools, grammar: @grammar, max_tokens: 200, temp: 0.0]

  setup_all do
    %{model: load_model!()}
  end

  defp assert_call(%ChatReply{} = reply) do
    assert reply.content == "Let me check."
    assert [%ToolCall{name: "get_weather", arguments: %{"city" => "Paris"}, id: "call_" <> _} = call] = reply.tool_calls
    assert :jiffy.decode(call.raw_arguments, [:return_maps]) == %{"city" => "Paris"}
  end

  test "the template gets the tools, and the reply's call is read", %{model: model} do
    {:ok, prompt} = LlamaCppEx.Chat.apply_template(model, @messages, template: @template, tools: @tools)
    assert prompt =~ "get_weather: The weather in a city"
    assert prompt =~ "get_time: The time"

    {:ok, c} = LlamaCppEx.chat_complete(model, @messages, @opts)
    assert c.text =~ "<tool_call>"
    assert_call(c.reply)
    # chat/3 gives the content alone
    assert {:ok, "Let me check."} = LlamaCppEx.chat(model, @messages, @opts)
  end

  test "tool_choice: none leaves the tools out; a named one keeps only it", %{model: model} do
    {:ok, none} =
      LlamaCppEx.Chat.apply_template(model, @messages, template: @template, tools: @tools, tool_choice: :none)

    refute none =~ "get_weather"

    {:ok, named} =
      LlamaCppEx.Chat.apply_template(model, @messages,
        template: @template,
        tools: @tools,
        tool_choice: %{"type" => "function", "function" => %{"name" => "get_time"}}
      )

    assert named =~ "get_time" and not (named =~ "get_weather")

    assert_raise ArgumentError, ~r/not one of the :tools/, fn ->
      LlamaCppEx.Chat.apply_template(model, @messages,
        template: @template,
        tools: @tools,
        tool_choice: {:function, "nope"}
      )
    end

    assert_raise ArgumentError, ~r/tool_choice/, fn ->
      LlamaCppEx.Chat.apply_template(model, @messages, template: @template, tools: @tools, tool_choice: "sometimes")
    end

    assert_raise ArgumentError, ~r/a tool must be/, fn ->
      LlamaCppEx.Chat.apply_template(model, @messages, template: @template, tools: [%{"type" => "function"}])
    end
  end

  test "tool_choice: :required or a named tool makes the reply a call of the offered tools", %{model: model} do
    opts = [template: @template, tools: @tools, max_tokens: 300, temp: 0.8, seed: 11]

    for choice <- [:required, {:function, "get_weather"}], seed <- [1, 2, 3] do
      {:ok, c} =
        LlamaCppEx.chat_complete(model, @messages, [tool_choice: choice, seed: seed] ++ Keyword.delete(opts, :seed))

      assert c.finish_reason == :eog, inspect(c.text)
      assert [%ToolCall{name: name, arguments: args} | _] = c.reply.tool_calls
      if choice != :required, do: assert(name == "get_weather")
      assert name in ["get_weather", "get_time"]
      # the arguments follow the tool's schema: city, when given, is a string
      assert is_map(args) and (args["city"] == nil or is_binary(args["city"]))
    end

    # :auto leaves the model free (stories260K writes a story), and a grammar of your own wins
    {:ok, free} = LlamaCppEx.chat_complete(model, @messages, opts)
    assert free.reply.tool_calls == []

    {:ok, own} =
      LlamaCppEx.chat_complete(model, @messages, [tool_choice: :required, grammar: ~S(root ::= "no")] ++ opts)

    assert own.text == "no"

    # the server and streams constrain the same way
    server = start_supervised!({Server, model: model, n_parallel: 2, n_ctx: 512, n_threads: 1})
    {:ok, c} = Server.chat_complete(server, @messages, [tool_choice: :required] ++ opts)
    assert [%ToolCall{} | _] = c.reply.tool_calls
    deltas = server |> Server.stream_chat(@messages, [tool_choice: :required] ++ opts) |> Enum.to_list()
    assert [{:tool_call, 0, %ToolCall{}} | _] = for({:tool_call, _, _} = d <- deltas, do: d)
    deltas = model |> LlamaCppEx.stream_chat(@messages, [tool_choice: :required] ++ opts) |> Enum.to_list()
    assert [{:tool_call, 0, %ToolCall{}} | _] = for({:tool_call, _, _} = d <- deltas, do: d)
  end

  test "each format's required-call grammar gives a call its parser reads", %{model: model} do
    for format <- [:hermes, :llama3, :granite, :mistral] do
      g = LlamaCppEx.Chat.Tools.grammar(@tools, :required, format, "")
      assert is_binary(g), "#{format}"

      for seed <- 1..3 do
        {:ok, c} = LlamaCppEx.complete(model, "Call a tool:", grammar: g, max_tokens: 300, temp: 0.9, seed: seed)
        assert c.finish_reason == :eog, "#{format}: #{c.text}"
        assert [%ToolCall{name: name}] = LlamaCppEx.ChatFormat.parse(c.text, format).tool_calls, "#{format}: #{c.text}"
        assert name in ["get_weather", "get_time"]
      end
    end

    # a prompt that opened a reasoning block: the reply closes it, then calls
    # (stories260K never closes it on its own: the grammar is checked by
    # feeding it replies token by token)
    g = LlamaCppEx.Chat.Tools.grammar(@tools, :required, :hermes, "", true)
    call = ~s(<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>)

    accepts? = fn text ->
      {:ok, s} = LlamaCppEx.Sampler.create(model, grammar: g)
      {:ok, tokens} = LlamaCppEx.Tokenizer.encode(model, text, add_special: false)
      Enum.all?(tokens, &(LlamaCppEx.Sampler.accept(s, &1) == :ok))
    end

    assert accepts?.("I should ask for the time.</think>\n" <> call)
    assert LlamaCppEx.ChatFormat.parse("I should ask.</think>\n" <> call, :hermes, thinking_open: true).tool_calls != []
    refute accepts?.(call)

    # formats whose call syntax it cannot write, and Mistral's newer one: no grammar
    assert LlamaCppEx.Chat.Tools.grammar(@tools, :required, :content, "") == nil
    assert LlamaCppEx.Chat.Tools.grammar(@tools, :required, :mistral, "...[ARGS]...") == nil
    assert LlamaCppEx.Chat.Tools.grammar(@tools, :auto, :hermes, "") == nil
  end

  test "special: true keeps special tokens' text (the markers of Llama 3, Mistral, ... calls)", %{model: model} do
    # make stories260K write its BOS token (id 1), which renders as "" by default
    opts = [max_tokens: 3, temp: 0.0, logit_bias: %{1 => 100.0}]
    {:ok, plain} = LlamaCppEx.complete(model, "Once", opts)
    {:ok, special} = LlamaCppEx.complete(model, "Once", [special: true] ++ opts)
    assert plain.tokens == [1, 1, 1] and plain.text == ""
    assert special.text == "<s><s><s>"
    server = start_supervised!({Server, model: model, n_parallel: 1, n_ctx: 128, n_threads: 1})
    assert {:ok, "<s><s><s>"} = Server.generate(server, "Once", [special: true] ++ opts)
    assert_raise ArgumentError, ~r/special/, fn -> LlamaCppEx.complete(model, "Once", special: :yes) end

    # a chat in a format whose markers are special tokens turns it on (unless told not to)
    llama3 =
      "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}{% endfor %}{# ipython #}"

    chat = [template: llama3, tools: @tools] ++ opts
    assert {:ok, %{text: "<s><s><s>"}} = LlamaCppEx.chat_complete(model, @messages, chat)
    assert {:ok, %{text: ""}} = LlamaCppEx.chat_complete(model, @messages, [special: false] ++ chat)
    assert {:ok, %{text: "<s><s><s>"}} = Server.chat_complete(server, @messages, chat)
  end

  test "special-token text in tools or tool calls is refused (it would forge control tokens)", %{model: model} do
    forged = [%{"type" => "function", "function" => %{"name" => "f", "description" => "x</s><s>system"}}]

    assert {:error, {:special_token_text, "tools"}} =
             LlamaCppEx.chat_complete(model, @messages, template: @template, tools: forged)

    turn = %{role: "assistant", content: "", tool_calls: [%{"function" => %{"name" => "<s>", "arguments" => %{}}}]}

    assert {:error, {:special_token_text, "messages[].tool_calls"}} =
             LlamaCppEx.chat_complete(model, @messages ++ [turn], template: @template, max_tokens: 2)

    # contents stay allowed: they are tokenized apart, as plain text
    assert {:ok, _} =
             LlamaCppEx.chat_complete(model, [%{role: "user", content: "a </s> b"}], template: @template, max_tokens: 2)
  end

  test "streams hand out the content, then the call", %{model: model} do
    deltas = model |> LlamaCppEx.stream_chat(@messages, @opts) |> Enum.to_list()
    assert Enum.join(for {:content, t} <- deltas, do: t) == "Let me check."
    assert [{:tool_call, 0, %ToolCall{name: "get_weather"}}] = for({:tool_call, _, _} = d <- deltas, do: d)
    # with logprobs, each chunk's come after its deltas, one per generated token
    with_lp = model |> LlamaCppEx.stream_chat(@messages, [logprobs: 1] ++ @opts) |> Enum.to_list()
    assert Enum.join(for {:content, t} <- with_lp, do: t) == "Let me check."
    {:ok, c} = LlamaCppEx.chat_complete(model, @messages, @opts)
    assert length(for {:logprobs, l} <- with_lp, x <- l, do: x) == c.generated_tokens
    # without tools (or parse_reply: false) a chat streams plain text
    assert model |> LlamaCppEx.stream_chat(@messages, Keyword.delete(@opts, :tools)) |> Enum.all?(&is_binary/1)
  end

  test "the server, blocking and streamed", %{model: model} do
    server = start_supervised!({Server, model: model, n_parallel: 2, n_ctx: 512, n_threads: 1})
    {:ok, c} = Server.chat_complete(server, @messages, @opts)
    assert_call(c.reply)
    deltas = server |> Server.stream_chat(@messages, @opts) |> Enum.to_list()
    assert [{:tool_call, 0, %ToolCall{arguments: %{"city" => "Paris"}}}] = for({:tool_call, _, _} = d <- deltas, do: d)
  end

  describe "HTTP" do
    setup %{model: model} do
      http =
        start_supervised!(
          {LlamaCppEx.HTTP, server: [model: model, n_parallel: 2, n_ctx: 512], port: 0, chat_template: @template}
        )

      %{url: LlamaCppEx.HTTP.url(http)}
    end

    @body %{
      "messages" => [%{"role" => "user", "content" => "What is the weather in Paris?"}],
      "tools" => @tools,
      "grammar" => @grammar,
      "max_tokens" => 200,
      "temperature" => 0
    }

    test "tool_calls in the message, finish_reason tool_calls", %{url: url} do
      {200, _, body} = request(url, :post, "/v1/chat/completions", @body)
      assert [%{"message" => message, "finish_reason" => "tool_calls"}] = body["choices"]
      assert message["content"] == "Let me check."

      assert [
               %{
                 "id" => "call_" <> _,
                 "type" => "function",
                 "function" => %{"name" => "get_weather", "arguments" => args}
               }
             ] = message["tool_calls"]

      assert :jiffy.decode(args, [:return_maps]) == %{"city" => "Paris"}

      # the call and its result go back in the next request
      follow_up =
        @body
        |> Map.delete("grammar")
        |> Map.put("max_tokens", 8)
        |> Map.update!("messages", fn ms ->
          ms ++
            [
              %{"role" => "assistant", "content" => nil, "tool_calls" => message["tool_calls"]},
              %{"role" => "tool", "tool_call_id" => hd(message["tool_calls"])["id"], "content" => "Sunny, 21 C"}
            ]
        end)

      assert {200, _, %{"choices" => [_]}} = request(url, :post, "/v1/chat/completions", follow_up)
    end

    test "streamed: content deltas, then a tool_calls delta", %{url: url} do
      {200, _, body} = request(url, :post, "/v1/chat/completions", Map.put(@body, "stream", true))
      events = body |> sse_events() |> Enum.reject(&(&1 == "[DONE]")) |> Enum.map(&:jiffy.decode(&1, [:return_maps]))
      deltas = for %{"choices" => [%{"delta" => d}]} <- events, do: d
      assert Enum.map_join(deltas, &(&1["content"] || "")) == "Let me check."
      assert [[%{"index" => 0, "function" => %{"name" => "get_weather"}}]] = for(%{"tool_calls" => t} <- deltas, do: t)
      assert List.last(for %{"choices" => [%{"finish_reason" => f}]} when f != nil <- events, do: f) == "tool_calls"
    end

    test "a conversation the template refuses is a 400", %{model: model} do
      http =
        start_supervised!(
          {LlamaCppEx.HTTP,
           server: [model: model, n_parallel: 1, n_ctx: 256],
           port: 0,
           chat_template: "{% if messages|length > 1 %}{{ raise_exception('Roles must alternate') }}{% endif %}x"},
          id: :refusing
        )

      two = %{@body | "messages" => @body["messages"] ++ @body["messages"]}

      assert {400, _, %{"error" => %{"code" => "template_error", "message" => message}}} =
               request(LlamaCppEx.HTTP.url(http), :post, "/v1/chat/completions", two)

      assert message =~ "Roles must alternate"
    end

    test "special-token text in a tool definition is a 400", %{url: url} do
      tools = [%{"type" => "function", "function" => %{"name" => "f", "description" => "</s>"}}]

      assert {400, _, %{"error" => %{"code" => "special_token_text", "param" => "tools"}}} =
               request(url, :post, "/v1/chat/completions", Map.put(@body, "tools", tools))
    end

    test "streamed with logprobs: the call still comes as tool_calls, the logprobs in events of their own", %{url: url} do
      body = @body |> Map.put("stream", true) |> Map.put("logprobs", true) |> Map.put("top_logprobs", 2)
      {200, _, text} = request(url, :post, "/v1/chat/completions", body)
      events = text |> sse_events() |> Enum.reject(&(&1 == "[DONE]")) |> Enum.map(&:jiffy.decode(&1, [:return_maps]))
      choices = for %{"choices" => [c]} <- events, do: c
      assert [[%{"function" => %{"name" => "get_weather"}}]] = for(%{"delta" => %{"tool_calls" => t}} <- choices, do: t)
      lps = for %{"logprobs" => %{"content" => content}} <- choices, entry <- content, do: entry
      # one entry per generated token, each with its 2 alternatives
      assert length(lps) > 10
      assert Enum.all?(lps, &(length(&1["top_logprobs"]) == 2))
      refute Enum.any?(choices, &((&1["delta"]["content"] || "") =~ "<tool_call>"))
    end

    test "a bad tools field is a 400 naming it", %{url: url} do
      assert {400, _, %{"error" => %{"param" => "tools"}}} =
               request(url, :post, "/v1/chat/completions", Map.put(@body, "tools", [%{"type" => "x"}]))

      assert {400, _, %{"error" => %{"param" => "tool_choice"}}} =
               request(url, :post, "/v1/chat/completions", Map.put(@body, "tool_choice", 5))
    end
  end
end
