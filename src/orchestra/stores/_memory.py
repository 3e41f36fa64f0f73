"""The in-memory store: dictionaries, for tests and for hosts that need no durability."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping

import anyio
import attrs

from orchestra.errors import ConflictError, RunNotFoundError
from orchestra.stores._base import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    RunRecord,
    RunStatus,
    Store,
    Subscription,
    Version,
    Wait,
    _orphaned,
)
from orchestra.stores._batch import Batch, Op

__all__ = ["InMemoryStore", "MemorySubscription"]

_ENDED: tuple[RunStatus, ...] = ("completed", "failed", "cancelled")


class InMemoryStore(Store):
    """A :class:`Store` in dictionaries: fast, indexed, and gone when the process exits.

    Every method runs without suspending, so each is atomic with respect to other tasks;
    a :meth:`batch` checks all its conditions before it changes anything (all or nothing).
    :meth:`notify` reaches the subscribers of this store, in this process.
    """

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._leased: set[str] = set()
        """Runs ``running`` or with an owner: where :meth:`orphaned_runs` looks."""
        self._ord: dict[str, int] = {}
        """Each run's creation number (ties of ``created`` in :meth:`orphaned_runs`)."""
        self._created = itertools.count()
        self._checkpoints: dict[tuple[str, str], dict[str, CheckpointRecord]] = {}
        self._waits: dict[str, Wait] = {}
        self._wait_index: dict[tuple[str, str], dict[str, Wait]] = {}
        self._events: dict[str, InboxEvent] = {}
        self._event_index: dict[tuple[str, str], list[str]] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._subscriptions: set[MemorySubscription] = set()

    # -- versions ---------------------------------------------------------------------

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version unless the latest has the same digest."""
        versions = self._versions.setdefault(name, [])
        if versions and versions[-1].digest == digest:
            if not versions[-1].deployed:
                self._versions[name] = [attrs.evolve(v, deployed=True) for v in versions]
            return self._versions[name][-1]
        versions[:] = [attrs.evolve(v, deployed=True) for v in versions]
        version = Version(
            name=name, seq=len(versions) + 1, digest=digest, definition=definition, created=now
        )
        versions.append(version)
        return version

    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        """Return one version, or the latest."""
        versions = self._versions.get(name)
        if not versions:
            return None
        if seq is None:
            return versions[-1]
        return versions[seq - 1] if 1 <= seq <= len(versions) else None

    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return versions by name, then seq."""
        names = sorted(self._versions) if name is None else [name]
        return [v for n in names for v in self._versions.get(n, [])]

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Flag every version of ``name``."""
        versions = self._versions.get(name)
        if not versions:
            return False
        self._versions[name] = [attrs.evolve(v, deployed=deployed) for v in versions]
        return True

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run."""
        self._check_create(run.id, self._runs)
        self._ord[run.id] = next(self._created)
        self._put_run(run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a run."""
        try:
            return self._runs[run_id]
        except KeyError:
            msg = f"no run {run_id!r}"
            raise RunNotFoundError(msg) from None

    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace a run (only while ``owner`` holds it, if given)."""
        self._check_owner(run.id, owner, self._runs)
        self._put_run(run)

    def _put_run(self, run: RunRecord) -> None:
        self._runs[run.id] = run
        if run.status == "running" or run.owner is not None:
            self._leased.add(run.id)
        else:
            self._leased.discard(run.id)

    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """Return runs, oldest first."""
        return [
            r
            for r in self._runs.values()
            if (process is None or r.process == process) and (status is None or r.status == status)
        ]

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take the run's lease if it is free, ours or expired."""
        run = await self.get_run(run_id)
        free = run.owner is None or run.owner == owner
        if not free and (run.lease_expires is None or run.lease_expires > now):
            return False
        self._put_run(attrs.evolve(run, owner=owner, lease_expires=until))
        return True

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker (from an index of leased runs)."""
        found = [r for i in self._leased if _orphaned(r := self._runs[i], worker, now)]
        return sorted(found, key=lambda r: (r.created, self._ord[r.id]))

    @staticmethod
    def _check_create(run_id: str, runs: Mapping[str, RunRecord]) -> None:
        if run_id in runs:
            msg = f"run {run_id!r} already exists"
            raise ConflictError(msg)

    @staticmethod
    def _check_owner(run_id: str, owner: str | None, runs: Mapping[str, RunRecord]) -> None:
        stored = runs.get(run_id)
        if stored is None:
            msg = f"no run {run_id!r}"
            raise RunNotFoundError(msg)
        if owner is not None and stored.owner != owner:
            msg = f"run {run_id!r} is held by {stored.owner!r}, not {owner!r}"
            raise OwnershipError(msg)

    # -- checkpoints ------------------------------------------------------------------

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        key = (checkpoint.run_id, checkpoint.step)
        step = self._checkpoints.setdefault(key, {})
        step.pop(checkpoint.processor, None)
        step[checkpoint.processor] = checkpoint

    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        """Return a step's checkpoints in write order."""
        return list(self._checkpoints.get((run_id, step), {}).values())

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete a run's checkpoints."""
        if step is not None:
            self._checkpoints.pop((run_id, step), None)
            return
        for key in [k for k in self._checkpoints if k[0] == run_id]:
            del self._checkpoints[key]

    # -- waits ------------------------------------------------------------------------

    async def put_wait(self, wait: Wait) -> None:
        """Record a wait, replacing the run's previous one."""
        await self.delete_wait(wait.run_id)
        self._waits[wait.run_id] = wait
        self._wait_index.setdefault((wait.event, wait.key), {})[wait.run_id] = wait

    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove and return a run's wait."""
        wait = self._waits.pop(run_id, None)
        if wait is not None:
            bucket = self._wait_index[(wait.event, wait.key)]
            del bucket[run_id]
            if not bucket:
                del self._wait_index[(wait.event, wait.key)]
        return wait

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``(event, key)``."""
        return list(self._wait_index.get((event, key), {}).values())

    async def due_waits(self, now: float) -> list[Wait]:
        """Return due waits, earliest first."""
        due = [w for w in self._waits.values() if w.deadline is not None and w.deadline <= now]
        return sorted(due, key=lambda w: w.deadline or 0.0)

    async def list_waits(self) -> list[Wait]:
        """Return every wait."""
        return list(self._waits.values())

    # -- inbox ------------------------------------------------------------------------

    async def add_event(self, event: InboxEvent) -> bool:
        """Keep an event unless its id is known."""
        if event.id in self._events:
            return False
        self._events[event.id] = event
        if event.key is not None and not event.consumed:
            ids = self._event_index.setdefault((event.name, event.key), [])
            ids.append(event.id)
            if len(ids) > 1 and self._events[ids[-2]].received > event.received:
                ids.sort(key=lambda i: self._events[i].received)  # stable: arrival order
        return True

    def _open_events(self, name: str, key: str, now: float) -> list[InboxEvent]:
        """The unconsumed events ``(name, key)``, oldest first (dropping stale index entries)."""
        ids = self._event_index.get((name, key))
        if not ids:
            return []
        found: list[InboxEvent] = []
        keep: list[str] = []
        for i in ids:
            event = self._events.get(i)
            if event is None or event.consumed:
                continue
            keep.append(i)
            if event.expires > now:
                found.append(event)
        ids[:] = keep
        return found

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest matching event without consuming it."""
        found = self._open_events(name, key, now)
        return found[0] if found else None

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait an inbox event matches, with the oldest such event."""
        matched: list[tuple[InboxEvent, list[Wait]]] = []
        for (name, key), waits in self._wait_index.items():
            if (name, key) in self._event_index:
                found = self._open_events(name, key, now)
                if found:
                    matched.append((found[0], list(waits.values())))
        matched.sort(key=lambda m: m[0].received)
        return [(w, e) for e, waits in matched for w in waits]

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event."""
        found = self._open_events(name, key, now)
        if not found:
            return None
        taken = self._events[found[0].id] = attrs.evolve(found[0], consumed=True)
        return taken

    async def consume_event(self, event_id: str) -> None:
        """Mark an event consumed; ``EventTakenError`` if it was (or is gone)."""
        self._check_event(event_id, set())
        self._events[event_id] = attrs.evolve(self._events[event_id], consumed=True)

    def _check_event(self, event_id: str, consumed: set[str]) -> None:
        event = self._events.get(event_id)
        if event is None or event.consumed or event_id in consumed:
            what = "gone" if event is None else "consumed already"
            msg = f"inbox event {event_id!r} is {what}"
            raise EventTakenError(msg)

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""
        expired = [i for i, e in self._events.items() if e.expires <= now]
        for i in expired:
            del self._events[i]
        return len(expired)

    # -- history ----------------------------------------------------------------------

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append to a run's history."""
        entries = self._history.setdefault(entry.run_id, [])
        stored = HistoryEntry(run_id=entry.run_id, kind=entry.kind, at=entry.at, step=entry.step,
                              detail=entry.detail, seq=len(entries) + 1)  # fmt: skip
        entries.append(stored)
        return stored

    async def history(self, run_id: str) -> list[HistoryEntry]:
        """Return a run's history."""
        return list(self._history.get(run_id, []))

    # -- housekeeping -----------------------------------------------------------------

    async def purge_runs(self, *, before: float) -> int:
        """Delete ended runs last updated at or before ``before``, with everything of theirs."""
        old = [r.id for r in self._runs.values() if r.status in _ENDED and r.updated <= before]
        for run_id in old:
            del self._runs[run_id]
            self._leased.discard(run_id)
            self._ord.pop(run_id, None)
            self._history.pop(run_id, None)
            await self.delete_checkpoints(run_id)
            await self.delete_wait(run_id)
        return len(old)

    # -- batches ----------------------------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes; commit them all or none when the block ends.

        Every condition of the batch (a run to create that exists, a run to update that is
        missing or held by another owner, an event consumed already) is checked, in order
        and counting the batch's own earlier writes, before anything changes.
        """
        return Batch(self._commit_batch)

    async def _commit_batch(self, ops: list[Op]) -> None:
        self._check_batch(ops)
        for name, args in ops:  # nothing below suspends or fails: all or nothing
            if name == "update_run":
                run = args[0]
                assert isinstance(run, RunRecord)
                self._put_run(run)
            elif name == "require_owner":
                continue
            else:
                await getattr(self, name)(*args)

    def _check_batch(self, ops: list[Op]) -> None:
        # The batch's own creations and updates, over the stored runs (nothing copied).
        runs: collections.ChainMap[str, RunRecord] = collections.ChainMap({}, self._runs)
        consumed: set[str] = set()
        for name, args in ops:
            if name == "create_run":
                run = args[0]
                assert isinstance(run, RunRecord)
                self._check_create(run.id, runs)
                runs[run.id] = run
            elif name == "update_run":
                run, owner = args
                assert isinstance(run, RunRecord)
                assert owner is None or isinstance(owner, str)
                self._check_owner(run.id, owner, runs)
                runs[run.id] = run
            elif name == "require_owner":
                run_id, owner = args
                assert isinstance(run_id, str)
                assert isinstance(owner, str)
                self._check_owner(run_id, owner, runs)
            elif name == "consume_event":
                event_id = args[0]
                assert isinstance(event_id, str)
                self._check_event(event_id, consumed)
                consumed.add(event_id)
            elif name not in _UNCONDITIONAL:
                msg = f"unknown batch operation {name!r}"
                raise ValueError(msg)

    # -- notifications ----------------------------------------------------------------

    @property
    def supports_notify(self) -> bool:
        """True: notifications reach this store's subscribers (in this process only)."""
        return True

    async def notify(self, channel: str, payload: str = "") -> None:
        """Hand ``payload`` to every subscription of this store to ``channel``."""
        for sub in list(self._subscriptions):
            if sub.channel == channel:
                sub.put(payload)

    def subscribe(self, channel: str) -> MemorySubscription:
        """Return a subscription to ``channel`` of this store.

        It receives what is notified from when it is made until it is closed.
        """
        return MemorySubscription(self, channel)

    async def aclose(self) -> None:
        """End every subscription (the data stays, for whoever still holds the store)."""
        for sub in list(self._subscriptions):
            await sub.aclose()


_UNCONDITIONAL = frozenset(
    {"put_checkpoint", "delete_checkpoints", "put_wait", "delete_wait", "append_history"}
)


class MemorySubscription(Subscription):
    """Notifications on one channel of an :class:`InMemoryStore`, in order."""

    def __init__(self, store: InMemoryStore, channel: str) -> None:
        self.channel = channel
        self._store = store
        self._queue: collections.deque[str] = collections.deque()
        self._event = anyio.Event()
        self._closed = False
        store._subscriptions.add(self)

    def put(self, payload: str) -> None:
        """Queue a payload (called by :meth:`InMemoryStore.notify`)."""
        if not self._closed:
            self._queue.append(payload)
            self._event.set()

    async def __anext__(self) -> str:
        """Wait for the next payload; end once closed."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            await self._event.wait()
            self._event = anyio.Event()
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Stop receiving; a waiting iteration ends."""
        self._closed = True
        self._store._subscriptions.discard(self)
        self._event.set()
