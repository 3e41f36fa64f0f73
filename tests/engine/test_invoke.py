"""Engine.invoke: the needs graph, when, for_each, errors and fallbacks, fragments, trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.executors import InMemoryExecutor
from orchestra.sandbox import InProcessSandbox

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Rig:
    """An engine on a virtual clock with a mock API whose paths sleep and answer."""

    def __init__(self, **engine_kw: Any) -> None:
        self.executor = InMemoryExecutor()
        self.t0 = self.executor.now()
        self.log: list[tuple[str, str, float]] = []
        self.delays: dict[str, float] = {}
        self.answers: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.in_flight = 0
        self.max_in_flight = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            name = request.url.path.strip("/")
            self.log.append(("start", name, self.now()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                delay = self.delays.get(name, 0)
                if "sleep" in request.url.params:
                    delay = float(request.url.params["sleep"])
                await self.executor.sleep(delay)
            finally:
                self.in_flight -= 1
            self.log.append(("end", name, self.now()))
            if name in self.answers:
                return self.answers[name](request)
            return httpx.Response(200, json={"name": name, "q": dict(request.url.params)})

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        self.engine = o.Engine(
            sandbox=InProcessSandbox(), executor=self.executor, client=self.client, **engine_kw
        )

    def now(self) -> float:
        return self.executor.now() - self.t0

    def started(self, name: str) -> list[float]:
        return [t for kind, n, t in self.log if kind == "start" and n == name]

    def ended(self, name: str) -> list[float]:
        return [t for kind, n, t in self.log if kind == "end" and n == name]

    async def invoke(
        self, *processors: o.Processor, output: str | None = None, request: Any = None
    ) -> o.Result:
        process = o.Process(
            name="proc", steps=(o.ProcessStep(name="main", processors=processors),), output=output
        )
        return await self.engine.invoke(process, request)


def get(name: str, **kw: Any) -> o.Processor:
    """A processor calling GET http://api/<name>."""
    call_kw = {k: kw.pop(k) for k in ("query", "retry", "timeout", "method", "body") if k in kw}
    return o.Processor(name=name, call=o.HttpCall(url=f"http://api/{name}", **call_kw), **kw)


def trace_of(result: o.Result, name: str) -> o.ProcessorTrace:
    (t,) = [t for t in result.trace if t.processor == name]
    return t


class TestNeeds:
    async def test_processor_starts_when_its_needs_end_not_in_waves(self) -> None:
        """C (needs fast A) starts as A ends, while slow B still runs."""
        rig = Rig()
        rig.delays = {"a": 1, "b": 10, "c": 1}
        result = await rig.invoke(get("a"), get("b"), get("c", needs=("a",)))
        assert rig.started("a") == [0] and rig.started("b") == [0]
        assert rig.started("c") == [1]
        assert rig.ended("c") == [2]
        assert rig.ended("b") == [10]
        assert trace_of(result, "c").started - rig.t0 == 1
        assert [t.processor for t in result.trace] == ["a", "c", "b"]

    async def test_independent_processors_run_concurrently(self) -> None:
        """Processors without needs all start at once; the step takes the longest one."""
        rig = Rig()
        rig.delays = {"a": 5, "b": 5, "c": 3}
        await rig.invoke(get("a"), get("b"), get("c"))
        assert rig.started("a") == rig.started("b") == rig.started("c") == [0]
        assert rig.now() == 5

    async def test_chain_and_diamond(self) -> None:
        """A diamond runs each processor once, after all its needs."""
        rig = Rig()
        rig.delays = {"a": 1, "b": 2, "c": 5, "d": 1}
        result = await rig.invoke(
            get("d", needs=("b", "c"), query="({x: out.b.name + out.c.name})"),
            get("b", needs=("a",)),
            get("c", needs=("a",)),
            get("a"),
        )
        assert rig.started("b") == rig.started("c") == [1]
        assert rig.started("d") == [6]
        assert result.payload["d"]["q"] == {"x": "bc"}  # type: ignore[index,call-overload]

    async def test_outputs_of_needs_are_visible(self) -> None:
        """A processor reads the outputs of its needs through out."""
        rig = Rig()
        result = await rig.invoke(get("a"), get("b", needs=("a",), query="({from: out.a.name})"))
        assert result.payload["b"]["q"] == {"from": "a"}  # type: ignore[index,call-overload]


class TestWhen:
    async def test_false_when_skips(self) -> None:
        """A false when skips the processor: status skipped, output null, nothing sent."""
        rig = Rig()
        result = await rig.invoke(
            get("a", when="trigger.go === true"),
            get("b", needs=("a",), query="({a: out.a === null ? 'null' : 'set'})"),
            request={"go": False},
        )
        assert rig.started("a") == []
        t = trace_of(result, "a")
        assert t.status == "skipped"
        assert t.attempts == 0
        assert result.payload["a"] is None  # type: ignore[index,call-overload]
        assert result.payload["b"]["q"] == {"a": "null"}  # type: ignore[index,call-overload]

    async def test_true_when_runs(self) -> None:
        """A truthy when (JavaScript rules: objects, non-empty strings) runs the processor."""
        rig = Rig()
        result = await rig.invoke(get("a", when="({})"), get("b", when="'x'"), get("c", when="0"))
        assert [trace_of(result, n).status for n in "abc"] == ["ok", "ok", "skipped"]

    async def test_step_when_false_skips_step(self) -> None:
        """A step whose when is false runs nothing; the payload falls back to earlier steps."""
        rig = Rig()
        process = o.Process(
            name="p",
            steps=(
                o.ProcessStep(name="one", processors=(get("a"),)),
                o.ProcessStep(name="two", when="false", processors=(get("b"),)),
            ),
        )
        result = await rig.engine.invoke(process)
        assert rig.started("b") == []
        assert result.payload == {"a": {"name": "a", "q": {}}}


class TestForEach:
    async def test_concurrency_bound_and_order(self) -> None:
        """At most `concurrency` items run at once and results keep input order."""
        rig = Rig()
        items = list(range(10))
        result = await rig.invoke(
            get(
                "item",
                for_each=f"{items}",
                concurrency=3,
                query="({n: item, sleep: 10 - item})",
                output="response.q.n",
            )
        )
        assert rig.max_in_flight == 3
        assert result.payload == {"item": [str(i) for i in items]}
        t = trace_of(result, "item")
        assert t.items == 10
        assert t.attempts == 10
        assert t.status == "ok"

    async def test_concurrency_one_is_sequential(self) -> None:
        """concurrency=1 runs the items one after another."""
        rig = Rig()
        await rig.invoke(get("item", for_each="[1, 2, 3]", concurrency=1, query="({sleep: 2})"))
        assert rig.started("item") == [0, 2, 4]
        assert rig.max_in_flight == 1

    async def test_item_and_index_bindings(self) -> None:
        """Fragments see item and index; input defaults to the item."""
        rig = Rig(functions={"echo": lambda x: x})
        result = await rig.invoke(
            o.Processor(
                name="e",
                call=o.FunctionCall(name="echo"),
                for_each="['a', 'b']",
                output="({input, item, index})",
            )
        )
        assert result.payload == {
            "e": [{"input": "a", "item": "a", "index": 0}, {"input": "b", "item": "b", "index": 1}]
        }

    async def test_empty_list(self) -> None:
        """An empty for_each gives an empty list."""
        rig = Rig()
        result = await rig.invoke(get("item", for_each="[]"))
        assert result.payload == {"item": []}
        assert rig.log == []

    async def test_not_a_list_is_script_error(self) -> None:
        """for_each returning a non-array is a ScriptError naming the fragment."""
        rig = Rig()
        with pytest.raises(o.ScriptError) as info:
            await rig.invoke(get("item", for_each="({a: 1})"))
        assert info.value.fragment == "item.for_each"
        assert info.value.processor == "item"

    async def test_failing_item_fails_processor(self) -> None:
        """One failing item fails the processor with its error."""
        rig = Rig()
        rig.answers["item"] = lambda r: httpx.Response(404 if r.url.params["n"] == "2" else 200)
        with pytest.raises(o.HttpError) as info:
            await rig.invoke(get("item", for_each="[1, 2, 3]", query="({n: item})"))
        assert info.value.status == 404
        assert info.value.processor == "item"


class TestErrors:
    async def test_on_error_fail_raises_located_step_error(self) -> None:
        """A failing processor raises its StepError naming process, step and processor."""
        rig = Rig()
        rig.answers["b"] = lambda r: httpx.Response(404, json={"e": 1})
        with pytest.raises(o.StepError) as info:
            await rig.invoke(get("a"), get("b"))
        err = info.value
        assert isinstance(err, o.HttpError)
        assert (err.process, err.step, err.processor) == ("proc", "main", "b")
        assert err.status == 404
        assert str(err).startswith("proc/main/b: ")

    async def test_failure_stops_dependents(self) -> None:
        """Processors needing a failed one never start."""
        rig = Rig()
        rig.answers["a"] = lambda r: httpx.Response(400)
        with pytest.raises(o.HttpError):
            await rig.invoke(get("a"), get("b", needs=("a",)))
        assert rig.started("b") == []

    async def test_fallback_recorded(self) -> None:
        """on_error fallback records status fallback, the error text and the fallback output."""
        rig = Rig()
        rig.answers["a"] = lambda r: httpx.Response(500, json={"e": "down"})
        result = await rig.invoke(
            get(
                "a", on_error="fallback", fallback={"x": 1}, retry=o.Retry(attempts=3, jitter=False)
            ),
            get("b", needs=("a",), query="({x: out.a.x})"),
        )
        t = trace_of(result, "a")
        assert t.status == "fallback"
        assert t.http_status == 500
        assert t.attempts == 3
        assert t.error is not None and "500" in t.error and "proc/main/a" in t.error
        assert result.payload["a"] == {"x": 1}  # type: ignore[index,call-overload]
        assert result.payload["b"]["q"] == {"x": "1"}  # type: ignore[index,call-overload]

    async def test_fallback_on_timeout(self) -> None:
        """A timed-out call with a fallback records the fallback, on the virtual clock."""
        rig = Rig()
        rig.delays = {"a": 60}
        result = await rig.invoke(
            get("a", timeout=2, retry=o.Retry(attempts=1), on_error="fallback", fallback="late")
        )
        assert result.payload == {"a": "late"}
        t = trace_of(result, "a")
        assert t.status == "fallback"
        assert t.ended - t.started == 2
        assert "timed out" in (t.error or "")


class TestFragments:
    async def test_output_fragment_shapes_response(self) -> None:
        """The output fragment sees response and status and shapes the output."""
        rig = Rig()
        result = await rig.invoke(get("a", output="({n: response.name, s: status})"))
        assert result.payload == {"a": {"n": "a", "s": 200}}

    async def test_input_fragment(self) -> None:
        """The input fragment builds input, which other fragments see."""
        rig = Rig()
        result = await rig.invoke(
            get("a", input="({v: trigger.v * 2})", query="({v: input.v})"), request={"v": 21}
        )
        assert result.payload["a"]["q"] == {"v": "42"}  # type: ignore[index,call-overload]

    async def test_process_output_fragment(self) -> None:
        """The process output fragment builds the payload from the context."""
        rig = Rig()
        result = await rig.invoke(
            get("a"),
            get("b"),
            output="({names: [out.a.name, out.b.name], path: trigger.path})",
            request=o.Request(path="/p/1"),
        )
        assert result.payload == {"names": ["a", "b"], "path": "/p/1"}
        assert result.context["trigger"]["path"] == "/p/1"  # type: ignore[index,call-overload]

    async def test_default_payload_is_last_step_outputs(self) -> None:
        """Without an output fragment the payload is the last step's outputs by name."""
        rig = Rig()
        result = await rig.invoke(get("a", output="1"), get("b", output="[2]"))
        assert result.payload == {"a": 1, "b": [2]}

    @pytest.mark.parametrize(
        ("field", "source", "fragment"),
        [
            ("output", "response.nope.deeper", "a.output"),
            ("input", "(() => { throw new Error('bad input') })()", "a.input"),
            ("when", "undefinedName", "a.when"),
            ("query", "null.x", "a.query"),
        ],
    )
    async def test_fragment_errors_are_script_errors(
        self, field: str, source: str, fragment: str
    ) -> None:
        """A fragment that throws is a ScriptError naming the fragment and its processor."""
        rig = Rig()
        kw = {field: source}
        with pytest.raises(o.ScriptError) as info:
            await rig.invoke(get("a", **kw))
        assert info.value.fragment == fragment
        assert info.value.processor == "a"
        assert info.value.step == "main"
        assert fragment in str(info.value)

    async def test_process_output_error_names_output(self) -> None:
        """A throwing process output fragment is a ScriptError for 'output'."""
        rig = Rig()
        with pytest.raises(o.ScriptError) as info:
            await rig.invoke(get("a"), output="out.zz.yy")
        assert info.value.fragment == "output"

    async def test_query_must_be_object(self) -> None:
        """A query fragment returning a non-object is a ScriptError."""
        rig = Rig()
        with pytest.raises(o.ScriptError) as info:
            await rig.invoke(get("a", query="[1]"))
        assert info.value.fragment == "a.query"

    async def test_integers_stay_integers_across_js(self) -> None:
        """2**53-1 goes through JavaScript and back as the same integer."""
        rig = Rig(functions={"big": lambda x: {"n": 2**53 - 1}})
        result = await rig.invoke(
            o.Processor(
                name="f",
                call=o.FunctionCall(name="big"),
                output="({n: response.n, m: response.n - 1, k: 3})",
            ),
            output="({n: out.f.n, m: out.f.m, k: out.f.k, t: trigger.t})",
            request={"t": 2**53 - 1},
        )
        assert result.payload == {"n": 2**53 - 1, "m": 2**53 - 2, "k": 3, "t": 2**53 - 1}
        assert isinstance(result.payload, dict)
        assert all(type(v) is int for v in result.payload.values())


class TestTrace:
    async def test_trace_fields(self) -> None:
        """Each trace entry has step, processor, status, attempts, http_status, start and end."""
        rig = Rig()
        rig.delays = {"a": 3}
        rig.answers["a"] = lambda r: httpx.Response(201, json={})
        result = await rig.invoke(get("a"))
        (t,) = result.trace
        assert (t.step, t.processor, t.status, t.attempts, t.http_status) == (
            "main",
            "a",
            "ok",
            1,
            201,
        )
        assert t.started == rig.t0
        assert t.ended == rig.t0 + 3
        assert t.duration == 3
        assert t.items is None and t.error is None
        assert t.to_dict()["http_status"] == 201

    async def test_attempts_count_retries(self) -> None:
        """attempts counts every try of the call."""
        rig = Rig()
        codes = iter([503, 503, 200])
        rig.answers["a"] = lambda r: httpx.Response(next(codes), json={})
        result = await rig.invoke(get("a", retry=o.Retry(attempts=3, jitter=False)))
        assert trace_of(result, "a").attempts == 3
        assert trace_of(result, "a").http_status == 200


class TestFunctionsAndActions:
    async def test_sync_function(self) -> None:
        """A sync function gets the input and returns the response."""
        rig = Rig(functions={"double": lambda x: x * 2})
        result = await rig.invoke(
            o.Processor(name="f", call=o.FunctionCall(name="double"), input="21")
        )
        assert result.payload == {"f": 42}
        assert trace_of(result, "f").attempts == 1

    async def test_async_function(self) -> None:
        """An async function is awaited (and may sleep on the executor)."""
        rig = Rig()

        async def slow(x: Any) -> Any:
            await rig.executor.sleep(7)
            return {"got": x}

        rig.engine.functions["slow"] = slow
        result = await rig.invoke(
            o.Processor(name="f", call=o.FunctionCall(name="slow"), input="'hi'")
        )
        assert result.payload == {"f": {"got": "hi"}}
        assert rig.now() == 7

    async def test_function_timeout(self) -> None:
        """A function past its timeout is a StepTimeoutError (virtual clock)."""
        rig = Rig()

        async def slow(x: Any) -> Any:
            await rig.executor.sleep(100)
            return 1

        rig.engine.functions["slow"] = slow
        with pytest.raises(o.StepTimeoutError) as info:
            await rig.invoke(o.Processor(name="f", call=o.FunctionCall(name="slow", timeout=5)))
        assert info.value.processor == "f"
        assert rig.now() == 5

    async def test_function_raising_is_action_error(self) -> None:
        """A function that raises becomes an ActionError with the exception as cause."""

        def boom(x: Any) -> Any:
            raise RuntimeError("kaput")

        rig = Rig(functions={"boom": boom})
        with pytest.raises(o.ActionError) as info:
            await rig.invoke(o.Processor(name="f", call=o.FunctionCall(name="boom")))
        assert isinstance(info.value.__cause__, RuntimeError)
        assert "kaput" in str(info.value)
        assert info.value.processor == "f"

    @pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), {"a": b"bytes"}])
    async def test_function_returning_non_json_is_action_error(self, value: Any) -> None:
        """A function result that is not JSON is an ActionError."""
        rig = Rig(functions={"bad": lambda x: value})
        with pytest.raises(o.ActionError) as info:
            await rig.invoke(o.Processor(name="f", call=o.FunctionCall(name="bad")))
        assert info.value.processor == "f"
        assert "not JSON" in str(info.value)

    async def test_custom_action(self) -> None:
        """A host action gets the call, the input and a context naming where it runs."""
        seen: list[Any] = []

        async def mail(call: o.ActionCall, input: Any, context: o.ActionContext) -> Any:
            seen.append(
                (
                    call.params,
                    input,
                    context.process,
                    context.step,
                    context.processor,
                    context.run_id,
                )
            )
            return {"sent": True}

        rig = Rig(actions={"mail": mail})
        result = await rig.invoke(
            o.Processor(
                name="m", call=o.ActionCall(kind="mail", params={"to": "x@y"}), input="({n: 1})"
            )
        )
        assert result.payload == {"m": {"sent": True}}
        assert seen == [({"to": "x@y"}, {"n": 1}, "proc", "main", "m", "local")]

    async def test_custom_action_gets_the_run_id(self) -> None:
        """In a business run, the context carries the run's id."""
        seen: list[str] = []

        async def note(call: o.ActionCall, input: Any, context: o.ActionContext) -> Any:
            seen.append(context.run_id)
            return None

        process = o.Process(
            name="noted",
            trigger=o.Event(name="go"),
            steps=(
                o.ProcessStep(
                    name="main",
                    processors=(o.Processor(name="n", call=o.ActionCall(kind="note")),),
                ),
            ),
        )
        eng = o.Engine(
            sandbox=InProcessSandbox(), executor=InMemoryExecutor(), actions={"note": note}
        )
        async with eng as engine:
            await engine.deploy(process)
            run_id = await engine.start("noted")
        assert seen == [run_id]
        assert run_id != "local"

    async def test_custom_action_error(self) -> None:
        """An action that raises becomes an ActionError; a fallback catches it."""

        async def broken(call: o.ActionCall, input: Any, context: o.ActionContext) -> Any:
            raise ValueError("nope")

        rig = Rig(actions={"broken": broken})
        with pytest.raises(o.ActionError):
            await rig.invoke(o.Processor(name="m", call=o.ActionCall(kind="broken")))
        result = await rig.invoke(
            o.Processor(name="m", call=o.ActionCall(kind="broken"), on_error="fallback", fallback=0)
        )
        assert result.payload == {"m": 0}
        assert trace_of(result, "m").status == "fallback"


class TestInvoke:
    async def test_invalid_process_raises_definition_error_before_running(self) -> None:
        """An invalid process raises DefinitionError and sends nothing."""
        rig = Rig()
        with pytest.raises(o.DefinitionError):
            await rig.invoke(get("a", output="(("), get("b"))
        assert rig.log == []

    async def test_resume_steps_cannot_be_invoked(self) -> None:
        """A process with a resume step is not a payload process."""
        rig = Rig()
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(name="s", processors=(get("a"),)),
                o.ResumeStep(name="r", event="e", key="1"),
            ),
        )
        with pytest.raises(o.DefinitionError) as info:
            await rig.engine.invoke(p)
        assert [q.path for q in info.value.problems] == ["$.steps"]

    async def test_request_object_as_trigger(self) -> None:
        """A Request reaches fragments as trigger: method, path, params, query, headers, body."""
        rig = Rig()
        req = o.Request(
            method="POST",
            path="/p/42",
            params={"sku": "42"},
            query={"q": "1"},
            headers={"h": "v"},
            body={"b": 1},
        )
        result = await rig.invoke(get("a", output="trigger"), request=req)
        assert result.payload == {"a": req.to_dict()}


class BrokenSandbox(InProcessSandbox):
    """An in-process sandbox whose fragments named ``*.boom`` break the sandbox itself."""

    async def evaluate(
        self, source: str, bindings: Any, *, name: str = "fragment", timeout: float | None = None
    ) -> Any:
        if source == "'boom'":
            raise o.SandboxError("worker died")
        return await super().evaluate(source, bindings, name=name, timeout=timeout)


class TestErrorTypes:
    async def test_sandbox_failure_is_not_wrapped_in_a_group(self) -> None:
        """A SandboxError inside a processor reaches the caller as a SandboxError."""
        rig = Rig()
        rig.engine = o.Engine(sandbox=BrokenSandbox(), executor=rig.executor, client=rig.client)
        with pytest.raises(o.SandboxError):
            await rig.invoke(get("a", output="'boom'"), get("b"))

    async def test_step_timeout_raised_by_action_without_timeout(self) -> None:
        """A StepTimeoutError an action raises itself (no call timeout) passes through unchanged."""

        async def slow_api(call: o.ActionCall, input: Any, context: o.ActionContext) -> Any:
            raise o.StepTimeoutError("upstream timed out")

        rig = Rig(actions={"slow": slow_api})
        with pytest.raises(o.StepTimeoutError) as info:
            await rig.invoke(o.Processor(name="m", call=o.ActionCall(kind="slow")))
        assert "upstream timed out" in str(info.value)
        assert info.value.processor == "m"


class TestRawBodies:
    """On the engine's own client, a JSON body only ``output`` reads crosses undecoded."""

    @staticmethod
    async def _serve(
        reader: Any, writer: Any, bodies: dict[str, bytes], writers: list[Any]
    ) -> None:  # a bare keep-alive HTTP/1.1 server
        writers.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except Exception:
                return
            path = head.split(b" ")[1].decode().split("?")[0].strip("/")
            body = bodies[path]
            status = b"404 X" if path == "missing" else b"200 OK"
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))  # fmt: skip

    @pytest.mark.parametrize("raw", [True, False])
    async def test_outputs_match_decoded_bodies(self, raw: bool) -> None:
        import asyncio

        from orchestra.sandbox import RawJSON

        bodies = {"a": b'{"n": 1, "s": "\xc3\xa9"}', "b": b"{not json", "c": b'[1e400]',
                  "d": b'{"n": 2}', "missing": b'{"gone": true}'}  # fmt: skip
        writers: list[Any] = []
        server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, bodies, writers), "127.0.0.1", 0
        )
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        seen: list[object] = []

        class Recording(InProcessSandbox):
            accepts_raw_json = raw

            async def evaluate(self, source: str, bindings: Any, **kw: Any) -> o.JSON:
                seen.extend(type(v) for v in bindings.values())
                return await super().evaluate(source, bindings, **kw)

            async def evaluate_each(self, fragments: Any, bindings: Any, *a: Any, **kw: Any) -> Any:
                chained.extend(type(v) for v in bindings.values())
                return await super().evaluate_each(fragments, bindings, *a, **kw)

        chained: list[object] = []
        engine = o.Engine(sandbox=Recording())

        def proc(name: str, path: str, query: str | None = None, **kw: Any) -> o.Processor:
            call = o.HttpCall(url=f"{base}/{path}", query=query)
            return o.Processor(name=name, call=call, **kw)

        try:
            result = await engine.invoke(o.Process(name="p", steps=(o.ProcessStep(
                name="main", processors=(
                    proc("a", "a", output="({n: response.n + 1, s: response.s, st: status})"),
                    proc("b", "b", output="typeof response + ':' + response"),
                    proc("nooutput", "d"),
                    proc("unused", "d", output="'fixed'"),
                    # Its query runs in the round trip of a's output (chained).
                    proc("next", "a", query="({n: String(out.a.n)})", needs=("a",),
                         output="out.a.n + response.n"),
                )),), output="out"))  # fmt: skip
            assert result.payload == {
                "a": {"n": 2, "s": "é", "st": 200}, "b": "string:{not json",
                "nooutput": {"n": 2}, "unused": "fixed", "next": 3,
            }  # fmt: skip
            with pytest.raises(o.ScriptError, match="not JSON"):
                await engine.invoke(o.Process(name="p", steps=(o.ProcessStep(
                    name="main", processors=(proc("c", "c", output="response"),)),)))  # fmt: skip
            missing = proc("m", "missing", output="response")
            with pytest.raises(o.HttpError, match='answered 404: {"gone": true}'):
                await engine.invoke(o.Process(name="p", steps=(o.ProcessStep(
                    name="main", processors=(missing,)),)))  # fmt: skip
            assert (RawJSON in seen) is raw  # outputs had it, if the sandbox takes it
            assert (RawJSON in chained) is raw  # so had a's output, chained with next's query
        finally:
            await engine.aclose()
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()
