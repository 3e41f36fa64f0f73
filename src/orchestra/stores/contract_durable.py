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

from orchestra.errors import ConflictError
from orchestra.stores._base import (
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
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
        """A store's optional ``batch()`` commits every write, or none when one fails."""
        async with await open_store() as store:
            batch = getattr(store, "batch", None)
            if batch is None:
                pytest.skip("this store has no batch()")
            await store.create_run(_run("r1"))
            async with batch() as b:
                b.put_checkpoint(
                    CheckpointRecord(run_id="r1", step="s", processor="a", output="1", trace="{}")
                )
                b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=2.0))
                b.update_run(_run("r1", position=1))
            assert (await store.get_run("r1")).position == 1
            assert [h.seq for h in await store.history("r1")] == [1]
            before = await _dump(store)
            with pytest.raises(LookupError):
                async with batch() as b:
                    b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=3.0))
                    b.delete_checkpoints("r1")
                    b.update_run(_run("missing"))
            with pytest.raises(ConflictError):
                async with batch() as b:
                    b.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
                    b.create_run(_run("r1"))
            with pytest.raises(RuntimeError):
                async with batch() as b:
                    b.update_run(_run("r1", position=5))
                    raise RuntimeError
            assert await _dump(store) == before

    @pytest.mark.anyio
    async def test_notifications_reach_other_workers(self, open_store: Opener) -> None:
        """``notify`` on one store wakes a ``subscribe`` of another, in order, per channel."""
        async with await open_store() as a, await open_store() as b:
            if not hasattr(a, "subscribe"):
                pytest.skip("this store has no subscribe()")
            async with b.subscribe("wake") as sub, a.subscribe("wake") as own:  # type: ignore[attr-defined]
                await a.notify("other", "x")  # type: ignore[attr-defined]
                await a.notify("wake", "1")  # type: ignore[attr-defined]
                await a.notify("wake", "2")  # type: ignore[attr-defined]
                with anyio.fail_after(5):
                    assert [await anext(sub), await anext(sub)] == ["1", "2"]
                    assert [await anext(own), await anext(own)] == ["1", "2"]
