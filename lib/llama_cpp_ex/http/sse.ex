defmodule LlamaCppEx.HTTP.SSE do
  @moduledoc false
  # Server-Sent Events over httpd's chunked transfer encoding: the headers
  # once, then each event as one chunk (`data: JSON\n\n`), `data: [DONE]`,
  # the last chunk. A send to a closed connection returns :closed (httpd
  # closes the socket after a failed send), which is how a handler learns
  # that the client went away; a {:tcp_closed, _} already in the mailbox
  # counts too.

  alias LlamaCppEx.HTTP.JSON

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @doc "Sends the response head of an event stream."
  def open(m) do
    chunked? = mod(m, :http_version) == ~c"HTTP/1.1"

    headers =
      [{:content_type, ~c"text/event-stream"}, {~c"cache-control", ~c"no-cache"}, {~c"x-accel-buffering", ~c"no"}] ++
        if chunked?, do: [{~c"transfer-encoding", ~c"chunked"}], else: [{~c"connection", ~c"close"}]

    result(:httpd_response.send_header(m, 200, headers))
  end

  @doc "Sends one event whose data is `term` as JSON."
  def event(m, term), do: send_data(m, ["data: ", JSON.encode!(term), "\n\n"])

  @doc "Sends `data: [DONE]` and ends the response."
  def close(m) do
    with :ok <- send_data(m, "data: [DONE]\n\n") do
      result(:httpd_response.send_final_chunk(m, chunked?(m) == false))
    end
  end

  defp send_data(m, iodata) do
    if closed?(m),
      do: :closed,
      else: result(:httpd_response.send_chunk(m, IO.iodata_to_binary(iodata), chunked?(m) == false))
  end

  defp chunked?(m), do: mod(m, :http_version) == ~c"HTTP/1.1"

  defp closed?(m) do
    sock = mod(m, :socket)

    receive do
      {:tcp_closed, ^sock} -> true
    after
      0 -> false
    end
  end

  defp result(:ok), do: :ok
  defp result(_), do: :closed
end
