"""Checkpoints: a processor's output is stored before what needs it runs; runs go on from them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

import orchestra as o
from orchestra.errors import PersistenceError
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import (
    Batch,
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    InMemoryStore,
    RunRecord,
    SQLiteStore,
    Store,
    Version,
    Wait,
)
from orchestra.testing import MockHTTP

from .conftest import wait_for

pytestmark = pytest.mark.anyio

GO = o.Event(name="go")


def three_step(**kw: Any) -> o.Process:
    """One step: a, then b (needs a), then c (needs b), each a Python function."""
    return o.Process(name="abc", trigger=GO, steps=(
        o.ProcessStep(name="s", processors=(
            o.Processor(name="a", call=o.FunctionCall(name="a")),
            o.Processor(name="b", call=o.FunctionCall(name="b"), needs=("a",), input="out.a"),
            o.Processor(name="c", call=o.FunctionCall(name="c"), needs=("b",), input="out.b"),
        )),
        o.ProcessStep(name="t", processors=(
            o.Processor(name="d", call=o.FunctionCall(name="c"), input="ctx.steps.s.c"),
        )),
    ), **kw)  # fmt: skip


def engine(store: Store, worker: str, functions: dict[str, Any], **kw: Any) -> o.Engine:
    return o.Engine(store=store, sandbox=InProcessSandbox(), functions=functions,
                    worker_id=worker, **kw)  # fmt: skip


class Severable(Store):
    """A store a test can cut off: afterwards every call fails, as for a dead worker."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.severed = False

    def __getattribute__(self, name: str) -> Any:
        own = ("inner", "severed", "sever", "batch", "_commit", "_check", "supports_notify")
        if name in own or name.startswith("__"):
            return object.__getattribute__(self, name)
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            self._check()
            return await attr(*args, **kw)

        return call

    def _check(self) -> None:
        if object.__getattribute__(self, "severed"):
            msg = "the connection is gone"
            raise PersistenceError(msg)

    def batch(self) -> Batch:
        return Batch(self._commit)

    async def _commit(self, ops: list[Any]) -> None:
        self._check()
        async with self.inner.batch() as b:
            b.ops.extend(ops)

    def sever(self) -> None:
        self.severed = True

    # The abstract methods, for the ABC (every call goes through __getattribute__).
    put_version = get_version = list_versions = set_deployed = create_run = get_run = None  # type: ignore[assignment]
    update_run = list_runs = claim_run = put_checkpoint = checkpoints = None  # type: ignore[assignment]
    delete_checkpoints = put_wait = delete_wait = find_waits = due_waits = None  # type: ignore[assignment]
    list_waits = add_event = take_event = purge_events = append_history = history = None  # type: ignore[assignment]
    peek_event = consume_event = purge_runs = None  # type: ignore[assignment]


async def test_an_output_is_stored_before_what_needs_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    seen: list[list[str]] = []
    async with SQLiteStore(db) as store, SQLiteStore(db) as other:

        async def b(value: Any) -> Any:
            # Another connection (another process, say) already sees a's output.
            (run,) = await other.list_runs()
            seen.append([c.processor for c in await other.checkpoints(run.id, "s")])
            return value + 1

        async with engine(store, "w", {"a": lambda _: 1, "b": b, "c": lambda v: v}) as eng:
            await eng.deploy(three_step())
            run = await eng.run(await eng.start("abc", {}))
    assert seen == [["a"]]
    assert run.status == "completed"
    assert run.context["steps"] == {"s": {"a": 1, "b": 2, "c": 2}, "t": {"d": 2}}


async def test_a_run_goes_on_from_its_checkpoints_after_its_worker_died(tmp_path: Path) -> None:
    """Worker A loses its store mid-step; B takes over once A's lease expired and skips a."""
    calls: list[str] = []
    reached, go_on = anyio.Event(), anyio.Event()

    def a(_: Any) -> Any:
        calls.append("a")
        return 1

    async def b(value: Any) -> Any:
        calls.append("b")
        if len(calls) == 2:  # in worker A: hang until the test has cut A off
            reached.set()
            await go_on.wait()
        return value + 1

    def c(value: Any) -> Any:
        calls.append("c")
        return value

    db = tmp_path / "runs.db"
    fns = {"a": a, "b": b, "c": c}
    async with SQLiteStore(db) as sa, SQLiteStore(db) as sb:
        store_a = Severable(sa)
        eng_a = engine(store_a, "worker-a", fns, lease_seconds=0.6)
        await eng_a.deploy(three_step())
        failure: list[BaseException] = []

        async def run_on_a() -> None:
            try:
                await eng_a.start("abc", {})
            except PersistenceError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_on_a)
            await reached.wait()
            store_a.sever()
            severed = time.monotonic()
            go_on.set()
        assert failure, "worker A should have failed to write b's checkpoint"
        (run,) = await sb.list_runs()
        assert (run.status, run.position, run.owner) == ("running", 0, "worker-a")
        assert [c.processor for c in await sb.checkpoints(run.id, "s")] == ["a"]

        async with engine(sb, "worker-b", fns, lease_seconds=0.6) as eng_b:
            info = await wait_for(eng_b, run.id, "completed")
            took = time.monotonic() - severed
        await eng_a.aclose()
    assert calls == ["a", "b", "b", "c", "c"]  # a once; b again (at least once); c, d once
    assert info.context == {"trigger": {}, "events": {},
                            "steps": {"s": {"a": 1, "b": 2, "c": 2}, "t": {"d": 2}}}  # fmt: skip
    kinds = [(h.kind, h.step) for h in info.history]
    assert kinds.count(("step_completed", "s")) == 1
    assert kinds.count(("step_started", "s")) == 2
    assert info.owner is None
    # B waited for A's lease to expire (renewed at most a third of a lease before A was
    # cut off), then took over within a poll; slack for a loaded machine.
    assert 0.3 < took < 0.6 + 3.0


async def test_a_restarted_worker_takes_its_runs_back_at_once(tmp_path: Path) -> None:
    """Same worker id after a restart: no need to wait for the (long) lease to expire."""
    db = tmp_path / "runs.db"
    hang = anyio.Event()

    async def b(value: Any) -> Any:
        if not hang.is_set():
            hang.set()
            await anyio.sleep_forever()
        return value

    fns = {"a": lambda _: 1, "b": b, "c": lambda v: v}
    async with SQLiteStore(db) as sa:
        eng_a = engine(sa, "worker-1", fns, lease_seconds=60)
        await eng_a.deploy(three_step())
        async with anyio.create_task_group() as tg:
            tg.start_soon(eng_a.start, "abc", {})
            await hang.wait()
            tg.cancel_scope.cancel()  # the worker stops (its lease is still in the store)
        await eng_a.aclose()
    async with SQLiteStore(db) as sa:
        (run,) = await sa.list_runs()
        # Put the lease back as a dead worker leaves it (cancelling gave it back).
        await sa.update_run(attrs.evolve(run, owner="worker-1", lease_expires=time.time() + 60))
        started = time.monotonic()
        async with engine(sa, "worker-1", fns, lease_seconds=60) as eng:
            info = await eng.run(run.id)
        assert info.status == "completed"
        assert time.monotonic() - started < 5


async def test_the_idempotency_key_is_stable_per_run_step_processor_and_item() -> None:
    mocks = MockHTTP()
    mocks.add("POST", "http://api/items", json={"ok": True})
    process = o.Process(name="keys", trigger=GO, steps=(
        o.ProcessStep(name="send", processors=(
            o.Processor(name="each", for_each="[10, 20, 30]", input="({n: item})",
                        call=o.HttpCall(url="http://api/items", method="POST", body="input",
                                        idempotency_key="Idempotency-Key")),
        )),
    ))  # fmt: skip
    async with o.Engine(store=InMemoryStore(), sandbox=InProcessSandbox(),
                        client=mocks.client()) as eng:  # fmt: skip
        await eng.deploy(process)
        run_id = await eng.start("keys", {})
    keys = sorted(r.headers["idempotency-key"] for r in mocks.requests)
    assert keys == [f"{run_id}:send:each:{i}" for i in range(3)]


# Silence "imported but unused" for names used only in annotations of the wrapper above.
_ = (CheckpointRecord, HistoryEntry, InboxEvent, RunRecord, Version, Wait, json, httpx)
