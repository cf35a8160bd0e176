defmodule LlamaCppEx.ChatFormat.Functionary do
  @moduledoc false
  # Functionary v3.2: the reply is a sequence of messages, each to a
  # recipient, separated by ">>>" (the prompt ends with the first one):
  #
  #     all
  #     Let me look.>>>get_weather
  #     {"city": "Paris"}
  #
  # "all" is text for the user; any other recipient is a call whose body is
  # its JSON arguments ("python" may take plain code).

  import LlamaCppEx.ChatFormat.Scan

  @sep ">>>"

  def markers, do: [@sep]

  def parse(text, partial?) do
    text = String.replace_prefix(text, @sep, "")

    {segments, held} =
      case String.split(text, @sep) do
        [only] ->
          {emit, held} = hold_back(only, [@sep], partial?)
          {[emit], held}

        parts ->
          {last, firsts} = List.pop_at(parts, -1)
          {emit, held} = hold_back(last, [@sep], partial?)
          {firsts ++ [emit], held}
      end

    {last_index, _} = {length(segments) - 1, nil}

    parts =
      segments
      |> Enum.with_index()
      |> Enum.flat_map(fn {seg, i} -> segment(seg, i, partial? and i == last_index) end)

    parts ++ [{:held, held}]
  end

  defp segment(seg, i, open?) do
    raw = if i == 0, do: seg, else: @sep <> seg

    case Regex.run(~r/\A([A-Za-z_][\w.-]*)\n(.*)\z/s, seg) do
      [_, "all", body] ->
        [{:text, body}]

      [_, name, body] when open? ->
        # a call still being written (python's code has no end of its own: it waits for the reply's)
        if name != "python" and match?({:ok, _, _}, json_value(body)),
          do: call_of(name, body, raw),
          else: [{:held, raw}]

      [_, name, body] ->
        call_of(name, body, raw)

      # its recipient line is still being written
      nil when open? ->
        if Regex.match?(~r/\A[A-Za-z_][\w.-]*\z/, seg) or (seg == "" and i > 0),
          do: [{:held, raw}],
          else: [{:text, raw}]

      # text with no recipient line: the model did not follow the format
      nil ->
        [{:text, if(i == 0, do: seg, else: raw)}]
    end
  end

  defp call_of(name, body, raw) do
    case decode(body) do
      {:ok, args} when is_map(args) -> [call(name, args, raw)]
      _ when name == "python" -> [call("python", %{"code" => body}, raw)]
      _ -> [{:malformed, raw}]
    end
  end
end
