defmodule LlamaCppEx.JinjaConformanceTest do
  # LlamaCppEx.Jinja against @huggingface/jinja (npm, run by Node.js from the cache; see
  # LlamaCppEx.JinjaReference) on the real templates of the pinned llama.cpp source
  # (models/templates/*.jinja, read in place), each rendered with every conversation of
  # JinjaReference.conversations/0: the same text byte for byte, or an error from both
  # when the reference throws (a template's raise_exception, or the reference refusing
  # what the template does: `.format()`, `|string` on a dict, a filter it lacks).
  use ExUnit.Case, async: true
  @moduletag :conformance
  @moduletag timeout: 300_000

  alias LlamaCppEx.{Jinja, JinjaReference, TestHelpers}

  setup_all do
    src = TestHelpers.llama_src() || flunk("the pinned llama.cpp source is missing (scripts/llama_cpp.sh src)")
    cases = JinjaReference.cases(src)
    reference = JinjaReference.render_all(Enum.map(cases, fn {path, _, vars} -> {File.read!(path), vars} end))
    {:ok, cases: cases, reference: reference}
  end

  test "the pinned source ships the real templates", %{cases: cases} do
    templates = cases |> Enum.map(&elem(&1, 0)) |> Enum.uniq()
    assert length(templates) >= 70
  end

  test "every template renders every conversation as the reference does", %{cases: cases, reference: reference} do
    mismatches =
      for {{path, name, vars}, ref} <- Enum.zip(cases, reference),
          ours = Jinja.render(File.read!(path), vars),
          not same?(ours, ref) do
        "#{Path.basename(path)} / #{name}:\n" <> explain(ours, ref)
      end

    rendered = Enum.count(reference, &match?({:ok, _}, &1))
    # the comparison is not vacuous: most cases render
    assert rendered > div(length(reference) * 3, 4)
    assert mismatches == [], "#{length(mismatches)} mismatches:\n\n" <> Enum.join(mismatches, "\n\n")
  end

  test "every template renders at least one conversation", %{cases: cases, reference: reference} do
    by_template =
      Enum.zip(cases, reference)
      |> Enum.group_by(fn {{path, _, _}, _} -> Path.basename(path) end, fn {_, ref} -> ref end)

    # These never render in the reference with our conversations, and we fail as it does:
    # tencent-Hy3 (str.format), firefunction-v2 (needs its own `functions` variable),
    # gemma-2 on its non-system conversations only, ByteDance-Seed-OSS (integer dict
    # keys), Apriel-1.5 (`|string` on a dict, `tools|length` on undefined).
    never = for {t, refs} <- by_template, Enum.all?(refs, &match?({:error, _}, &1)), do: t
    assert Enum.sort(never) -- known_unrenderable() == []
  end

  defp known_unrenderable,
    do:
      ~w(ByteDance-Seed-OSS.jinja fireworks-ai-llama-3-firefunction-v2.jinja tencent-Hy3.jinja unsloth-Apriel-1.5.jinja)

  defp same?({:ok, a}, {:ok, a}), do: true
  defp same?({:error, {:template_error, _}}, {:error, _}), do: true
  defp same?(_, _), do: false

  defp explain({:ok, a}, {:ok, b}) do
    i = first_difference(a, b)
    "  differ at byte #{i}\n  ours: #{inspect(slice(a, i))}\n  ref:  #{inspect(slice(b, i))}"
  end

  defp explain(ours, ref),
    do: "  ours: #{inspect(ours, printable_limit: 300)}\n  ref:  #{inspect(ref, printable_limit: 300)}"

  defp first_difference(a, b) do
    Enum.zip(:binary.bin_to_list(a), :binary.bin_to_list(b))
    |> Enum.find_index(fn {x, y} -> x != y end) || min(byte_size(a), byte_size(b))
  end

  defp slice(s, i), do: binary_part(s, max(i - 40, 0), min(120, byte_size(s) - max(i - 40, 0)))
end
