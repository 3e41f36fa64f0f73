"""Round trips on a payload's critical path: reads answered in the host, outputs together."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import orchestra as o
from orchestra.engine import _flow, _quick
from orchestra.engine._functions import as_json as _as_json
from orchestra.sandbox import FragmentCall

from .test_batching import Api, Spy, engine, invoke, outputs

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "product-page"


# -- the product page -------------------------------------------------------------------------


def _backends() -> Any:
    """The example's fake APIs, loaded by path (a ``backends`` package may shadow the name)."""
    spec = importlib.util.spec_from_file_location("_product_page_backends", EXAMPLE / "backends.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def product_page(spy: Spy) -> o.Result:
    backends = _backends()

    def handle(request: httpx.Request) -> httpx.Response:
        prefix = backends.APIS[f"{request.url.scheme}://{request.url.host}"]
        status, body = backends.respond("GET", prefix + request.url.path, dict(request.url.params))
        return httpx.Response(status, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    request = o.Request(path="/products/tr-042", params={"sku": "tr-042"},
                        query={"customer": "c-17"}, headers={"accept-language": "en"})  # fmt: skip
    async with client, o.Engine(sandbox=spy, client=client) as eng:
        return await eng.invoke(o.load(EXAMPLE / "process.json"), request)


def with_any(trips: list[tuple[str, ...]], prefixes: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [t for t in trips if any(n.startswith(prefixes) or n == "output" for n in t)]


async def test_product_page_critical_path_round_trips() -> None:
    """segment -> related -> related_prices -> output: three round trips where five or six were.

    Before: segment's ``when`` and ``path``; content's output (when content ended first);
    segment's output with related's request; related's output with related_prices' list
    and requests; each item's output (three in parallel); the process's output. Now
    segment's first batch only reads the trigger (the host answers it), content leaves
    its output to segment, and the items' outputs go in one trip with the process's.
    """
    spy = Spy()
    result = await product_page(spy)
    trips = spy.names()
    item = "related_prices.output"
    assert with_any(trips, ("segment.", "related.", "related_prices.")) == [
        # content's output, left to segment: its response bound, then the output
        ("segment.output", "content.output", "content.output", "related.input", "related.query"),
        ("related.output", "related_prices.for_each", "related_prices.input",
         "related_prices.path", "related_prices.query"),
        # item 0's output; items 1 and 2 rebind input and response, then their output;
        # the list as out.related_prices; the process's output
        (item,) * 8 + ("output",),
    ]  # fmt: skip
    # content, segment and stock build their requests from the trigger: no round trip
    assert not [t for t in trips if t[0] in ("content.path", "segment.when", "stock.path")]
    assert len(trips) == 9  # was 16
    payload: Any = result.payload
    assert payload["related"][2] == {"sku": "co-002", "title": "Court pick co-002",
                                     "price": 140}  # fmt: skip
    assert payload["personalised"] is True


# -- batches answered in the host ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "quick"),
    [
        ("({sku: trigger.params.sku})", True),
        ("Boolean(trigger.query.customer)", True),
        ("({'x-n': trigger.n, limit: 3, on: true, none: null, s: \"x\",})", True),
        ("trigger . sku", True),
        ("trigger.sku.trim()", False),
        ("trigger.n > 1", False),
        ("({a: trigger['sku']})", False),
        ("({a: 1.5})", False),
        ("({a: -1})", False),
        ("({a: 010})", False),
        ("({a})", False),
        ("({a: out.x})", False),
        ("({a: ctx.trigger})", False),
        ("({a: 'a/b'})", False),
        ("({a: trigger.x}) // c", False),
        ("({__proto__: trigger.x})", False),
        ("({a: trigger.__proto__})", False),
        ("({[trigger.k]: 1})", False),
        ("return trigger.sku", False),
        ("{a: trigger.sku}", False),
    ],
)
def test_which_batches_the_host_answers(source: str, quick: bool) -> None:
    assert (_quick.quick_of((FragmentCall("p.query", source),)) is not None) is quick


async def test_reads_of_the_trigger_make_no_round_trip() -> None:
    eng, spy, api = engine()
    p = o.Processor(
        name="p",
        when="Boolean(trigger.sku)",
        input="({sku: trigger.sku, n: trigger.n, fixed: 'x'})",
        call=o.HttpCall(
            url="http://api/p/{sku}",
            path="({sku: input.sku})",
            query="({n: input.n, f: input.fixed})",
        ),  # fmt: skip
    )
    result = await invoke(eng, p, request={"sku": "a-1", "n": 2})
    assert spy.trips == []
    assert outputs(result)["p"] == {"path": "/p/a-1", "q": {"n": "2", "f": "x"}, "body": None}
    assert api.requests[0].url.path == "/p/a-1"


async def test_a_false_read_when_skips_without_a_round_trip() -> None:
    eng, spy, api = engine()
    p = o.Processor(name="p", when="Boolean(trigger.customer)", call=o.HttpCall(url="http://api/p"))
    result = await invoke(eng, p, request={"customer": ""})
    assert (spy.trips, api.requests) == ([], [])
    assert result.trace[0].status == "skipped"


@pytest.mark.parametrize(
    ("request_", "query", "expected"),
    [
        ({"n": 3.0}, "({n: trigger.n})", {"n": "3"}),  # the sandbox makes 3.0 an integer
        ({"n": {"deep": 1}}, "({n: trigger.n})", {"n": '{"deep": 1}'}),
        ({}, "({n: trigger.missing})", {}),  # undefined: left out
        ({"s": "a\udc00"}, "({s: trigger.s})", {"s": "a\ufffd"}),  # lone surrogate
    ],
)
async def test_what_the_host_cannot_read_as_the_sandbox_would_goes_to_it(
    request_: Any, query: str, expected: Any
) -> None:
    eng, spy, api = engine()
    p = o.Processor(name="p", call=o.HttpCall(url="http://api/p", query=query))
    await invoke(eng, p, request=request_)
    assert spy.names() == [("p.query",)]
    assert dict(api.requests[0].url.params) == expected


async def test_a_trigger_the_sandbox_refuses_still_fails_there() -> None:
    eng, spy, _ = engine()
    p = o.Processor(name="p", call=o.HttpCall(url="http://api/p", query="({s: trigger.s})"))
    with pytest.raises(o.ScriptError, match="not JSON|2\\^53|integer") as info:
        await invoke(eng, p, request={"s": "x", "big": 2**60})
    assert (info.value.fragment, info.value.processor) == ("p.query", "p")
    assert spy.names() == [("p.query",)]


# -- the process's output with the last output --------------------------------------------------


async def invoke_with_output(
    eng: o.Engine, output: str, *processors: o.Processor, request: Any = None
) -> o.Result:
    process = o.Process(
        name="proc", steps=(o.ProcessStep(name="main", processors=processors),), output=output
    )
    return await eng.invoke(process, request)


def two() -> tuple[o.Processor, o.Processor]:
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    b = o.Processor(
        name="b",
        needs=("a",),
        call=o.HttpCall(url="http://api/b", query="({a: out.a})"),
        output="response.q.a + '!'",
    )
    return a, b


async def test_the_process_output_goes_with_the_last_output() -> None:
    eng, spy, _ = engine()
    result = await invoke_with_output(eng, "({a: out.a, b: out.b, t: trigger})", *two(), request=1)
    assert spy.names() == [("a.output", "b.query"), ("b.output", "output")]
    assert result.payload == {"a": "/a", "b": "/a!", "t": 1}


async def test_a_failing_process_output_is_still_the_process_error() -> None:
    eng, spy, _ = engine()
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke_with_output(eng, "nope", *two())
    err = info.value
    assert (err.fragment, err.step, err.processor) == ("output", "output", None)
    assert spy.names()[1:] == [("b.output", "output"), ("b.output",), ("output",)]


async def test_a_failing_last_output_is_still_its_processors_error() -> None:
    eng, spy, _ = engine()
    a, b = two()
    b = o.Processor(name="b", needs=("a",), call=b.call, output="nope")
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke_with_output(eng, "out", a, b)
    err = info.value
    assert (err.fragment, err.step, err.processor) == ("b.output", "main", "b")
    assert spy.names()[1:] == [("b.output", "output")]


async def test_a_process_output_that_reads_ctx_runs_on_its_own() -> None:
    eng, spy, _ = engine()
    result = await invoke_with_output(eng, "ctx.steps.main.b", *two())
    assert spy.names()[1:] == [("b.output",), ("output",)]
    assert result.payload == "/a!"


async def test_the_process_output_waits_for_every_processor() -> None:
    eng, spy, _ = engine()
    a, b = two()
    c = o.Processor(name="c", call=o.HttpCall(url="http://api/c"), output="response.path")
    result = await invoke_with_output(eng, "[out.b, out.c]", a, b, c)
    assert result.payload == ["/a!", "/c"]
    assert ("output",) in spy.names() or spy.names()[-1][-1] == "output"
    assert sum(n.count("output") for n in spy.names()) == 1


def items(output: str = "({i: index, v: response.q.v, in: input})") -> o.Processor:
    return o.Processor(
        name="p",
        for_each="trigger",
        call=o.HttpCall(url="http://api/p", query="({v: item})"),
        output=output,
    )


async def test_items_outputs_go_in_one_round_trip() -> None:
    eng, spy, _ = engine()
    result = await invoke(eng, items(), request=["x", "y", "z"])
    # item 0's output; then per item, index, input and response bound, and its output
    assert spy.names()[1:] == [("p.output",) * 9]
    assert outputs(result)["p"] == [{"i": i, "v": v, "in": v} for i, v in enumerate("xyz")]


async def test_items_outputs_go_with_the_process_output() -> None:
    eng, spy, _ = engine()
    result = await invoke_with_output(eng, "out.p.map(x => x.v).join('')", items(),
                                      request=["x", "y"])  # fmt: skip
    assert spy.names()[1:] == [("p.output",) * 6 + ("output",)]  # 1 + 4 + the list
    assert result.payload == "xy"


async def test_a_failing_item_output_is_its_processors_error() -> None:
    eng, spy, _ = engine()
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke_with_output(eng, "out", items("nope"), request=["x", "y"])
    err = info.value
    assert (err.fragment, err.step, err.processor) == ("p.output", "main", "p")
    fallback = o.Processor(name="p", for_each="trigger", call=items().call, output="nope",
                           on_error="fallback", fallback="fb")  # fmt: skip
    result = await invoke_with_output(eng, "[out.p]", fallback, request=["x", "y"])
    assert result.payload == ["fb"]


async def test_a_failing_process_output_after_items_is_the_process_error() -> None:
    eng, spy, _ = engine()
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke_with_output(eng, "nope", items(), request=["x", "y"])
    err = info.value
    assert (err.fragment, err.step, err.processor) == ("output", "output", None)


# -- function results -------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": [value]}
    return value


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2.5, "x", None, True], "c": {"d": "é\udc00"}},
        (1, [2, (3,)]),
        {1: "a", "1": "b", None: 0, False: 1, 1.5: 2},
        _nested(70),  # deeper than the walk goes: json copies it
        -0.0,
        2**70,
    ],
)
def test_function_results_are_copied_as_json_would(value: Any) -> None:
    result = _as_json(value, "'f'")
    assert result == json.loads(json.dumps(value))
    assert json.dumps(result) == json.dumps(json.loads(json.dumps(value)))


def test_function_results_are_not_aliased() -> None:
    inner = {"b": [1]}
    value = {"a": inner}
    result = _as_json(value, "'f'")
    assert result == value
    assert isinstance(result, dict)
    copied: Any = result
    assert copied["a"] is not inner
    assert copied["a"]["b"] is not inner["b"]


@pytest.mark.parametrize("value", [float("nan"), {"x": [float("inf")]}, {"x": {1, 2}}, b"x"])
def test_function_results_that_are_not_json_are_refused(value: Any) -> None:
    with pytest.raises(o.ActionError, match="not JSON"):
        _as_json(value, "'f'")


def test_a_cyclic_function_result_is_refused() -> None:
    cyclic: list[Any] = []
    cyclic.append({"c": cyclic})
    with pytest.raises(o.ActionError, match="not JSON: Circular"):
        _as_json(cyclic, "'f'")


async def test_sync_and_async_functions_both_run() -> None:
    async def twice(x: Any) -> Any:
        return [x, x]

    def once(x: Any) -> Any:
        return (x,)

    spy = Spy()
    eng = o.Engine(sandbox=spy, functions={"twice": twice, "once": once})
    a = o.Processor(name="a", input="trigger", call=o.FunctionCall(name="twice"))
    b = o.Processor(name="b", input="trigger", call=o.FunctionCall(name="once"))
    for _ in range(2):  # the second time from the cache
        result = await invoke(eng, a, b, request={"k": 1})
        assert outputs(result) == {"a": [{"k": 1}, {"k": 1}], "b": [{"k": 1}]}


# -- an output left to the processor that ends next --------------------------------------------


def pair(slow: str = "c", **kw: Any) -> tuple[o.Processor, o.Processor, o.Processor]:
    a = o.Processor(name="a", call=o.HttpCall(url="http://api/a"), output="response.path")
    c = o.Processor(name="c", call=o.HttpCall(url="http://api/c", query="({sleep: '0.01'})"), **kw)
    b = o.Processor(
        name="b",
        needs=("a", "c"),
        call=o.HttpCall(url="http://api/b", query="({v: out.a + ',' + out.c})"),
    )
    return a, c, b


class Timed(Api):
    """The mock API, but ``?sleep=s`` answers after ``s`` seconds (real time)."""

    def __init__(self) -> None:
        super().__init__()
        inner = self.client._transport

        async def handler(request: httpx.Request) -> httpx.Response:
            if "sleep" in request.url.params:
                await anyio.sleep(float(request.url.params["sleep"]))
            return await inner.handle_async_request(request)

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))


def timed() -> tuple[o.Engine, Spy, Timed]:
    spy, api = Spy(), Timed()
    return o.Engine(sandbox=spy, client=api.client), spy, api


async def test_an_output_is_left_to_the_other_processor_its_dependent_waits_for() -> None:
    eng, spy, api = timed()
    result = await invoke(eng, *pair(output="response.q.sleep"))
    # a ended first: its output waited for c's, then both went with b's request
    assert spy.names() == [("c.output", "a.output", "a.output", "b.query")]
    assert outputs(result)["a"] == "/a"
    assert outputs(result)["b"]["q"] == {"v": "/a,0.01"}
    assert [t.processor for t in result.trace] == ["c", "a", "b"]


async def test_a_failing_output_left_to_another_is_its_own_error() -> None:
    eng, spy, _ = timed()
    a, c, b = pair(output="response.q.sleep")
    a = o.Processor(name="a", call=a.call, output="nope")
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke(eng, a, c, b)
    assert (info.value.fragment, info.value.processor) == ("a.output", "a")


async def test_a_failing_output_that_took_another_is_its_own_error() -> None:
    eng, spy, _ = timed()
    with pytest.raises(o.ScriptError, match="nope is not defined") as info:
        await invoke(eng, *pair(output="nope"))
    assert (info.value.fragment, info.value.processor) == ("c.output", "c")


class SlowC(Spy):
    """c's first batch takes a while: a's output is left to c by then."""

    async def evaluate_all(
        self, fragments: Any, bindings: Any, *, timeout: float | None = None
    ) -> list[Any]:
        if fragments[0].name.startswith("c."):
            await anyio.sleep(0.02)
        return await super().evaluate_all(fragments, bindings, timeout=timeout)


@pytest.mark.parametrize(
    "kw",
    [
        {"when": "trigger === 1", "output": "response.q.sleep"},  # c skipped
        {  # c falls back
            "input": "(() => { throw new Error('x') })()",
            "output": "response.q.sleep",
            "on_error": "fallback",
            "fallback": "fb",
        },
    ],
)
async def test_an_output_left_to_one_that_never_sends_it_is_sent_by_its_owner(
    kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    left: list[str | None] = []
    defer_to = _flow.Flow.defer_to

    def spy_defer_to(self: _flow.Flow, p: o.Processor) -> str | None:
        left.append(defer_to(self, p))
        return left[-1]

    monkeypatch.setattr(_flow.Flow, "defer_to", spy_defer_to)
    spy, api = SlowC(), Timed()
    eng = o.Engine(sandbox=spy, client=api.client)
    with anyio.fail_after(5):  # never waits for good
        result = await invoke(eng, *pair(**kw), request=2)
    assert outputs(result)["a"] == "/a"
    assert left == ["c"]  # a's output was left to c, which ended without sending it
    assert ("a.output", "b.query") in spy.names()  # then a sent it, with b's batch


class Big(Api):
    """The mock API, but ``/big`` answers with a body larger than what travels back."""

    def __init__(self) -> None:
        super().__init__()
        inner = self.client._transport

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/big"):
                return httpx.Response(200, json={"pad": "x" * (20 * 1024), "v": request.url.path})
            return await inner.handle_async_request(request)

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))


class RawSpy(Spy):
    """A spy that takes response bodies as RawJSON text, as orchestra's sandboxes do."""

    accepts_raw_json = True


async def test_items_with_large_responses_send_their_outputs_apart() -> None:
    spy, api = RawSpy(), Big()
    eng = o.Engine(sandbox=spy, client=api.client)
    p = o.Processor(name="p", for_each="trigger",
                    call=o.HttpCall(url="http://api/big/{v}", path="({v: item})"),
                    output="response.v")  # fmt: skip
    result = await invoke(eng, p, request=["x", "y"])
    assert spy.names()[-2:] == [("p.output",), ("p.output",)]  # not one trip: bodies are big
    assert outputs(result)["p"] == ["/big/x", "/big/y"]
    small = o.Processor(name="p", for_each="trigger",
                        call=o.HttpCall(url="http://api/small/{v}", path="({v: item})"),
                        output="response.path")  # fmt: skip
    spy.trips.clear()
    result = await invoke(eng, small, request=["x", "y"])
    assert spy.names()[-1:] == [("p.output",) * 3]
    assert outputs(result)["p"] == ["/small/x", "/small/y"]


class SlowRawC(SlowC):
    accepts_raw_json = True


@pytest.mark.parametrize(("path", "left"), [("big", False), ("small", True)])
async def test_a_large_response_keeps_its_output_to_itself(path: str, left: bool) -> None:
    spy, api = SlowRawC(), Big()
    eng = o.Engine(sandbox=spy, client=api.client)
    a = o.Processor(
        name="a", call=o.HttpCall(url=f"http://api/{path}/a"), output="response.v || response.path"
    )
    c = o.Processor(name="c", call=o.HttpCall(url="http://api/c"), when="true || out", output="1")
    b = o.Processor(name="b", needs=("a", "c"), call=o.HttpCall(url="http://api/b", query="out"))
    result = await invoke(eng, a, c, b)
    assert ("a.output",) not in spy.names() or not left
    assert (("c.output", "a.output", "a.output", "b.query") in spy.names()) is left
    assert outputs(result)["b"]["q"] == {"a": f"/{path}/a", "c": "1"}
