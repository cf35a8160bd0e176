defmodule LlamaCppEx.HTTP.Router do
  @moduledoc false
  # Method and path to endpoint. Each route answers one method (405 with
  # `Allow` for another); the OpenAI paths also answer without /v1, as
  # llama-server's do. The key check (LlamaCppEx.HTTP.Auth) comes first.

  alias LlamaCppEx.HTTP.{Auth, ChatPage, Embeddings, Error, Generate, Info, JSON}

  @routes %{
    "/" => {"GET", :page},
    "/health" => {"GET", :health},
    "/v1/health" => {"GET", :health},
    "/metrics" => {"GET", :metrics},
    "/v1/models" => {"GET", :models},
    "/models" => {"GET", :models},
    "/v1/chat/completions" => {"POST", :chat},
    "/chat/completions" => {"POST", :chat},
    "/v1/completions" => {"POST", :completion},
    "/completions" => {"POST", :completion},
    "/v1/embeddings" => {"POST", :embeddings},
    "/embeddings" => {"POST", :embeddings},
    "/tokenize" => {"POST", :tokenize},
    "/detokenize" => {"POST", :detokenize}
  }

  @doc "The label of a path in the metrics (unknown paths are one label)."
  def endpoint(path), do: if(Map.has_key?(@routes, path), do: path, else: "other")

  @doc "Runs the request: a response term for LlamaCppEx.HTTP.Handler."
  def dispatch(conn) do
    cond do
      not Auth.allowed?(conn.config.api_key, conn.path, conn.headers) -> {:error, Error.unauthorized()}
      true -> route(conn, Map.get(@routes, conn.path))
    end
  end

  defp route(conn, nil), do: {:error, Error.not_found(conn.path)}
  defp route(%{method: "HEAD"} = conn, {"GET", action}), do: run(conn, action)
  defp route(%{method: method} = conn, {method, action}), do: run(conn, action)
  defp route(conn, {allowed, _}), do: {:error, Error.method_not_allowed(conn.method, [allowed])}

  defp run(_conn, :page), do: {:raw, 200, ~c"text/html; charset=utf-8", ChatPage.html()}
  defp run(conn, :health), do: Info.health(conn)
  defp run(conn, :metrics), do: Info.metrics(conn)
  defp run(conn, :models), do: Info.models(conn)
  defp run(conn, action), do: with({:ok, body} <- body(conn), do: post(conn, action, body))

  defp post(conn, :chat, body), do: Generate.chat(conn, body)
  defp post(conn, :completion, body), do: Generate.completion(conn, body)
  defp post(conn, :embeddings, body), do: Embeddings.create(conn, body)
  defp post(conn, :tokenize, body), do: Info.tokenize(conn, body)
  defp post(conn, :detokenize, body), do: Info.detokenize(conn, body)

  defp body(%{body: ""}), do: {:error, Error.bad_request("The request has no body; send a JSON object")}

  defp body(%{body: body}) do
    cond do
      not String.valid?(body) ->
        {:error, Error.bad_request("The request body is not valid UTF-8")}

      true ->
        case JSON.decode(body) do
          {:ok, term} -> {:ok, term}
          {:error, message} -> {:error, Error.bad_request(message)}
        end
    end
  end
end
