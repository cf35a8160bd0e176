defmodule LlamaCppEx.Server.Queue do
  @moduledoc false
  # The server's wait queue: three priority classes (:high, :normal, :low),
  # first in, first out within a class, bounded in total by the server's
  # max_queue (checked by the caller of push/3).
  #
  # Order: the highest non-empty class goes first, with one rule against
  # starvation: every admission from a higher class while a lower class waits
  # counts as one pass for that lower class; a class passed over `limit` times
  # in a row goes next (its oldest request), and its count starts again. So
  # while requests of higher classes keep coming, a waiting :low request is
  # admitted after at most `limit` others, and the n-th in line after at most
  # n * (limit + 1) admissions. (If :normal and :low are both due, :low goes first.)

  @classes [:high, :normal, :low]

  defstruct queues: %{high: :queue.new(), normal: :queue.new(), low: :queue.new()},
            passed: %{high: 0, normal: 0, low: 0},
            size: 0,
            limit: 4

  @type priority :: :high | :normal | :low
  @type t :: %__MODULE__{}

  @doc false
  def classes, do: @classes

  @spec new(pos_integer()) :: t()
  def new(limit \\ 4) when is_integer(limit) and limit > 0, do: %__MODULE__{limit: limit}

  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{size: n}), do: n

  @spec sizes(t()) :: %{priority() => non_neg_integer()}
  def sizes(%__MODULE__{queues: qs}), do: Map.new(qs, fn {c, q} -> {c, :queue.len(q)} end)

  @spec push(t(), priority(), term()) :: t()
  def push(%__MODULE__{} = q, class, item) when class in @classes do
    %{q | queues: Map.update!(q.queues, class, &:queue.in(item, &1)), size: q.size + 1}
  end

  @doc "The next item to admit: `{{class, item}, queue}`, or `:empty`."
  @spec pop(t()) :: {{priority(), term()}, t()} | :empty
  def pop(%__MODULE__{size: 0}), do: :empty

  def pop(%__MODULE__{} = q) do
    class = due(q) || Enum.find(@classes, &(not :queue.is_empty(q.queues[&1])))
    {{:value, item}, rest} = :queue.out(q.queues[class])

    passed =
      Map.new(@classes, fn c ->
        cond do
          c == class -> {c, 0}
          below?(c, class) and not :queue.is_empty(q.queues[c]) -> {c, q.passed[c] + 1}
          true -> {c, q.passed[c]}
        end
      end)

    {{class, item}, %{q | queues: Map.put(q.queues, class, rest), passed: passed, size: q.size - 1}}
  end

  @doc "Removes the first item for which `fun` is true: `{item | nil, queue}`."
  @spec take(t(), (term() -> boolean())) :: {term() | nil, t()}
  def take(%__MODULE__{} = q, fun) do
    Enum.reduce_while(@classes, {nil, q}, fn class, acc ->
      items = :queue.to_list(q.queues[class])

      case Enum.split_while(items, &(not fun.(&1))) do
        {_, []} ->
          {:cont, acc}

        {before, [item | after_]} ->
          rest = :queue.from_list(before ++ after_)
          passed = if :queue.is_empty(rest), do: Map.put(q.passed, class, 0), else: q.passed
          {:halt, {item, %{q | queues: Map.put(q.queues, class, rest), passed: passed, size: q.size - 1}}}
      end
    end)
  end

  @doc "All items, in admission order of their classes (for shutting down)."
  @spec to_list(t()) :: [term()]
  def to_list(%__MODULE__{queues: qs}), do: Enum.flat_map(@classes, &:queue.to_list(qs[&1]))

  # the lowest waiting class passed over `limit` times, if any
  defp due(q) do
    @classes
    |> Enum.reverse()
    |> Enum.find(&(q.passed[&1] >= q.limit and not :queue.is_empty(q.queues[&1])))
  end

  defp below?(c, class), do: index(c) > index(class)
  defp index(:high), do: 0
  defp index(:normal), do: 1
  defp index(:low), do: 2
end
