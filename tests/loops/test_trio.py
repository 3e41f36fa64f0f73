"""orchestra under trio: the engine is anyio code, so a trio host runs it unchanged.

The rest of the suite runs on asyncio (the in-memory executor's virtual clock needs it).
These tests run the real parts a trio host would use: the local executor, the worker-pool
sandbox (its trio path: one round trip at a time, no ``add_reader``), an HTTP server on
127.0.0.1 reached through the default client, and a SQLite file whose commits go alone
(group commit needs asyncio's ready queue).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import orchestra as o
from orchestra.errors import ScriptError, StepTimeoutError
from orchestra.executors import LocalExecutor
from orchestra.sandbox import InProcessSandbox, SandboxLimits, WorkerSandbox
from orchestra.stores import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Every test of this module runs on trio."""
    return "trio"


class _Api(BaseHTTPRequestHandler):
    """A tiny JSON API: ``/items/<id>`` answers the item, ``/prices/<id>`` its price."""

    def do_GET(self) -> None:
        kind, _, ident = self.path.strip("/").partition("/")
        if kind == "items":
            body: Any = {"id": ident, "name": f"item {ident}", "related": ["b", "c"]}
        elif kind == "prices":
            body = {"cents": 100 * len(ident) + ord(ident[0])}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def page(base: str) -> o.Process:
    return o.Process(
        name="page",
        trigger=o.RequestTrigger(method="GET", path="/p/{id}"),
        steps=(o.ProcessStep(name="main", processors=(
            o.Processor(name="item", call=o.HttpCall(
                url=base + "/items/{id}", path="({id: trigger.params.id})")),
            o.Processor(name="prices", needs=("item",), for_each="out.item.related",
                        call=o.HttpCall(url=base + "/prices/{id}", path="({id: item})"),
                        output="response.cents"),
        )),),
        output="({name: out.item.name, prices: out.prices})",
    )  # fmt: skip


async def test_a_payload_process_runs_on_trio_with_worker_sandboxes_and_real_http(
    api: str,
) -> None:
    async with o.Engine(executor=LocalExecutor()) as engine:  # the default WorkerSandbox
        result = await engine.invoke(page(api), o.Request(path="/p/a", params={"id": "a"}))
    assert result.payload == {"name": "item a", "prices": [198, 199]}
    assert [(t.processor, t.status) for t in result.trace] == [("item", "ok"), ("prices", "ok")]


async def test_the_worker_sandbox_on_trio_kills_a_fragment_past_its_deadline() -> None:
    sandbox = WorkerSandbox(size=1, limits=SandboxLimits(timeout=0.3))
    try:
        assert await sandbox.evaluate("1 + 2", {}) == 3
        with pytest.raises(StepTimeoutError):
            await sandbox.evaluate("while (true) {}", {})
        with pytest.raises(ScriptError):
            await sandbox.evaluate("return {", {})
        assert await sandbox.evaluate("ctx.n * 2", {"ctx": {"n": 21}}) == 42  # a new worker
    finally:
        await sandbox.aclose()


ORDER = o.Event(name="order.created", key="payload.order")
PAID = o.Event(name="order.paid", key="payload.order")


def orders() -> o.Process:
    return o.Process(name="orders", trigger=ORDER, events=(PAID,), steps=(
        o.ProcessStep(name="book", processors=(
            o.Processor(name="book", call=o.FunctionCall(name="book")),
            o.Processor(name="note", call=o.FunctionCall(name="book")),
        )),
        o.ResumeStep(name="paid", event="order.paid", key="ctx.trigger.order"),
        o.ResumeStep(name="late", event="order.paid", key="'never'", timeout="PT0.2S",
                     on_timeout="continue"),
        o.ProcessStep(name="ship", processors=(
            o.Processor(name="ship", call=o.FunctionCall(name="ship"),
                        input="({order: ctx.trigger.order, paid: ctx.events.paid.amount})"),
        )),
    ))  # fmt: skip


async def book(value: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return {"booked": True}


def ship(value: Any) -> Any:  # a plain function: run in a worker thread
    return {"shipped": value}


async def publish(engine: o.Engine, order: str) -> None:
    await engine.publish("order.created", {"order": order})


async def test_a_business_process_runs_durably_on_trio_with_sqlite(tmp_path: Path) -> None:
    """Start, park, resume by event, a deadline, then reopen the file: all on trio."""
    functions = {"book": book, "ship": ship}
    path = tmp_path / "runs.db"
    async with o.Engine(
        store=await SQLiteStore.open(path), functions=functions, sandbox=InProcessSandbox(),
        executor=LocalExecutor(),
    ) as engine:  # fmt: skip
        await engine.deploy(orders())
        started = await engine.publish("order.created", {"order": "A-1"}, id="e1")
        (run_id,) = started.started
        assert (await engine.run(run_id)).status == "waiting"
        async with anyio.create_task_group() as tg:  # concurrent runs: commits go alone
            for i in range(5):
                tg.start_soon(publish, engine, f"B-{i}")
        resumed = await engine.publish("order.paid", {"order": "A-1", "amount": 12})
        assert list(resumed.resumed) == [run_id]
        with anyio.fail_after(5):  # the "late" step's deadline fires on the timer task
            while (await engine.run(run_id)).status != "completed":  # noqa: ASYNC110
                await anyio.sleep(0.02)
    async with o.Engine(
        store=await SQLiteStore.open(path), functions=functions, sandbox=InProcessSandbox(),
        executor=LocalExecutor(),
    ) as engine:  # fmt: skip
        run = await engine.run(run_id)
        assert run.status == "completed"
        shipped: Any = run.context["steps"]
        assert shipped["ship"]["ship"] == {"shipped": {"order": "A-1", "paid": 12}}
        waiting = await engine.runs("orders", status="waiting")
        assert len(waiting) == 5
        history = [h.kind for h in run.history]
        assert history.count("step_completed") == 2
        assert "event_consumed" in history


async def test_an_http_error_on_trio_is_reported_against_its_processor() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "down"})

    process = o.Process(
        name="p", trigger=o.RequestTrigger(method="GET", path="/"),
        steps=(o.ProcessStep(name="main", processors=(
            o.Processor(name="cms", call=o.HttpCall(url="https://cms.test/x",
                                                    retry=o.Retry(attempts=1))),
        )),),
    )  # fmt: skip
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with o.Engine(client=client, sandbox=InProcessSandbox()) as engine:
        with pytest.raises(o.OrchestraError) as caught:
            await engine.invoke(process, o.Request(path="/"))
    await client.aclose()
    assert caught.value.processor == "cms"  # type: ignore[attr-defined]
    assert "503" in str(caught.value)


def test_the_in_memory_executor_on_trio_says_it_needs_asyncio() -> None:
    """Run in a thread of its own: a fresh context, with no asyncio loop of a fixture's."""
    import threading

    import trio

    from orchestra.executors import InMemoryExecutor

    raised: list[BaseException] = []

    def main() -> None:
        try:
            trio.run(InMemoryExecutor().sleep, 1.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            raised.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(10)
    assert len(raised) == 1
    assert isinstance(raised[0], RuntimeError)
    assert "needs the asyncio backend" in str(raised[0])
