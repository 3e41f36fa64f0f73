"""Leases, heartbeats, takeover, timers rebuilt after a restart, events across workers."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import (
    InboxEvent,
    InMemoryStore,
    RunRecord,
    RunStatus,
    SQLiteStore,
    Store,
    Wait,
)
from orchestra.testing import MockHTTP

from ._worker import EVENT, HERE, SAMPLE
from .conftest import po_engine

pytestmark = pytest.mark.anyio

GO = o.Event(name="go")


def slow_process() -> o.Process:
    return o.Process(name="slow", trigger=GO, steps=(
        o.ProcessStep(name="s", processors=(
            o.Processor(name="work", call=o.FunctionCall(name="work")),
        )),
    ))  # fmt: skip


def recording_client() -> tuple[httpx.AsyncClient, MockHTTP]:
    mocks = MockHTTP.from_file(HERE / "mocks.json")
    return mocks.client(), mocks


async def test_a_deadline_that_passed_while_no_worker_ran_fires_late(
    tmp_path: Path, po_process: o.Process
) -> None:
    data: Any = po_process.to_dict()
    data["name"] = "po-quick"
    data["steps"][1]["timeout"] = "PT0.3S"
    quick = o.Process.from_dict(data)
    async with SQLiteStore(tmp_path / "runs.db") as store:
        async with po_engine(store, "w1") as eng:
            await eng.deploy(quick)
            run_id = await eng.start("po-quick", SAMPLE)
            assert (await eng.run(run_id)).status == "waiting"
        await anyio.sleep(0.5)  # the deadline passes while no engine is open
        client, mocks = recording_client()
        async with po_engine(store, "w2", client=client) as eng:
            run = await eng.run(run_id)  # recovered on entering: the deadline fired
            assert run.status == "completed"
            assert run.path == ["send_form:completed", "wait_for_supplier:timed_out",
                                "escalate:completed"]  # fmt: skip
        (mail,) = mocks.calls("POST", "https://mail.example.com")
        assert json.loads(mail.content)["to"] == SAMPLE["po"]["buyer"]


async def test_the_heartbeat_keeps_a_long_step_with_its_worker(tmp_path: Path) -> None:
    """A step longer than the lease: renewed, so a second polling worker never takes it."""
    calls: list[str] = []

    async def work(_: Any) -> Any:
        calls.append("work")
        await anyio.sleep(1.0)
        return "done"

    db = tmp_path / "runs.db"
    async with SQLiteStore(db) as sa, SQLiteStore(db) as sb:
        a = o.Engine(store=sa, sandbox=InProcessSandbox(), functions={"work": work},
                     worker_id="a", lease_seconds=0.3)  # fmt: skip
        b = o.Engine(store=sb, sandbox=InProcessSandbox(), functions={"work": work},
                     worker_id="b", lease_seconds=0.3)  # fmt: skip
        async with a, b:
            await a.deploy(slow_process())
            run = await a.run(await a.start("slow", {}))
    assert run.status == "completed"
    assert calls == ["work"]
    assert [h.kind for h in run.history].count("step_started") == 1


async def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(tmp_path: Path) -> None:
    release = anyio.Event()

    async def work(_: Any) -> Any:
        await release.wait()
        return "late"

    async with SQLiteStore(tmp_path / "runs.db") as store:
        async with o.Engine(store=store, sandbox=InProcessSandbox(), functions={"work": work},
                            worker_id="a", lease_seconds=0.3) as eng:  # fmt: skip
            await eng.deploy(slow_process())
            async with anyio.create_task_group() as tg:
                tg.start_soon(eng.start, "slow", {})
                await anyio.sleep(0.1)
                (run,) = await store.list_runs()
                # Another worker took the run (say A stalled past its lease).
                stolen = attrs.evolve(run, owner="thief", lease_expires=time.time() + 100)
                await store.update_run(stolen)
                with anyio.fail_after(2):  # the heartbeat notices and stops the work
                    while eng._business.leases.held:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                release.set()
        after = await store.get_run(run.id)
        assert after == stolen  # A wrote nothing more: no checkpoint, no commit, no release
        assert await store.checkpoints(run.id, "s") == []
        assert [h.kind for h in await store.history(run.id)] == ["run_started"]


async def test_an_event_published_on_another_worker_resumes_the_run_there(
    tmp_path: Path, po_process: o.Process
) -> None:
    db = tmp_path / "runs.db"
    client_a, mocks_a = recording_client()
    client_b, mocks_b = recording_client()
    async with (
        SQLiteStore(db) as sa, SQLiteStore(db) as sb,
        po_engine(sa, "a", client=client_a) as a, po_engine(sb, "b", client=client_b) as b,
    ):  # fmt: skip
        await a.deploy(po_process)
        (run_id,) = (await a.publish("po.unconfirmed", SAMPLE)).started
        res = await b.publish(EVENT["name"], EVENT["payload"], id=EVENT["id"])
        assert res.resumed == (run_id,)
        run = await a.run(run_id)
    assert run.status == "completed"
    assert run.owner is None
    assert [r.method for r in mocks_a.requests] == ["POST", "POST"]
    assert [r.method for r in mocks_b.requests] == ["POST", "PATCH"]  # token, then the ERP


async def test_recover_by_hand_continues_a_run_left_running(tmp_path: Path) -> None:
    """``recover()`` without entering the engine: runs interrupted go on, and it says which."""
    done: list[str] = []

    async def work(_: Any) -> Any:
        done.append("work")
        return 1

    async with SQLiteStore(tmp_path / "runs.db") as store:
        eng = o.Engine(store=store, sandbox=InProcessSandbox(), functions={"work": work},
                       worker_id="a")  # fmt: skip
        await eng.deploy(slow_process())
        run_id = await eng.start("slow", {})
        rec = await store.get_run(run_id)
        # As a worker leaves it when it dies right after starting the run.
        await store.update_run(attrs.evolve(rec, status="running", position=0, owner="dead",
                                            lease_expires=time.time() - 1))  # fmt: skip
        assert await eng.recover() == [run_id]
        assert (await eng.run(run_id)).status == "completed"
        assert await eng.recover() == []
        await eng.aclose()
    assert done == ["work", "work"]


def _unused(store: Store) -> None:  # keep the import for type checkers
    _ = store


class CountingStore(InMemoryStore):
    """The in-memory store, counting the calls that read runs or events one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        self.calls["list_runs"] += 1
        return await super().list_runs(process=process, status=status)

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        self.calls["peek_event"] += 1
        return await super().peek_event(name, key, now=now)


def parking_process() -> o.Process:
    return o.Process(name="park", trigger=GO, events=(o.Event(name="done", key="payload.id"),),
                     steps=(
        o.ResumeStep(name="wait", event="done", key="ctx.trigger.id"),
        o.ProcessStep(name="s", processors=(
            o.Processor(name="work", call=o.FunctionCall(name="work")),
        )),
    ))  # fmt: skip


async def test_recovery_and_the_poll_never_read_every_waiting_run() -> None:
    """Orphans and undelivered events come from two targeted queries, whatever is parked.

    Many runs wait; one was left mid-resume by a dead worker (waiting, owned, lease
    expired) and one has an event in the inbox that was never delivered. ``recover()``
    re-parks the first and delivers the second; neither it nor the poll lists runs or
    peeks at the inbox once per wait.
    """

    async def work(_: Any) -> Any:
        return 1

    store = CountingStore()
    eng = o.Engine(store=store, sandbox=InProcessSandbox(), functions={"work": work},
                   worker_id="a")  # fmt: skip
    await eng.deploy(parking_process())
    ids = [await eng.start("park", {"id": i}) for i in range(20)]
    rec = await store.get_run(ids[3])
    await store.update_run(attrs.evolve(rec, owner="dead", lease_expires=time.time() - 1))
    undelivered = InboxEvent(id="ev", name="done", key="7", payload='{"id": 7}',
                             received=time.time(), expires=time.time() + 60)  # fmt: skip
    assert await store.add_event(undelivered)
    store.calls.clear()
    assert await eng.recover() == [ids[3]]
    await eng._business.recovery.poll()
    assert store.calls == Counter({"peek_event": 1})  # the re-parked run looks in the inbox
    assert (await eng.run(ids[7])).status == "completed"
    assert (await eng.run(ids[3])).status == "waiting"
    assert (await store.get_run(ids[3])).owner is None
    assert [w.run_id for w in await store.find_waits("done", "3")] == [ids[3]]
    assert len(await store.list_waits()) == 19
    await eng.aclose()


class WaitCountingStore(InMemoryStore):
    """The in-memory store, recording what recovery asks of its waits."""

    def __init__(self) -> None:
        super().__init__()
        self.due_until: list[float] = []
        self.listed = 0

    async def due_waits(self, now: float) -> list[Wait]:
        self.due_until.append(now)
        return await super().due_waits(now)

    async def list_waits(self) -> list[Wait]:
        self.listed += 1
        return await super().list_waits()


async def test_opening_loads_only_the_deadlines_within_the_horizon() -> None:
    """A restart does not read every waiting run's deadline, yet far deadlines still fire."""
    from orchestra.engine._timers import HORIZON
    from orchestra.testing import make_test_engine

    def deploy(store: Store) -> o.Engine:
        async def work(_: Any) -> Any:
            return 1

        return make_test_engine(store=store, functions={"work": work})

    far = o.Process(name="far", trigger=GO, events=(o.Event(name="done", key="payload.id"),),
                    steps=(
        o.ResumeStep(name="wait", event="done", key="ctx.trigger.id", timeout="P3D",
                     on_timeout="fail"),
        o.ProcessStep(name="s", processors=(
            o.Processor(name="work", call=o.FunctionCall(name="work")),
        )),
    ))  # fmt: skip
    store = WaitCountingStore()
    async with deploy(store) as first:
        await first.deploy(far)
        run_id = await first.start("far", {"id": 1})
        began = first.executor.now()
    store.due_until.clear()
    second = deploy(store)
    clock = second.executor.clock  # type: ignore[attr-defined]
    await clock.advance(began - clock.now())  # the same moment, on the new engine's clock
    async with second:
        assert store.listed == 0
        assert store.due_until == [pytest.approx(began + HORIZON)]
        assert second._business.timers._heap == []  # three days away: not loaded
        assert (await second.run(run_id)).status == "waiting"
        await clock.advance(86400 * 3 + 1)
        run = await second.run(run_id)
        assert run.status == "failed"
        assert run.path[-1] == "wait:timed_out"
        assert len(store.due_until) > 1  # the timer task loaded the next stretches
