"""Batches the host answers itself give exactly what the sandbox gives, or are not answered.

Property tests: random JSON triggers and random fragments, from the grammar the host
answers (:mod:`orchestra.engine._quick`) and just outside it, run by the host and by the
real sandboxes. Whenever the host answers, its answer must be the sandbox's, key order and
number types included; whenever the sandbox raises, the host must not answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestra._json import JSON
from orchestra.engine._batching import pick, union
from orchestra.engine._quick import host_answer, output_limit
from orchestra.errors import SandboxError, ScriptError
from orchestra.sandbox import (
    FragmentCall,
    InProcessSandbox,
    Sandbox,
    SandboxLimits,
    WorkerSandbox,
)

# -- data ---------------------------------------------------------------------------------------

KEYS = ["a", "b", "sku", "length", "constructor", "toString", "__proto__", "0", "a-b", "", "é"]
NAMES = ["a", "b", "sku", "length", "constructor", "toString", "__proto__", "valueOf"]
PATH_KEYS = ["params", "query", "a", "b", "sku", "length", "constructor", "toString"]
ODD = ["\ud800", "\udfff", "\x00", "\x1c", "\x7f", "\u2028", "\U0001f600", "'", '"', "\\", "/"]

text = st.text(st.one_of(st.characters(), st.sampled_from(ODD)), max_size=8)
numbers = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, 2**53 - 1, 2**53, -(2**53 - 1), -(2**53), 10**21]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([3.0, -0.0, 0.0, 0.5, 1e21, 1e300, math.inf, math.nan]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text, st.sampled_from(["", "0", "x"]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), text), inner, max_size=4),
    ),
    max_leaves=12,
)
# Data the host can read as it is (most runs): small integers, plain strings, nesting.
plain_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["", "0", "x", "a b", "é€"])
)
plain = st.recursive(
    plain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(PATH_KEYS), inner, max_size=4)
    ),
    max_leaves=10,
)
READ_KEYS = ["params", "sku", "length", "constructor"]


def full(depth: int) -> st.SearchStrategy[JSON]:
    """Objects with every key of ``READ_KEYS``, ``depth`` deep: paths of readers find data."""
    if depth == 0:
        return plain_scalars
    inner = st.one_of(plain_scalars, plain_scalars, plain, full(depth - 1))
    return st.fixed_dictionaries(dict.fromkeys(READ_KEYS, inner))


triggers = st.one_of(
    full(3),
    full(3),
    full(3),
    st.dictionaries(st.sampled_from(PATH_KEYS), plain, max_size=5),
    st.dictionaries(st.sampled_from(PATH_KEYS), plain, max_size=5),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
    st.fixed_dictionaries(
        {"params": st.dictionaries(st.sampled_from(KEYS), values, max_size=4)},
        optional={"query": st.dictionaries(st.sampled_from(KEYS), scalars, max_size=4)},
    ),
    values,
)

# -- fragments ----------------------------------------------------------------------------------

# Blanks between tokens: mostly none or ASCII; sometimes what JavaScript and Python disagree on.
ODD_SPACE = ["\t", "\r\n", "\x0b", "\x0c", "\xa0", "\u2028", "\u2029", "\ufeff", "\u3000",
             "\x1c", "\x1f", "\x85", "\u180e", "\u200b"]  # fmt: skip
sp = st.sampled_from(["", "", "", "", " ", "\n"])


@st.composite
def paths(draw: st.DrawFn) -> str:
    root = draw(st.sampled_from(["trigger"] * 12 + ["input"] * 4 + ["out", "ctx", "item", "x"]))
    keys = draw(st.lists(st.sampled_from([*PATH_KEYS, "__proto__", "valueOf"]), max_size=3))
    parts = [root]
    for key in keys:
        parts.append(draw(sp) + "." + draw(sp) + key)
    path = "".join(parts)
    outside = draw(st.integers(0, 30))  # mostly inside the grammar
    if outside == 1:
        path += "['a']"
    elif outside == 2:
        path += ".0"
    elif outside == 3:
        path += ".a-b"
    elif outside == 4:
        path += "?.a"
    elif outside == 5:
        path += ".toString()"
    return path


def _quote(s: str, q: str) -> str:
    return q + s + q


LITERALS = ["true", "false", "null", "0", "1", "42", "999999999999999", "9007199254740993",
            "010", "00", "1.5", "-1", "0x10", "1e3", "1n", "1_0", ".5", "5.", "undefined", "NaN",
            "Infinity", "''", '""', "'a\\'b'", "'\\x41'", "`t`", "[]", "[1]", "{}"]  # fmt: skip


@st.composite
def literals(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(LITERALS))
    return _quote(draw(text), draw(st.sampled_from(["'", '"'])))


@st.composite
def keys(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from([*NAMES, "if", "class", "null", "true", "x", "$", "_"]))
    style = draw(st.integers(0, 4))
    if style == 1:
        return _quote(draw(st.sampled_from(KEYS + ["a-b", "-1", "$", "x y", "1a"])), "'")
    if style == 2:
        return _quote(draw(st.sampled_from(KEYS)), '"')
    if style == 3 and draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(["0", "1", "[k]", "'\\u0061'", "a b", "..."]))
    return key


def values_src() -> st.SearchStrategy[str]:
    return st.one_of(paths(), paths(), literals(), st.builds(lambda p: f"Boolean({p})", paths()))


@st.composite
def objects(draw: st.DrawFn) -> str:
    fields = draw(st.lists(st.tuples(keys(), values_src()), max_size=4))
    parts = [draw(sp) + k + draw(sp) + ":" + draw(sp) + v + draw(sp) for k, v in fields]
    inner = ",".join(parts)
    trailing_comma: Any = st.booleans()  # (Any: mypy binds draw's type to the first draw)
    if fields and draw(trailing_comma):
        inner += ","
    return "{" + inner + draw(sp) + "}"


@st.composite
def fragments_src(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        body = "(" + draw(sp) + draw(objects()) + draw(sp) + ")"
    elif kind == 3:
        body = draw(paths())
    elif kind == 4:
        body = "(" + draw(paths()) + ")"
    elif kind == 5:
        body = "Boolean" + draw(sp) + "(" + draw(sp) + draw(st.one_of(paths(), literals())) + ")"
    elif kind == 6:
        body = draw(literals())
    elif kind == 7:
        body = "Boolean(" + draw(st.one_of(objects(), st.sampled_from(["[]", "{}", "-0"]))) + ")"
    elif kind == 8:
        body = draw(objects())  # a block, not an object
    else:
        junk = draw(st.sampled_from(["{} + ", "!", "typeof ", "void ", "-", "return ", "(", ""]))
        tail = draw(st.sampled_from([" || 'x'", " + 1", ")", ";", " // c", "", ",1"]))
        body = junk + draw(paths()) + tail
    body = draw(sp) + body + draw(sp)
    if draw(st.integers(0, 7)) == 0:  # a blank JavaScript and Python may disagree on
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from(ODD_SPACE)) + body[at:]
    return body


@st.composite
def readers(draw: st.DrawFn, depth: int = 0) -> str:
    """A fragment from the grammar the host answers (it may still meet odd data)."""
    root = draw(st.sampled_from(["trigger", "trigger", "trigger", "input"]))
    path = root + "".join("." + k for k in draw(st.lists(st.sampled_from(READ_KEYS), max_size=3)))
    value = draw(
        st.one_of(
            st.just(path),
            st.sampled_from(["true", "false", "null", "0", "7", "999999999999999", "'x'", '""']),
            st.builds(lambda t: json.dumps(t, ensure_ascii=False), st.text(max_size=5)),
        )
    )
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return path
    if kind == 1:
        return f"Boolean({value})"
    if kind == 2 or depth > 0:
        return f"({value})"
    quoted = ["'a-b'", '"$x"', "'-'", "'constructor'", '"toString"', "'length'"]
    names = st.sampled_from(["a", "b", "sku", "if", "null", "length", "constructor", *quoted])
    fields = draw(
        st.lists(st.tuples(names, st.just(value) | st.deferred(lambda: readers(1))), max_size=4)
    )
    return "({" + ", ".join(f"{k}: {v}" for k, v in fields) + "})"


@st.composite
def batches(draw: st.DrawFn) -> tuple[FragmentCall, ...]:
    n = draw(st.integers(1, 3))
    out = []
    reading = draw(st.integers(0, 4)) < 3  # mostly fragments the host may answer
    for i in range(n):
        if reading:
            bind = draw(st.sampled_from([None, "input"]))
            source = draw(readers())
        else:
            bind = draw(st.sampled_from([None, None, "input", "input", "other"]))
            source = draw(st.one_of(readers(), fragments_src()))
        out.append(FragmentCall(f"p.f{i}", source, bind=bind, guard=draw(st.booleans())))
    return tuple(out)


@st.composite
def bindings(draw: st.DrawFn) -> dict[str, JSON]:
    b: dict[str, JSON] = {"trigger": draw(triggers)}
    if draw(st.booleans()):
        b["input"] = draw(values)  # replaced by an ``input`` bind; never read before one
    return b


# -- running both -------------------------------------------------------------------------------


def _same(host: list[JSON], sandbox: list[JSON]) -> bool:
    """Equal as JSON text: key order, ``true`` vs ``1``, ``1`` vs ``1.0`` all count."""
    return json.dumps(host) == json.dumps(sandbox)


def check(
    fragments: tuple[FragmentCall, ...],
    b: dict[str, JSON],
    run: Any,
    sandbox: Any,
    limit: int,
) -> None:
    expected: list[JSON] | Exception
    try:
        expected = run(sandbox.evaluate_all(fragments, pick(b, union(fragments))))
    except (ScriptError, SandboxError) as exc:
        expected = exc
    host = host_answer(fragments, pick(b, union(fragments)), limit=limit)
    if host is None:
        event("sandbox" if not isinstance(expected, Exception) else "sandbox (error)")
        return
    event("host")
    assert not isinstance(expected, Exception), (host, expected)
    assert _same(host, expected), (host, expected)


@pytest.fixture(scope="module")
def in_process() -> Iterator[tuple[Any, InProcessSandbox]]:
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete, InProcessSandbox()
    finally:
        loop.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Any, WorkerSandbox]]:
    with start_blocking_portal("asyncio") as portal:
        sandbox = WorkerSandbox(size=1, limits=SandboxLimits(spares=0))

        def run(coro: Coroutine[Any, Any, Any]) -> Any:
            return _call(portal, coro)

        try:
            yield run, sandbox
        finally:
            portal.call(sandbox.aclose)


def _call(portal: BlockingPortal, coro: Coroutine[Any, Any, Any]) -> Any:
    async def wrapped() -> Any:
        return await coro

    return portal.call(wrapped)


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=1500, **_SETTINGS)  # type: ignore[arg-type]
@given(batch=batches(), b=bindings())
def test_the_host_answers_as_the_in_process_sandbox(
    in_process: tuple[Any, InProcessSandbox], batch: tuple[FragmentCall, ...], b: dict[str, JSON]
) -> None:
    run, sandbox = in_process
    check(batch, b, run, sandbox, limit=8 * 1024 * 1024)


@settings(max_examples=200, **_SETTINGS)  # type: ignore[arg-type]
@given(batch=batches(), b=bindings())
def test_the_host_answers_as_the_worker_sandbox(
    worker: tuple[Any, WorkerSandbox], batch: tuple[FragmentCall, ...], b: dict[str, JSON]
) -> None:
    run, sandbox = worker
    check(batch, b, run, sandbox, limit=sandbox.limits.max_output_chars)


_SMALL: dict[int, InProcessSandbox] = {}


@settings(max_examples=300, **_SETTINGS)  # type: ignore[arg-type]
@given(batch=batches(), b=bindings(), limit=st.integers(1, 40))
def test_the_host_answers_nothing_over_the_output_limit(
    in_process: tuple[Any, InProcessSandbox],
    batch: tuple[FragmentCall, ...],
    b: dict[str, JSON],
    limit: int,
) -> None:
    run, _ = in_process
    sandbox = _SMALL.setdefault(limit, InProcessSandbox(max_output_chars=limit))
    check(batch, b, run, sandbox, limit=limit)


# -- divergences found, kept ---------------------------------------------------------------------


def _both(
    run: Any, sandbox: InProcessSandbox, fragments: tuple[FragmentCall, ...], b: dict[str, JSON]
) -> tuple[list[JSON] | None, list[JSON] | Exception]:
    picked = pick(b, union(fragments))
    try:
        expected: list[JSON] | Exception = run(sandbox.evaluate_all(fragments, picked))
    except (ScriptError, SandboxError) as exc:
        expected = exc
    return host_answer(fragments, picked, limit=8 * 1024 * 1024), expected


@pytest.mark.parametrize("blank", ["\x1c", "\x1d", "\x1e", "\x1f", "\x85"])
def test_blanks_python_takes_and_javascript_refuses_go_to_the_sandbox(
    in_process: tuple[Any, InProcessSandbox], blank: str
) -> None:
    """Python's ``\\s`` and ``str.strip`` take these; JavaScript has them as syntax errors."""
    run, sandbox = in_process
    for source in (f"trigger.a{blank}", f"''{blank}", f"trigger{blank}.a", f"({blank}trigger.a)"):
        host, expected = _both(run, sandbox, (FragmentCall("p.f", source),), {"trigger": {"a": 1}})
        assert isinstance(expected, ScriptError)
        assert host is None


def test_a_binding_named_only_in_a_string_or_key_goes_to_the_sandbox(
    in_process: tuple[Any, InProcessSandbox],
) -> None:
    """The engine sends ``ctx`` when its name appears; the sandbox refuses it unread."""
    run, sandbox = in_process
    b: dict[str, JSON] = {"trigger": {"a": 1}, "ctx": {"big": 2**60}, "out": {"x": 2**60}}
    for source in ("({a: 'ctx'})", "({ctx: trigger.a})", "({status: trigger.a, out: 1})"):
        host, expected = _both(run, sandbox, (FragmentCall("p.f", source),), b)
        assert isinstance(expected, ScriptError), source
        assert host is None


def test_an_unclean_input_the_batch_replaces_still_goes_to_the_sandbox(
    in_process: tuple[Any, InProcessSandbox],
) -> None:
    run, sandbox = in_process
    fragments = (FragmentCall("p.input", "({a: 1})", bind="input"), FragmentCall("p.q", "input.a"))
    host, expected = _both(run, sandbox, fragments, {"trigger": {}, "input": 2**60})
    assert isinstance(expected, ScriptError)
    assert host is None
    assert _both(run, sandbox, fragments, {"trigger": {}, "input": None}) == ([{"a": 1}, 1],) * 2


def test_a_result_over_the_output_limit_goes_to_the_sandbox(
    in_process: tuple[Any, InProcessSandbox],
) -> None:
    run, _ = in_process
    small = InProcessSandbox(max_output_chars=8)
    fragments = (FragmentCall("p.q", "({a: trigger.s})"),)
    b: dict[str, JSON] = {"trigger": {"s": "\U0001f600\U0001f600"}}  # 4 UTF-16 code units
    with pytest.raises(SandboxError, match="output limit"):
        run(small.evaluate_all(fragments, b))
    assert host_answer(fragments, b, limit=8) is None
    assert host_answer(fragments, b, limit=14) == [{"a": "\U0001f600\U0001f600"}]
    assert run(InProcessSandbox(max_output_chars=14).evaluate_all(fragments, b)) == [
        {"a": "\U0001f600\U0001f600"}
    ]


def test_a_batch_without_the_trigger_is_answered() -> None:
    assert host_answer((FragmentCall("p.q", "({})"),), {}, limit=100) == [{}]
    assert host_answer((FragmentCall("p.q", "trigger.a"),), {}, limit=100) is None


def test_only_orchestras_sandboxes_are_answered_for() -> None:
    class Other(Sandbox):
        async def evaluate(self, source: str, bindings: Any, **kwargs: Any) -> JSON:
            return None

        async def check(self, source: str, *, name: str = "fragment") -> None:
            return None

    assert output_limit(InProcessSandbox(max_output_chars=99)) == 99
    assert output_limit(WorkerSandbox(limits=SandboxLimits(max_output_chars=77))) == 77
    assert output_limit(Other()) is None


@pytest.mark.parametrize(
    "value", [[], {}, "", "0", " ", 0, -0.0, 0.0, 1.5, None, False, True, [0], {"a": None}, 2**53]
)
def test_boolean_of_every_kind_of_value(
    in_process: tuple[Any, InProcessSandbox], value: JSON
) -> None:
    """JavaScript's truthiness: ``[]`` and ``{}`` are true; ``""``, ``0``, ``-0``, null false."""
    run, sandbox = in_process
    fragments = (FragmentCall("p.when", "Boolean(trigger.v)", guard=True),)
    host, expected = _both(run, sandbox, fragments, {"trigger": {"v": value}})
    if value == 2**53:  # the sandbox refuses the trigger: so does the host
        assert (host, type(expected)) == (None, ScriptError)
    else:
        assert host == expected == [value not in ("", 0, None, False)]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("({b: 1, a: 2, b: 3})", {"b": 3, "a": 2}),  # a duplicate keeps its first place
        ("({'a-b': trigger.s, \"$\": null, toString: 1, constructor: true,})", None),
        ("({length: trigger.s, if: 0, null: 'x'})", None),
        ("  Boolean ( trigger . s ) ", True),
        ("'\u2028é'", "\u2028é"),
    ],
)
def test_literals_and_keys_as_the_sandbox(
    in_process: tuple[Any, InProcessSandbox], source: str, expected: JSON
) -> None:
    run, sandbox = in_process
    fragments = (FragmentCall("p.q", source),)
    host, result = _both(run, sandbox, fragments, {"trigger": {"s": "x"}})
    assert host is not None
    assert json.dumps(host) == json.dumps(result)
    if expected is not None:
        assert host == [expected]
