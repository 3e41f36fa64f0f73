"""The store interface: everything a business process keeps between steps, events and restarts.

A :class:`Store` holds six kinds of plain records and nothing else (no model objects, only
names; every JSON value is stored as JSON *text*, and every time is a float of seconds
since the epoch on the engine's clock). **Versions** (:class:`Version`) are deployed
process definitions, numbered 1, 2, ... per name and identified by the sha256 of their
canonical JSON; putting the same definition as the latest version again is a no-op that
returns it (re-marked deployed). **Runs** (:class:`RunRecord`) are instances of a version:
status, context, the index of the current step, the error that ended them, and an owner
with a lease expiry for several workers. **Checkpoints** (:class:`CheckpointRecord`) are
the outputs of single processors, written as each one ends, so a run resumes inside a
step. **Waits** (:class:`Wait`) say that a run is paused on a resume step: which event,
which correlation key, until when; at most one per run, looked up by ``(event, key)`` or
by due deadline, and deleting one is how a worker claims the right to resume the run.
The **inbox** (:class:`InboxEvent`) keeps published events by id (a second event with a
known id is refused) until they expire, so an event that arrives before its run reaches
the resume step is still there when it does; taking one marks it consumed. **History**
(:class:`HistoryEntry`) is each run's ordered log. Every implementation must pass
:class:`orchestra.stores.contract.StoreContract`.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Literal, TypeAlias

import attrs

__all__ = [
    "CheckpointRecord",
    "HistoryEntry",
    "HistoryKind",
    "InboxEvent",
    "RunRecord",
    "RunStatus",
    "Store",
    "Version",
    "Wait",
]

RunStatus: TypeAlias = Literal["running", "waiting", "completed", "failed", "cancelled"]
HistoryKind: TypeAlias = Literal[
    "run_started",
    "step_started",
    "step_completed",
    "step_skipped",
    "step_failed",
    "waiting",
    "event_consumed",
    "timeout",
    "goto",
    "run_completed",
    "run_failed",
    "run_cancelled",
]


@attrs.frozen(kw_only=True)
class Version:
    """One deployed version of a process definition."""

    name: str
    seq: int
    """1 for the first version of ``name``, then 2, 3, ..."""
    digest: str
    """sha256 (hex) of the definition's canonical JSON."""
    definition: str
    """The process as JSON text."""
    deployed: bool = True
    """False once the process was undeployed: no new runs start on it."""
    created: float = 0.0


@attrs.frozen(kw_only=True)
class RunRecord:
    """One run of a process version."""

    id: str
    process: str
    version: int
    status: RunStatus
    context: str
    """The run's context as JSON text."""
    position: int = 0
    """Index of the step the run is at (``len(steps)`` once past the last)."""
    error: str | None = None
    created: float = 0.0
    updated: float = 0.0
    owner: str | None = None
    """The worker holding the run's lease, if any."""
    lease_expires: float | None = None


@attrs.frozen(kw_only=True)
class CheckpointRecord:
    """The output of one processor of one step of one run."""

    run_id: str
    step: str
    processor: str
    output: str
    """The processor's output as JSON text."""
    trace: str
    """Its :class:`~orchestra.ProcessorTrace` as JSON text."""


@attrs.frozen(kw_only=True)
class Wait:
    """A run paused on a resume step until an event with a matching key arrives."""

    run_id: str
    step: str
    event: str
    key: str
    """The correlation key as canonical JSON text (``json.dumps(sort_keys=True)``)."""
    deadline: float | None = None


@attrs.frozen(kw_only=True)
class InboxEvent:
    """A published event, kept for deduplication and for runs that have not reached it yet."""

    id: str
    name: str
    key: str | None
    """The correlation key as canonical JSON text, ``None`` if it could not be read."""
    payload: str
    """The payload as JSON text."""
    received: float
    expires: float
    consumed: bool = False


@attrs.frozen(kw_only=True)
class HistoryEntry:
    """One entry of a run's history; ``seq`` orders entries and is set by the store."""

    run_id: str
    kind: HistoryKind
    at: float
    step: str | None = None
    detail: str | None = None
    """Extra data as JSON text (an error message, an event id, the step gone to)."""
    seq: int = 0


class Store(abc.ABC):
    """Persistent state of business processes; see the module docstring for the model.

    Methods raise :class:`~orchestra.PersistenceError` (or a subclass) when the backend
    fails. Use a store as an async context manager, or call :meth:`aclose`.
    """

    # -- versions ---------------------------------------------------------------------

    @abc.abstractmethod
    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version of ``name`` and return it.

        If the latest version of ``name`` has the same ``digest``, store nothing and return
        that version, marked deployed again if it had been undeployed.
        """

    @abc.abstractmethod
    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        """Return version ``seq`` of ``name`` (the latest if ``None``), or ``None``."""

    @abc.abstractmethod
    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return every version of ``name`` (of every process if ``None``), by name then seq."""

    @abc.abstractmethod
    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Mark every version of ``name`` (un)deployed; return False if there is none."""

    # -- runs -------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run; raise :class:`~orchestra.ConflictError` if its id exists."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord:
        """Return the run; raise :class:`~orchestra.RunNotFoundError` if there is none."""

    @abc.abstractmethod
    async def update_run(self, run: RunRecord) -> None:
        """Replace the stored run with ``run``; raise ``RunNotFoundError`` if there is none."""

    @abc.abstractmethod
    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """Return runs, filtered by process name and status, oldest first."""

    @abc.abstractmethod
    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take or renew the run's lease for ``owner`` until ``until``.

        Succeeds when the run has no owner, ``owner`` already holds it, or the lease
        expired (``lease_expires <= now``); returns whether it did.
        """

    # -- checkpoints ------------------------------------------------------------------

    @abc.abstractmethod
    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output, replacing any for the same run, step and processor."""

    @abc.abstractmethod
    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        """Return the checkpoints of ``step`` of the run, in the order they were written."""

    @abc.abstractmethod
    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete the run's checkpoints of ``step`` (of every step if ``None``)."""

    # -- waits ------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_wait(self, wait: Wait) -> None:
        """Record that a run waits; replaces the run's previous wait."""

    @abc.abstractmethod
    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove the run's wait and return it, or ``None`` if it had none.

        Exactly one of several concurrent callers gets the wait back: that caller resumes
        the run.
        """

    @abc.abstractmethod
    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``event`` with correlation key ``key``."""

    @abc.abstractmethod
    async def due_waits(self, now: float) -> list[Wait]:
        """Return the waits whose deadline is at or before ``now``, earliest first."""

    @abc.abstractmethod
    async def list_waits(self) -> list[Wait]:
        """Return every wait (to rebuild timers after a restart)."""

    # -- inbox ------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_event(self, event: InboxEvent) -> bool:
        """Keep ``event``; return False (storing nothing) if an event with its id is known."""

    @abc.abstractmethod
    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Mark the oldest unconsumed, unexpired event ``name`` with ``key`` consumed; return it."""

    @abc.abstractmethod
    async def purge_events(self, now: float) -> int:
        """Delete events that expired at or before ``now``; return how many."""

    # -- history ----------------------------------------------------------------------

    @abc.abstractmethod
    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append ``entry`` to its run's history; return it with ``seq`` set (1, 2, ...)."""

    @abc.abstractmethod
    async def history(self, run_id: str) -> list[HistoryEntry]:
        """Return the run's history in order."""

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the store's connections."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
