defmodule LlamaCppEx.HTTP.Info do
  @moduledoc false
  # GET /health, GET /v1/models, GET /metrics, POST /tokenize and
  # POST /detokenize (the last two in llama-server's shapes).

  alias LlamaCppEx.{Model, Server, Tokenizer}
  alias LlamaCppEx.HTTP.{Error, Metrics, Params}

  def health(conn) do
    case Server.settings(conn.config.server, 200) do
      {:ok, _} -> {:json, 200, %{"status" => "ok"}}
      {:error, :timeout} -> {:error, %Error{status: 503, type: "unavailable_error", message: "Loading model"}}
      {:error, reason} -> {:error, Error.from_reason(reason)}
    end
  end

  def models(conn) do
    with {:ok, s} <- settings(conn) do
      m = s.model

      {:json, 200,
       %{
         "object" => "list",
         "data" => [
           %{
             "id" => conn.config.model_id,
             "object" => "model",
             "created" => conn.config.created,
             "owned_by" => "llama_cpp_ex",
             "meta" => %{
               "n_vocab" => Model.n_vocab(m),
               "n_ctx_train" => Model.n_ctx_train(m),
               "n_ctx" => s.n_ctx,
               "n_embd" => Model.n_embd(m),
               "n_params" => Model.n_params(m),
               "size" => Model.size(m)
             }
           }
         ]
       }}
    end
  end

  def metrics(conn) do
    stats =
      try do
        Server.stats(conn.config.server)
      catch
        :exit, _ -> nil
      end

    stats = if is_map(stats) and Map.has_key?(stats, :slots), do: stats, else: nil
    {:text, 200, ~c"text/plain; version=0.0.4; charset=utf-8", Metrics.render(conn.config.metrics, stats)}
  end

  def tokenize(conn, body) do
    with {:ok, body} <- Params.object(body),
         {:ok, content} <- required(body, "content", :string),
         {:ok, add} <- Params.opt(body, "add_special", :boolean),
         {:ok, parse} <- Params.opt(body, "parse_special", :boolean),
         {:ok, pieces} <- Params.opt(body, "with_pieces", :boolean),
         {:ok, s} <- settings(conn),
         {:ok, ids} <-
           call(Tokenizer.encode(s.model, content, add_special: add || false, parse_special: parse != false)) do
      tokens = if pieces, do: Enum.map(ids, &piece(s.model, &1)), else: ids
      {:json, 200, %{"tokens" => tokens}}
    end
  end

  def detokenize(conn, body) do
    with {:ok, body} <- Params.object(body),
         {:ok, tokens} <- token_list(body),
         {:ok, s} <- settings(conn),
         :ok <- in_vocab(tokens, Model.n_vocab(s.model)),
         {:ok, text} <- call(Tokenizer.decode(s.model, tokens)) do
      # as llama-server, bytes that do not form a character become U+FFFD
      {:json, 200, %{"content" => valid(text)}}
    end
  end

  defp piece(model, id) do
    {:ok, bytes} = Tokenizer.token_to_piece(model, id, special: true)
    %{"id" => id, "piece" => if(String.valid?(bytes), do: bytes, else: :binary.bin_to_list(bytes))}
  end

  defp token_list(body) do
    case Map.get(body, "tokens") do
      l when is_list(l) ->
        if Enum.all?(l, &(is_integer(&1) and &1 >= 0)),
          do: {:ok, l},
          else: {:error, Error.field("tokens", "'tokens' must be an array of token ids")}

      nil ->
        {:ok, []}

      _ ->
        {:error, Error.field("tokens", "'tokens' must be an array of token ids")}
    end
  end

  defp in_vocab(tokens, n) do
    case Enum.find(tokens, &(&1 >= n)) do
      nil -> :ok
      id -> {:error, Error.field("tokens", "token #{id} is not in the vocabulary (0..#{n - 1})")}
    end
  end

  defp valid(bin), do: bin |> String.chunk(:valid) |> Enum.map_join(&if(String.valid?(&1), do: &1, else: "\uFFFD"))

  defp required(body, field, type) do
    case Params.opt(body, field, type) do
      {:ok, nil} -> {:error, Error.field(field, "'#{field}' is required")}
      other -> other
    end
  end

  defp settings(conn), do: call(Server.settings(conn.config.server))

  defp call({:ok, v}), do: {:ok, v}
  defp call({:error, reason}), do: {:error, Error.from_reason(reason)}
end
