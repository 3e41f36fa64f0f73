"""The behaviour every :class:`~orchestra.sandbox.Sandbox` implementation must have.

Adapter authors: subclass :class:`SandboxContract` in a test module that provides a
``sandbox`` fixture (and an ``anyio_backend`` fixture); every test here then runs against
it. Isolation and deadline cases are not part of the contract (the in-process sandbox has
neither); see ``test_attacks.py`` for those. ``evaluate_all`` cases hold for the base
class's own implementation too.
"""

# ruff: noqa: D102 - the test methods' names say what they check

from __future__ import annotations

from typing import Any

import anyio
import pytest

from orchestra._json import JSON
from orchestra.errors import SandboxError, ScriptError
from orchestra.sandbox import EachCall, FragmentCall, RawJSON, Sandbox

pytestmark = pytest.mark.anyio

TWENTY = {f"f{i}": i for i in range(20)}


class SandboxContract:
    """Contract tests; the ``sandbox`` fixture supplies the implementation."""

    # -- fragments: expression or body -------------------------------------------------

    @pytest.mark.parametrize(
        ("source", "bindings", "expected"),
        [
            ("1 + 2", {}, 3),
            ("a.f3 + a.f4", {"a": TWENTY}, 7),
            ("ctx.items.map((x) => x * 2)", {"ctx": {"items": [1, 2, 3]}}, [2, 4, 6]),
            ("const x = a + 1;\nreturn x * 2;", {"a": 1}, 4),
            ("if (a) { return 'yes' }\nreturn 'no'", {"a": False}, "no"),
            ("let s = 0; for (const v of xs) s += v; return s", {"xs": [1, 2, 3]}, 6),
            ("a // trailing comment", {"a": 5}, 5),
            ("({a: 1, b: [true, null, 'x']})", {}, {"a": 1, "b": [True, None, "x"]}),
            ("x", {"x": "naïve ☃ 😀"}, "naïve ☃ 😀"),
            ("void 0", {}, None),
            ("let y = 1", {}, None),
            ("a.b", {"a": {"b": 0.5}}, 0.5),
            ("typeof a", {"a": None}, "object"),
            ("a === null", {"a": None}, True),
            ("$x + _y", {"$x": 1, "_y": 2}, 3),
            ("__proto__", {"__proto__": 3}, 3),
        ],
    )
    async def test_evaluates(
        self, sandbox: Sandbox, source: str, bindings: dict[str, Any], expected: JSON
    ) -> None:
        result = await sandbox.evaluate(source, bindings)
        assert result == expected
        assert type(result) is type(expected)

    async def test_each_call_sees_only_its_bindings(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("typeof a", {"a": 1}) == "number"
        assert await sandbox.evaluate("typeof a", {"b": 1}) == "undefined"

    async def test_same_source_different_binding_names(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("typeof a + typeof b", {"a": 1}) == "numberundefined"
        assert await sandbox.evaluate("typeof a + typeof b", {"a": 1, "b": "x"}) == "numberstring"

    async def test_strict_mode(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError, match=r"undeclared|not defined"):
            await sandbox.evaluate("undeclared = 1; return 1", {})
        assert await sandbox.evaluate("(function () { return this })()", {}) is None

    async def test_bindings_are_copies(self, sandbox: Sandbox) -> None:
        data: dict[str, JSON] = {"n": [1]}
        assert await sandbox.evaluate("a.n.push(2); return a.n", {"a": data}) == [1, 2]
        assert data == {"n": [1]}

    # -- exact data --------------------------------------------------------------------

    @pytest.mark.parametrize("value", [0, 1, -1, 2**53 - 1, -(2**53 - 1), 1.5, -0.25, 1e300])
    async def test_numbers_round_trip(self, sandbox: Sandbox, value: float) -> None:
        result = await sandbox.evaluate("v", {"v": value})
        assert result == value
        assert type(result) is type(value)

    async def test_integral_float_comes_back_as_int(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("v", {"v": 3.0}) == 3
        assert type(await sandbox.evaluate("v * 2", {"v": 1.5})) is int

    @pytest.mark.parametrize("value", [2**53, -(2**53), 10**30, [1, {"x": 2**63}]])
    async def test_unsafe_integer_bindings_are_rejected(
        self, sandbox: Sandbox, value: JSON
    ) -> None:
        with pytest.raises(ScriptError, match=r"2\^53"):
            await sandbox.evaluate("v", {"v": value})

    async def test_unsafe_looking_strings_are_fine(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("v", {"v": "12345678901234567890"}) == "12345678901234567890"

    @pytest.mark.parametrize("source", ["2 ** 60", "-(2 ** 54)", "[9007199254740992]"])
    async def test_unsafe_integer_results_are_rejected(self, sandbox: Sandbox, source: str) -> None:
        with pytest.raises(ScriptError, match=r"2\^53"):
            await sandbox.evaluate(source, {})

    async def test_huge_numbers_come_back_as_float(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("1e21", {}) == 1e21
        assert type(await sandbox.evaluate("1e21", {})) is float

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), {1, 2}, b"x"])
    async def test_non_json_bindings_are_rejected(self, sandbox: Sandbox, value: object) -> None:
        with pytest.raises(ScriptError, match="not JSON"):
            await sandbox.evaluate("v", {"v": value})  # type: ignore[dict-item]

    async def test_cyclic_binding_is_rejected(self, sandbox: Sandbox) -> None:
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        with pytest.raises(ScriptError, match="not JSON"):
            await sandbox.evaluate("v", {"v": cyclic})

    @pytest.mark.parametrize("name", ["a-b", "1x", "", "a b", "x;y"])
    async def test_binding_names_must_be_identifiers(self, sandbox: Sandbox, name: str) -> None:
        with pytest.raises(ScriptError, match="identifier"):
            await sandbox.evaluate("1", {name: 1})

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ("undefined", None),
            ("({a: undefined, b: 1})", {"b": 1}),
            ("[undefined, () => 1, Symbol('s')]", [None, None, None]),
            ("({f() {}, s: Symbol('s'), [Symbol('k')]: 1})", {}),
            ("Symbol('top')", None),
            ("() => 1", None),
            ("new Date(NaN)", None),
            ("({d: new Date(NaN)})", {"d": None}),
            ("new Date(0)", "1970-01-01T00:00:00.000Z"),
            ("new Map([[1, 2]])", {}),
            ("new Set([1])", {}),
            ("new Uint8Array([7])", {"0": 7}),
            ("({toJSON() { return 'custom' }})", "custom"),
            ("'a\\ud800b'", "a\ufffdb"),
            ("'\\udc00\\ud800'", "\ufffd\ufffd"),
            ("({'\\ud800': '\\\\ud800'})", {"\ufffd": "\\ud800"}),
            ("'\\ud83d\\ude00'", "😀"),
            ("-0", 0),
        ],
    )
    async def test_conversion_rules(self, sandbox: Sandbox, source: str, expected: JSON) -> None:
        assert await sandbox.evaluate(source, {}) == expected

    async def test_lone_surrogate_binding(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate("s + '!'", {"s": "\ud800"}) == "\ufffd!"

    @pytest.mark.parametrize(
        ("source", "match"),
        [
            ("1n", "BigInt"),
            ("({n: 2n})", "BigInt"),
            ("NaN", "NaN"),
            ("[1 / 0]", "Infinity"),
            ("-Infinity", "Infinity"),
            ("const a = {}; a.a = a; return a", "cyclic"),
            ("({get x() { throw new Error('nope') }})", "nope"),
            ("Promise.resolve(1)", "Promise"),
            ("(async () => 1)()", "Promise"),
        ],
    )
    async def test_non_json_results_are_errors(
        self, sandbox: Sandbox, source: str, match: str
    ) -> None:
        with pytest.raises(ScriptError, match=match):
            await sandbox.evaluate(source, {})

    async def test_deeply_nested_result_is_an_error(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError, match=r"nested too deeply|recursion"):
            await sandbox.evaluate(
                "let a = []; for (let i = 0; i < 5000; i++) a = [a]; return a", {}
            )

    async def test_output_limit(self, sandbox: Sandbox) -> None:
        with pytest.raises(SandboxError, match="output limit"):
            await sandbox.evaluate("'x'.repeat(2 * 1024 * 1024)", {})
        assert await sandbox.evaluate("'x'.repeat(1000).length", {}) == 1000

    # -- errors ------------------------------------------------------------------------

    async def test_thrown_error_has_name_message_line_column(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate(
                "const x = 1;\n\n  throw new TypeError('bad ' + x)", {}, name="cms.output"
            )
        err = info.value
        assert err.js_message == "TypeError: bad 1"
        assert (err.fragment, err.line, err.column) == ("cms.output", 3, 9)
        assert "cms.output" in str(err)

    async def test_runtime_error_in_expression_has_line(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate("1 +\n  nope", {}, name="cond")
        assert info.value.js_message == "ReferenceError: nope is not defined"
        assert (info.value.line, info.value.column) == (2, 3)

    async def test_error_subclass_with_own_name(self, sandbox: Sandbox) -> None:
        source = (
            "class MyError extends Error {\n"
            "  constructor(m) { super(m); this.name = 'MyError'; }\n"
            "}\n"
            "throw new MyError('custom')"
        )
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate(source, {})
        assert info.value.js_message == "MyError: custom"
        assert info.value.line == 2  # where the Error was constructed (super)

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ("throw 5", "uncaught exception: 5"),
            ("throw 'boom'", "uncaught exception: boom"),
            ("throw null", "uncaught exception: null"),
            ("throw undefined", "uncaught exception: undefined"),
            ("throw Symbol('s')", "uncaught exception: Symbol(s)"),
            ("throw {message: 'plain'}", "uncaught exception: plain"),
            ("throw {toString() { return 'evil' }}", "uncaught exception: a non-Error object"),
            ("throw new Error('\\ud800')", "Error: \ufffd"),
        ],
    )
    async def test_non_error_throws(self, sandbox: Sandbox, source: str, message: str) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate(source, {})
        assert info.value.js_message == message
        str(info.value).encode("utf-8")

    async def test_long_messages_are_clipped(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate("throw new Error('m'.repeat(100000))", {})
        assert len(info.value.js_message) < 2100

    # -- compile errors ------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("source", "line", "column"),
        [
            ("a +", 1, 4),
            ("a.b(", 1, 5),
            ("let x = 1;\n  x y", 2, 5),
            ("const a = 1;\nconst b = 2;\nreturn a +* b", 3, 11),
            ("ok\n)", 2, 1),
            ("{", 1, 2),
        ],
    )
    async def test_check_reports_position_in_fragment(
        self, sandbox: Sandbox, source: str, line: int, column: int
    ) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.check(source, name="frag")
        assert info.value.js_message.startswith("SyntaxError: ")
        assert (info.value.fragment, info.value.line, info.value.column) == ("frag", line, column)

    async def test_evaluate_reports_syntax_errors_like_check(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate("let x = 1;\n  x y", {})
        assert (info.value.line, info.value.column) == (2, 5)

    @pytest.mark.parametrize("source", ["a.b + 1", "return 1", "const x = 2;\nreturn x"])
    async def test_check_accepts_valid_fragments(self, sandbox: Sandbox, source: str) -> None:
        await sandbox.check(source)

    async def test_fragment_cannot_break_out_of_its_wrapper(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError, match="SyntaxError"):
            await sandbox.check("}); (function () {")

    async def test_warm_is_a_harmless_hint(self, sandbox: Sandbox) -> None:
        sandbox.warm()  # before any call, repeatedly, and between calls: never raises
        sandbox.warm()
        assert await sandbox.evaluate("[x, typeof globalThis.warm]", {"x": 1}) == [1, "undefined"]
        sandbox.warm()
        await anyio.sleep(0.01)  # whatever it started has run
        assert await sandbox.evaluate_all(
            [FragmentCall(name="a", source="x + 1", bind="x")], {"x": 1}
        ) == [2]

    # -- batches (evaluate_all) -----------------------------------------------------------

    async def test_batch_runs_in_order_and_binds_results(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("p.input", "({sku: t.sku, n: t.n + 1})", bind="input"),
            FragmentCall("p.path", "({id: input.sku})"),
            FragmentCall("p.query", "({n: input.n, t: typeof t})"),
        ]
        results = await sandbox.evaluate_all(fragments, {"t": {"sku": "a-1", "n": 1}})
        assert results == [{"sku": "a-1", "n": 2}, {"id": "a-1"}, {"n": 2, "t": "object"}]

    async def test_batch_of_one_and_of_none(self, sandbox: Sandbox) -> None:
        assert await sandbox.evaluate_all((FragmentCall("x", "a * 2"),), {"a": 21}) == [42]
        assert await sandbox.evaluate_all([], {"a": 1}) == []

    async def test_batch_bind_replaces_a_binding(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("a", "input + 1", bind="input"),
            FragmentCall("b", "input + 1", bind="input"),
            FragmentCall("c", "input"),
        ]
        assert await sandbox.evaluate_all(fragments, {"input": 1}) == [2, 3, 3]

    async def test_batch_binding_not_seen_before_it_is_bound(self, sandbox: Sandbox) -> None:
        fragments = [FragmentCall("a", "typeof later"), FragmentCall("b", "1", bind="later")]
        assert await sandbox.evaluate_all(fragments, {}) == ["undefined", 1]

    async def test_batch_fragments_get_fresh_copies(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("a", "t.x.push(9); return t.x", bind="r"),
            FragmentCall("b", "r.push(8); return [t.x, r]"),
            FragmentCall("c", "[t.x, r]"),
        ]
        results = await sandbox.evaluate_all(fragments, {"t": {"x": [1]}})
        assert results == [[1, 9], [[1], [1, 9, 8]], [[1], [1, 9]]]

    async def test_batch_bound_values_follow_the_data_rules(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("a", "({u: undefined, d: new Date(0), f() {}})", bind="v"),
            FragmentCall("b", "[Object.keys(v), typeof v.d]"),
        ]
        results = await sandbox.evaluate_all(fragments, {})
        assert results == [{"d": "1970-01-01T00:00:00.000Z"}, [["d"], "string"]]

    @pytest.mark.parametrize("falsy", ["false", "0", "''", "null", "undefined", "-0", "NaN > 1"])
    async def test_batch_guard_stops_on_falsy(self, sandbox: Sandbox, falsy: str) -> None:
        fragments = [FragmentCall("g", falsy, guard=True), FragmentCall("x", "nope.boom")]
        results = await sandbox.evaluate_all(fragments, {})
        assert len(results) == 1
        assert not results[0]

    @pytest.mark.parametrize("truthy", ["true", "1", "'x'", "[]", "({})", "-1"])
    async def test_batch_guard_continues_on_truthy(self, sandbox: Sandbox, truthy: str) -> None:
        fragments = [FragmentCall("g", truthy, guard=True), FragmentCall("x", "2")]
        assert (await sandbox.evaluate_all(fragments, {}))[1] == 2

    async def test_batch_error_names_the_failing_fragment(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("p.when", "true", guard=True),
            FragmentCall("p.input", "1", bind="input"),
            FragmentCall("p.path", "const x = 1;\n\n  throw new TypeError('bad ' + x)"),
            FragmentCall("p.query", "throw new Error('later')"),
        ]
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate_all(fragments, {})
        err = info.value
        assert err.js_message == "TypeError: bad 1"
        assert (err.fragment, err.line, err.column) == ("p.path", 3, 9)

    async def test_batch_syntax_error_names_the_fragment(self, sandbox: Sandbox) -> None:
        fragments = [FragmentCall("ok", "1"), FragmentCall("bad", "let x = 1;\n  x y")]
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate_all(fragments, {})
        assert (info.value.fragment, info.value.line, info.value.column) == ("bad", 2, 5)

    @pytest.mark.parametrize(
        ("source", "error", "match"),
        [
            ("2 ** 60", ScriptError, r"2\^53"),
            ("NaN", ScriptError, "NaN"),
            ("Promise.resolve(1)", ScriptError, "Promise"),
            ("'x'.repeat(2 * 1024 * 1024)", SandboxError, "output limit"),
        ],
    )
    async def test_batch_result_errors_name_the_fragment(
        self, sandbox: Sandbox, source: str, error: type[Exception], match: str
    ) -> None:
        fragments = [FragmentCall("first", "1", bind="a"), FragmentCall("second", source)]
        with pytest.raises(error, match=match) as info:
            await sandbox.evaluate_all(fragments, {})
        assert "second" in str(info.value)
        if isinstance(info.value, ScriptError):
            assert info.value.fragment == "second"

    async def test_batch_bind_name_must_be_an_identifier(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError, match="identifier") as info:
            await sandbox.evaluate_all([FragmentCall("x", "1", bind="a-b")], {})
        assert info.value.fragment == "x"

    async def test_batch_bindings_follow_the_data_rules(self, sandbox: Sandbox) -> None:
        with pytest.raises(ScriptError, match="not JSON"):
            await sandbox.evaluate_all([FragmentCall("x", "1")], {"v": float("nan")})
        with pytest.raises(ScriptError, match=r"2\^53"):
            await sandbox.evaluate_all([FragmentCall("x", "1")], {"v": 2**60})
        with pytest.raises(ScriptError, match="identifier"):
            await sandbox.evaluate_all([FragmentCall("x", "1")], {"a b": 1})

    async def test_batch_too_deep_result_names_the_fragment(self, sandbox: Sandbox) -> None:
        deep = "let a = []; for (let i = 0; i < 5000; i++) a = [a]; return a"
        fragments = [FragmentCall("a", "[[1]]"), FragmentCall("deep", deep)]
        with pytest.raises(ScriptError, match=r"nested too deeply|recursion") as info:
            await sandbox.evaluate_all(fragments, {})
        assert info.value.fragment == "deep"

    # -- batches with a part per element (evaluate_each) -----------------------------------

    async def test_each_runs_per_element_after_the_batch(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("a.output", "response.x + 1", bind="out.a"),
            FragmentCall("b.when", "out.a > 1", guard=True),
            FragmentCall("b.for_each", "[out.a, out.z, 'q']"),
        ]
        each = EachCall(
            over=2,
            fragments=(
                FragmentCall("b.input", "({v: item, i: index, a: out.a})", bind="input"),
                FragmentCall("b.query", "({q: input.v})"),
            ),
            limit=2,
        )
        bindings: dict[str, JSON] = {"response": {"x": 4}, "out": {"z": 9}}
        results, per = await sandbox.evaluate_each(fragments, bindings, each)
        assert results == [5, True, [5, 9, "q"]]
        assert per == [
            [{"v": 5, "i": 0, "a": 5}, {"q": 5}],
            [{"v": 9, "i": 1, "a": 5}, {"q": 9}],
        ]
        assert bindings == {"response": {"x": 4}, "out": {"z": 9}}  # not changed

    async def test_each_does_not_run_when_the_batch_stops_or_gets_no_list(
        self, sandbox: Sandbox
    ) -> None:
        each = EachCall(over=1, fragments=(FragmentCall("e", "item"),))
        stop = [FragmentCall("w", "x > 1", guard=True), FragmentCall("l", "[1]")]
        assert await sandbox.evaluate_each(stop, {"x": 0}, each) == ([False], None)
        scalar = [FragmentCall("w", "x > 1", guard=True), FragmentCall("l", "({})")]
        assert await sandbox.evaluate_each(scalar, {"x": 2}, each) == ([True, {}], None)
        empty = [FragmentCall("w", "true"), FragmentCall("l", "[]")]
        assert await sandbox.evaluate_each(empty, {}, each) == ([True, []], [])
        assert await sandbox.evaluate_each(empty, {}) == ([True, []], None)
        assert await sandbox.evaluate_each([], {}, each) == ([], None)

    async def test_each_binds_the_element_as_input_and_gives_fresh_copies(
        self, sandbox: Sandbox
    ) -> None:
        fragments = [FragmentCall("l", "[{n: 1}, {n: 2}]")]
        each = EachCall(
            over=0,
            fragments=(
                FragmentCall("m", "input.n += 10; t.k += 1; return [input.n, item.n, t.k]"),
            ),
            bind_input=True,
        )
        _, per = await sandbox.evaluate_each(fragments, {"t": {"k": 0}}, each)
        assert per == [[[11, 1, 1]], [[12, 2, 1]]]

    async def test_each_dotted_bind_on_a_missing_or_scalar_binding(self, sandbox: Sandbox) -> None:
        fragments = [
            FragmentCall("a", "1", bind="o.a"),
            FragmentCall("b", "2", bind="s.b"),
            FragmentCall("c", "3", bind="o.c"),
            FragmentCall("r", "[o, s]"),
        ]
        results, _ = await sandbox.evaluate_each(fragments, {"s": 7})
        assert results[-1] == [{"a": 1, "c": 3}, {"b": 2}]
        replace = [FragmentCall("a", "9", bind="o.a"), FragmentCall("r", "Object.keys(o)")]
        assert (await sandbox.evaluate_each(replace, {"o": {"a": 1, "b": 2}}))[0] == [9, ["a", "b"]]

    async def test_each_errors_name_the_failing_fragment(self, sandbox: Sandbox) -> None:
        fragments = [FragmentCall("l", "[1, 2]")]
        each = EachCall(over=0, fragments=(FragmentCall("ok", "item"), FragmentCall("bad", "nope")))
        with pytest.raises(ScriptError, match="nope is not defined") as info:
            await sandbox.evaluate_each(fragments, {}, each)
        assert info.value.fragment == "bad"
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate_each([FragmentCall("first", "x.y")], {}, each)
        assert info.value.fragment == "first"

    async def test_each_bind_names_must_be_identifiers(self, sandbox: Sandbox) -> None:
        for bind in ("a-b", "a.b.c", "a."):
            with pytest.raises(ScriptError, match="identifier") as info:
                await sandbox.evaluate_each([FragmentCall("x", "1", bind=bind)], {})
            assert info.value.fragment == "x"
        each = EachCall(over=0, fragments=(FragmentCall("y", "1", bind="a.b"),))
        with pytest.raises(ScriptError, match="identifier") as info:
            await sandbox.evaluate_each([FragmentCall("x", "[1]")], {}, each)
        assert info.value.fragment == "y"

    # -- raw JSON bindings (sandboxes with accepts_raw_json) -----------------------------

    RAW_TEXTS = (
        '{"a":[1,2.5,{"b":"x"}],"c":null,"d":true}',
        ' [1, "two"]\r ',
        '"str"',
        "12",
        '{"x":"naïve ☃ 😀","y":"\\u00e9\\ud800"}',
        '{"lone":"\ud800"}',
        '{"a":\n1,\t"b":2}',
        "-0",
        "[-0.0, 1e-5, 2E+2, 5e-324]",
        '{"when":"2024-05-01","sku":"tr-042"}',
        "not JSON",
        '{"a":1',
        "\ufeff{}",
        "",
        '{"__proto__":{"x":1}}',
        '{"a":1,"a":2}',
    )

    @pytest.mark.parametrize("text", RAW_TEXTS)
    async def test_raw_json_binds_like_its_value(self, sandbox: Sandbox, text: str) -> None:
        if not sandbox.accepts_raw_json:
            pytest.skip("the sandbox does not take RawJSON")
        source = "JSON.stringify(v) + typeof v + Object.is(v, -0) + Object.keys(Object(v))"
        as_raw = await sandbox.evaluate(source, {"v": RawJSON(text)})  # type: ignore[dict-item]
        assert as_raw == await sandbox.evaluate(source, {"v": RawJSON(text).value})
        batch = [FragmentCall("a", "v"), FragmentCall("b", source)]
        results = await sandbox.evaluate_all(batch, {"v": RawJSON(text)})  # type: ignore[dict-item]
        assert results == await sandbox.evaluate_all(batch, {"v": RawJSON(text).value})
        each = EachCall(over=0, fragments=(FragmentCall("e", "[item, v]"),))
        raw: dict[str, Any] = {"v": RawJSON(text)}
        got = await sandbox.evaluate_each([FragmentCall("l", "[1]")], raw, each)
        value = RawJSON(text).value
        assert got == await sandbox.evaluate_each([FragmentCall("l", "[1]")], {"v": value}, each)

    @pytest.mark.parametrize(
        ("text", "match"),
        [
            ('{"a":12345678901234567}', r"2\^53"),
            ("[1e400]", "not JSON"),
            ("[-1E+999]", "not JSON"),
            ('{"a":NaN}', "not JSON"),
            ("Infinity", "not JSON"),
        ],
    )
    async def test_raw_json_follows_the_data_rules(
        self, sandbox: Sandbox, text: str, match: str
    ) -> None:
        if not sandbox.accepts_raw_json:
            pytest.skip("the sandbox does not take RawJSON")
        with pytest.raises(ScriptError, match=match) as info:
            await sandbox.evaluate("v", {"v": RawJSON(text)}, name="f")  # type: ignore[dict-item]
        assert info.value.fragment == "f"

    async def test_raw_json_not_assumed_by_overriding_subclasses(self, sandbox: Sandbox) -> None:
        class Wrapped(type(sandbox)):  # type: ignore[misc]
            async def evaluate(self, *args: Any, **kwargs: Any) -> JSON:
                result: JSON = await super().evaluate(*args, **kwargs)
                return result

        class Said(Wrapped):
            accepts_raw_json = sandbox.accepts_raw_json

        assert Wrapped.accepts_raw_json is False
        assert Said.accepts_raw_json is sandbox.accepts_raw_json

    async def test_raw_json_with_numbers_in_strings(self, sandbox: Sandbox) -> None:
        if not sandbox.accepts_raw_json:
            pytest.skip("the sandbox does not take RawJSON")
        text = '{"id":"12345678901234567890","e":"1e400 NaN -0,"}'
        assert await sandbox.evaluate("v", {"v": RawJSON(text)}) == RawJSON(text).value  # type: ignore[dict-item]
