"""Business processes: deployed versions, durable runs, events that start and resume them.

:class:`Business` is the half of an :class:`~orchestra.Engine` that keeps state in a
store; it wires the parts, each a module of its own:

* :mod:`~orchestra.engine._versions`: deploying, and the definitions runs started on;
* :mod:`~orchestra.engine._lifecycle`: starting runs, advancing them step by step,
  parking and resuming them;
* :mod:`~orchestra.engine._commits`: every write of a run, one fenced batch each;
* :mod:`~orchestra.engine._events`: publishing events to the inbox and to waiting runs;
* :mod:`~orchestra.engine._interrupts`: firing resume deadlines, cancelling runs;
* :mod:`~orchestra.engine._queries`: reading runs;
* :mod:`~orchestra.engine._leases`, :mod:`~orchestra.engine._recovery`,
  :mod:`~orchestra.engine._timers`, :mod:`~orchestra.engine._hygiene`: who may advance a
  run, taking over the runs of dead workers, deadlines in memory, scrubbing secrets.

A waiting run costs a store row and an entry in one in-memory timer heap; no task sleeps
per run. One timer task (started by ``async with engine``) sleeps on the executor's clock
until the earliest deadline, so a virtual clock fires deadlines as it is advanced.
Durability: see ``docs/explanation/durability.md``.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from orchestra._json import JSON
from orchestra.engine._commits import ContextLimitError, Writer
from orchestra.engine._common import canonical, start_id, tokens
from orchestra.engine._events import Events, PublishResult
from orchestra.engine._hygiene import Scrubber
from orchestra.engine._interrupts import Interrupts
from orchestra.engine._leases import Leases
from orchestra.engine._lifecycle import Lifecycle
from orchestra.engine._queries import Queries, RunInfo
from orchestra.engine._timers import Timers
from orchestra.engine._versions import NotDeployedError, Versions
from orchestra.errors import ConflictError, EngineClosedError, PersistenceError
from orchestra.model import Process
from orchestra.stores import RunStatus, Store, Version

log = logging.getLogger("orchestra.engine")

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from orchestra.engine._engine import Engine
    from orchestra.engine._recovery import Recovery

__all__ = [
    "Business",
    "ContextLimitError",
    "NotDeployedError",
    "PublishResult",
    "RunInfo",
    "canonical",
    "start_id",
]


class Business:
    """The business-process half of an :class:`~orchestra.Engine`; the engine delegates here."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        event_ttl: float,
        max_context_bytes: int,
        worker_id: str,
        lease_seconds: float,
        retention: float | None = None,
    ) -> None:
        from orchestra.engine._recovery import Recovery

        self.engine = engine
        self.store = store
        self.event_ttl = event_ttl
        self.max_context_bytes = max_context_bytes
        self.leases = Leases(
            store, engine.executor, worker_id=worker_id, lease_seconds=lease_seconds
        )
        self.scrub = Scrubber(lambda: engine.secrets, extra=lambda: tokens(engine))
        self.timers = Timers(engine.executor)
        self.cancelled: set[str] = set()
        """Runs this worker is cancelling: nothing more is written for them."""
        self.versions = Versions(self)
        self.writer = Writer(self)
        self.lifecycle = Lifecycle(self)
        self.events = Events(self)
        self.interrupts = Interrupts(self)
        self.queries = Queries(self)
        self.recovery: Recovery = Recovery(self, retention=retention)
        self.leases.on_release = self.recovery.released
        self._tg: TaskGroup | None = None

    @property
    def worker_id(self) -> str:
        """The id this worker holds leases under."""
        return self.leases.worker_id

    def now(self) -> float:
        """The engine's clock."""
        return self.engine.executor.now()

    # -- lifecycle ----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover, then renew leases, fire deadlines and take over runs, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                tg.start_soon(self.leases.heartbeat)
                await self.recovery.recover()
                tg.start_soon(self._timer_loop)
                tg.start_soon(self.recovery.poll_loop)
                if self.store.supports_notify:
                    tg.start_soon(self.recovery.listen)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def spawn(self, fn: Any, *args: Any) -> bool:
        """Run ``fn(*args)`` in the background task group; False if the engine is not open."""
        if self._tg is None:
            return False
        self._tg.start_soon(fn, *args)
        return True

    async def start_background(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args, task_status=...)`` in the background; return what it starts with.

        ``fn`` reports with ``task_status.started(value)`` once its durable part is done
        (errors before that reach the caller); what it does after runs on, and an error
        there is logged (the run's stored state explains it and recovery goes on with
        it). Raises :class:`~orchestra.errors.EngineClosedError` if the engine is not open.
        """
        tg = self.require_open()

        async def guarded(*, task_status: TaskStatus[Any]) -> None:
            try:
                await fn(*args, task_status=task_status)
            except PersistenceError as exc:
                log.warning("a background run stopped: %s", self.scrub(str(exc)))

        return await tg.start(guarded)

    def require_open(self) -> TaskGroup:
        """The engine's background task group; :class:`EngineClosedError` if it is closed."""
        if self._tg is None:
            msg = "running in the background needs the engine open (async with engine)"
            raise EngineClosedError(msg)
        return self._tg

    def start_soon_logged(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the background, logging a store failure instead of raising.

        Raises :class:`~orchestra.errors.EngineClosedError` if the engine is not open.
        """
        tg = self.require_open()

        async def guarded() -> None:
            try:
                await fn(*args)
            except PersistenceError as exc:
                log.warning("background work stopped: %s", self.scrub(str(exc)))

        tg.start_soon(guarded)

    async def _timer_loop(self) -> None:
        while True:
            if await self.timers.wait_due():
                await self.fire_due(spawn=True)
                continue
            try:
                await self.timers.load(self.store.due_waits)
            except PersistenceError as exc:
                log.warning("loading the next deadlines failed: %s", self.scrub(str(exc)))
                await anyio.sleep(1.0)

    async def fire_due(self, *, spawn: bool = False) -> list[str]:
        """Time out every run whose deadline has passed; return their ids.

        With ``spawn`` (the timer task) each runs in the background and every due run is
        returned; otherwise only those that did time out.
        """
        due = self.timers.due()
        fire, logged = self.interrupts.fire, self.interrupts.fire_logged
        return [w.run_id for w in due if (spawn and self.spawn(logged, w)) or await fire(w)]

    # -- what the engine calls ----------------------------------------------------------

    async def deploy(self, process: Process) -> Version:
        """Validate ``process`` and store it as the newest version (a no-op if unchanged)."""
        return await self.versions.deploy(process)

    async def undeploy(self, name: str) -> bool:
        """Stop new runs of ``name``; running runs go on. Return False if it was never deployed."""
        return await self.versions.undeploy(name)

    async def refresh_versions(self) -> None:
        """Read the deployed versions again (other workers may have deployed since)."""
        await self.versions.refresh()

    async def process(self, name: str, seq: int) -> Process:
        """Return version ``seq`` of process ``name`` (loaded from the store once)."""
        return await self.versions.process(name, seq)

    async def start(
        self, name: str, payload: JSON, *, run_id: str | None = None, wait: bool = True
    ) -> str:
        """Start a run of the latest deployed version of ``name``; return its id."""
        started = await self.lifecycle.start(name, payload, run_id or uuid.uuid4().hex, wait=wait)
        if started is None:
            msg = f"run {run_id!r} already exists"
            raise ConflictError(msg)
        return started

    async def publish(
        self, name: str, payload: JSON, *, event_id: str | None = None, wait: bool = True
    ) -> PublishResult:
        """Start the runs this event triggers and resume the waiting runs it matches."""
        return await self.events.publish(name, payload, event_id=event_id, wait=wait)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; return False if it had already ended."""
        return await self.interrupts.cancel(run_id)

    async def run(self, run_id: str) -> RunInfo:
        """Return the run with its history; raise :class:`~orchestra.RunNotFoundError`."""
        return await self.queries.run(run_id)

    async def runs(
        self, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunInfo]:
        """Return runs (without history), oldest first."""
        return await self.queries.runs(process, status)
