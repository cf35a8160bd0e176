defmodule LlamaCppEx.HTTPClientsTest do
  # LlamaCppEx.HTTP driven by real clients over loopback: the official
  # `openai` npm package (test/js/openai_client.mjs) and the chat page in
  # headless Chromium through playwright-core (test/js/chat_page.mjs). The
  # npm packages are installed into the cache by scripts/npm_deps.sh;
  # Node.js and Chromium are Debian's (scripts/setup.sh installs them).
  use ExUnit.Case, async: false

  import LlamaCppEx.HTTPHelpers
  alias LlamaCppEx.{HTTP, TestHelpers}

  @moduletag :model
  @key "client-key"

  setup_all do
    model = TestHelpers.load_model!()

    {:ok, http} =
      HTTP.start_link(
        server: [model: model, n_parallel: 4, n_ctx: 1024],
        embeddings: [model: model],
        port: 0,
        api_key: @key
      )

    %{url: HTTP.url(http), http: http}
  end

  test "the openai npm client: chat, completions, streams, n, logprobs, json_schema, embeddings, errors", %{url: url} do
    {out, status} = node("openai_client.mjs", [{"LCX_BASE_URL", url}, {"LCX_API_KEY", @key}])
    assert status == 0, out
    result = out |> String.split("\n", trim: true) |> List.last() |> :jiffy.decode([:return_maps])
    assert result["model"] == "stories260K.gguf"
    assert result["n_embd"] == 64
    assert result["json"]["color"] in ["red", "green"]
    # the deltas of a stream arrive as separate events
    assert result["stream_chunks"] > 3
  end

  @tag :slow
  test "the chat page in headless Chromium streams a reply" do
    chromium = System.find_executable("chromium") || flunk("chromium is not installed: run scripts/setup.sh")
    model = TestHelpers.load_model!()
    # the page itself has no key to send
    {:ok, http} = HTTP.start_link(server: [model: model, n_parallel: 1, n_ctx: 1024], port: 0)
    dir = Path.join(System.tmp_dir!(), "llama_cpp_ex_http_page_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    shot = Path.join(dir, "chat_page.png")

    {out, status} =
      node("chat_page.mjs", [{"LCX_BASE_URL", HTTP.url(http)}, {"LCX_SCREENSHOT", shot}, {"LCX_CHROMIUM", chromium}])

    assert status == 0, out
    result = out |> String.split("\n", trim: true) |> List.last() |> :jiffy.decode([:return_maps])
    assert result["errors"] == []
    assert result["class"] =~ "assistant", inspect(result)
    assert String.length(String.trim(result["reply"])) > 0
    # the reply was written in several steps (streamed), not at once
    assert result["updates"] > 2
    assert <<0x89, "PNG", _::binary>> = File.read!(shot)
    IO.puts("\nchat page screenshot: #{shot}")
    HTTP.stop(http)
  end
end
