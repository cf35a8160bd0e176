defmodule LlamaCppEx.HTTP.Error do
  @moduledoc false
  # OpenAI error objects and the HTTP status of each failure:
  #   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
  # A bad request is 4xx; 5xx only for what is not the client's fault
  # (the queue is full, the server is down, a native failure).

  defstruct status: 400, message: "", type: "invalid_request_error", param: nil, code: nil, headers: []

  @type t :: %__MODULE__{
          status: pos_integer(),
          message: String.t(),
          type: String.t(),
          param: String.t() | nil,
          code: String.t() | nil,
          headers: [{charlist(), charlist()}]
        }

  @doc "A 400 naming the field."
  def field(param, message), do: %__MODULE__{status: 400, param: param, message: message}

  def bad_request(message), do: %__MODULE__{status: 400, message: message}

  def unauthorized,
    do: %__MODULE__{status: 401, type: "authentication_error", code: "invalid_api_key", message: "Invalid API key"}

  def not_found(path),
    do: %__MODULE__{status: 404, type: "not_found_error", code: "not_found", message: "No such endpoint: #{path}"}

  def method_not_allowed(method, allowed),
    do: %__MODULE__{
      status: 405,
      code: "method_not_allowed",
      message: "Method #{method} not allowed; use #{Enum.join(allowed, ", ")}",
      headers: [{~c"allow", String.to_charlist(Enum.join(allowed, ", "))}]
    }

  def too_large(what), do: %__MODULE__{status: 413, code: "request_too_large", message: "#{what} too large"}

  def internal(message), do: %__MODULE__{status: 500, type: "server_error", code: "internal_error", message: message}

  @doc "The HTTP error for a failure reason of LlamaCppEx (see LlamaCppEx.Error)."
  @spec from_reason(term()) :: t()
  def from_reason(:overloaded),
    do: %__MODULE__{
      status: 503,
      type: "server_error",
      code: "overloaded",
      message: "The server is busy: its queue is full; retry later",
      headers: [{~c"retry-after", ~c"1"}]
    }

  def from_reason({:context_overflow, info}),
    do: %__MODULE__{
      status: 400,
      code: "context_length_exceeded",
      param: "messages",
      message: "The prompt is #{info[:prompt_tokens]} tokens; this server's context holds #{info[:n_ctx]} per request"
    }

  def from_reason({:too_long, info}),
    do: %__MODULE__{
      status: 400,
      code: "context_length_exceeded",
      param: "input",
      message: "An input is #{info[:tokens]} tokens; at most #{info[:max]} fit"
    }

  def from_reason(:empty_prompt), do: %__MODULE__{status: 400, message: "The prompt is empty"}

  def from_reason({:invalid_token, {id, n}}),
    do: %__MODULE__{status: 400, param: "prompt", message: "Token #{id} is not in the vocabulary (0..#{n - 1})"}

  def from_reason({kind, message}) when kind in [:invalid_grammar, :invalid_json_schema, :unsupported_json_schema],
    do: %__MODULE__{status: 400, code: Atom.to_string(kind), message: "#{kind}: #{message}"}

  def from_reason(:invalid_utf8), do: %__MODULE__{status: 400, message: "Text is not valid UTF-8"}

  def from_reason({kind, message}) when kind in [:tokenize_failed, :template_failed],
    do: %__MODULE__{status: 400, code: Atom.to_string(kind), message: "#{kind}: #{message}"}

  # a conversation the template refuses (raise_exception: roles must alternate, ...)
  def from_reason({:template_error, %{message: message} = info}),
    do: %__MODULE__{
      status: 400,
      code: "template_error",
      param: "messages",
      message: "The chat template refused the conversation: #{message} (line #{info[:line]})"
    }

  def from_reason({:special_token_text, field}),
    do: %__MODULE__{
      status: 400,
      code: "special_token_text",
      param: field,
      message: "'#{field}' holds the text of a special token of the model"
    }

  def from_reason(:no_template),
    do: %__MODULE__{status: 400, message: "The model has no chat template; start the server with a :chat_template"}

  def from_reason(:unknown_template), do: %__MODULE__{status: 400, message: "Unknown chat template"}

  def from_reason(:embeddings_disabled),
    do: %__MODULE__{status: 400, code: "embeddings_disabled", message: "This server has no embedding model"}

  def from_reason(:timeout),
    do: %__MODULE__{status: 504, type: "server_error", code: "timeout", message: "The request timed out"}

  def from_reason(reason)
      when reason in [:context_full, :busy] or (is_tuple(reason) and elem(reason, 0) == :server_down),
      do: %__MODULE__{
        status: 503,
        type: "server_error",
        code: "unavailable",
        message: "The server cannot take the request now (#{inspect(reason)})",
        headers: [{~c"retry-after", ~c"1"}]
      }

  def from_reason(reason), do: internal("Generation failed: #{inspect(reason)}")

  @doc "The response body."
  def body(%__MODULE__{} = e),
    do: %{"error" => %{"message" => e.message, "type" => e.type, "param" => e.param, "code" => e.code}}
end
