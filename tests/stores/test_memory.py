from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from orchestra.errors import RunNotFoundError
from orchestra.stores import (
    Batch,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    InMemoryStore,
    OwnershipError,
    RunRecord,
    Store,
    Wait,
)
from orchestra.stores.contract import StoreContract

pytestmark = pytest.mark.anyio


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with InMemoryStore() as s:
            yield s


class DefaultsStore(InMemoryStore):
    """The in-memory store with the base class's defaults: batches one by one, no notify."""

    batch = Store.batch
    supports_notify = Store.supports_notify
    notify = Store.notify
    subscribe = Store.subscribe  # type: ignore[assignment]
    orphaned_runs = Store.orphaned_runs
    matched_waits = Store.matched_waits


class TestStoreDefaults(StoreContract):
    """A store that keeps ``Store``'s defaults still keeps the (non-durable) contract."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with DefaultsStore() as s:
            yield s


def _run(run_id: str = "r1", **kw: object) -> RunRecord:
    fields: dict[str, object] = {
        "id": run_id, "process": "p", "version": 1, "status": "running", "context": "{}",
    }  # fmt: skip
    fields.update(kw)
    return RunRecord(**fields)  # type: ignore[arg-type]


async def test_a_batch_is_all_or_nothing() -> None:
    """A failed condition anywhere in a batch leaves everything as it was."""
    store = InMemoryStore()
    await store.create_run(_run("r1", owner="w1"))
    await store.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
    await store.add_event(
        InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=99.0)
    )
    cases: list[tuple[type[Exception], Callable[[Batch], None]]] = [
        (OwnershipError, lambda b: b.update_run(_run("r1", position=3), owner="w2")),
        (OwnershipError, lambda b: b.require_owner("r1", "nobody")),
        (EventTakenError, lambda b: b.consume_event("e1")),  # the batch consumed it already
        (RunNotFoundError, lambda b: b.update_run(_run("r9"))),
    ]
    for error, last in cases:
        with pytest.raises(error):
            async with store.batch() as b:
                b.update_run(_run("r1", position=1, owner="w1"), owner="w1")
                b.append_history(HistoryEntry(run_id="r1", kind="event_consumed", at=1.0))
                b.delete_wait("r1")
                b.consume_event("e1")
                last(b)
        assert (await store.get_run("r1")).position == 0
        assert await store.history("r1") == []
        assert len(await store.list_waits()) == 1
        assert await store.peek_event("e", '"k"', now=2.0) is not None
    # A run the batch creates can be updated (fenced) later in the same batch.
    async with store.batch() as b:
        b.create_run(_run("r2", owner="w1"))
        b.update_run(_run("r2", position=2, owner="w1"), owner="w1")
    assert (await store.get_run("r2")).position == 2


async def test_the_default_batch_applies_writes_one_by_one() -> None:
    """``Store.batch``'s default writes through the store's methods; it is not atomic."""

    store = DefaultsStore()
    await store.create_run(_run("r1", owner="w1"))
    with pytest.raises(OwnershipError):
        async with store.batch() as b:
            b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=1.0))
            b.require_owner("r1", "w2")
    assert len(await store.history("r1")) == 1  # written before the failing condition
    async with store.batch() as b:
        b.update_run(_run("r1", position=4, owner="w1"), owner="w1")
        b.delete_wait("r1")
    assert (await store.get_run("r1")).position == 4


async def test_a_store_without_notifications_ends_subscriptions_at_once() -> None:
    """The default ``notify`` reaches no one and ``subscribe`` yields nothing."""

    store = DefaultsStore()
    assert not store.supports_notify
    async with store.subscribe("c") as sub:
        await store.notify("c", "x")
        assert [p async for p in sub] == []


async def test_closing_the_store_ends_its_subscriptions() -> None:
    store = InMemoryStore()
    got: list[str] = []

    async def listen() -> None:
        async with store.subscribe("c") as sub:
            got.extend([p async for p in sub])

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await anyio.sleep(0.01)
        await store.notify("c", "1")
        await store.aclose()
    assert got == ["1"]
