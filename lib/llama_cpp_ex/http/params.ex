defmodule LlamaCppEx.HTTP.Params do
  @moduledoc false
  # The fields of OpenAI's request bodies (and llama.cpp's extensions), checked
  # one by one and mapped to LlamaCppEx's options. Unknown fields are ignored,
  # as OpenAI does; a known field of the wrong type or out of range is
  # {:error, %HTTP.Error{status: 400, param: field}}. What passes here is
  # checked again by the core API's own option checks (an ArgumentError there
  # is a 400 too, see LlamaCppEx.HTTP.Generate).

  alias LlamaCppEx.HTTP.Error

  @max_n 16
  @max_stop 16

  # field => {our option, type}
  @sampling %{
    "temperature" => {:temp, {:number, 0, 100}},
    "top_p" => {:top_p, {:number, 0, 1}},
    "top_k" => {:top_k, {:integer, 0, 1_000_000}},
    "min_p" => {:min_p, {:number, 0, 1}},
    "typical_p" => {:typical_p, {:number, 0, 1}},
    "presence_penalty" => {:presence_penalty, {:number, -100, 100}},
    "frequency_penalty" => {:frequency_penalty, {:number, -100, 100}},
    "repeat_penalty" => {:repeat_penalty, {:number, 0, 100}},
    "repeat_last_n" => {:penalty_last_n, {:integer, -1, 1_048_576}},
    "mirostat" => {:mirostat, {:integer, 0, 2}},
    "mirostat_tau" => {:mirostat_tau, {:number, 0, 1000}},
    "mirostat_eta" => {:mirostat_eta, {:number, 0, 1000}},
    "dry_multiplier" => {:dry_multiplier, {:number, 0, 1000}},
    "dry_base" => {:dry_base, {:number, 0, 1000}},
    "dry_allowed_length" => {:dry_allowed_length, {:integer, 0, 1_000_000}},
    "dry_penalty_last_n" => {:dry_penalty_last_n, {:integer, -1, 1_048_576}},
    "xtc_probability" => {:xtc_probability, {:number, 0, 1}},
    "xtc_threshold" => {:xtc_threshold, {:number, 0, 1}},
    "top_n_sigma" => {:top_n_sigma, {:number, -1, 1000}},
    "min_keep" => {:min_keep, {:integer, 0, 1_000_000}}
  }

  @type t :: %{
          input: term(),
          n: pos_integer(),
          stream: boolean(),
          include_usage: boolean(),
          logprobs: nil | non_neg_integer(),
          opts: keyword()
        }

  @doc "A chat completion request: {:ok, params} with the messages as `input`."
  @spec chat(term(), map()) :: {:ok, t()} | {:error, Error.t()}
  def chat(body, defaults) do
    with {:ok, body} <- object(body),
         {:ok, messages} <- messages(body),
         {:ok, logprobs} <- chat_logprobs(body),
         {:ok, tools} <- tools(body),
         {:ok, params} <- common(body, defaults) do
      {:ok, %{params | input: messages, logprobs: logprobs, opts: params.opts ++ tools}}
    end
  end

  @doc "A (legacy) completion request: `input` is a list of prompts (strings or token lists)."
  @spec completion(term(), map()) :: {:ok, t()} | {:error, Error.t()}
  def completion(body, defaults) do
    with {:ok, body} <- object(body),
         {:ok, prompts} <- prompts(body),
         {:ok, logprobs} <- opt(body, "logprobs", {:integer, 0, LlamaCppEx.Logprob.max()}),
         {:ok, params} <- common(body, defaults) do
      {:ok, %{params | input: prompts, logprobs: logprobs}}
    end
  end

  @doc "Checks that the body is a JSON object."
  def object(body) when is_map(body), do: {:ok, body}
  def object(_), do: {:error, Error.bad_request("The request body must be a JSON object")}

  defp common(body, defaults) do
    with {:ok, max} <- max_tokens(body, defaults),
         {:ok, n} <- opt(body, "n", {:integer, 1, @max_n}),
         {:ok, stream} <- opt(body, "stream", :boolean),
         {:ok, usage} <- include_usage(body),
         {:ok, stop} <- stop(body),
         {:ok, seed} <- seed(body),
         {:ok, sampling} <- sampling(body),
         {:ok, bias} <- logit_bias(body),
         {:ok, grammar} <- grammar(body) do
      opts =
        [max_tokens: max, stop: stop] ++
          if(seed, do: [seed: seed], else: []) ++ sampling ++ bias ++ grammar

      {:ok, %{input: nil, n: n || 1, stream: stream || false, include_usage: usage, logprobs: nil, opts: opts}}
    end
  end

  # ---- fields --------------------------------------------------------------------------------

  defp messages(%{"messages" => list}) when is_list(list) and list != [] do
    list
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {m, i}, {:ok, acc} ->
      case message(m, i) do
        {:ok, msg} -> {:cont, {:ok, [msg | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp messages(%{"messages" => _}), do: {:error, Error.field("messages", "'messages' must be a non-empty array")}
  defp messages(_), do: {:error, Error.field("messages", "'messages' is required")}

  defp message(%{"role" => role} = m, i) when is_binary(role) and role != "" do
    case content(Map.get(m, "content")) do
      {:ok, text} ->
        # what templates read besides role and content: an assistant turn's
        # tool calls (arguments as sent: a JSON string, decoded when it is
        # one), a tool result's call id and name, reasoning
        extra =
          m
          |> Map.take(["tool_calls", "tool_call_id", "name", "reasoning_content"])
          |> Map.update("tool_calls", nil, &tool_calls_in/1)
          |> Enum.reject(fn {_, v} -> v == nil end)
          |> Map.new()

        {:ok, Map.merge(extra, %{"role" => role, "content" => text})}

      :error ->
        {:error,
         Error.field("messages[#{i}].content", "'messages[#{i}].content' must be a string or an array of text parts")}
    end
  end

  defp message(_, i),
    do: {:error, Error.field("messages[#{i}].role", "'messages[#{i}]' must be an object with a string 'role'")}

  defp tool_calls_in(calls) when is_list(calls) do
    Enum.map(calls, fn
      %{"function" => %{"arguments" => args} = f} = c when is_binary(args) ->
        case LlamaCppEx.HTTP.JSON.decode(args) do
          {:ok, %{} = decoded} -> %{c | "function" => %{f | "arguments" => decoded}}
          _ -> c
        end

      c ->
        c
    end)
  end

  defp tool_calls_in(_), do: nil

  # tools, tool_choice (parallel_tool_calls: ignored; calls are parsed however many come)
  defp tools(body) do
    with {:ok, tools} <- tool_list(Map.get(body, "tools")),
         {:ok, choice} <- tool_choice(Map.get(body, "tool_choice")) do
      {:ok, if(tools, do: [tools: tools, tool_choice: choice], else: [])}
    end
  end

  defp tool_list(nil), do: {:ok, nil}

  defp tool_list(list) when is_list(list) do
    if Enum.all?(
         list,
         &match?(%{"type" => "function", "function" => %{"name" => n}} when is_binary(n) and n != "", &1)
       ),
       do: {:ok, list},
       else:
         {:error,
          Error.field("tools", "'tools' must be an array of {\"type\": \"function\", \"function\": {\"name\": ...}}")}
  end

  defp tool_list(_), do: {:error, Error.field("tools", "'tools' must be an array")}

  defp tool_choice(nil), do: {:ok, :auto}
  defp tool_choice(c) when c in ["auto", "none", "required"], do: {:ok, String.to_existing_atom(c)}
  defp tool_choice(%{"type" => "function", "function" => %{"name" => n}}) when is_binary(n), do: {:ok, {:function, n}}

  defp tool_choice(_),
    do: {:error, Error.field("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or a function")}

  defp content(text) when is_binary(text), do: {:ok, text}
  # an assistant turn with tool calls has no content
  defp content(nil), do: {:ok, ""}

  defp content(parts) when is_list(parts) do
    Enum.reduce_while(parts, {:ok, ""}, fn
      %{"type" => "text", "text" => t}, {:ok, acc} when is_binary(t) -> {:cont, {:ok, acc <> t}}
      _, _ -> {:halt, :error}
    end)
  end

  defp content(_), do: :error

  defp prompts(%{"prompt" => p}) when is_binary(p), do: {:ok, [p]}

  defp prompts(%{"prompt" => [first | _] = list}) do
    cond do
      is_integer(first) and Enum.all?(list, &(is_integer(&1) and &1 >= 0)) ->
        {:ok, [list]}

      Enum.all?(list, &is_binary/1) ->
        {:ok, list}

      Enum.all?(list, fn l -> is_list(l) and l != [] and Enum.all?(l, &(is_integer(&1) and &1 >= 0)) end) ->
        {:ok, list}

      true ->
        {:error, Error.field("prompt", "'prompt' must be a string, an array of strings or an array of token ids")}
    end
  end

  defp prompts(%{"prompt" => _}),
    do: {:error, Error.field("prompt", "'prompt' must be a string, an array of strings or an array of token ids")}

  defp prompts(_), do: {:error, Error.field("prompt", "'prompt' is required")}

  defp max_tokens(body, defaults) do
    Enum.reduce_while(["max_completion_tokens", "max_tokens", "n_predict"], {:ok, nil}, fn key, acc ->
      case opt(body, key, {:integer, -1, 2_147_483_647}) do
        {:ok, nil} -> {:cont, acc}
        {:ok, n} when n <= 0 -> {:halt, {:ok, defaults.max_tokens}}
        {:ok, n} -> {:halt, {:ok, n}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, nil} -> {:ok, defaults.max_tokens}
      other -> other
    end
  end

  defp include_usage(body) do
    case Map.get(body, "stream_options") do
      nil ->
        {:ok, false}

      %{} = so ->
        with {:ok, v} <- opt(so, "include_usage", :boolean, "stream_options.include_usage"), do: {:ok, v || false}

      _ ->
        {:error, Error.field("stream_options", "'stream_options' must be an object")}
    end
  end

  defp stop(body) do
    case Map.get(body, "stop") do
      nil ->
        {:ok, []}

      "" ->
        {:ok, []}

      s when is_binary(s) ->
        {:ok, [s]}

      l when is_list(l) and length(l) <= @max_stop ->
        if Enum.all?(l, &is_binary/1), do: {:ok, Enum.reject(l, &(&1 == ""))}, else: stop_error()

      _ ->
        stop_error()
    end
  end

  defp stop_error,
    do: {:error, Error.field("stop", "'stop' must be a string or an array of at most #{@max_stop} strings")}

  # OpenAI's seed is any integer; ours is 32 bits: larger ones are folded, negative ones mean random
  defp seed(body) do
    case Map.get(body, "seed") do
      nil -> {:ok, nil}
      s when is_integer(s) and s < 0 -> {:ok, nil}
      s when is_integer(s) -> {:ok, rem(s, 0x1_0000_0000)}
      _ -> {:error, Error.field("seed", "'seed' must be an integer")}
    end
  end

  defp sampling(body) do
    Enum.reduce_while(@sampling, {:ok, []}, fn {field, {key, type}}, {:ok, acc} ->
      case opt(body, field, type) do
        {:ok, nil} -> {:cont, {:ok, acc}}
        {:ok, v} -> {:cont, {:ok, [{key, v} | acc]}}
        error -> {:halt, error}
      end
    end)
  end

  # {"token id": bias}; OpenAI's -100 bans a token (as it does there); false bans too (llama-server)
  defp logit_bias(body) do
    case Map.get(body, "logit_bias") do
      nil ->
        {:ok, []}

      %{} = map ->
        Enum.reduce_while(map, {:ok, []}, fn {k, v}, {:ok, acc} ->
          with {id, ""} when id >= 0 <- Integer.parse(k),
               {:ok, bias} <- bias(v) do
            {:cont, {:ok, [{id, bias} | acc]}}
          else
            _ -> {:halt, {:error, Error.field("logit_bias", "'logit_bias' must map token ids to numbers in -100..100")}}
          end
        end)
        |> case do
          {:ok, []} -> {:ok, []}
          {:ok, list} -> {:ok, [logit_bias: Enum.reverse(list)]}
          error -> error
        end

      _ ->
        {:error, Error.field("logit_bias", "'logit_bias' must be an object")}
    end
  end

  defp bias(false), do: {:ok, :neg_infinity}
  defp bias(v) when is_number(v) and v <= -100, do: {:ok, :neg_infinity}
  defp bias(v) when is_number(v) and v <= 100, do: {:ok, v / 1}
  defp bias(_), do: :error

  # response_format (json_object, json_schema), llama.cpp's grammar and json_schema: one at most
  defp grammar(body) do
    with {:ok, rf} <- response_format(Map.get(body, "response_format")),
         {:ok, g} <- opt(body, "grammar", :string),
         {:ok, js} <- json_schema_field(Map.get(body, "json_schema")) do
      case Enum.reject([rf, if(g, do: [grammar: g]), js], &is_nil/1) do
        [] ->
          {:ok, []}

        [one] ->
          {:ok, one}

        _ ->
          {:error, Error.field("response_format", "give at most one of 'response_format', 'grammar' and 'json_schema'")}
      end
    end
  end

  defp response_format(nil), do: {:ok, nil}
  defp response_format(%{"type" => "text"}), do: {:ok, nil}
  defp response_format(%{"type" => "json_object"} = rf), do: json_object(rf)

  defp response_format(%{"type" => "json_schema", "json_schema" => %{} = js}) do
    case js do
      %{"schema" => schema} when is_map(schema) or is_boolean(schema) -> {:ok, [json_schema: schema]}
      %{"schema" => _} -> {:error, Error.field("response_format.json_schema.schema", "'schema' must be an object")}
      _ -> {:ok, [response_format: :json]}
    end
  end

  defp response_format(_),
    do:
      {:error,
       Error.field(
         "response_format",
         "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}"
       )}

  # llama-server takes a schema inside json_object too
  defp json_object(%{"schema" => schema}) when is_map(schema), do: {:ok, [json_schema: schema]}
  defp json_object(_), do: {:ok, [response_format: :json]}

  defp json_schema_field(nil), do: {:ok, nil}
  defp json_schema_field(schema) when is_map(schema), do: {:ok, [json_schema: schema]}
  defp json_schema_field(_), do: {:error, Error.field("json_schema", "'json_schema' must be an object")}

  defp chat_logprobs(body) do
    with {:ok, on} <- opt(body, "logprobs", :boolean),
         {:ok, top} <- opt(body, "top_logprobs", {:integer, 0, LlamaCppEx.Logprob.max()}) do
      cond do
        on -> {:ok, top || 0}
        top -> {:error, Error.field("top_logprobs", "'top_logprobs' needs 'logprobs': true")}
        true -> {:ok, nil}
      end
    end
  end

  # ---- types ---------------------------------------------------------------------------------

  @doc false
  def opt(body, field, type, name \\ nil) do
    name = name || field

    case Map.get(body, field) do
      nil -> {:ok, nil}
      v -> check(v, type, name)
    end
  end

  defp check(v, :boolean, _) when is_boolean(v), do: {:ok, v}
  defp check(_, :boolean, name), do: {:error, Error.field(name, "'#{name}' must be a boolean")}
  defp check(v, :string, _) when is_binary(v), do: {:ok, v}
  defp check(_, :string, name), do: {:error, Error.field(name, "'#{name}' must be a string")}

  defp check(v, {:integer, min, max}, _) when is_integer(v) and v >= min and v <= max, do: {:ok, v}
  # 2.0 is an integer to JavaScript
  defp check(v, {:integer, min, max}, name) when is_float(v) and v == trunc(v),
    do: check(trunc(v), {:integer, min, max}, name)

  defp check(_, {:integer, min, max}, name),
    do: {:error, Error.field(name, "'#{name}' must be an integer in #{min}..#{max}")}

  defp check(v, {:number, min, max}, _) when is_number(v) and v >= min and v <= max, do: {:ok, v / 1}

  defp check(_, {:number, min, max}, name),
    do: {:error, Error.field(name, "'#{name}' must be a number in #{min}..#{max}")}
end
