"""``start``/``publish`` with ``wait=False``: stored before returning, driven in the background."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import orchestra as o
from orchestra.engine._webhooks import WebhookEndpoint, handle_webhook
from orchestra.stores import InMemoryStore
from orchestra.testing import make_test_engine

pytestmark = pytest.mark.anyio

ORDER = o.Event(name="order.created", key="payload.order")
PAID = o.Event(name="order.paid", key="payload.order")


def process() -> o.Process:
    return o.Process(name="orders", trigger=ORDER, events=(PAID,), steps=(
        o.ProcessStep(name="book", processors=(
            o.Processor(name="gate", call=o.FunctionCall(name="gate")),
        )),
        o.ResumeStep(name="paid", event="order.paid", key="ctx.trigger.order"),
        o.ProcessStep(name="ship", processors=(
            o.Processor(name="ship", call=o.FunctionCall(name="ship")),
        )),
    ))  # fmt: skip


class Gate:
    """A host function that blocks until the test opens it: shows what runs when."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.entered = 0

    async def __call__(self, value: Any) -> Any:
        self.entered += 1
        await self.open.wait()
        return {"booked": True}


async def ship(value: Any) -> Any:
    return {"shipped": True}


def engine(store: InMemoryStore, gate: Gate) -> o.Engine:
    return make_test_engine(store=store, functions={"gate": gate, "ship": ship})


async def settle(eng: o.Engine, run_id: str, status: str) -> o.RunInfo:
    with anyio.fail_after(5):
        while (run := await eng.run(run_id)).status != status:  # noqa: ASYNC110 - polls the store
            await anyio.sleep(0.001)
    return run


async def test_start_without_waiting_returns_once_the_run_is_stored() -> None:
    store, gate = InMemoryStore(), Gate()
    async with engine(store, gate) as eng:
        await eng.deploy(process())
        run_id = await eng.start("orders", {"order": "A"}, wait=False)
        stored = await store.get_run(run_id)  # durable before start returned
        assert (stored.status, stored.position) == ("running", 0)
        assert gate.entered <= 1  # the step may have begun; it has not ended
        gate.open.set()
        run = await settle(eng, run_id, "waiting")
        assert run.path == ["book:completed", "paid:waiting"]


async def test_publish_without_waiting_stores_the_event_and_the_runs_it_starts() -> None:
    store, gate = InMemoryStore(), Gate()
    gate.open.set()
    async with engine(store, gate) as eng:
        await eng.deploy(process())
        created = await eng.publish("order.created", {"order": "A"}, id="e1", wait=False)
        assert created.background
        (run_id,) = created.started
        assert (await store.get_run(run_id)).status in ("running", "waiting")
        await settle(eng, run_id, "waiting")
        paid = await eng.publish("order.paid", {"order": "A"}, id="e2", wait=False)
        assert paid.resumed == (run_id,)  # being delivered to it
        run = await settle(eng, run_id, "completed")
        assert run.path[-2:] == ["paid:resumed", "ship:completed"]
        again = await eng.publish("order.created", {"order": "A"}, id="e1", wait=False)
        assert again.duplicate
        assert again.started == ()


async def test_background_work_needs_an_open_engine() -> None:
    store = InMemoryStore()
    eng = engine(store, Gate())
    await eng.deploy(process())
    with pytest.raises(o.EngineClosedError, match="async with engine"):
        await eng.start("orders", {"order": "A"}, wait=False)
    with pytest.raises(o.EngineClosedError):
        await eng.publish("order.created", {"order": "A"}, wait=False)
    assert await store.list_runs() == []
    assert await store.take_event("order.created", '"A"', now=0.0) is None
    await eng.aclose()


async def test_a_webhook_that_does_not_wait_answers_before_the_steps_end() -> None:
    store, gate = InMemoryStore(), Gate()
    async with engine(store, gate) as eng:
        await eng.deploy(process())
        endpoint = WebhookEndpoint(event="order.created", wait=False)
        status, body = await handle_webhook(eng, endpoint, {}, b'{"order": "B"}')
        out: Any = body
        assert (status, out["background"]) == (202, True)
        (run_id,) = out["started"]
        assert (await eng.run(run_id)).status == "running"  # the gate holds its first step
        gate.open.set()
        await settle(eng, run_id, "waiting")
