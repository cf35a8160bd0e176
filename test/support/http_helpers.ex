defmodule LlamaCppEx.HTTPHelpers do
  @moduledoc false
  # Requests to a LlamaCppEx.HTTP server in tests, over real loopback TCP:
  # :httpc for ordinary requests, raw :gen_tcp for malformed ones, and the
  # npm packages the JS clients need (scripts/npm_deps.sh).

  def request(url, method, path, body \\ nil, headers \\ []) do
    headers = Enum.map(headers, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
    url = String.to_charlist(url <> path)

    req =
      case body do
        nil -> {url, headers}
        body when is_binary(body) -> {url, headers, ~c"application/json", body}
        term -> {url, headers, ~c"application/json", IO.iodata_to_binary(:jiffy.encode(term))}
      end

    {:ok, {{_, status, _}, resp_headers, resp_body}} =
      :httpc.request(method, req, [timeout: 60_000], body_format: :binary)

    headers = Map.new(resp_headers, fn {k, v} -> {to_string(k), to_string(v)} end)
    {status, headers, decode(headers, resp_body)}
  end

  defp decode(%{"content-type" => "application/json"}, body), do: :jiffy.decode(body, [:return_maps])
  defp decode(_headers, body), do: body

  @doc "Sends raw bytes and reads until the server closes or `timeout` ms pass: {:closed | :timeout, bytes}."
  def raw(port, bytes, opts \\ []) do
    {:ok, sock} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false], 2000)
    :ok = :gen_tcp.send(sock, bytes)
    if Keyword.get(opts, :half_close, true), do: :gen_tcp.shutdown(sock, :write)
    result = read_all(sock, System.monotonic_time(:millisecond) + Keyword.get(opts, :timeout, 5000), "")
    :gen_tcp.close(sock)
    result
  end

  defp read_all(sock, deadline, acc) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    case :gen_tcp.recv(sock, 0, left) do
      {:ok, data} -> read_all(sock, deadline, acc <> data)
      {:error, :timeout} -> {:timeout, acc}
      {:error, _closed} -> {:closed, acc}
    end
  end

  @doc "The npm packages' node_modules directory (installed into the cache when missing)."
  def node_modules! do
    script = Path.expand("../../scripts/npm_deps.sh", __DIR__)

    case System.cmd(script, ["openai", "playwright-core"], stderr_to_stdout: false) do
      {out, 0} -> Path.join(out |> String.trim() |> String.split("\n") |> List.last(), "node_modules")
      {out, code} -> raise "scripts/npm_deps.sh failed (#{code}): #{out}"
    end
  end

  @doc "Runs a script of test/js with node: {output, exit status}."
  def node(script, env) do
    path = Path.expand("../js/#{script}", __DIR__)
    System.cmd("node", [path], env: [{"NODE_PATH", node_modules!()} | env], stderr_to_stdout: true)
  end

  def sse_events(body) do
    body
    |> String.split("\n\n", trim: true)
    |> Enum.map(fn "data: " <> data -> data end)
  end
end
