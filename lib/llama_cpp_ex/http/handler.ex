defmodule LlamaCppEx.HTTP.Handler do
  @moduledoc false
  # The httpd module (inets' callback `do/1`) of LlamaCppEx.HTTP: httpd has
  # parsed the request (line, headers, body within the limits) in its
  # request-handler process, which runs this. It turns httpd's #mod{} record
  # into a conn map, routes it (LlamaCppEx.HTTP.Router) and turns the result
  # into httpd's response: {:proceed, [{:response, ...}]}. Streams are sent
  # from here with httpd_response (LlamaCppEx.HTTP.SSE) and reported as
  # already sent. `store/2` lets httpd keep the server's config (a map under
  # the :llama_cpp_ex key) with the rest of its configuration.

  require Logger
  require Record
  alias LlamaCppEx.HTTP.{Error, JSON, Metrics, Router}

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @doc false
  def store({:llama_cpp_ex, config} = option, _config) when is_map(config), do: {:ok, option}

  @doc false
  def unquote(:do)(m) do
    case :proplists.get_value(:response, mod(m, :data)) do
      :undefined -> {:proceed, [{:response, handle(m)}]}
      # another module answered (nothing does before us; kept for httpd's contract)
      _ -> {:proceed, mod(m, :data)}
    end
  end

  defp handle(m) do
    config = :httpd_util.lookup(mod(m, :config_db), :llama_cpp_ex)
    {path, query} = split_uri(mod(m, :request_uri))
    headers = Map.new(mod(m, :parsed_header), fn {k, v} -> {to_string(k), to_string(v)} end)

    conn = %{
      mod: m,
      config: config,
      t0: System.monotonic_time(:microsecond),
      method: to_string(mod(m, :method)),
      path: path,
      query: query,
      headers: headers,
      body: body(mod(m, :entity_body))
    }

    result =
      if map_size(headers) > config.max_headers or length(mod(m, :parsed_header)) > config.max_headers do
        {:error, %Error{status: 431, code: "too_many_headers", message: "More than #{config.max_headers} headers"}}
      else
        safely(conn)
      end

    {status, response} = respond(conn, result)
    Metrics.request(config.metrics, Router.endpoint(path), status)
    response
  end

  defp safely(conn) do
    conn = %{conn | config: model_id(conn.config)}
    Router.dispatch(conn)
  rescue
    e ->
      Logger.error("LlamaCppEx.HTTP: #{conn.method} #{conn.path}: " <> Exception.format(:error, e, __STACKTRACE__))
      {:error, Error.internal("Internal error: #{Exception.message(e)}")}
  catch
    :exit, reason ->
      {:error, Error.from_reason({:server_down, reason})}
  end

  # a running server's model id is the file name of its model, read on first use
  defp model_id(%{model_id: nil} = config) do
    case LlamaCppEx.Server.settings(config.server, 5000) do
      {:ok, %{model: model}} -> %{config | model_id: Path.basename(model.path || "model")}
      _ -> %{config | model_id: "model"}
    end
  end

  defp model_id(config), do: config

  defp respond(_conn, {:sent, status}), do: {status, {:already_sent, status, 0}}

  defp respond(conn, {:json, status, term}),
    do: {status, reply(conn, status, ~c"application/json", JSON.encode!(term), [])}

  defp respond(conn, {:raw, status, type, body}), do: {status, reply(conn, status, type, body, [])}

  defp respond(conn, {:text, status, type, body}), do: {status, reply(conn, status, type, body, [])}

  defp respond(conn, {:error, %Error{} = e}),
    do: {e.status, reply(conn, e.status, ~c"application/json", JSON.encode!(Error.body(e)), e.headers)}

  defp reply(conn, status, type, body, extra) do
    body = IO.iodata_to_binary(body)
    body = if conn.method == "HEAD", do: "", else: body

    {:response, [code: status, content_type: type, content_length: Integer.to_charlist(byte_size(body))] ++ extra,
     [body]}
  end

  defp split_uri(uri) do
    case String.split(to_string(uri), "?", parts: 2) do
      [path, query] -> {path, query}
      [path] -> {path, ""}
    end
  end

  defp body(b) when is_binary(b), do: b
  defp body(l) when is_list(l), do: :erlang.list_to_binary(l)
  defp body(_), do: ""
end
