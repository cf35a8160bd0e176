defmodule LlamaCppEx.ChatFormat.Mistral do
  @moduledoc false
  # Mistral's [TOOL_CALLS], in its two generations:
  #
  #   * Nemo, Small 3.x (v3-v7 tokenizers): [TOOL_CALLS] and a JSON array
  #     [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]
  #   * Magistral, Devstral, Small 3.2+ (v11+): [TOOL_CALLS]name[ARGS]{json},
  #     repeated for each call.

  import LlamaCppEx.ChatFormat.Scan

  @tag "[TOOL_CALLS]"
  @args "[ARGS]"

  def markers, do: [@tag]

  def parse(text, partial?) do
    case split(text, @tag) do
      nil ->
        {emit, held} = hold_back(text, [@tag], partial?)
        [{:text, emit}, {:held, held}]

      {before, rest} ->
        if String.starts_with?(String.trim_leading(rest), "["),
          do: [{:text, before} | LlamaCppEx.ChatFormat.JsonList.parse(@tag <> rest, @tag, partial?) |> tl()],
          else: [{:text, before} | named(rest, partial?)]
    end
  end

  defp named(rest, partial?) do
    with {name, after_} <- split(rest, @args),
         true <- Regex.match?(~r/\A[A-Za-z_][\w.-]*\z/, name),
         {:ok, json, more} <- json_value(after_) do
      raw = @tag <> name <> @args <> json

      call =
        case decode(json) do
          {:ok, args} when is_map(args) -> call(name, args, raw)
          _ -> {:malformed, raw}
        end

      [call | parse(more, partial?)]
    else
      _ when partial? -> [{:held, @tag <> rest}]
      _ -> [{:malformed, @tag <> rest}]
    end
  end
end
