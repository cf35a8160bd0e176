defmodule LlamaCppEx.JinjaTest do
  # The engine's semantics (those of @huggingface/jinja, which the conformance test
  # compares with on real templates) and its sandbox. No model needed.
  use ExUnit.Case, async: true

  alias LlamaCppEx.Jinja

  defp r(source, vars \\ %{}, opts \\ []) do
    case Jinja.render(source, vars, opts) do
      {:ok, text} -> text
      {:error, {:template_error, info}} -> {:error, info}
    end
  end

  test "whitespace control, trim_blocks and lstrip_blocks" do
    assert r("a\n  {% if true %}\nb\n  {% endif %}\nc") == "a\nb\nc"
    assert r("a  {{- 'b' -}}  c") == "abc"
    assert r("a {#- note -#} b") == "ab"
    assert r("x\n") == "x"
  end

  test "values print as the reference prints them" do
    assert r("{{ true }} {{ none }}|{{ [1, 'a', none] }} {{ {'k': 2.0} }} {{ 2.0 }} {{ 7 / 2 }} {{ 1.5 ~ [1, 2] }}") ==
             "true |[1, \"a\", null] {\"k\": 2} 2.0 3.5 1.51,2"

    assert r("{{ x }}|{{ x.y }}|{{ x is defined }}") == "||false"
  end

  test "tojson options" do
    v = %{v: [a: "é", b: [1, 2]]}
    assert r("{{ v|tojson }}", v) == ~s({"a": "é", "b": [1, 2]})
    assert r("{{ v|tojson(ensure_ascii=true) }}", v) == ~s({"a": "\\u00e9", "b": [1, 2]})
    assert r("{{ v|tojson(indent=2) }}", v) == "{\n  \"a\": \"é\",\n  \"b\": [\n    1,\n    2\n  ]\n}"
    assert r("{{ v|tojson(separators=(',', ':'), sort_keys=true) }}", %{v: [b: 1, a: 2]}) == ~s({"a":2,"b":1})
  end

  test "loops, loop variables, else, break and continue, namespaces" do
    assert r("{% for x in xs %}{{ loop.index }}{{ x }}{{ '|' if not loop.last }}{% endfor %}", xs: ~w(a b c)) ==
             "1a|2b|3c"

    assert r("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty"
    assert r("{% for x in range(5) if x is odd %}{{ x }}{% endfor %}") == "13"
    assert r("{% for x in range(9) %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}") == "012"
    assert r("{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}", d: [b: 1, a: 2]) == "b=1;a=2;"

    assert r("{% set ns = namespace(n=0) %}{% for x in range(4) %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}") ==
             "6"

    # a plain set inside a loop does not leak out of it
    assert r("{% set n = 1 %}{% for x in [1] %}{% set n = 2 %}{% endfor %}{{ n }}") == "1"
  end

  test "macros, call blocks, filter blocks, block set" do
    assert r("{% macro m(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}") == "1B12"
    assert r("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in{% endcall %}") == "<in>"
    assert r("{% filter upper %}abc{% endfilter %}") == "ABC"
    assert r("{% set t %}x{{ 1 }}{% endset %}{{ t }}") == "x1"
  end

  test "strings, slices, membership, methods and filters" do
    assert r("{{ 'abcdef'[1:4] }} {{ 'abc'[::-1] }} {{ [1, 2, 3][-1] }} {{ [1, 2, 3, 4][::2] }}") == "bcd cba 3 [1, 3]"
    assert r("{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' not in [] }}") == "true true true true"

    assert r("{{ ' x '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b'.split() }}|{{ 'aaa'.replace('a', 'b', 2) }}") ==
             ~s(x|["a", "b", "", "c"]|["a", "b"]|bba)

    assert r("{{ 'hello world'.title() }} {{ 'ab'.startswith(('x', 'a')) }} {{ d.get('z', 9) }}", d: %{}) ==
             "Hello World true 9"

    assert r("{{ xs|selectattr('t', 'equalto', 'f')|map(attribute='n')|join(',') }}",
             xs: [[t: "f", n: "a"], [t: "g", n: "b"], [t: "f", n: "c"]]
           ) == "a,c"

    assert r("{{ x|default('d') }} {{ ''|default('d', true) }} {{ 'a\nb'|indent(2) }} {{ [3, 1, 2]|sort|first }}") ==
             "d d a\n  b 1"
  end

  test "errors are {:error, ...} with the template line" do
    assert r("a\n{{ raise_exception('stop') }}") == {:error, %{message: "stop", line: 2}}
    assert {:error, %{line: 3}} = r("\n\n{{ 1 ~ none }}")
    assert {:error, %{line: 1}} = r("{% for x in 5 %}{% endfor %}")
    assert {:error, %{line: 2}} = r("x\n{% if %}")
    assert {:error, %{line: 1}} = r("{% endfor %}")
    assert {:error, %{}} = r("{{ x.y() }}")
    assert {:error, %{}} = r("{% continue %}")
  end

  test "sandbox: steps, depth, output, time and memory are bounded" do
    assert {:error, %{message: m}} =
             r("{% for i in range(100) %}{% for j in range(100) %}x{% endfor %}{% endfor %}", %{}, max_steps: 1000)

    assert m =~ "steps"
    assert {:error, %{message: m}} = r("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    assert m =~ "deeper"
    assert {:error, %{message: m}} = r("{% for i in range(1000) %}xxxxxxxxxx{% endfor %}", %{}, max_output: 5000)
    assert m =~ "bytes"
    # doubling a string: bounded by :max_output before memory runs out
    assert {:error, %{}} =
             r("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")

    assert {:error, %{message: m}} =
             r("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", %{},
               max_steps: 1_000_000_000,
               timeout: 200
             )

    assert m =~ "ms"
  end

  test "nothing a template does creates atoms" do
    source = Enum.map_join(1..200, " ", &"{{ undefined_name_#{&1}.attr_#{&1} is defined }}")
    before = :erlang.system_info(:atom_count)
    assert {:ok, _} = Jinja.render(source, %{})
    assert :erlang.system_info(:atom_count) - before < 20
  end

  test "compiled templates are cached and reusable" do
    assert {:ok, t} = Jinja.compile("{{ a }}")
    assert {:ok, ^t} = Jinja.compile("{{ a }}")
    assert Jinja.render(t, a: 1) == {:ok, "1"}
    assert Jinja.render(t, %{"a" => "x"}) == {:ok, "x"}
  end

  test "bad arguments raise" do
    assert_raise ArgumentError, fn -> Jinja.render("x", %{a: self()}) end
    assert_raise ArgumentError, fn -> Jinja.render("x", %{true: 1}) end
    assert_raise ArgumentError, fn -> Jinja.render(42, %{}) end
    assert_raise ArgumentError, fn -> Jinja.render("x", %{}, timeout: 0) end
    assert_raise ArgumentError, fn -> Jinja.compile(<<255>>) end
  end
end
