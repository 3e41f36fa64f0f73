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

Beyond the abstract methods a store has three optional abilities, each with a default:

* :meth:`Store.batch` collects writes and commits them together. The default applies them
  one by one (**not atomic**); the in-memory, SQLite and PostgreSQL stores commit a batch
  all or nothing, which is what makes the engine's guarantees hold.
* :meth:`Store.notify` / :meth:`Store.subscribe` wake other workers. The default notifies
  no one and subscriptions end at once; :attr:`Store.supports_notify` says which it is.
* Conditional writes fence a worker that lost a run's lease: ``update_run(run, owner=w)``
  and the batch operations ``update_run(..., owner=w)``, ``require_owner`` and
  ``consume_event`` fail with a :class:`~orchestra.ConflictError` subclass
  (:class:`OwnershipError`, :class:`EventTakenError`) instead of overwriting.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Literal, Self, TypeAlias

import attrs

from orchestra.errors import EventTakenError, OwnershipError
from orchestra.stores._batch import Batch, Op, apply_one_by_one

__all__ = [
    "CheckpointRecord",
    "EventTakenError",
    "HistoryEntry",
    "HistoryKind",
    "InboxEvent",
    "OwnershipError",
    "RunRecord",
    "RunStatus",
    "Store",
    "Subscription",
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


def _orphaned(run: RunRecord, worker: str, now: float) -> bool:
    """Whether ``run`` is one :meth:`Store.orphaned_runs` returns."""
    if run.status == "running" and run.owner is None:
        return True
    if run.status not in ("running", "waiting") or run.owner is None:
        return False
    return run.owner == worker or (run.lease_expires is not None and run.lease_expires <= now)


class Subscription(abc.ABC):
    """Notifications on one channel, as an async iterator of payloads.

    ``async with store.subscribe(ch) as sub:``, then ``async for payload in sub:``.
    Payloads are hints (look in the store); iteration ends once the subscription is closed.
    """

    channel: str

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> str:
        """Wait for the next payload; raise ``StopAsyncIteration`` once closed."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop receiving; a waiting or later iteration ends."""


class NoSubscription(Subscription):
    """The subscription of a store that cannot notify: it yields nothing and ends at once."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def __anext__(self) -> str:
        """End at once: nothing is ever notified."""
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Nothing to release."""


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
    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace the stored run with ``run``; raise ``RunNotFoundError`` if there is none.

        With ``owner`` the write is conditional: it happens only if the *stored* run's
        owner is ``owner`` (the writer still holds the lease); otherwise it raises
        :class:`OwnershipError` and writes nothing. Check and write are one atomic step.
        """

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

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker, oldest first.

        They are the ``running`` runs with no owner, and the ``running`` or ``waiting``
        runs owned by ``worker`` (the caller: its own from before a restart) or whose
        lease expired (``lease_expires <= now``). A ``waiting`` run with no owner is
        parked, not orphaned, and is never returned. The engine's poll calls this every
        second or so: a store should answer from an index, in time proportional to the
        runs returned (plus the runs leased at the time), not to every run it keeps.

        The default filters :meth:`list_runs` (reading every running and waiting run);
        the in-memory, SQLite and PostgreSQL stores override it.
        """
        found = await self.list_runs(status="running")
        found += await self.list_runs(status="waiting")
        found = [r for r in found if _orphaned(r, worker, now)]
        found.sort(key=lambda r: r.created)  # stable: each status's order kept
        return found

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
    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest unconsumed, unexpired event ``name`` with ``key``, leaving it there.

        A run that finds one records it together with ``consume_event`` in one batch: if
        another run consumed it meanwhile the batch fails and the run looks again.
        """

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait that an event in the inbox matches, with that event.

        A wait is matched by the oldest unconsumed, unexpired (``expires > now``) event
        whose name is the wait's ``event`` and whose key is the wait's ``key``: the event
        :meth:`peek_event` would return for it. Pairs come grouped by event (oldest event
        first), waits of one event in the order :meth:`find_waits` gives them. Recovery
        calls it once on every engine open to deliver events stored but never delivered:
        a store should answer with one query, not one per wait.

        The default calls :meth:`peek_event` once per distinct ``(event, key)`` of
        :meth:`list_waits`; the in-memory, SQLite and PostgreSQL stores override it.
        """
        groups: dict[tuple[str, str], list[Wait]] = {}
        for w in await self.list_waits():
            groups.setdefault((w.event, w.key), []).append(w)
        matched: list[tuple[InboxEvent, list[Wait]]] = []
        for (name, key), group in groups.items():
            event = await self.peek_event(name, key, now=now)
            if event is not None:
                matched.append((event, group))
        matched.sort(key=lambda m: m[0].received)
        return [(w, e) for e, group in matched for w in group]

    @abc.abstractmethod
    async def consume_event(self, event_id: str) -> None:
        """Mark event ``event_id`` consumed; raise :class:`EventTakenError` if it was already.

        An unknown (or purged) id raises :class:`EventTakenError` too. Exactly one of several
        concurrent callers succeeds.
        """

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

    # -- housekeeping -----------------------------------------------------------------

    @abc.abstractmethod
    async def purge_runs(self, *, before: float) -> int:
        """Delete the runs that ended at or before ``before``; return how many.

        Deleted are the runs whose status is ``completed``, ``failed`` or ``cancelled``
        and whose ``updated`` is at or before ``before``, with their history, checkpoints
        and waits. Runs that have not ended are never touched.
        """

    # -- batches ----------------------------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes and commit them together when the block ends.

        ``async with store.batch() as b: b.append_history(...); b.update_run(...)``. If
        the block raises, nothing is written. This default applies the writes one by one
        through the store's own methods when the block ends: **not atomic** (a failing
        write leaves the ones before it written). Stores that can commit a batch all or
        nothing override it, as the in-memory, SQLite and PostgreSQL stores do; the
        engine's exactly-once guarantees need that.
        """
        return Batch(self._apply_one_by_one)

    async def _apply_one_by_one(self, ops: list[Op]) -> None:
        await apply_one_by_one(self, ops)

    # -- notifications ----------------------------------------------------------------

    @property
    def supports_notify(self) -> bool:
        """Whether :meth:`notify` reaches :meth:`subscribe` (of this and other workers' stores).

        False by default: ``notify`` does nothing and subscriptions end at once, so a
        caller should not subscribe (the engine then relies on its poll alone).
        """
        return False

    async def notify(self, channel: str, payload: str = "") -> None:  # noqa: B027 - default
        """Send ``payload`` to the subscribers of ``channel``; by default, to no one."""

    def subscribe(self, channel: str) -> Subscription:
        """Return a :class:`Subscription` to ``channel``.

        By default (:attr:`supports_notify` false) it yields nothing and ends at once.
        """
        return NoSubscription(channel)

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the store's connections."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
