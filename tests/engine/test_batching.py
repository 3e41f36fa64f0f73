"""How the engine uses the sandbox: one round trip per batch, only the bindings used."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import httpx
import pytest

import orchestra as o
from orchestra._json import JSON
from orchestra.engine import _batching, _steps
from orchestra.engine._steps import uses
from orchestra.executors import InMemoryExecutor
from orchestra.sandbox import (
    EachCall,
    FragmentCall,
    InProcessSandbox,
    Sandbox,
    SandboxLimits,
    WorkerSandbox,
)

pytestmark = pytest.mark.anyio


class Spy(InProcessSandbox):
    """Records every round trip: the fragments' names and the binding names sent."""

    def __init__(self) -> None:
        super().__init__()
        self.trips: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        self.trips.append(((name,), tuple(sorted(bindings))))
        return await super().evaluate(source, bindings, name=name, timeout=timeout)

    async def evaluate_all(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        *,
        timeout: float | None = None,
    ) -> list[JSON]:
        self.trips.append((tuple(f.name for f in fragments), tuple(sorted(bindings))))
        return await super().evaluate_all(fragments, bindings, timeout=timeout)

    async def evaluate_each(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        each: EachCall | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[list[JSON], list[list[JSON]] | None]:
        names = [f.name for f in fragments] + [f.name for f in (each.fragments if each else ())]
        self.trips.append((tuple(names), tuple(sorted(bindings))))
        return await super().evaluate_each(fragments, bindings, each, timeout=timeout)

    def names(self) -> list[tuple[str, ...]]:
        return [names for names, _ in self.trips]


class Api:
    """A mock API that records requests and answers ``{"n": <path>, ...}``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            body = json.loads(request.content) if request.content else None
            return httpx.Response(
                200, json={"path": request.url.path, "q": dict(request.url.params), "body": body}
            )

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))


def engine(sandbox: o.Sandbox | None = None) -> tuple[o.Engine, Spy, Api]:
    spy = Spy()
    api = Api()
    eng = o.Engine(sandbox=sandbox or spy, executor=InMemoryExecutor(), client=api.client)
    return eng, spy, api


async def invoke(eng: o.Engine, *processors: o.Processor, request: Any = None) -> o.Result:
    process = o.Process(name="proc", steps=(o.ProcessStep(name="main", processors=processors),))
    return await eng.invoke(process, request)


TRIGGER = {"sku": "a-1", "n": 2}


def outputs(result: o.Result) -> Any:
    """The outputs of the step ``main``, by processor."""
    steps: Any = result.context["steps"]
    return steps["main"]


# -- the scan for bindings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("trigger.params.sku", ("trigger",)),
        ("input.b + out.a", ("out", "input")),
        ("xctx + ctx1 + ctx_", ()),
        ("'uses ctx only in a string'", ("ctx",)),
        ("response.status", ("response", "status")),
        ("// item\n1", ("item",)),
        ("[...index]", ("index",)),
        ("arguments[0]", None),
        ("eval('ctx')", None),
        ("\\u0063tx.trigger", None),
    ],
)
def test_uses(source: str, expected: tuple[str, ...] | None) -> None:
    assert uses(source) == expected
    assert uses(source) == expected  # cached


# -- round trips ------------------------------------------------------------------------------


async def test_when_input_and_request_parts_go_in_one_round_trip() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        when="trigger.n > 1",
        input="({sku: trigger.sku.toUpperCase(), n: trigger.n})",
        call=o.HttpCall(
            url="http://api/items/{id}",
            method="POST",
            path="({id: input.sku})",
            headers="({'x-n': String(input.n)})",
            query="({n: input.n})",
            body="({sku: input.sku})",
        ),
        output="({path: response.path, q: response.q, body: response.body, status})",
    )
    result = await invoke(eng, p, request=TRIGGER)
    assert spy.names() == [
        ("p.when", "p.input", "p.path", "p.headers", "p.query", "p.body"),
        ("p.output",),
    ]
    assert outputs(result)["p"] == {
        "path": "/items/A-1",
        "q": {"n": "2"},
        "body": {"sku": "A-1"},
        "status": 200,
    }
    (request,) = api.requests
    assert request.headers["x-n"] == "2"


async def test_false_when_skips_without_running_the_rest() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        when="trigger.n > 5",
        input="nope.boom",
        call=o.HttpCall(url="http://api/x", query="nope.boom"),
        output="nope.boom",
    )
    result = await invoke(eng, p, request=TRIGGER)
    assert [t.status for t in result.trace] == ["skipped"]
    assert spy.names() == [("p.when", "p.input", "p.query")]
    assert api.requests == []


async def test_processor_without_fragments_makes_no_round_trip() -> None:
    eng, spy, api = engine()
    result = await invoke(eng, o.Processor(name="p", call=o.HttpCall(url="http://api/x")))
    assert spy.trips == []
    assert outputs(result)["p"]["path"] == "/x"


async def test_function_call_when_and_input_in_one_round_trip() -> None:
    seen: list[JSON] = []

    def double(value: JSON) -> JSON:
        seen.append(value)
        assert isinstance(value, int)
        return value * 2

    spy = Spy()
    eng = o.Engine(sandbox=spy, executor=InMemoryExecutor(), functions={"double": double})
    p = o.Processor(
        name="p",
        when="true",
        input="trigger.n + 1",
        call=o.FunctionCall(name="double"),
        output="response + input",
    )
    result = await invoke(eng, p, request=TRIGGER)
    assert spy.names() == [("p.when", "p.input"), ("p.output",)]
    assert seen == [3]
    assert outputs(result)["p"] == 9


async def test_only_the_bindings_a_fragment_uses_are_sent() -> None:
    eng, spy, _ = engine()
    p1 = o.Processor(
        name="a",
        input="trigger.sku.trim()",  # a call: the sandbox's (plain reads are the host's)
        call=o.HttpCall(url="http://api/a", query="({s: input})"),
        output="response.q",
    )
    p2 = o.Processor(
        name="b",
        needs=("a",),
        call=o.HttpCall(url="http://api/b", query="out.a"),
        output="[ctx.trigger.n, status]",
    )
    p3 = o.Processor(
        name="c",
        needs=("b",),
        call=o.HttpCall(url="http://api/c"),
        output="arguments.length",
    )
    result = await invoke(eng, p1, p2, p3, request=TRIGGER)
    assert spy.trips == [
        (("a.input", "a.query"), ("trigger",)),
        (("a.output", "b.query"), ("out", "response")),  # b waits only for a: one trip
        (("b.output",), ("ctx", "status", "trigger")),  # ctx.trigger: words count
        (("c.output",), ("ctx", "input", "out", "response", "status", "trigger")),
    ]
    out = outputs(result)
    assert out["b"] == [2, 200]
    assert out["c"] == 6


async def test_fragments_of_a_batch_see_fresh_bindings() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        input="trigger.sku = 'changed'; return 1",
        call=o.HttpCall(url="http://api/x", query="({sku: trigger.sku, input})"),
    )
    await invoke(eng, p, request=TRIGGER)
    assert dict(api.requests[0].url.params) == {"sku": "a-1", "input": "1"}


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment", "message", "line"),
    [
        ({"input": "1 +\n  nope"}, "p.input", "nope is not defined", 2),
        ({"query": "const a = 1;\nthrow new Error('q')"}, "p.query", "Error: q", 2),
        ({"path": "'a string'"}, "p.path", "path must return an object, got a string", None),
        ({"headers": "[1]"}, "p.headers", "headers must return an object, got an array", None),
        ({"when": "nope"}, "p.when", "nope is not defined", 1),
    ],
)
async def test_errors_name_the_failing_fragment(
    fields: dict[str, str], fragment: str, message: str, line: int | None
) -> None:
    eng, _, _ = engine()
    call: Any = {k: v for k, v in fields.items() if k in ("path", "query", "headers")}
    proc: Any = {k: v for k, v in fields.items() if k in ("input", "when")}
    p = o.Processor(name="p", call=o.HttpCall(url="http://api/x", **call), **proc)
    with pytest.raises(o.ScriptError) as info:
        await invoke(eng, p, request=TRIGGER)
    err = info.value
    assert (err.fragment, err.processor, err.step) == (fragment, "p", "main")
    assert message in str(err)
    assert err.line == line


async def test_fallback_still_catches_batch_errors() -> None:
    eng, _, _ = engine()
    p = o.Processor(
        name="p",
        input="nope",
        call=o.HttpCall(url="http://api/x"),
        on_error="fallback",
        fallback={"f": 1},
    )
    result = await invoke(eng, p)
    assert outputs(result)["p"] == {"f": 1}
    assert result.trace[0].status == "fallback"
    assert "p.input" in (result.trace[0].error or "")


# -- for_each ---------------------------------------------------------------------------------


def for_each_processor() -> o.Processor:
    return o.Processor(
        name="p",
        when="true",
        for_each="trigger.items",
        concurrency=2,
        input="({sku: item, i: index})",
        call=o.HttpCall(url="http://api/p/{sku}", path="({sku: input.sku})", query="({i: index})"),
        output="({sku: input.sku, q: response.q})",
    )


FOR_EACH_OUTPUT = [
    {"sku": "x", "q": {"i": "0"}},
    {"sku": "y", "q": {"i": "1"}},
    {"sku": "z", "q": {"i": "2"}},
]


async def test_for_each_and_the_items_requests_go_in_one_round_trip() -> None:
    eng, spy, api = engine()
    result = await invoke(eng, for_each_processor(), request={"items": ["x", "y", "z"]})
    assert spy.trips[0] == (
        ("p.when", "p.for_each", "p.input", "p.path", "p.query"),
        ("trigger",),
    )
    # the items' outputs in one trip (input and response bound for items 1 and 2)
    assert spy.names()[1:] == [("p.output",) * 7]
    assert outputs(result)["p"] == FOR_EACH_OUTPUT
    assert len(api.requests) == 3


class PlainSpy(Sandbox):
    """A third-party sandbox: only ``evaluate`` and ``check``; records ``evaluate_all`` calls."""

    def __init__(self) -> None:
        self.inner = InProcessSandbox()
        self.trips: list[tuple[str, ...]] = []

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        return await self.inner.evaluate(source, bindings, name=name, timeout=timeout)

    async def evaluate_all(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        *,
        timeout: float | None = None,
    ) -> list[JSON]:
        self.trips.append(tuple(f.name for f in fragments))
        return await super().evaluate_all(fragments, bindings, timeout=timeout)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        await self.inner.check(source, name=name)


async def test_without_evaluate_each_items_build_their_request_one_by_one() -> None:
    plain = PlainSpy()
    eng, _, api = engine(plain)
    result = await invoke(eng, for_each_processor(), request={"items": ["x", "y", "z"]})
    assert plain.trips[0] == ("p.when", "p.for_each")
    assert plain.trips[1:].count(("p.input", "p.path", "p.query")) == 3
    assert outputs(result)["p"] == FOR_EACH_OUTPUT
    assert len(api.requests) == 3


async def test_without_evaluate_each_outputs_are_not_chained() -> None:
    plain = PlainSpy()
    eng, _, _ = engine(plain)
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(
        name="b", needs=("a",), call=o.HttpCall(url="http://api/b", query="({a: out.a})")
    )
    result = await invoke(eng, a, b)
    assert plain.trips == [("b.query",)]  # a.output went through evaluate
    assert outputs(result)["b"]["q"] == {"a": "/a"}


async def test_an_output_runs_with_the_first_trip_of_what_waits_only_for_it() -> None:
    eng, spy, api = engine()
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(
        name="b",
        needs=("a",),
        when="out.a.length > 0",
        for_each="[out.a, out.a + '/2']",
        call=o.HttpCall(url="http://api/b", query="({v: item, i: index})"),
        output="response.q",
    )
    result = await invoke(eng, a, b)
    assert spy.names()[0] == ("a.output", "b.when", "b.for_each", "b.query")
    assert spy.names()[1:] == [("b.output",) * 3]  # both items' outputs in one trip
    assert outputs(result) == {"a": "/a", "b": [{"v": "/a", "i": "0"}, {"v": "/a/2", "i": "1"}]}
    assert [t.processor for t in result.trace] == ["a", "b"]


class SlowSpy(Spy):
    """A spy whose round trips take a while, as a worker's do (outputs are then under way)."""

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        await anyio.sleep(0.02)
        return await super().evaluate(source, bindings, name=name, timeout=timeout)


async def test_an_output_waits_for_one_under_way_to_go_with_their_dependent() -> None:
    spy = SlowSpy()
    eng, _, api = engine(spy)
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    c = o.Processor(name="c", call=o.HttpCall(url="http://api/c"), output="response.path")
    b = o.Processor(
        name="b",
        needs=("a", "c"),
        call=o.HttpCall(url="http://api/b", query="({v: out.a + out.c})"),
    )
    # a and c have a second dependent that cannot be chained, so neither leaves its
    # output to the other (see test_critical_path): the first goes alone
    d = o.Processor(
        name="d", needs=("a", "c"), call=o.HttpCall(url="http://api/d", query="ctx.steps")
    )
    result = await invoke(eng, a, c, b, d)
    first, second, _ = spy.names()
    assert len(first) == 1
    assert second == ({"a.output": "c.output", "c.output": "a.output"}[first[0]], "b.query")
    assert outputs(result)["b"]["q"] == {"v": "/a/c"}
    assert "/b" in [r.url.path for r in api.requests][-2:]


async def test_a_failing_chained_fragment_is_the_dependents_error() -> None:
    eng, spy, _ = engine()
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(name="b", needs=("a",), call=o.HttpCall(url="http://api/b", query="nope"))
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke(eng, a, b)
    err = info.value
    assert (err.fragment, err.processor, err.step) == ("b.query", "b", "main")
    assert spy.names() == [("a.output", "b.query"), ("a.output",), ("b.query",)]


async def test_a_failing_chained_output_is_its_own_processors_error() -> None:
    eng, _, _ = engine()
    a = o.Processor(
        name="a",
        call=o.HttpCall(url="http://api/a"),
        output="nope",
        on_error="fallback",
        fallback="fb",
    )
    b = o.Processor(
        name="b", needs=("a",), call=o.HttpCall(url="http://api/b", query="({a: out.a})")
    )
    result = await invoke(eng, a, b)
    assert outputs(result)["a"] == "fb"
    assert outputs(result)["b"]["q"] == {"a": "fb"}
    assert result.trace[0].status == "fallback"


async def test_a_false_when_in_a_chained_trip_skips_the_dependent() -> None:
    eng, spy, api = engine()
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(
        name="b", needs=("a",), when="out.a === '/z'", call=o.HttpCall(url="http://api/b")
    )
    result = await invoke(eng, a, b)
    assert [t.status for t in result.trace] == ["ok", "skipped"]
    assert [r.url.path for r in api.requests] == ["/a"]
    assert spy.names() == [("a.output", "b.when")]


async def test_what_uses_more_than_trigger_and_out_is_not_chained() -> None:
    eng, spy, _ = engine()
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    uses_ctx = o.Processor(
        name="b", needs=("a",), call=o.HttpCall(url="http://api/b", query="({a: ctx.steps.main.a})")
    )
    result = await invoke(eng, a, uses_ctx)
    assert spy.names() == [("a.output",), ("b.query",)]
    assert outputs(result)["b"]["q"] == {"a": "/a"}


async def test_items_beyond_the_limit_build_their_request_on_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_batching, "_EACH_LIMIT", 2)
    eng, spy, api = engine()
    p = o.Processor(
        name="p", for_each="[1, 2, 3, 4]", call=o.HttpCall(url="http://api/x", query="({v: item})")
    )
    result = await invoke(eng, p)
    assert spy.names()[0] == ("p.for_each", "p.query")
    assert sorted(spy.names()[1:]) == [("p.query",)] * 2
    assert [r["q"]["v"] for r in outputs(result)["p"]] == ["1", "2", "3", "4"]
    assert len(api.requests) == 4


async def test_for_each_must_return_an_array() -> None:
    eng, _, _ = engine()
    p = o.Processor(name="p", for_each="({})", call=o.HttpCall(url="http://api/x"))
    with pytest.raises(o.ScriptError, match="for_each must return an array") as info:
        await invoke(eng, p)
    assert info.value.fragment == "p.for_each"


async def test_for_each_without_input_binds_the_item_as_input() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        for_each="[1, 2]",
        call=o.HttpCall(url="http://api/x", query="({v: input})"),
        output="input",
    )
    result = await invoke(eng, p)
    assert outputs(result)["p"] == [1, 2]
    assert sorted(r.url.params["v"] for r in api.requests) == ["1", "2"]
    assert spy.trips[0] == (("p.for_each", "p.query"), ())  # input: the item, bound per item


# -- idempotency keys -------------------------------------------------------------------------


async def test_idempotency_key_only_when_the_call_asks_for_one() -> None:
    eng, _, api = engine()
    keyed = o.Processor(
        name="k", call=o.HttpCall(url="http://api/k", method="POST", idempotency_key="Idem-Key")
    )
    plain = o.Processor(name="n", call=o.HttpCall(url="http://api/n", method="POST"))
    await invoke(eng, keyed, plain)
    by_path = {r.url.path: r for r in api.requests}
    assert by_path["/k"].headers["idem-key"] == "local:main:k:0"
    assert "idem-key" not in by_path["/n"].headers


# -- the anyio path (event loops other than asyncio) -----------------------------------------


@pytest.mark.parametrize("native", [True, False])
async def test_concurrency_primitives(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(_steps, "_native", lambda: native)
    eng, _, _ = engine()
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(
        name="b",
        needs=("a",),
        for_each="[out.a, out.a + '/2']",
        concurrency=1,
        call=o.HttpCall(url="http://api/b", query="({v: item})"),
        output="response.q.v",
    )
    result = await invoke(eng, a, b)
    assert outputs(result) == {"a": "/a", "b": ["/a", "/a/2"]}
    bad = o.Processor(name="bad", needs=("a",), input="nope", call=o.HttpCall(url="http://api/c"))
    with pytest.raises(o.ScriptError) as info:
        await invoke(eng, a, bad)
    assert info.value.processor == "bad"
    items = o.Processor(
        name="items",
        for_each="[1, 2, 3]",
        input="if (item === 2) throw new Error('two'); return item",
        call=o.HttpCall(url="http://api/i"),
    )
    with pytest.raises(o.ScriptError, match="two"):
        await invoke(eng, items)


# -- deadlines --------------------------------------------------------------------------------


async def test_script_timeout_bounds_each_round_trip() -> None:
    busy = "let t = Date.now(); while (Date.now() - t < 150) {} return 1"
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        eng, _, _ = engine(sandbox)
        ok = o.Processor(
            name="p", input=busy, call=o.HttpCall(url="http://api/x"), script_timeout=0.5
        )
        await invoke(eng, ok)
        slow = o.Processor(
            name="p",
            input=busy,
            call=o.HttpCall(url="http://api/x", query=f"{{ {busy}; }}"),
            script_timeout=0.25,
        )
        with pytest.raises(o.StepTimeoutError, match="deadline of 0.25 s") as info:
            await invoke(eng, slow)
        assert info.value.processor == "p"


async def test_when_that_names_input_does_not_see_the_request_binding() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        when="typeof input === 'undefined'",  # as before batching: no input yet
        call=o.HttpCall(url="http://api/x", query="({v: input === null ? 'null' : 'set'})"),
    )
    await invoke(eng, p)
    assert spy.names() == [("p.when",), ("p.query",)]
    assert api.requests[0].url.params["v"] == "null"
