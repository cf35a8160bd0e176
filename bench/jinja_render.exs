# Time to render a 20-message conversation with tools through the largest real templates
# of the pinned llama.cpp source, uncached (compile + render) and cached (render of the
# compiled template; a compile hit is a table lookup). A script, not a test:
#
#   MIX_ENV=test mix run bench/jinja_render.exs [N]
alias LlamaCppEx.{Jinja, JinjaReference, TestHelpers}

n = String.to_integer(List.first(System.argv()) || "50")
src = TestHelpers.llama_src()
# system + 4 rounds of (question, tool call, tool result, answer, follow-up), first 20
{_, base} = JinjaReference.conversations() |> List.keyfind("twenty_messages_tools", 0)
messages = base[:messages]

time = fn fun ->
  fun.()
  {us, _} = :timer.tc(fn -> for _ <- 1..n, do: fun.() end)
  div(us, n)
end

JinjaReference.templates(src)
|> Enum.sort_by(&(-File.stat!(&1).size))
|> Enum.take(8)
|> Enum.each(fn path ->
  source = File.read!(path)

  vars =
    Keyword.merge(JinjaReference.special_tokens(source),
      messages: Enum.take(messages, 20),
      tools: base[:tools],
      add_generation_prompt: true
    )

  {:ok, t} = Jinja.compile(source)

  case Jinja.render(t, vars) do
    {:ok, out} ->
      uncached =
        time.(fn ->
          {:ok, t} = Jinja.compile(source, cache: false)
          Jinja.render(t, vars)
        end)

      cached = time.(fn -> Jinja.render(t, vars) end)

      IO.puts(
        "#{Path.basename(path)} (#{byte_size(source)} B, output #{byte_size(out)} B): uncached #{uncached} µs, cached #{cached} µs"
      )

    {:error, {:template_error, e}} ->
      IO.puts("#{Path.basename(path)}: #{e.message} (line #{e.line})")
  end
end)
