defmodule LlamaCppEx.HTTPTest do
  # LlamaCppEx.HTTP over real loopback HTTP: shapes, errors, auth, limits,
  # SSE framing (curl), a client that disconnects mid-stream, metrics.
  use ExUnit.Case, async: false

  import LlamaCppEx.HTTPHelpers
  alias LlamaCppEx.{HTTP, Server, TestHelpers, Tokenizer}

  @moduletag :model
  @key "test-key-123"

  setup_all do
    model = TestHelpers.load_model!()
    {:ok, server} = Server.start_link(model: model, n_parallel: 2, n_ctx: 2048)

    {:ok, http} =
      HTTP.start_link(
        server: server,
        embeddings: [model: model],
        port: 0,
        api_key: @key,
        max_body: 64 * 1024,
        max_headers: 20
      )

    on_exit(fn -> :ok end)
    %{url: HTTP.url(http), port: HTTP.port(http), http: http, server: server, model: model}
  end

  defp auth, do: [{"authorization", "Bearer #{@key}"}]

  defp chat(url, body), do: request(url, :post, "/v1/chat/completions", body, auth())

  @messages [%{"role" => "user", "content" => "Tell me a story"}]

  describe "keep-alive" do
    # httpd's minimum_bytes_per_second counts every second of a connection:
    # with it, a client that waited 3 s between requests (or read a reply
    # that long) found its keep-alive connection closed under its next request
    test "a connection idle for longer than 3 s still takes the next request", %{port: port} do
      {:ok, sock} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false])
      req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
      :ok = :gen_tcp.send(sock, req)
      assert {:ok, "HTTP/1.1 200" <> _} = :gen_tcp.recv(sock, 0, 5000)
      Process.sleep(4500)
      :ok = :gen_tcp.send(sock, req)
      assert {:ok, "HTTP/1.1 200" <> _} = :gen_tcp.recv(sock, 0, 5000)
      :gen_tcp.close(sock)
    end
  end

  describe "endpoints" do
    test "a greedy chat completion equals LlamaCppEx.Server.chat_complete/3", %{url: url, server: server} do
      {200, headers, body} = chat(url, %{"messages" => @messages, "max_tokens" => 20, "temperature" => 0})
      assert headers["content-type"] == "application/json"
      assert %{"object" => "chat.completion", "choices" => [choice], "usage" => usage} = body
      assert choice["message"]["role"] == "assistant"

      {:ok, c} = Server.chat_complete(server, @messages, max_tokens: 20, temp: 0.0, template: "chatml")
      assert choice["message"]["content"] == c.text
      assert choice["finish_reason"] == if(c.finish_reason == :max_tokens, do: "length", else: "stop")
      assert usage["completion_tokens"] == c.generated_tokens
      assert usage["prompt_tokens"] == c.prompt_tokens
    end

    test "completions: a stop string ends with finish_reason stop", %{url: url, server: server} do
      {:ok, text} = Server.generate(server, "Once upon a time", max_tokens: 30, temp: 0.0)
      # a stop string that the greedy text contains
      [_, word | _] = String.split(text, " ", trim: true)

      {200, _, body} =
        request(
          url,
          :post,
          "/v1/completions",
          %{"prompt" => "Once upon a time", "max_tokens" => 30, "temperature" => 0, "stop" => word},
          auth()
        )

      [choice] = body["choices"]
      assert choice["finish_reason"] == "stop"
      refute choice["text"] =~ word
      assert String.starts_with?(text, choice["text"])
    end

    test "completions: token-id prompts, logprobs, n", %{url: url, model: model} do
      {:ok, ids} = Tokenizer.encode(model, "Once upon a time")
      body = %{"prompt" => ids, "max_tokens" => 5, "temperature" => 0, "logprobs" => 2, "n" => 2}
      {200, _, resp} = request(url, :post, "/v1/completions", body, auth())
      assert [%{"index" => 0} = a, %{"index" => 1} = b] = resp["choices"]
      assert a["text"] == b["text"]
      lp = a["logprobs"]
      assert length(lp["tokens"]) == 5 and length(lp["token_logprobs"]) == 5
      assert Enum.all?(lp["top_logprobs"], &(map_size(&1) in 1..2))
      assert Enum.join(lp["tokens"]) == a["text"]
      assert hd(lp["text_offset"]) == 0
      assert resp["usage"]["completion_tokens"] == 10
      assert resp["usage"]["prompt_tokens"] == length(ids)
    end

    test "logit_bias -100 bans a token", %{url: url, server: server} do
      {:ok, c} = Server.complete(server, "Once upon a time", max_tokens: 12, temp: 0.0)
      [first | _] = c.tokens
      body = %{"prompt" => "Once upon a time", "max_tokens" => 12, "temperature" => 0}
      {200, _, free} = request(url, :post, "/v1/completions", body, auth())
      assert hd(free["choices"])["text"] == c.text

      {200, _, banned} =
        request(url, :post, "/v1/completions", Map.put(body, "logit_bias", %{"#{first}" => -100}), auth())

      {:ok, b} =
        Server.complete(server, "Once upon a time", max_tokens: 12, temp: 0.0, logit_bias: [{first, :neg_infinity}])

      assert hd(banned["choices"])["text"] == b.text
      refute b.text == c.text
      refute first in b.tokens
    end

    test "tokenize and detokenize in llama-server's shapes", %{url: url, model: model} do
      {200, _, %{"tokens" => tokens}} = request(url, :post, "/tokenize", %{"content" => "Once upon a time"}, auth())
      assert {:ok, ^tokens} = Tokenizer.encode(model, "Once upon a time", add_special: false, parse_special: true)

      {200, _, %{"tokens" => pieces}} =
        request(
          url,
          :post,
          "/tokenize",
          %{"content" => "Once upon", "with_pieces" => true, "add_special" => true},
          auth()
        )

      assert [%{"id" => 1, "piece" => _} | _] = pieces
      {200, _, %{"content" => text}} = request(url, :post, "/detokenize", %{"tokens" => tokens}, auth())
      assert text == " Once upon a time" or text == "Once upon a time"
      {400, _, err} = request(url, :post, "/detokenize", %{"tokens" => [999_999]}, auth())
      assert err["error"]["param"] == "tokens"
    end

    test "embeddings as floats and base64 agree", %{url: url} do
      {200, _, f} = request(url, :post, "/v1/embeddings", %{"input" => ["a cat", "a dog"]}, auth())
      {200, _, b} = request(url, :post, "/v1/embeddings", %{"input" => "a cat", "encoding_format" => "base64"}, auth())
      [%{"embedding" => v0, "index" => 0}, %{"index" => 1}] = f["data"]
      floats = for <<x::float-32-little <- Base.decode64!(hd(b["data"])["embedding"])>>, do: x
      assert length(floats) == length(v0)
      assert Enum.zip(floats, v0) |> Enum.all?(fn {a, b} -> abs(a - b) < 1.0e-6 end)
      assert_in_delta Enum.reduce(v0, 0.0, &(&1 * &1 + &2)), 1.0, 1.0e-4
      assert f["usage"]["prompt_tokens"] > 0
    end

    test "models, health and the chat page", %{url: url} do
      {200, _, %{"data" => [%{"id" => "stories260K.gguf", "object" => "model"}]}} =
        request(url, :get, "/v1/models", nil, auth())

      {200, _, %{"status" => "ok"}} = request(url, :get, "/health")
      {200, headers, html} = request(url, :get, "/", nil, auth())
      assert headers["content-type"] =~ "text/html"
      assert html =~ "/v1/chat/completions"
    end
  end

  describe "errors" do
    test "the key: missing, wrong, Bearer or X-Api-Key; /health is public", %{url: url} do
      {401, _, %{"error" => %{"type" => "authentication_error"}}} = request(url, :get, "/v1/models")
      {401, _, _} = request(url, :get, "/v1/models", nil, [{"authorization", "Bearer #{@key}x"}])
      {401, _, _} = request(url, :get, "/metrics", nil, [{"authorization", "Bearer"}])
      {401, _, _} = request(url, :get, "/", nil)
      {200, _, _} = request(url, :get, "/v1/models", nil, [{"x-api-key", @key}])
      {200, _, _} = request(url, :get, "/health")
    end

    test "404, 405 with Allow", %{url: url} do
      {404, _, %{"error" => %{"code" => "not_found"}}} = request(url, :get, "/v2/nothing", nil, auth())
      {405, headers, %{"error" => _}} = request(url, :get, "/v1/chat/completions", nil, auth())
      assert headers["allow"] == "POST"
      {405, _, _} = request(url, :delete, "/v1/models", nil, auth())
    end

    test "bad JSON, not an object, invalid UTF-8: 400", %{url: url} do
      for body <- ["{", "[1,2]", "\"x\"", "{\"messages\": [}", <<"{\"prompt\": \"", 0xFF, "\"}">>, ""] do
        {400, _, %{"error" => %{"type" => "invalid_request_error", "message" => m}}} =
          request(url, :post, "/v1/completions", body, auth())

        assert is_binary(m)
      end
    end

    test "a field of the wrong type is a 400 naming it", %{url: url} do
      base = %{"messages" => @messages, "max_tokens" => 4}

      for {field, value} <- [
            {"temperature", "hot"},
            {"max_tokens", 1.5},
            {"top_p", 3},
            {"n", 0},
            {"stream", "yes"},
            {"stop", 5},
            {"seed", "s"},
            {"logit_bias", [1]},
            {"top_k", -1},
            {"presence_penalty", "x"},
            {"frequency_penalty", []},
            {"response_format", "json"},
            {"grammar", 1},
            {"top_logprobs", 2},
            {"stream_options", 1}
          ] do
        {400, _, %{"error" => e}} = chat(url, Map.put(base, field, value))
        assert e["param"] == field or String.starts_with?(e["param"], field), "#{field}: #{inspect(e)}"
      end

      {400, _, %{"error" => %{"param" => "messages[0].content"}}} =
        chat(url, %{"messages" => [%{"role" => "user", "content" => 1}]})

      {400, _, %{"error" => %{"param" => "messages"}}} = chat(url, %{"model" => "x"})
      {400, _, %{"error" => %{"param" => "input"}}} = request(url, :post, "/v1/embeddings", %{"input" => [1]}, auth())
    end

    test "unknown fields are ignored", %{url: url} do
      {200, _, _} =
        chat(url, %{"messages" => @messages, "max_tokens" => 2, "user" => "me", "tools" => [], "whatever" => %{}})
    end

    test "an invalid grammar and a too-long prompt are 400s", %{url: url} do
      {400, _, %{"error" => %{"code" => "invalid_grammar"}}} =
        chat(url, %{"messages" => @messages, "grammar" => "root ::= ("})

      long = String.duplicate("once upon a time ", 2000)

      {400, _, %{"error" => %{"code" => "context_length_exceeded"}}} =
        request(url, :post, "/v1/completions", %{"prompt" => long}, auth())
    end

    test "413 for a body over :max_body, 431 for too many headers", %{url: url, port: port} do
      # httpd answers from the Content-Length, before the body (and closes)
      body = :jiffy.encode(%{"prompt" => String.duplicate("a", 70_000)})

      req =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer #{@key}\r\n" <>
          "Content-Length: #{IO.iodata_length(body)}\r\n\r\n"

      {:closed, resp} = raw(port, req)
      assert resp =~ ~r/^HTTP\/1.1 413 /
      # just under the limit: an ordinary answer
      {200, _, _} = request(url, :post, "/tokenize", %{"content" => String.duplicate("a", 60_000)}, auth())
      headers = auth() ++ for i <- 1..30, do: {"x-h#{i}", "v"}
      {431, _, %{"error" => %{"code" => "too_many_headers"}}} = request(url, :get, "/v1/models", nil, headers)
    end

    test "503 with Retry-After when the queue is full" do
      model = TestHelpers.load_model!()
      {:ok, server} = Server.start_link(model: model, n_parallel: 1, n_ctx: 2048, max_queue: 0)
      {:ok, http} = HTTP.start_link(server: server, port: 0)
      url = HTTP.url(http)
      # hold the only slot with a stream whose consumer does not read on
      parent = self()

      holder =
        spawn(fn ->
          server
          |> Server.stream("Once", max_tokens: 2000, logit_bias: [{2, :neg_infinity}])
          |> Enum.each(fn _ ->
            send(parent, :holding)
            Process.sleep(:infinity)
          end)
        end)

      assert_receive :holding, 5000
      # curl, as :httpc itself retries a 503 that has a Retry-After
      {out, 0} = System.cmd("curl", ["-sS", "-i", "-m", "10", url <> "/v1/completions", "-d", ~s({"prompt": "Hi"})])
      [head, body] = String.split(out, "\r\n\r\n", parts: 2)
      assert head =~ ~r/^HTTP\/1.1 503 /
      assert head =~ ~r/^retry-after: 1$/mi
      assert %{"error" => %{"code" => "overloaded", "type" => "server_error"}} = :jiffy.decode(body, [:return_maps])
      Process.exit(holder, :kill)
      HTTP.stop(http)
    end
  end

  describe "streaming" do
    test "SSE framing and headers, through curl", %{url: url} do
      body =
        :jiffy.encode(%{
          "messages" => @messages,
          "max_tokens" => 12,
          "temperature" => 0,
          "stream" => true,
          "stream_options" => %{"include_usage" => true}
        })

      {out, 0} =
        System.cmd("curl", [
          "-sS",
          "-N",
          "-D",
          "-",
          "-H",
          "Authorization: Bearer #{@key}",
          "-H",
          "Content-Type: application/json",
          "--data-binary",
          body,
          url <> "/v1/chat/completions"
        ])

      [head, sse] = String.split(out, "\r\n\r\n", parts: 2)
      assert head =~ ~r/^HTTP\/1.1 200/
      assert head =~ ~r/content-type: text\/event-stream/i
      assert head =~ ~r/transfer-encoding: chunked/i
      assert head =~ ~r/cache-control: no-cache/i
      assert String.ends_with?(sse, "data: [DONE]\n\n")
      events = sse_events(sse)
      assert List.last(events) == "[DONE]"
      chunks = events |> Enum.drop(-1) |> Enum.map(&:jiffy.decode(&1, [:return_maps]))
      [first | _] = chunks
      assert [%{"delta" => %{"role" => "assistant", "content" => ""}}] = first["choices"]
      assert Enum.all?(chunks, &(&1["object"] == "chat.completion.chunk" and Map.has_key?(&1, "usage")))
      assert Enum.all?(chunks, &(&1["id"] == first["id"]))
      usage = List.last(chunks)
      assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
      finish = Enum.at(chunks, -2)
      assert [%{"finish_reason" => "length", "delta" => %{}}] = finish["choices"]
      text = chunks |> Enum.flat_map(& &1["choices"]) |> Enum.map_join(&(get_in(&1, ["delta", "content"]) || ""))
      {200, _, full} = chat(url, %{"messages" => @messages, "max_tokens" => 12, "temperature" => 0})
      assert text == hd(full["choices"])["message"]["content"]
    end

    test "n streamed choices: each has its role chunk, its text and its finish", %{url: url} do
      body =
        :jiffy.encode(%{
          "prompt" => "Once upon a time",
          "max_tokens" => 6,
          "temperature" => 0,
          "n" => 2,
          "stream" => true
        })

      {out, 0} =
        System.cmd("curl", [
          "-sS",
          "-N",
          "-H",
          "Authorization: Bearer #{@key}",
          "--data-binary",
          body,
          url <> "/v1/completions"
        ])

      chunks = out |> sse_events() |> Enum.drop(-1) |> Enum.map(&:jiffy.decode(&1, [:return_maps]))
      choices = Enum.flat_map(chunks, & &1["choices"])
      by_index = Enum.group_by(choices, & &1["index"])
      assert Map.keys(by_index) |> Enum.sort() == [0, 1]
      texts = Map.new(by_index, fn {i, cs} -> {i, Enum.map_join(cs, & &1["text"])} end)
      # greedy: both choices are the same text, that of the unstreamed request
      {200, _, full} =
        request(
          url,
          :post,
          "/v1/completions",
          %{"prompt" => "Once upon a time", "max_tokens" => 6, "temperature" => 0},
          auth()
        )

      assert texts[0] == hd(full["choices"])["text"] and texts[1] == texts[0]
      assert Enum.count(choices, &(&1["finish_reason"] == "length")) == 2
    end

    test "a stream that fails before its first token is an ordinary HTTP error", %{url: url} do
      {400, headers, %{"error" => %{"code" => "invalid_grammar"}}} =
        chat(url, %{"messages" => @messages, "stream" => true, "grammar" => "root ::= ("})

      assert headers["content-type"] == "application/json"
    end

    test "HTTP/1.0: the stream ends by closing the connection", %{port: port} do
      body = ~s({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "stream": true})

      req =
        "POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer #{@key}\r\nContent-Type: application/json\r\n" <>
          "Content-Length: #{byte_size(body)}\r\n\r\n" <> body

      {:closed, resp} = raw(port, req, half_close: false)
      [head, sse] = String.split(resp, "\r\n\r\n", parts: 2)
      assert head =~ "200"
      refute head =~ ~r/transfer-encoding/i
      assert String.ends_with?(sse, "data: [DONE]\n\n")
    end

    test "a client that disconnects mid-stream frees its slot", %{port: port, server: server} do
      before = Server.stats(server)
      # eos banned: it would generate until its slot's 2048 cells are full
      body = ~s({"prompt": "Once upon a time", "stream": true, "temperature": 0, "logit_bias": {"2": false}})

      req =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer #{@key}\r\n" <>
          "Content-Type: application/json\r\nContent-Length: #{byte_size(body)}\r\n\r\n" <> body

      {:ok, sock} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false])
      :ok = :gen_tcp.send(sock, req)
      {:ok, data} = :gen_tcp.recv(sock, 0, 5000)
      assert data =~ "200"
      assert TestHelpers.eventually(fn -> Server.stats(server).slots.busy == 1 end)
      :gen_tcp.close(sock)

      assert TestHelpers.eventually(fn -> Server.stats(server).slots.busy == 0 end, 2000)
      after_ = Server.stats(server)

      assert after_.requests.caller_down + after_.requests.cancelled >
               before.requests.caller_down + before.requests.cancelled

      # far fewer tokens than the slot could hold
      assert after_.generated_tokens - before.generated_tokens < 1500
    end
  end

  test "metrics: requests, tokens, slots, queue, time to first token", %{url: url} do
    {200, _, _} = chat(url, %{"messages" => @messages, "max_tokens" => 3})
    {200, headers, text} = request(url, :get, "/metrics", nil, auth())
    assert headers["content-type"] =~ "text/plain; version=0.0.4"
    assert text =~ ~r/^llamacppex_http_requests_total\{endpoint="\/v1\/chat\/completions",status="200"\} [1-9]/m
    assert text =~ ~r/^llamacppex_generated_tokens_total [1-9]/m
    assert text =~ ~r/^llamacppex_slots_total 2$/m
    assert text =~ ~r/^llamacppex_slots_busy \d+$/m
    assert text =~ ~r/^llamacppex_queue_depth 0$/m
    assert text =~ "# TYPE llamacppex_time_to_first_token_seconds histogram"
    [_, count] = Regex.run(~r/^llamacppex_time_to_first_token_seconds_count (\d+)$/m, text)
    [_, inf] = Regex.run(~r/^llamacppex_time_to_first_token_seconds_bucket\{le="\+Inf"\} (\d+)$/m, text)
    assert count == inf and String.to_integer(count) > 0
  end
end
