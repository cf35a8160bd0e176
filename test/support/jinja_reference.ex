defmodule LlamaCppEx.JinjaReference do
  @moduledoc false
  # The conformance set-up for LlamaCppEx.Jinja: the real templates of the pinned
  # llama.cpp source (models/templates/*.jinja, read in place, never copied), the
  # conversations they are rendered with, and the reference renderer, @huggingface/jinja
  # run by Node.js (test/js/render_jinja.js) from the npm cache (scripts/npm_deps.sh).

  alias LlamaCppEx.Jinja.Value

  @package "@huggingface/jinja@0.5.11"

  @doc "Paths of the real templates, sorted."
  def templates(src), do: Path.wildcard(Path.join(src, "models/templates/*.jinja")) |> Enum.sort()

  @doc "The npm cache directory with the reference installed (installs it once)."
  def npm_dir! do
    script = Path.expand("../../scripts/npm_deps.sh", __DIR__)

    case System.cmd(script, [@package], stderr_to_stdout: false) do
      {out, 0} -> out |> String.trim() |> String.split("\n") |> List.last()
      {out, rc} -> raise "scripts/npm_deps.sh failed (#{rc}): #{out}"
    end
  end

  @doc "Renders each {source, vars} with the reference: [{:ok, text} | {:error, message}]."
  def render_all(jobs) do
    node = System.find_executable("node") || raise "node not found (scripts/setup.sh installs it)"
    script = Path.expand("../js/render_jinja.js", __DIR__)

    payload =
      jobs
      |> Enum.map(fn {source, vars} -> {:obj, [{"template", source}, {"context", Value.from_term(vars)}]} end)
      |> Value.to_json(fn _ -> [] end, %{})

    input = Path.join(System.tmp_dir!(), "jinja_jobs_#{System.unique_integer([:positive])}.json")
    File.write!(input, payload)

    try do
      {out, 0} = System.cmd("sh", ["-c", "exec \"$0\" \"$1\" \"$2\" < \"$3\"", node, script, npm_dir!(), input])
      decode_results(out)
    after
      File.rm(input)
    end
  end

  # The reference's output: [{"ok": s} | {"error": s}], read with jiffy (Debian's
  # erlang-jiffy, as the JSON-schema conformance test does).
  defp decode_results(json) do
    for dir <- Path.wildcard("/usr/lib/erlang/lib/jiffy-*/ebin"), do: Code.prepend_path(dir)

    # apply/3: jiffy is a test-time tool from Debian, not a dependency
    :jiffy
    |> apply(:decode, [json, [:return_maps]])
    |> Enum.map(fn
      %{"ok" => s} -> {:ok, s}
      %{"error" => e} -> {:error, e}
    end)
  end

  # --- conversations ------------------------------------------------------------------------

  @tools [
    [
      type: "function",
      function: [
        name: "get_weather",
        description: "Get the current weather in a city",
        parameters: [
          type: "object",
          properties: [
            city: [type: "string", description: "The city, e.g. Paris"],
            unit: [type: "string", description: "The unit", enum: ["celsius", "fahrenheit"]]
          ],
          required: ["city"]
        ]
      ]
    ],
    [
      type: "function",
      function: [
        name: "search",
        description: "Search the web",
        parameters: [
          type: "object",
          properties: [query: [type: "string", description: "What to look for"]],
          required: ["query"]
        ]
      ]
    ]
  ]

  @doc "Named conversations: {name, variables} (bos/eos tokens are added per template)."
  def conversations do
    system = [role: "system", content: "You are a helpful assistant."]
    user = [role: "user", content: "What is the capital of France?"]
    answer = [role: "assistant", content: "Paris."]
    follow = [role: "user", content: "And of Italy? Réponds en français, s'il te plaît 🙂"]

    call = fn args ->
      [
        role: "assistant",
        content: "",
        tool_calls: [[id: "call_1", type: "function", function: [name: "get_weather", arguments: args]]]
      ]
    end

    tool_result = [
      role: "tool",
      tool_call_id: "call_1",
      name: "get_weather",
      content: "{\"temperature\": 21, \"unit\": \"celsius\"}"
    ]

    final = [role: "assistant", content: "It is 21 °C in Paris."]
    weather = [role: "user", content: "What's the weather in Paris?"]
    thinking = [role: "assistant", content: "Paris.", reasoning_content: "The user asks for France's capital."]

    [
      {"system_user", [messages: [system, user], add_generation_prompt: true]},
      {"user_no_prompt", [messages: [user], add_generation_prompt: false]},
      {"multi_turn", [messages: [system, user, answer, follow], add_generation_prompt: true]},
      {"multi_turn_closed", [messages: [user, answer], add_generation_prompt: false]},
      {"tools_given", [messages: [system, weather], tools: @tools, add_generation_prompt: true]},
      {"tool_call_dict_args",
       [
         messages: [weather, call.(city: "Paris", unit: "celsius"), tool_result, final],
         tools: @tools,
         add_generation_prompt: false
       ]},
      {"tool_call_string_args",
       [
         messages: [system, weather, call.("{\"city\": \"Paris\"}"), tool_result],
         tools: @tools,
         add_generation_prompt: true
       ]},
      {"thinking_on", [messages: [user, thinking, follow], add_generation_prompt: true, enable_thinking: true]},
      {"thinking_off", [messages: [system, user], add_generation_prompt: true, enable_thinking: false]},
      {"twenty_messages_tools",
       [
         messages:
           Enum.take(
             [system | Enum.concat(List.duplicate([weather, call.(city: "Paris"), tool_result, final, follow], 4))],
             20
           ),
         tools: @tools,
         add_generation_prompt: true
       ]}
    ]
  end

  @doc "The bos/eos tokens a template's model uses, guessed from the tokens it writes."
  def special_tokens(source) do
    cond do
      source =~ "<|begin_of_text|>" or source =~ "<|start_header_id|>" ->
        [bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>"]

      source =~ "<|im_start|>" ->
        [bos_token: "", eos_token: "<|im_end|>"]

      source =~ "<｜begin▁of▁sentence｜>" ->
        [bos_token: "<｜begin▁of▁sentence｜>", eos_token: "<｜end▁of▁sentence｜>"]

      source =~ "<start_of_turn>" ->
        [bos_token: "<bos>", eos_token: "<eos>"]

      true ->
        [bos_token: "<s>", eos_token: "</s>"]
    end
  end

  @doc "Every {template path, conversation name, variables} to compare."
  def cases(src) do
    for path <- templates(src), source = File.read!(path), {name, vars} <- conversations() do
      {path, name, Keyword.merge(special_tokens(source), vars)}
    end
  end
end
