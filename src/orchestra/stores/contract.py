"""The contract every :class:`~orchestra.stores.Store` must keep, as a reusable test suite.

Subclass :class:`StoreContract` in a pytest module and give it a ``store`` fixture that
yields a fresh, empty store (and an ``anyio_backend`` fixture)::

    class TestSQLiteStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            async with SQLiteStore(tmp_path / "db.sqlite") as s:
                yield s

Importing this module needs pytest.
"""

from __future__ import annotations

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

__all__ = ["StoreContract"]

pytestmark = pytest.mark.anyio


def _run(run_id: str = "r1", **kw: object) -> RunRecord:
    fields: dict[str, object] = {
        "id": run_id, "process": "p", "version": 1, "status": "running",
        "context": '{"trigger": 1}', "created": 1.0, "updated": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return RunRecord(**fields)  # type: ignore[arg-type]


def _event(event_id: str, key: str | None = '"k"', **kw: object) -> InboxEvent:
    fields: dict[str, object] = {
        "id": event_id, "name": "e", "key": key, "payload": '{"n": 1}',
        "received": 10.0, "expires": 100.0,
    }  # fmt: skip
    fields.update(kw)
    return InboxEvent(**fields)  # type: ignore[arg-type]


class StoreContract:
    """Tests of the :class:`Store` contract; subclasses provide the ``store`` fixture."""

    @pytest.mark.anyio
    async def test_versions_number_and_dedupe(self, store: Store) -> None:
        """Versions count up per name; the same definition again is a no-op."""
        v1 = await store.put_version("p", "d1", '{"a": 1}', now=1.0)
        assert (v1.name, v1.seq, v1.digest, v1.definition, v1.deployed) == (
            "p",
            1,
            "d1",
            '{"a": 1}',
            True,
        )
        assert await store.put_version("p", "d1", '{"a": 1}', now=2.0) == v1
        v2 = await store.put_version("p", "d2", '{"a": 2}', now=3.0)
        assert v2.seq == 2
        q1 = await store.put_version("q", "d1", '{"a": 1}', now=3.0)
        assert q1.seq == 1
        assert await store.get_version("p") == v2
        assert await store.get_version("p", 1) == v1
        assert await store.get_version("p", 3) is None
        assert await store.get_version("nope") is None
        assert [v.seq for v in await store.list_versions("p")] == [1, 2]
        assert [(v.name, v.seq) for v in await store.list_versions()] == [
            ("p", 1),
            ("p", 2),
            ("q", 1),
        ]

    @pytest.mark.anyio
    async def test_undeploy_and_redeploy(self, store: Store) -> None:
        """Undeploying flags every version; putting the same definition again redeploys."""
        assert await store.set_deployed("p", False) is False
        await store.put_version("p", "d1", "{}", now=1.0)
        assert await store.set_deployed("p", False) is True
        assert all(not v.deployed for v in await store.list_versions("p"))
        again = await store.put_version("p", "d1", "{}", now=2.0)
        assert again.seq == 1
        assert again.deployed
        v = await store.get_version("p")
        assert v is not None
        assert v.deployed

    @pytest.mark.anyio
    async def test_runs(self, store: Store) -> None:
        """Runs are created once, read back, replaced and listed with filters."""
        await store.create_run(_run("r1"))
        await store.create_run(_run("r2", process="q", status="waiting", created=2.0))
        with pytest.raises(ConflictError):
            await store.create_run(_run("r1"))
        with pytest.raises(RunNotFoundError):
            await store.get_run("nope")
        with pytest.raises(RunNotFoundError):
            await store.update_run(_run("nope"))
        changed = _run(
            "r1", status="failed", error="boom", position=2, context='{"x": [1]}', updated=5.0
        )
        await store.update_run(changed)
        assert await store.get_run("r1") == changed
        assert [r.id for r in await store.list_runs()] == ["r1", "r2"]
        assert [r.id for r in await store.list_runs(process="q")] == ["r2"]
        assert [r.id for r in await store.list_runs(status="failed")] == ["r1"]
        assert await store.list_runs(process="p", status="waiting") == []

    @pytest.mark.anyio
    async def test_update_run_is_fenced_by_its_owner(self, store: Store) -> None:
        """``update_run(run, owner=w)`` writes only while ``w`` holds the run."""
        await store.create_run(_run("r1"))
        with pytest.raises(OwnershipError):  # nobody holds it
            await store.update_run(_run("r1", position=1), owner="w1")
        assert await store.claim_run("r1", "w1", until=10.0, now=1.0)
        mine = _run("r1", position=1, owner="w1", lease_expires=10.0)
        await store.update_run(mine, owner="w1")
        assert await store.get_run("r1") == mine
        # w1 stalls past its lease; w2 takes the run over: w1's writes are refused.
        assert await store.claim_run("r1", "w2", until=30.0, now=11.0)
        with pytest.raises(OwnershipError) as info:
            await store.update_run(_run("r1", position=2, owner="w1"), owner="w1")
        assert isinstance(info.value, ConflictError)
        got = await store.get_run("r1")
        assert (got.position, got.owner) == (1, "w2")
        # Giving the lease back is a fenced write too; afterwards nobody's owner fence holds.
        await store.update_run(_run("r1", position=2), owner="w2")
        with pytest.raises(OwnershipError):
            await store.update_run(_run("r1", position=3), owner="w2")
        with pytest.raises(RunNotFoundError):
            await store.update_run(_run("nope"), owner="w1")
        # Without an owner the write is unconditional.
        await store.update_run(_run("r1", position=4, owner="w9"))
        assert (await store.get_run("r1")).position == 4

    @pytest.mark.anyio
    async def test_leases(self, store: Store) -> None:
        """A lease is exclusive until it expires; its holder may renew it."""
        await store.create_run(_run("r1"))
        assert await store.claim_run("r1", "w1", until=10.0, now=1.0)
        assert not await store.claim_run("r1", "w2", until=10.0, now=5.0)
        assert await store.claim_run("r1", "w1", until=20.0, now=5.0)
        assert not await store.claim_run("r1", "w2", until=30.0, now=19.0)
        assert await store.claim_run("r1", "w2", until=30.0, now=20.0)
        run = await store.get_run("r1")
        assert (run.owner, run.lease_expires) == ("w2", 30.0)
        with pytest.raises(RunNotFoundError):
            await store.claim_run("nope", "w1", until=1.0, now=0.0)

    @pytest.mark.anyio
    async def test_checkpoints(self, store: Store) -> None:
        """Checkpoints come back per step in write order, replaced per processor, deletable."""
        for proc, out in (("a", "1"), ("b", "2"), ("a", "3")):
            await store.put_checkpoint(
                CheckpointRecord(run_id="r1", step="s", processor=proc, output=out, trace="{}")
            )
        await store.put_checkpoint(
            CheckpointRecord(run_id="r1", step="t", processor="c", output="4", trace="{}")
        )
        await store.put_checkpoint(
            CheckpointRecord(run_id="r2", step="s", processor="a", output="5", trace="{}")
        )
        got = await store.checkpoints("r1", "s")
        assert sorted((c.processor, c.output) for c in got) == [("a", "3"), ("b", "2")]
        await store.delete_checkpoints("r1", "s")
        assert await store.checkpoints("r1", "s") == []
        assert len(await store.checkpoints("r1", "t")) == 1
        await store.delete_checkpoints("r1")
        assert await store.checkpoints("r1", "t") == []
        assert len(await store.checkpoints("r2", "s")) == 1

    @pytest.mark.anyio
    async def test_waits(self, store: Store) -> None:
        """Waits are found by (event, key) and by deadline; deleting one claims it once."""
        await store.put_wait(Wait(run_id="r1", step="w", event="e", key='"a"', deadline=50.0))
        await store.put_wait(Wait(run_id="r2", step="w", event="e", key='"a"', deadline=20.0))
        await store.put_wait(Wait(run_id="r3", step="w", event="e", key='"b"'))
        await store.put_wait(Wait(run_id="r4", step="w", event="f", key='"a"', deadline=10.0))
        assert sorted(w.run_id for w in await store.find_waits("e", '"a"')) == ["r1", "r2"]
        assert await store.find_waits("e", '"c"') == []
        assert [w.run_id for w in await store.due_waits(20.0)] == ["r4", "r2"]
        assert len(await store.list_waits()) == 4
        # Replacing a run's wait moves it.
        await store.put_wait(Wait(run_id="r1", step="w2", event="e", key='"b"'))
        assert [w.run_id for w in await store.find_waits("e", '"a"')] == ["r2"]
        assert sorted(w.run_id for w in await store.find_waits("e", '"b"')) == ["r1", "r3"]
        results = []

        async def claim() -> None:
            results.append(await store.delete_wait("r2"))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(claim)
        assert [w.run_id for w in results if w is not None] == ["r2"]
        assert await store.find_waits("e", '"a"') == []
        assert await store.delete_wait("nope") is None

    @pytest.mark.anyio
    async def test_orphaned_runs(self, store: Store) -> None:
        """Unowned running runs, the caller's own and expired leases; never parked runs."""
        runs = [
            _run("run-free", created=1.0),
            _run("run-live", owner="w2", lease_expires=60.0, created=2.0),
            _run("run-expired", owner="w2", lease_expires=50.0, created=3.0),
            _run("run-mine", owner="me", lease_expires=90.0, created=4.0),
            _run("run-no-expiry", owner="w2", created=5.0),
            _run("parked", status="waiting", created=0.5),
            _run("wait-live", status="waiting", owner="w2", lease_expires=60.0, created=6.0),
            _run("wait-expired", status="waiting", owner="w2", lease_expires=40.0, created=7.0),
            _run("wait-mine", status="waiting", owner="me", lease_expires=90.0, created=0.7),
            _run("done", status="completed", owner="w2", lease_expires=1.0, created=8.0),
            _run("failed", status="failed", created=9.0),
            _run("same-time", created=1.0),  # ties of created: in creation order
        ]
        for r in runs:
            await store.create_run(r)
        found = await store.orphaned_runs(worker="me", now=50.0)
        assert [r.id for r in found] == [
            "wait-mine", "run-free", "same-time", "run-expired", "run-mine", "wait-expired",
        ]  # fmt: skip
        assert found[0] == runs[8]  # whole records
        # Leases move runs in and out.
        assert await store.claim_run("run-free", "w3", until=70.0, now=50.0)
        assert await store.claim_run("parked", "w3", until=45.0, now=50.0)
        await store.update_run(_run("run-mine", owner=None, created=4.0))  # given back
        assert [r.id for r in await store.orphaned_runs(worker="me", now=50.0)] == [
            "parked", "wait-mine", "same-time", "run-expired", "run-mine", "wait-expired",
        ]  # fmt: skip
        async with store.batch() as b:  # batched writes too
            b.update_run(_run("run-expired", status="completed", created=3.0))
            b.create_run(_run("new", created=0.1))
        assert [r.id for r in await store.orphaned_runs(worker="nobody", now=61.0)] == [
            "new", "parked", "same-time", "run-live", "run-mine", "wait-live", "wait-expired",
        ]  # fmt: skip
        assert await store.purge_runs(before=100.0) == 3  # done, failed, run-expired
        assert await store.orphaned_runs(worker="x", now=0.0) == [
            await store.get_run(i) for i in ("new", "same-time", "run-mine")
        ]

    @pytest.mark.anyio
    async def test_matched_waits(self, store: Store) -> None:
        """Waits paired with the oldest open, unexpired inbox event of their (event, key)."""
        assert await store.matched_waits(now=5.0) == []
        waits = [
            Wait(run_id="a1", step="s", event="e", key='"a"', deadline=99.0),
            Wait(run_id="a2", step="s", event="e", key='"a"'),
            Wait(run_id="b1", step="s", event="e", key='"b"'),
            Wait(run_id="c1", step="s", event="e", key='"c"'),
            Wait(run_id="d1", step="s", event="f", key='"a"'),
            Wait(run_id="g1", step="s", event="g", key='"g"'),
            Wait(run_id="n1", step="s", event="e", key='"n"'),
        ]
        for w in waits:
            await store.put_wait(w)
        assert await store.matched_waits(now=5.0) == []
        events = [
            _event("a-new", key='"a"', received=3.0),
            _event("a-old", key='"a"', received=2.0),
            _event("b-expired", key='"b"', received=1.0, expires=5.0),
            _event("b-consumed", key='"b"', received=1.0, consumed=True),
            _event("c-first", key='"c"', received=1.5),
            _event("c-later", key='"c"', received=1.5),  # same time: the first stored wins
            _event("no-wait", key='"zzz"', received=0.5),
            _event("no-key", key=None, received=0.5),
            _event("g", key='"g"', name="g", received=2.5),
        ]
        for e in events:
            assert await store.add_event(e)
        pairs = await store.matched_waits(now=5.0)
        assert [(w.run_id, e.id) for w, e in pairs] == [
            ("c1", "c-first"), ("a1", "a-old"), ("a2", "a-old"), ("g1", "g"),
        ]  # fmt: skip
        assert pairs[1] == (waits[0], events[1])  # whole records
        await store.consume_event("a-old")
        await store.delete_wait("g1")
        await store.put_wait(Wait(run_id="c1", step="s", event="e", key='"zzz"'))
        assert [(w.run_id, e.id) for w, e in await store.matched_waits(now=5.0)] == [
            ("c1", "no-wait"), ("a1", "a-new"), ("a2", "a-new"),
        ]  # fmt: skip
        assert [(w.run_id, e.id) for w, e in await store.matched_waits(now=1000.0)] == []

    @pytest.mark.anyio
    async def test_inbox(self, store: Store) -> None:
        """Events dedupe by id; the oldest unconsumed unexpired matching one is taken once."""
        assert await store.add_event(_event("e1", received=1.0))
        assert await store.add_event(_event("e2", received=2.0))
        assert await store.add_event(_event("e3", key='"other"'))
        assert not await store.add_event(_event("e1", key='"z"'))
        taken = await store.take_event("e", '"k"', now=5.0)
        assert taken is not None
        assert (taken.id, taken.consumed, taken.payload) == ("e1", True, '{"n": 1}')
        again = await store.take_event("e", '"k"', now=5.0)
        assert again is not None
        assert again.id == "e2"
        assert await store.take_event("e", '"k"', now=5.0) is None
        assert await store.take_event("x", '"other"', now=5.0) is None
        # A consumed event still dedupes.
        assert not await store.add_event(_event("e1"))
        # Expired events are not taken, and purge forgets them.
        assert await store.add_event(_event("e4", key='"late"', expires=10.0))
        assert await store.take_event("e", '"late"', now=10.0) is None
        assert await store.add_event(_event("e5", key=None))
        assert await store.purge_events(100.0) == 5
        assert await store.add_event(_event("e1"))

    @pytest.mark.anyio
    async def test_peek_and_consume(self, store: Store) -> None:
        """``peek_event`` shows the oldest open event and leaves it; ``consume_event`` takes it."""
        assert await store.peek_event("e", '"k"', now=5.0) is None
        assert await store.add_event(_event("e2", received=2.0))
        assert await store.add_event(_event("e1", received=1.0))
        assert await store.add_event(_event("e3", key='"other"'))
        assert await store.add_event(_event("e0", received=0.5, expires=5.0))  # expired at 5
        peeked = await store.peek_event("e", '"k"', now=5.0)
        assert peeked is not None
        assert (peeked.id, peeked.consumed, peeked.payload) == ("e1", False, '{"n": 1}')
        assert await store.peek_event("e", '"k"', now=5.0) == peeked  # still there
        await store.consume_event("e1")
        with pytest.raises(EventTakenError) as info:
            await store.consume_event("e1")
        assert isinstance(info.value, ConflictError)
        with pytest.raises(EventTakenError):
            await store.consume_event("unknown")
        nxt = await store.peek_event("e", '"k"', now=5.0)
        assert nxt is not None
        assert nxt.id == "e2"
        # take_event and consume_event agree: a taken event cannot be consumed again.
        taken = await store.take_event("e", '"k"', now=5.0)
        assert taken is not None
        assert taken.id == "e2"
        with pytest.raises(EventTakenError):
            await store.consume_event("e2")
        assert await store.peek_event("e", '"k"', now=5.0) is None
        assert not await store.add_event(_event("e1"))  # consumed events still dedupe

    @pytest.mark.anyio
    async def test_concurrent_consumers_have_one_winner(self, store: Store) -> None:
        """Of several tasks consuming one event, exactly one succeeds."""
        assert await store.add_event(_event("e1"))
        wins: list[int] = []

        async def consume(i: int) -> None:
            try:
                await store.consume_event("e1")
            except EventTakenError:
                return
            wins.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(consume, i)
        assert len(wins) == 1

    @pytest.mark.anyio
    async def test_consumed_event_is_not_taken(self, store: Store) -> None:
        """An event stored already consumed only serves deduplication."""
        assert await store.add_event(_event("e1", consumed=True))
        assert await store.take_event("e", '"k"', now=1.0) is None
        assert not await store.add_event(_event("e1"))

    @pytest.mark.anyio
    async def test_history(self, store: Store) -> None:
        """History entries are numbered per run and come back in order."""
        first = await store.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
        assert first.seq == 1
        await store.append_history(HistoryEntry(run_id="r2", kind="run_started", at=1.0))
        second = await store.append_history(
            HistoryEntry(run_id="r1", kind="step_failed", at=2.0, step="s", detail='"boom"')
        )
        assert second.seq == 2
        assert await store.history("r1") == [first, second]
        assert await store.history("nope") == []

    @pytest.mark.anyio
    async def test_purge_runs(self, store: Store) -> None:
        """Runs that ended at or before the cutoff go, with their history, checkpoints, waits."""
        statuses = {"done": "completed", "bad": "failed", "off": "cancelled",
                    "live": "running", "park": "waiting", "new": "completed"}  # fmt: skip
        for run_id, status in statuses.items():
            updated = 50.0 if run_id == "new" else 10.0
            await store.create_run(_run(run_id, status=status, updated=updated))
            await store.append_history(HistoryEntry(run_id=run_id, kind="run_started", at=1.0))
            await store.put_checkpoint(
                CheckpointRecord(run_id=run_id, step="s", processor="a", output="1", trace="{}")
            )
            await store.put_wait(Wait(run_id=run_id, step="w", event="e", key='"k"'))
        assert await store.purge_runs(before=9.9) == 0
        assert await store.purge_runs(before=10.0) == 3
        assert sorted(r.id for r in await store.list_runs()) == ["live", "new", "park"]
        for gone in ("done", "bad", "off"):
            with pytest.raises(RunNotFoundError):
                await store.get_run(gone)
            assert await store.history(gone) == []
            assert await store.checkpoints(gone, "s") == []
        assert sorted(w.run_id for w in await store.list_waits()) == ["live", "new", "park"]
        assert len(await store.history("live")) == 1
        assert len(await store.checkpoints("park", "s")) == 1
        assert await store.purge_runs(before=100.0) == 1
        assert sorted(r.id for r in await store.list_runs()) == ["live", "park"]

    @pytest.mark.anyio
    async def test_batch_writes_in_order(self, store: Store) -> None:
        """Every batch operation writes what its store method writes, in order."""
        assert await store.add_event(_event("e1"))
        async with store.batch() as b:
            b.create_run(_run("r1", owner="w1", lease_expires=10.0))
            b.update_run(_run("r1", position=1, owner="w1", lease_expires=20.0), owner="w1")
            b.require_owner("r1", "w1")
            b.put_checkpoint(
                CheckpointRecord(run_id="r1", step="s", processor="a", output="1", trace="{}")
            )
            b.put_checkpoint(
                CheckpointRecord(run_id="r1", step="t", processor="a", output="2", trace="{}")
            )
            b.delete_checkpoints("r1", "t")
            b.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
            b.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
            b.append_history(HistoryEntry(run_id="r1", kind="waiting", at=2.0, step="w"))
            b.consume_event("e1")
        run = await store.get_run("r1")
        assert (run.position, run.owner, run.lease_expires) == (1, "w1", 20.0)
        assert [c.output for c in await store.checkpoints("r1", "s")] == ["1"]
        assert await store.checkpoints("r1", "t") == []
        assert [w.run_id for w in await store.find_waits("e", '"k"')] == ["r1"]
        assert [(h.seq, h.kind) for h in await store.history("r1")] == [
            (1, "run_started"),
            (2, "waiting"),
        ]
        assert await store.peek_event("e", '"k"', now=5.0) is None
        async with store.batch() as b:
            b.delete_wait("r1")
            b.delete_wait("nope")  # deleting no wait is no error
            b.delete_checkpoints("r1")
        assert await store.list_waits() == []
        assert await store.checkpoints("r1", "s") == []
        async with store.batch():
            pass  # an empty batch writes nothing

    @pytest.mark.anyio
    async def test_batch_conditions_raise_their_errors(self, store: Store) -> None:
        """A failed condition fails the batch with its error (here as the batch's first write)."""
        await store.create_run(_run("r1", owner="w1"))
        assert await store.add_event(_event("e1", consumed=True))
        with pytest.raises(ConflictError):
            async with store.batch() as b:
                b.create_run(_run("r1"))
        with pytest.raises(OwnershipError):
            async with store.batch() as b:
                b.update_run(_run("r1", position=9), owner="w2")
        with pytest.raises(OwnershipError):
            async with store.batch() as b:
                b.require_owner("r1", "w2")
        with pytest.raises(RunNotFoundError):
            async with store.batch() as b:
                b.require_owner("nope", "w1")
        with pytest.raises(RunNotFoundError):
            async with store.batch() as b:
                b.update_run(_run("nope"))
        with pytest.raises(EventTakenError):
            async with store.batch() as b:
                b.consume_event("e1")
        with pytest.raises(RuntimeError):
            async with store.batch() as b:
                b.update_run(_run("r1", position=5))
                raise RuntimeError
        assert (await store.get_run("r1")).position == 0

    @pytest.mark.anyio
    async def test_notifications(self, store: Store) -> None:
        """A store that ``supports_notify`` delivers to its own subscribers; others end at once."""
        async with store.subscribe("wake") as sub:
            await store.notify("other", "x")
            await store.notify("wake", "1")
            await store.notify("wake", "2")
            with anyio.fail_after(5):
                if store.supports_notify:
                    assert [await anext(sub), await anext(sub)] == ["1", "2"]
                else:
                    assert [payload async for payload in sub] == []

    @pytest.mark.anyio
    async def test_context_manager(self, store: Store) -> None:
        """A store is an async context manager."""
        assert await store.__aenter__() is store
