defmodule LlamaCppEx.HTTP.Embeddings do
  @moduledoc false
  # POST /v1/embeddings: `input` a string or an array of strings,
  # `encoding_format` "float" (default) or "base64" (little-endian float32,
  # what the openai clients ask for by default). Served by the HTTP server's
  # embedding server (`embeddings:`), a LlamaCppEx.Server started with
  # `embeddings: true`.

  alias LlamaCppEx.{Server, Tokenizer}
  alias LlamaCppEx.HTTP.{Error, Params}

  @max_inputs 256

  def create(conn, body) do
    with {:ok, body} <- Params.object(body),
         {:ok, texts} <- input(body),
         {:ok, format} <- format(body),
         {:ok, server} <- server(conn.config),
         {:ok, settings} <- call(Server.settings(server)),
         {:ok, vectors} <- call(Server.embed(server, texts)) do
      tokens =
        Enum.reduce(texts, 0, fn t, acc ->
          case Tokenizer.encode(settings.model, t, add_special: true) do
            {:ok, ids} -> acc + length(ids)
            _ -> acc
          end
        end)

      data =
        vectors
        |> Enum.with_index()
        |> Enum.map(fn {v, i} -> %{"object" => "embedding", "index" => i, "embedding" => encode(v, format)} end)

      {:json, 200,
       %{
         "object" => "list",
         "data" => data,
         "model" => conn.config.model_id,
         "usage" => %{"prompt_tokens" => tokens, "total_tokens" => tokens}
       }}
    end
  end

  defp server(%{embeddings: nil}), do: {:error, Error.from_reason(:embeddings_disabled)}
  defp server(%{embeddings: server}), do: {:ok, server}

  defp call({:ok, v}), do: {:ok, v}
  defp call({:error, reason}), do: {:error, Error.from_reason(reason)}

  defp input(%{"input" => t}) when is_binary(t), do: nonempty([t])

  defp input(%{"input" => l}) when is_list(l) and l != [] and length(l) <= @max_inputs do
    if Enum.all?(l, &is_binary/1), do: nonempty(l), else: input_error()
  end

  defp input(%{"input" => _}), do: input_error()
  defp input(_), do: {:error, Error.field("input", "'input' is required")}

  defp nonempty(texts) do
    if Enum.any?(texts, &(&1 == "")),
      do: {:error, Error.field("input", "'input' must not contain empty strings")},
      else: {:ok, texts}
  end

  defp input_error,
    do: {:error, Error.field("input", "'input' must be a string or an array of 1..#{@max_inputs} strings")}

  defp format(body) do
    case Map.get(body, "encoding_format", "float") do
      f when f in ["float", nil] -> {:ok, :float}
      "base64" -> {:ok, :base64}
      _ -> {:error, Error.field("encoding_format", "'encoding_format' must be \"float\" or \"base64\"")}
    end
  end

  defp encode(v, :float), do: v
  defp encode(v, :base64), do: Base.encode64(for x <- v, into: <<>>, do: <<x::float-32-little>>)
end
