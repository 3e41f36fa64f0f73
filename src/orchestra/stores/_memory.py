"""The in-memory store: dictionaries, for tests and for hosts that need no durability."""

from __future__ import annotations

import attrs

from orchestra.errors import ConflictError, RunNotFoundError
from orchestra.stores._base import (
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    RunRecord,
    RunStatus,
    Store,
    Version,
    Wait,
)

__all__ = ["InMemoryStore"]


class InMemoryStore(Store):
    """A :class:`Store` in dictionaries: fast, indexed, and gone when the process exits."""

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._checkpoints: dict[tuple[str, str], dict[str, CheckpointRecord]] = {}
        self._waits: dict[str, Wait] = {}
        self._wait_index: dict[tuple[str, str], dict[str, Wait]] = {}
        self._events: dict[str, InboxEvent] = {}
        self._event_index: dict[tuple[str, str], list[str]] = {}
        self._history: dict[str, list[HistoryEntry]] = {}

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version unless the latest has the same digest."""
        versions = self._versions.setdefault(name, [])
        if versions and versions[-1].digest == digest:
            if not versions[-1].deployed:
                await self.set_deployed(name, True)
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

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run."""
        if run.id in self._runs:
            msg = f"run {run.id!r} already exists"
            raise ConflictError(msg)
        self._runs[run.id] = run

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a run."""
        try:
            return self._runs[run_id]
        except KeyError:
            msg = f"no run {run_id!r}"
            raise RunNotFoundError(msg) from None

    async def update_run(self, run: RunRecord) -> None:
        """Replace a run."""
        if run.id not in self._runs:
            msg = f"no run {run.id!r}"
            raise RunNotFoundError(msg)
        self._runs[run.id] = run

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
        self._runs[run_id] = attrs.evolve(run, owner=owner, lease_expires=until)
        return True

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
        for key in [k for k in self._checkpoints if k[0] == run_id and step in (None, k[1])]:
            del self._checkpoints[key]

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

    async def add_event(self, event: InboxEvent) -> bool:
        """Keep an event unless its id is known."""
        if event.id in self._events:
            return False
        self._events[event.id] = event
        if event.key is not None and not event.consumed:
            self._event_index.setdefault((event.name, event.key), []).append(event.id)
        return True

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event."""
        ids = self._event_index.get((name, key))
        while ids:
            event = self._events.get(ids.pop(0))
            if event is None or event.consumed or event.expires <= now:
                continue
            taken = attrs.evolve(event, consumed=True)
            self._events[event.id] = taken
            return taken
        return None

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""
        expired = [i for i, e in self._events.items() if e.expires <= now]
        for i in expired:
            del self._events[i]
        return len(expired)

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append to a run's history."""
        entries = self._history.setdefault(entry.run_id, [])
        stored = attrs.evolve(entry, seq=len(entries) + 1)
        entries.append(stored)
        return stored

    async def history(self, run_id: str) -> list[HistoryEntry]:
        """Return a run's history."""
        return list(self._history.get(run_id, []))
