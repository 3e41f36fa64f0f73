"""What a *durable* store must keep beyond :class:`~orchestra.stores.contract.StoreContract`.

Subclass :class:`DurableStoreContract` next to ``StoreContract`` and give it an
``open_store`` fixture: a callable that opens one more store on the *same* database
(another connection, as another worker or a restarted process would have), each of
which the test closes::

    class TestSQLiteDurable(DurableStoreContract):
        @pytest.fixture
        def open_store(self, tmp_path):
            return lambda: SQLiteStore.open(tmp_path / "db.sqlite")

Importing this module needs pytest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from orchestra.errors import ConflictError, RunNotFoundError
from orchestra.stores._base import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    RunRecord,
    Store,
    Wait,
)

__all__ = ["DurableStoreContract", "Opener"]

Opener = Callable[[], Awaitable[Store]]
"""Opens another store on the database under test."""


def _run(run_id: str, **kw: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "id": run_id, "process": "p", "version": 1, "status": "running",
        "context": '{"trigger": {"n": 1}}', "created": 1.0, "updated": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return RunRecord(**fields)


async def _fill(store: Store) -> None:
    await store.put_version("p", "d1", '{"name": "p"}', now=1.0)
    await store.put_version("p", "d2", '{"name": "p", "v": 2}', now=2.0)
    await store.set_deployed("p", False)
    await store.create_run(_run("r1", owner="w1", lease_expires=9.5, error="e"))
    await store.create_run(_run("r2", status="waiting", created=2.0, context='{"ü": "✓"}'))
    await store.put_checkpoint(
        CheckpointRecord(run_id="r1", step="s", processor="a", output="[1]", trace="{}")
    )
    await store.put_checkpoint(
        CheckpointRecord(run_id="r1", step="s", processor="b", output="null", trace='{"t": 1}')
    )
    await store.put_wait(Wait(run_id="r2", step="w", event="e", key='"k"', deadline=50.5))
    await store.add_event(
        InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
    )
    await store.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
    await store.append_history(
        HistoryEntry(run_id="r1", kind="step_failed", at=2.0, step="s", detail='"boom"')
    )


async def _dump(store: Store) -> dict[str, Any]:
    return {
        "versions": await store.list_versions(),
        "runs": await store.list_runs(),
        "checkpoints": await store.checkpoints("r1", "s"),
        "waits": await store.list_waits(),
        "history": await store.history("r1"),
    }


class DurableStoreContract:
    """Durability and multi-worker tests; subclasses provide the ``open_store`` fixture."""

    @pytest.mark.anyio
    async def test_reopening_keeps_everything(self, open_store: Opener) -> None:
        """Everything written is there, equal, after the store is closed and opened again."""
        async with await open_store() as first:
            await _fill(first)
            before = await _dump(first)
        async with await open_store() as second:
            assert await _dump(second) == before
            # The inbox survives too: the event is still there, and still deduplicates.
            assert not await second.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
            )
            taken = await second.take_event("e", '"k"', now=5.0)
            assert taken is not None
            assert taken.id == "e1"
            # Numbering continues where it was.
            v = await second.put_version("p", "d3", "{}", now=3.0)
            assert v.seq == 3
            h = await second.append_history(HistoryEntry(run_id="r1", kind="goto", at=3.0))
            assert h.seq == 3

    @pytest.mark.anyio
    async def test_two_workers_see_each_others_writes(self, open_store: Opener) -> None:
        """A run written through one store is read, claimed and resumed through another."""
        async with await open_store() as a, await open_store() as b:
            await a.create_run(_run("r1"))
            await a.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
            assert (await b.get_run("r1")).status == "running"
            assert [w.run_id for w in await b.find_waits("e", '"k"')] == ["r1"]
            assert await b.claim_run("r1", "wb", until=10.0, now=1.0)
            assert not await a.claim_run("r1", "wa", until=10.0, now=2.0)
            wait = await b.delete_wait("r1")
            assert wait is not None
            assert await a.delete_wait("r1") is None

    @pytest.mark.anyio
    async def test_concurrent_claims_have_one_winner(self, open_store: Opener) -> None:
        """Workers racing for leases, waits and events through separate stores: one wins each."""
        n = 20
        stores = [await open_store() for _ in range(3)]
        try:
            setup = stores[0]
            for i in range(n):
                await setup.create_run(_run(f"r{i}"))
                await setup.put_wait(Wait(run_id=f"r{i}", step="w", event="e", key=f'"{i}"'))
                await setup.add_event(InboxEvent(
                    id=f"e{i}", name="e", key='"shared"', payload=str(i),
                    received=float(i), expires=1e9,
                ))  # fmt: skip
            leases: dict[str, list[str]] = {}
            waits: list[str] = []
            events: list[str] = []

            async def worker(k: int, store: Store) -> None:
                for i in range(n):
                    if await store.claim_run(f"r{i}", f"w{k}", until=100.0, now=1.0):
                        leases.setdefault(f"r{i}", []).append(f"w{k}")
                    if await store.delete_wait(f"r{i}") is not None:
                        waits.append(f"r{i}")
                    taken = await store.take_event("e", '"shared"', now=1.0)
                    if taken is not None:
                        events.append(taken.id)

            async with anyio.create_task_group() as tg:
                for k in range(6):
                    tg.start_soon(worker, k, stores[k % len(stores)])
            assert sorted(leases) == sorted(f"r{i}" for i in range(n))
            assert all(len(owners) == 1 for owners in leases.values())
            for i in range(n):
                assert (await setup.get_run(f"r{i}")).owner == leases[f"r{i}"][0]
            assert sorted(waits) == sorted(f"r{i}" for i in range(n))
            assert sorted(events) == sorted(f"e{i}" for i in range(n))
        finally:
            for s in stores:
                await s.aclose()

    @pytest.mark.anyio
    async def test_concurrent_appends_and_deploys(self, open_store: Opener) -> None:
        """History appended and versions deployed through two stores at once stay numbered."""
        async with await open_store() as a, await open_store() as b:

            async def append(store: Store, who: str) -> None:
                for i in range(15):
                    await store.append_history(
                        HistoryEntry(run_id="r1", kind="step_completed", at=float(i), step=who)
                    )

            async def deploy(store: Store, who: str) -> None:
                for i in range(5):
                    await store.put_version("p", f"{who}{i}", "{}", now=float(i))

            async with anyio.create_task_group() as tg:
                for store, who in ((a, "a"), (b, "b")):
                    tg.start_soon(append, store, who)
                    tg.start_soon(deploy, store, who)
            history = await a.history("r1")
            assert [h.seq for h in history] == list(range(1, 31))
            assert sorted(h.step or "" for h in history) == ["a"] * 15 + ["b"] * 15
            assert [v.seq for v in await b.list_versions("p")] == list(range(1, 11))

    @pytest.mark.anyio
    async def test_batch_is_all_or_nothing(self, open_store: Opener) -> None:
        """``batch()`` commits every write, or none when a write or a condition fails.

        The engine's exactly-once guarantees rest on this: :meth:`Store.batch`'s default
        (writes applied one by one) fails it.
        """
        async with await open_store() as store:
            await store.create_run(_run("r1", owner="w1"))
            await store.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
            )
            async with store.batch() as b:
                b.put_checkpoint(
                    CheckpointRecord(run_id="r1", step="s", processor="a", output="1", trace="{}")
                )
                b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=2.0))
                b.update_run(_run("r1", position=1, owner="w1"), owner="w1")
            assert (await store.get_run("r1")).position == 1
            assert [h.seq for h in await store.history("r1")] == [1]
            await store.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
            before = await _dump(store)
            failing: list[tuple[type[BaseException], Any]] = [
                (RunNotFoundError, lambda b: b.update_run(_run("missing"))),
                (ConflictError, lambda b: b.create_run(_run("r1"))),
                (OwnershipError, lambda b: b.update_run(_run("r1", position=7), owner="w2")),
                (OwnershipError, lambda b: b.require_owner("r1", "w2")),
                (EventTakenError, lambda b: b.consume_event("no-such-event")),
            ]
            for error, last in failing:
                with pytest.raises(error):
                    async with store.batch() as b:
                        b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=3.0))
                        b.delete_checkpoints("r1")
                        b.delete_wait("r1")
                        b.consume_event("e1")
                        b.update_run(_run("r1", position=5, owner="w1"), owner="w1")
                        last(b)
                assert await _dump(store) == before, error
            with pytest.raises(RuntimeError):
                async with store.batch() as b:
                    b.update_run(_run("r1", position=5))
                    raise RuntimeError
            assert await _dump(store) == before
            # The event those batches would have consumed is still there to consume.
            peeked = await store.peek_event("e", '"k"', now=5.0)
            assert peeked is not None
            assert peeked.id == "e1"

    @pytest.mark.anyio
    async def test_concurrent_batches_fail_alone(self, open_store: Opener) -> None:
        """Batches committed at once (a store may group them in one transaction) fail alone.

        Each failing batch raises its own error and writes nothing, even when its failing
        condition comes after its writes; every other batch commits whole, and history
        numbers stay without gaps.
        """
        n = 12
        async with await open_store() as store:
            for i in range(n):
                await store.create_run(_run(f"r{i}", owner="w1"))
            await store.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
            )
            await store.add_event(
                InboxEvent(id="e2", name="e", key='"k"', payload="{}", received=2.0, expires=99.0)
            )
            await store.consume_event("e2")

            def step(b: Any, run_id: str) -> None:
                b.require_owner(run_id, "w1")
                b.append_history(HistoryEntry(run_id=run_id, kind="step_completed", at=2.0))
                b.put_checkpoint(
                    CheckpointRecord(run_id=run_id, step="s", processor="a", output="1",
                                     trace="{}")
                )  # fmt: skip
                b.update_run(_run(run_id, position=1, owner="w1"), owner="w1")

            def then(last: Callable[[Any], None]) -> Callable[[Any, str], None]:
                def make(b: Any, run_id: str) -> None:
                    step(b, run_id)
                    last(b)

                return make

            failing: dict[str, tuple[type[BaseException], Callable[[Any, str], None]]] = {
                "r1": (OwnershipError, lambda b, r: b.update_run(_run(r), owner="w2")),
                "r3": (EventTakenError, then(lambda b: b.consume_event("e2"))),
                "r5": (ConflictError, then(lambda b: b.create_run(_run("r0")))),
                "r7": (RunNotFoundError, then(lambda b: b.require_owner("missing", "w1"))),
                "r9": (OwnershipError, then(lambda b: b.require_owner("r0", "w2"))),
            }
            outcomes: dict[str, type[BaseException] | None] = {}

            async def commit(run_id: str) -> None:
                make = failing[run_id][1] if run_id in failing else step
                if run_id == "r4":
                    make = then(lambda b: b.consume_event("e1"))
                try:
                    async with store.batch() as b:
                        make(b, run_id)
                except Exception as exc:
                    outcomes[run_id] = type(exc)
                else:
                    outcomes[run_id] = None

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(commit, f"r{i}")
            for i in range(n):
                run_id = f"r{i}"
                expected = failing[run_id][0] if run_id in failing else None
                got = outcomes[run_id]
                assert got is expected or (expected and got and issubclass(got, expected)), run_id
                written = expected is None
                assert (await store.get_run(run_id)).position == int(written), run_id
                assert len(await store.history(run_id)) == int(written), run_id
                assert len(await store.checkpoints(run_id, "s")) == int(written), run_id
            assert await store.peek_event("e", '"k"', now=5.0) is None  # r4 consumed e1

            async def append(run_id: str) -> None:
                async with store.batch() as b:
                    b.append_history(HistoryEntry(run_id=run_id, kind="goto", at=3.0))

            async with anyio.create_task_group() as tg:  # numbering goes on without gaps
                for i in range(n):
                    tg.start_soon(append, f"r{i}")
            for i in range(n):
                seqs = [h.seq for h in await store.history(f"r{i}")]
                assert seqs == ([1] if f"r{i}" in failing else [1, 2]), f"r{i}"

    @pytest.mark.anyio
    async def test_a_stalled_worker_is_fenced_out(self, open_store: Opener) -> None:
        """Worker A's lease expires and B takes the run: A's conditional writes all fail."""
        async with await open_store() as a, await open_store() as b:
            await a.create_run(_run("r1"))
            assert await a.claim_run("r1", "wa", until=10.0, now=1.0)
            assert await b.claim_run("r1", "wb", until=30.0, now=11.0)
            stale = _run("r1", position=3, owner="wa", lease_expires=20.0)
            with pytest.raises(OwnershipError):
                await a.update_run(stale, owner="wa")
            with pytest.raises(OwnershipError):
                async with a.batch() as batch:
                    batch.require_owner("r1", "wa")
                    batch.put_checkpoint(
                        CheckpointRecord(run_id="r1", step="s", processor="p", output="0",
                                         trace="{}")
                    )  # fmt: skip
            with pytest.raises(OwnershipError):
                async with a.batch() as batch:
                    batch.update_run(stale, owner="wa")
                    batch.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=2.0))
            run = await b.get_run("r1")
            assert (run.position, run.owner) == (0, "wb")
            assert await b.checkpoints("r1", "s") == []
            assert await b.history("r1") == []

    @pytest.mark.anyio
    async def test_runs_racing_for_an_event_consume_it_once(self, open_store: Opener) -> None:
        """Runs on three stores peek the same inbox event and try to record it: one succeeds."""
        n = 6
        stores = [await open_store() for _ in range(3)]
        try:
            setup = stores[0]
            for i in range(n):
                await setup.create_run(_run(f"r{i}", owner=f"w{i}"))
            await setup.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
            )
            winners: list[str] = []
            # Every run finds the event first (as runs reaching their resume step at once)...
            peeked = [await stores[i % 3].peek_event("e", '"k"', now=2.0) for i in range(n)]
            assert [e.id if e else None for e in peeked] == ["e1"] * n

            async def run(i: int, store: Store) -> None:
                event = peeked[i]
                assert event is not None
                try:  # ... then all try to record it
                    async with store.batch() as b:
                        b.update_run(_run(f"r{i}", position=1, owner=f"w{i}"), owner=f"w{i}")
                        b.append_history(
                            HistoryEntry(run_id=f"r{i}", kind="event_consumed", at=2.0)
                        )
                        b.consume_event(event.id)
                except EventTakenError:
                    return
                winners.append(f"r{i}")

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(run, i, stores[i % len(stores)])
            assert len(winners) == 1
            for i in range(n):
                moved = (await setup.get_run(f"r{i}")).position == 1
                recorded = len(await setup.history(f"r{i}")) == 1
                assert moved == recorded == (f"r{i}" in winners)
            assert await setup.peek_event("e", '"k"', now=2.0) is None
        finally:
            for s in stores:
                await s.aclose()

    @pytest.mark.anyio
    async def test_purge_runs_reaches_every_worker(self, open_store: Opener) -> None:
        """Runs purged through one store are gone for another, and stay gone after reopening."""
        async with await open_store() as a, await open_store() as b:
            await a.create_run(_run("r1", status="completed", updated=5.0))
            await a.create_run(_run("r2", status="running", updated=5.0))
            await a.append_history(HistoryEntry(run_id="r1", kind="run_completed", at=5.0))
            assert await b.purge_runs(before=6.0) == 1
            assert [r.id for r in await a.list_runs()] == ["r2"]
            assert await a.history("r1") == []
        async with await open_store() as c:
            assert [r.id for r in await c.list_runs()] == ["r2"]

    @pytest.mark.anyio
    async def test_notifications_reach_other_workers(self, open_store: Opener) -> None:
        """``notify`` on one store wakes a ``subscribe`` of another, in order, per channel.

        A store without notifications (``supports_notify`` false) is fine too (workers
        then find each other's work by polling): its subscriptions must end at once.
        """
        async with (
            await open_store() as a,
            await open_store() as b,
            b.subscribe("wake") as sub,
            a.subscribe("wake") as own,
        ):
            await a.notify("other", "x")
            await a.notify("wake", "1")
            await a.notify("wake", "2")
            with anyio.fail_after(5):
                if not a.supports_notify:
                    assert [p async for p in sub] == [p async for p in own] == []
                    return
                assert [await anext(sub), await anext(sub)] == ["1", "2"]
                assert [await anext(own), await anext(own)] == ["1", "2"]
