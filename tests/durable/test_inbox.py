"""The inbox and runs: an event leaves the inbox with the run that records it, never reused.

On every store: an early event is taken by exactly one of the runs reaching their resume
step together; an event delivered to runs already waiting leaves the inbox with them; a
run that starts waiting later finds nothing to take.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import InMemoryStore, SQLiteStore, Store

from .conftest import PG_URL, open_pg

pytestmark = pytest.mark.anyio

PAID = o.Event(name="paid", key="payload.order")


def orders() -> o.Process:
    return o.Process(name="orders", trigger=o.Event(name="go"), events=(PAID,), steps=(
        o.ResumeStep(name="wait", event="paid", key="ctx.trigger.order"),
        o.ProcessStep(name="ship", processors=(
            o.Processor(name="ship", call=o.FunctionCall(name="ship"), input="ctx.events.wait"),
        )),
    ))  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield InMemoryStore()
    elif request.param == "sqlite":
        async with SQLiteStore(tmp_path / "runs.db") as s:
            yield s
    else:
        schema = "oi_" + uuid.uuid4().hex[:12]
        pg = await open_pg(schema)
        try:
            yield pg
        finally:
            await pg.aclose()
            import asyncpg

            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


def engine(store: Store, shipped: list[Any], worker: str = "w") -> o.Engine:
    return o.Engine(store=store, sandbox=InProcessSandbox(), worker_id=worker,
                    functions={"ship": shipped.append})  # fmt: skip


async def test_an_early_event_goes_to_exactly_one_run(store: Store) -> None:
    shipped: list[Any] = []
    async with engine(store, shipped) as eng:
        await eng.deploy(orders())
        early = await eng.publish("paid", {"order": "A", "n": 1}, id="paid-1")
        assert early.kept
        ids: list[str] = []

        async def start() -> None:
            ids.append(await eng.start("orders", {"order": "A"}))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(start)
        runs = [await eng.run(i) for i in ids]
        assert sorted(r.status for r in runs) == ["completed", "waiting", "waiting", "waiting"]
        assert shipped == [{"order": "A", "n": 1}]
        assert await store.peek_event("paid", '"A"', now=eng.executor.now()) is None
        # The next event resumes the three still waiting, and leaves the inbox with them.
        res = await eng.publish("paid", {"order": "A", "n": 2}, id="paid-2")
        assert sorted(res.resumed) == sorted(r.id for r in runs if r.status == "waiting")
        assert not res.kept
        assert shipped[1:] == [{"order": "A", "n": 2}] * 3
        later = await eng.start("orders", {"order": "A"})
        assert (await eng.run(later)).status == "waiting"  # nothing left to reuse


async def test_an_event_delivered_to_waiting_runs_leaves_the_inbox(store: Store) -> None:
    shipped: list[Any] = []
    async with engine(store, shipped) as eng:
        await eng.deploy(orders())
        waiting = [await eng.start("orders", {"order": "B"}) for _ in range(2)]
        res = await eng.publish("paid", {"order": "B"}, id="paid-b")
        assert sorted(res.resumed) == sorted(waiting)
        assert await store.peek_event("paid", '"B"', now=eng.executor.now()) is None
        # Published again (a host retrying): a duplicate, nothing resumed or reused.
        again = await eng.publish("paid", {"order": "B"}, id="paid-b")
        assert (again.duplicate, again.resumed) == (True, ())
        later = await eng.start("orders", {"order": "B"})
        assert (await eng.run(later)).status == "waiting"
        assert shipped == [{"order": "B"}] * 2


async def test_two_workers_racing_for_an_early_event(store: Store, tmp_path: Path) -> None:
    """Runs on two workers (two stores on one database) reach the step at once: one takes it."""
    if isinstance(store, InMemoryStore):
        other: Store = store  # one process: the same store
    elif isinstance(store, SQLiteStore):
        other = await SQLiteStore.open(store.path)
    else:
        from orchestra.stores import PostgresStore

        assert isinstance(store, PostgresStore)
        assert PG_URL is not None
        other = await PostgresStore.open(PG_URL, schema=store.schema)
    shipped: list[Any] = []
    try:
        async with engine(store, shipped, "a") as a, engine(other, shipped, "b") as b:
            await a.deploy(orders())
            await b.deploy(orders())
            await a.publish("paid", {"order": "C"}, id="paid-c")
            ids: list[str] = []

            async def start(eng: o.Engine) -> None:
                ids.append(await eng.start("orders", {"order": "C"}))

            async with anyio.create_task_group() as tg:
                for eng in (a, b, a, b):
                    tg.start_soon(start, eng)
            statuses = sorted([(await a.run(i)).status for i in ids])
        assert statuses == ["completed", "waiting", "waiting", "waiting"]
        assert shipped == [{"order": "C"}]
    finally:
        if other is not store:
            await other.aclose()
