"""Fencing: a worker whose run was taken over is refused by the store, whatever it believes.

The worker below holds a long lease and never looks at it again before writing (a
stop-the-world pause, a clock that disagrees): only the store's conditional writes stand
between it and the successor's progress. They must refuse every write, and the worker
must stop and write nothing more.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import InMemoryStore, SQLiteStore, Store

from .conftest import open_pg

pytestmark = pytest.mark.anyio

GO = o.Event(name="go")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    if request.param == "sqlite":
        async with SQLiteStore(tmp_path / "runs.db") as s:
            yield s
        return
    import uuid

    schema = "of_" + uuid.uuid4().hex[:12]
    pg = await open_pg(schema)
    try:
        yield pg
    finally:
        await pg.aclose()
        import asyncpg

        from .conftest import PG_URL

        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def process(*names: str) -> o.Process:
    """One step whose processors run the named functions in parallel, then a second step."""
    return o.Process(name="p", trigger=GO, steps=(
        o.ProcessStep(name="s", processors=tuple(
            o.Processor(name=n, call=o.FunctionCall(name=n)) for n in names
        )),
        o.ProcessStep(name="t", processors=(
            o.Processor(name="after", call=o.FunctionCall(name="fast")),
        )),
    ))  # fmt: skip


async def steal_while(
    store: Store, run_step: Callable[[Callable[[], Awaitable[None]]], Awaitable[Any]]
) -> tuple[Any, Any]:
    """Run ``run_step`` with a hook that hands the run to a thief; return (stolen, result)."""
    stolen: list[Any] = []

    async def steal() -> None:
        (run,) = await store.list_runs()
        thief = attrs.evolve(run, owner="thief", lease_expires=time.time() + 100)
        await store.update_run(thief)  # as a successor's claim leaves it
        stolen.append(thief)

    result = await run_step(steal)
    return stolen[0], result


@pytest.mark.parametrize("names", [("slow",), ("slow", "fast")], ids=["one", "two"])
async def test_a_taken_over_run_refuses_the_stalled_worker(
    store: Store, names: tuple[str, ...]
) -> None:
    """Whether its next write is a step's end (one processor) or a checkpoint (two)."""
    calls: list[str] = []
    hook: list[Callable[[], Awaitable[None]]] = []

    async def slow(_: Any) -> Any:
        calls.append("slow")
        await hook[0]()  # the worker "stalls" here while another takes the run over
        return "late"

    def fast(_: Any) -> Any:
        calls.append("fast")
        return "quick"

    eng = o.Engine(store=store, sandbox=InProcessSandbox(), worker_id="stalled",
                   lease_seconds=3600, functions={"slow": slow, "fast": fast})  # fmt: skip

    async def run_step(steal: Callable[[], Awaitable[None]]) -> str:
        hook.append(steal)
        await eng.deploy(process(*names))
        with anyio.fail_after(5):
            return await eng.start("p", {})

    stolen, run_id = await steal_while(store, run_step)
    await eng.aclose()
    # Nothing of the stalled worker's reached the store after the takeover.
    assert await store.get_run(run_id) == stolen
    assert [h.kind for h in await store.history(run_id)] == ["run_started"]
    assert await store.checkpoints(run_id, "s") == []
    assert not eng._business.leases.held
    assert "after" not in calls  # it stopped: the next step never ran


async def test_a_stalled_worker_cannot_give_back_a_lease_it_lost(store: Store) -> None:
    """Releasing the lease is fenced too: the successor keeps the run."""
    wait = o.ResumeStep(name="w", event="never", key="'k'")
    parked = o.Process(name="q", trigger=GO, steps=(wait,))
    eng = o.Engine(store=store, sandbox=InProcessSandbox(), worker_id="stalled",
                   lease_seconds=3600)  # fmt: skip
    await eng.deploy(parked)
    business = eng._business
    real_release = business.leases.release
    stolen: list[Any] = []

    async def release_after_theft(held: Any) -> None:
        (run,) = await store.list_runs()
        thief = attrs.evolve(run, owner="thief", lease_expires=time.time() + 100)
        await store.update_run(thief)
        stolen.append(thief)
        await real_release(held)

    business.leases.release = release_after_theft  # type: ignore[method-assign]
    run_id = await eng.start("q", {})
    await eng.aclose()
    assert await store.get_run(run_id) == stolen[0]
