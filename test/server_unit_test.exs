defmodule LlamaCppEx.ServerUnitTest do
  # The server's pure parts: the priority queue and the prefix cache index.
  use ExUnit.Case, async: true

  alias LlamaCppEx.Server.{Cache, Queue}

  defp drain(q, acc \\ []) do
    case Queue.pop(q) do
      :empty -> Enum.reverse(acc)
      {{_class, item}, q} -> drain(q, [item | acc])
    end
  end

  describe "Queue" do
    test "higher classes first, first in first out within a class" do
      q =
        Queue.new(100)
        |> Queue.push(:low, :l1)
        |> Queue.push(:normal, :n1)
        |> Queue.push(:high, :h1)
        |> Queue.push(:normal, :n2)
        |> Queue.push(:high, :h2)

      assert Queue.size(q) == 5
      assert Queue.sizes(q) == %{high: 2, normal: 2, low: 1}
      assert drain(q) == [:h1, :h2, :n1, :n2, :l1]
    end

    test "a low request waits for at most `limit` admissions of higher classes" do
      q = Enum.reduce(1..20, Queue.new(4) |> Queue.push(:low, :low), &Queue.push(&2, :high, &1))
      order = drain(q)
      assert Enum.find_index(order, &(&1 == :low)) == 4
    end

    test "the n-th low request waits for at most n * (limit + 1) admissions" do
      q = Enum.reduce(1..3, Queue.new(2), &Queue.push(&2, :low, {:low, &1}))
      q = Enum.reduce(1..30, q, &Queue.push(&2, :high, &1))
      order = drain(q)

      for n <- 1..3 do
        assert Enum.find_index(order, &(&1 == {:low, n})) <= n * 3 - 1
      end
    end

    test "normal waits too, and low is not starved by normal and high together" do
      q = Queue.new(3) |> Queue.push(:low, :low)
      q = Enum.reduce(1..10, q, &Queue.push(&2, :normal, {:n, &1}))
      q = Enum.reduce(1..10, q, &Queue.push(&2, :high, {:h, &1}))
      order = drain(q)
      assert Enum.find_index(order, &(&1 == :low)) <= 3
      # normal was due too; low, the lower class, went first
      assert Enum.find_index(order, &(&1 == {:n, 1})) == 4
    end

    test "take removes by predicate, from any class" do
      q = Queue.new() |> Queue.push(:low, 1) |> Queue.push(:high, 2) |> Queue.push(:low, 3)
      assert {3, q} = Queue.take(q, &(&1 == 3))
      assert {nil, ^q} = Queue.take(q, &(&1 == 99))
      assert Queue.size(q) == 2
      assert drain(q) == [2, 1]
    end
  end

  describe "Cache" do
    defp k(tokens), do: Cache.key(tokens)

    test "a request takes the longest prefix of its scope from any slot" do
      sys = Enum.to_list(1..50)
      c = Cache.new(3) |> Cache.admit(0, k(sys ++ [7, 8]), nil, nil, 0, 0)
      # slot 0 is busy: the request goes to a free slot, its prefix is copied from 0
      assert {slot, 0, 50} = Cache.choose(c, [1, 2], k(sys ++ [9]), nil, nil)
      assert slot in [1, 2]
      # another scope shares nothing
      assert {_, _, 0} = Cache.choose(c, [1, 2], k(sys ++ [9]), :tenant_b, nil)
    end

    test "free slots: one whose cells the request keeps, else the least recently used" do
      c =
        Cache.new(3)
        |> Cache.admit(0, k([1, 2, 3]), nil, nil, 0, 0)
        |> Cache.finish(0, k([1, 2, 3, 4]))
        |> Cache.admit(1, k([5, 6]), nil, nil, 1, 0)
        |> Cache.finish(1, k([5, 6, 7]))

      # slot 0 would lose a token: the request goes to the empty slot, its prefix copied from 0
      assert {2, 0, 3} = Cache.choose(c, [0, 1, 2], k([1, 2, 3, 9]), nil, nil)
      # slot 0 holds nothing but a prefix of this prompt
      assert {0, 0, 4} = Cache.choose(c, [0, 1, 2], k([1, 2, 3, 4, 9]), nil, nil)
      assert {2, 2, 0} = Cache.choose(c, [0, 1, 2], k([42]), nil, nil)
      # no empty slot: the least recently used one (0) is evicted
      assert {0, 0, 0} = Cache.choose(c, [0, 1], k([42]), nil, nil)
      assert Cache.evict(c) == 0
    end

    test "a session goes back to its slot" do
      c =
        Cache.new(2)
        |> Cache.admit(1, k([1, 2, 3]), nil, nil, 1, 0)
        |> Cache.finish(1, k([1, 2, 3, 4, 5]))
        |> Cache.admit(0, k([1, 2]), nil, "a", 0, 0)
        |> Cache.finish(0, k([1, 2, 3, 7]))

      # the prefix comes from slot 1 either way; the session's slot is 0
      assert {0, 1, 4} = Cache.choose(c, [0, 1], k([1, 2, 3, 4, 6]), nil, "a")
      # without it, the least recently used slot
      assert {1, 1, 4} = Cache.choose(c, [0, 1], k([1, 2, 3, 4, 6]), nil, nil)
    end

    test "cells: shared prefixes count once in a unified cache" do
      c =
        Cache.new(2)
        |> Cache.admit(0, k(Enum.to_list(1..100)), nil, nil, 0, 0)
        |> Cache.finish(0, k(Enum.to_list(1..120)))
        |> Cache.admit(1, k(Enum.to_list(1..90) ++ [0, 0]), nil, nil, 0, 90)

      assert Cache.cells(c) == 120 + 2
      c = Cache.finish(c, 1, k(Enum.to_list(1..90) ++ [0, 0, 5]))
      assert Cache.cells(c) == 120 + 3
      assert Cache.cells(Cache.drop(c, 0)) == 93

      split = %{c | unified: false}
      assert Cache.cells(split) == 120 + 93
    end

    test "disabled: no reuse" do
      c = Cache.new(2, enabled: false) |> Cache.admit(0, k([1, 2, 3]), nil, nil, 0, 0) |> Cache.finish(0, k([1, 2, 3]))
      assert {1, 1, 0} = Cache.choose(c, [0, 1], k([1, 2, 3, 4]), nil, nil)
    end
  end
end
