defmodule LlamaCppEx.HTTPFuzzTest do
  # Malformed requests over raw TCP at LlamaCppEx.HTTP: broken request
  # lines, bad lengths, truncated and oversized bodies, invalid UTF-8 and
  # JSON, random bytes. Every one gets an HTTP error status (4xx, or httpd's
  # 501/505 for a method or version it does not implement; never a 500) or
  # a closed connection, and the server keeps answering correctly: the same
  # greedy completion before, between and after.
  use ExUnit.Case, async: false

  import LlamaCppEx.HTTPHelpers
  alias LlamaCppEx.{HTTP, TestHelpers}

  @moduletag :model

  setup_all do
    model = TestHelpers.load_model!()

    {:ok, http} =
      HTTP.start_link(
        server: [model: model, n_parallel: 2, n_ctx: 512],
        port: 0,
        max_body: 16 * 1024,
        max_header_size: 4096,
        idle_timeout: 1000
      )

    url = HTTP.url(http)
    %{url: url, port: HTTP.port(http), reference: greedy(url)}
  end

  defp greedy(url) do
    {200, _, body} =
      request(url, :post, "/v1/completions", %{"prompt" => "Once upon a time", "max_tokens" => 16, "temperature" => 0})

    hd(body["choices"])["text"]
  end

  defp post(path, body, extra \\ "") do
    "POST #{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n#{extra}Content-Length: #{byte_size(body)}\r\n\r\n" <>
      body
  end

  defp cases do
    chat = "/v1/chat/completions"

    [
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET /health HTTP/1.1 extra\r\n\r\n",
      "GET " <> String.duplicate("/a", 10_000) <> " HTTP/1.1\r\n\r\n",
      # httpd skips a header line without a colon: answered, 200 allowed (below)
      "GET /health HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n",
      "GET /health HTTP/1.1\r\n" <> String.duplicate("X-A: b\r\n", 1000) <> "\r\n",
      "GET /health HTTP/1.1\r\nX-Long: " <> String.duplicate("v", 10_000) <> "\r\n\r\n",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"messages\":",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" <> String.duplicate("a", 20_000),
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}{}{}{}",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
      "POST #{chat} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
      post(chat, <<"{\"messages\": [{\"role\": \"user\", \"content\": \"", 0xC3, 0x28, "\"}]}">>),
      post(chat, <<0xFF, 0xFE, 0xFD>>),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud800\"}]}"),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\u0000b\"}]}"),
      post(chat, String.duplicate("[", 10_000) <> String.duplicate("]", 10_000)),
      post(chat, "{\"messages\": 1e999999}"),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 1e400}"),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 99999999999999999999}"),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logit_bias\": {\"-1\": 5}}"),
      post(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logit_bias\": {\"99999999\": 5}}"),
      post(
        chat,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"type\": \"nonsense\"}}}}"
      ),
      post("/v1/completions", "{\"prompt\": [99999999]}"),
      post("/v1/completions", "{\"prompt\": [[]]}"),
      post("/tokenize", "{\"content\": 5}"),
      post("/detokenize", "{\"tokens\": [-1]}"),
      post("/v1/embeddings", "{\"input\": \"x\"}"),
      post("/nowhere", "{}"),
      "BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n",
      "\r\n\r\n\r\n",
      <<0, 0, 0, 0>>
    ]
  end

  defp check!(bytes, label) do
    case raw_port(bytes) do
      {_, ""} ->
        :closed

      {_, resp} ->
        code = status!(resp, label)
        allowed = if String.contains?(bytes, "Bad header line"), do: [200], else: []
        # 501: a method httpd does not implement, 505: an HTTP version it does not
        assert code in 400..499 or code in [501, 505] or code in allowed,
               "#{label}: #{inspect(String.slice(resp, 0, 300))}"

        code
    end
  end

  # httpd echoes the request's version as it came ("HTTPq1.1"), in its status line
  defp status!(resp, label) do
    case Regex.run(~r"^\S+ (\d{3}) [^\r\n]*\r\n", resp) do
      [_, code] -> String.to_integer(code)
      nil -> flunk("#{label}: no status line: #{inspect(String.slice(resp, 0, 200))}")
    end
  end

  defp raw_port(bytes), do: raw(Process.get(:port), bytes, timeout: 4000)

  test "malformed requests get an HTTP error or a closed connection", %{port: port, url: url, reference: ref} do
    Process.put(:port, port)

    codes =
      for {bytes, i} <- Enum.with_index(cases()) do
        code = check!(bytes, "case #{i}")
        if rem(i, 8) == 0, do: assert(greedy(url) == ref)
        code
      end

    # most of them are answered, not just dropped
    assert Enum.count(codes, &is_integer/1) > length(codes) / 2
    assert greedy(url) == ref
  end

  test "random bytes and random mutations of a valid request", %{port: port, url: url, reference: ref} do
    Process.put(:port, port)
    # a different sample each run (mix test --seed N repeats one)
    :rand.seed(:exsss, {ExUnit.configuration()[:seed], 2, 3})
    valid = post("/v1/chat/completions", ~s({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))

    for i <- 1..60 do
      bytes =
        if rem(i, 2) == 0 do
          :crypto.strong_rand_bytes(:rand.uniform(2000))
        else
          # flip a few bytes of a valid request
          Enum.reduce(1..:rand.uniform(6), valid, fn _, acc ->
            pos = :rand.uniform(byte_size(acc)) - 1
            <<a::binary-size(pos), _, b::binary>> = acc
            a <> <<:rand.uniform(256) - 1>> <> b
          end)
        end

      case raw_port(bytes) do
        {_, ""} ->
          :ok

        # a mutation may leave the request valid, or the mutated bytes in its body
        {_, resp} ->
          code = status!(resp, "mutation #{i}")
          assert code in 200..499 or code in [501, 505], inspect(String.slice(resp, 0, 400))
      end
    end

    assert greedy(url) == ref
  end

  test "a client that stalls mid-request is dropped", %{port: port} do
    {:ok, sock} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false])
    :ok = :gen_tcp.send(sock, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Len")
    t0 = System.monotonic_time(:millisecond)
    result = :gen_tcp.recv(sock, 0, 20_000)
    elapsed = System.monotonic_time(:millisecond) - t0
    :gen_tcp.close(sock)
    # httpd answers 408 or just closes, within its timeouts
    assert match?({:error, :closed}, result) or match?({:ok, "HTTP/1.1 408" <> _}, result), inspect(result)
    assert elapsed < 15_000
  end

  test "connections past :max_connections get a 503 until others close" do
    {:ok, http} =
      HTTP.start_link(
        server: [model: TestHelpers.load_model!(), n_parallel: 1, n_ctx: 256],
        port: 0,
        max_connections: 2
      )

    port = HTTP.port(http)
    idle = for _ <- 1..2, do: elem(:gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false]), 1)
    health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    assert TestHelpers.eventually(fn ->
             match?({_, "HTTP/1.1 503 " <> _}, raw(port, health, timeout: 2000))
           end)

    Enum.each(idle, &:gen_tcp.close/1)

    assert TestHelpers.eventually(fn ->
             match?({_, "HTTP/1.1 200 " <> _}, raw(port, health, timeout: 2000))
           end)

    HTTP.stop(http)
  end
end
