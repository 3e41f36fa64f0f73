"""Business processes: deployed versions, durable runs, events that start and resume them.

A waiting run costs a store row and an entry in one in-memory timer heap
(:mod:`orchestra.engine._timers`); no task sleeps per run. One timer task (started by
``async with engine``) sleeps on the executor's clock until the earliest deadline, so a
virtual clock fires deadlines as it is advanced.

Durability (see ``docs/explanation/durability.md``). A worker advances a run only while
it holds the run's lease (:mod:`orchestra.engine._leases`). Each processor's output is a
checkpoint, written before anything that needs it starts; a step ends with one commit
that appends ``step_completed``, moves the run past the step with its new context and
drops the step's checkpoints, in one transaction when the store offers ``batch()``. A run
taken over after a crash (:mod:`orchestra.engine._recovery`) goes on from that state:
the processors with checkpoints are not run again, the others are (at least once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from orchestra._json import JSON
from orchestra._jsonschema import validate as validate_schema
from orchestra.engine._hygiene import Scrubber
from orchestra.engine._leases import Held, Leases
from orchestra.engine._steps import StepRunner, truthy
from orchestra.engine._timers import Timers
from orchestra.engine._trace import ProcessorTrace
from orchestra.errors import (
    ConflictError,
    EventError,
    OrchestraError,
    PersistenceError,
    RunNotFoundError,
    StepError,
)
from orchestra.model import Event, Process, ProcessStep, ResumeStep
from orchestra.model._duration import parse_duration
from orchestra.stores import (
    CheckpointRecord,
    HistoryEntry,
    HistoryKind,
    InboxEvent,
    RunRecord,
    RunStatus,
    Store,
    Version,
    Wait,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from orchestra.engine._engine import Engine
    from orchestra.engine._recovery import Recovery

__all__ = ["Business", "ContextLimitError", "NotDeployedError", "PublishResult", "RunInfo"]

log = logging.getLogger("orchestra.engine")

_TERMINAL: tuple[RunStatus, ...] = ("completed", "failed", "cancelled")
_RUN_IDS = uuid.UUID("6f1c2a52-8f0e-4d0b-9a57-3c1d3f6b9e21")
"""Namespace of the run ids derived from start events (see :func:`start_id`)."""


class NotDeployedError(OrchestraError, LookupError):
    """No deployed process has this name (never deployed, or undeployed)."""

    def __init__(self, process: str) -> None:
        self.process = process
        super().__init__(f"process {process!r} is not deployed")


class ContextLimitError(StepError):
    """A run's context grew past the engine's ``max_context_bytes``."""


@attrs.frozen(kw_only=True)
class PublishResult:
    """What a published event did: the runs it started and the runs it resumed."""

    event_id: str
    started: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    duplicate: bool = False
    """True when an event with this id was published before; nothing new happened."""
    kept: bool = False
    """True when no run took it yet: it waits in the inbox for a run to reach its step."""


@attrs.frozen(kw_only=True)
class RunInfo:
    """A run as the host sees it: where it is, what it holds, how it got there."""

    id: str
    process: str
    version: int
    status: RunStatus
    context: dict[str, JSON]
    position: int
    step: str | None
    """The step the run is at (the resume step while waiting), ``None`` once past the end."""
    error: str | None
    created: float
    updated: float
    history: tuple[HistoryEntry, ...] = ()
    owner: str | None = None
    """The worker holding the run's lease while it advances it."""

    @property
    def path(self) -> list[str]:
        """The steps the run went through as ``"step:status"`` strings, from its history.

        Statuses: ``completed``, ``skipped``, ``failed``, ``waiting`` (still waiting),
        ``resumed`` (its event arrived) and ``timed_out``.
        """
        names = {"step_completed": "completed", "step_skipped": "skipped", "step_failed": "failed",
                 "event_consumed": "resumed", "timeout": "timed_out"}  # fmt: skip
        out = [f"{h.step}:{names[h.kind]}" for h in self.history if h.kind in names]
        if self.status == "waiting" and self.step is not None:
            out.append(f"{self.step}:waiting")
        return out


def canonical(value: JSON) -> str:
    """Return the canonical JSON text of ``value`` (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def start_id(event_id: str, process: str) -> str:
    """Return the id of the run that event ``event_id`` starts of ``process``.

    Derived, not random: an event delivered twice (a host retrying after a crash) finds
    its run already there instead of starting a second one.
    """
    return uuid.uuid5(_RUN_IDS, f"{event_id}\x00{process}").hex


_Log = tuple[HistoryKind, str | None, JSON]
"""A history entry to write: kind, step, detail."""


@attrs.frozen
class _Delivery:
    """An event (or a timeout's default) to consume at resume step ``step``."""

    step: str
    payload: JSON
    event_id: str
    before: tuple[_Log, ...] = ()
    """History written with the consumption (the ``timeout`` entry of ``continue``)."""
    consumed: Callable[[], Awaitable[None]] | None = None
    """Awaited once the run has recorded the event (marks it consumed in the inbox)."""


class _Consumed:
    """Marks an inbox event consumed once, after the first run recorded it."""

    def __init__(self, store: Store, name: str, key: str, now: Callable[[], float]) -> None:
        self.store, self.name, self.key, self.now = store, name, key, now
        self.done = False

    async def __call__(self) -> None:
        if not self.done:
            self.done = True
            await self.store.take_event(self.name, self.key, now=self.now())


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
        self.scrub = Scrubber(lambda: engine.secrets, extra=lambda: _tokens(engine))
        self.recovery: Recovery = Recovery(self, retention=retention)
        self.leases.on_release = self.recovery.released
        self._processes: dict[tuple[str, int], Process] = {}
        self._latest: dict[str, Version] | None = None
        self.timers = Timers(engine.executor)
        self._tg: TaskGroup | None = None
        self._cancelled: set[str] = set()

    @property
    def worker_id(self) -> str:
        """The id this worker holds leases under."""
        return self.leases.worker_id

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
                if callable(getattr(self.store, "subscribe", None)):
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

    async def _timer_loop(self) -> None:
        while True:
            await self.timers.wait_due()
            await self.fire_due(spawn=True)

    async def fire_due(self, *, spawn: bool = False) -> list[str]:
        """Time out every run whose deadline has passed; return their ids.

        With ``spawn`` (the timer task) each runs in the background and every due run is
        returned; otherwise only those that did time out.
        """
        due = self.timers.due()
        return [w.run_id for w in due if (spawn and self.spawn(self.fire, w)) or await self.fire(w)]

    # -- deploying ----------------------------------------------------------------------

    async def deploy(self, process: Process) -> Version:
        """Validate ``process`` and store it as the newest version (a no-op if unchanged)."""
        await self.engine.validate(process)
        definition = canonical(process.to_dict())
        digest = hashlib.sha256(definition.encode()).hexdigest()
        version = await self.store.put_version(process.name, digest, definition, now=self._now())
        self._processes[(process.name, version.seq)] = process
        (await self._deployed())[process.name] = version
        return version

    async def undeploy(self, name: str) -> bool:
        """Stop new runs of ``name``; running runs go on. Return False if it was never deployed."""
        found = await self.store.set_deployed(name, False)
        (await self._deployed()).pop(name, None)
        return found

    async def _deployed(self) -> dict[str, Version]:
        if self._latest is None:
            await self.refresh_versions()
        assert self._latest is not None
        return self._latest

    async def refresh_versions(self) -> None:
        """Read the deployed versions again (other workers may have deployed since).

        Every stored version is loaded: an event's correlation key is read with the key
        fragments of every version that has runs waiting, old ones included.
        """
        latest: dict[str, Version] = {}
        for v in await self.store.list_versions():
            latest[v.name] = v
            if (v.name, v.seq) not in self._processes:
                self._processes[(v.name, v.seq)] = Process.from_json(v.definition)
        self._latest = {n: v for n, v in latest.items() if v.deployed}

    async def process(self, name: str, seq: int) -> Process:
        """Return version ``seq`` of process ``name`` (loaded from the store once)."""
        p = self._processes.get((name, seq))
        if p is None:
            version = await self.store.get_version(name, seq)
            if version is None:
                raise NotDeployedError(name)
            p = self._processes[(name, seq)] = Process.from_json(version.definition)
        return p

    # -- events -------------------------------------------------------------------------

    async def start(self, name: str, payload: JSON, *, run_id: str | None = None) -> str:
        """Start a run of the latest deployed version of ``name``; return its id."""
        started = await self._start(name, payload, run_id or uuid.uuid4().hex)
        if started is None:
            msg = f"run {run_id!r} already exists"
            raise ConflictError(msg)
        return started

    async def _start(self, name: str, payload: JSON, run_id: str) -> str | None:
        """Start run ``run_id``; return ``None`` if a run with that id exists already."""
        version = (await self._deployed()).get(name)
        if version is None:
            raise NotDeployedError(name)
        process = await self.process(name, version.seq)
        if isinstance(process.trigger, Event):
            _check_payload(process.trigger, payload, process.name)
        context: dict[str, JSON] = {"trigger": payload, "steps": {}, "events": {}}
        text = self._fit(process.name, "trigger", context)
        now = self._now()
        run = RunRecord(id=run_id, process=name, version=version.seq, status="running",
                        context=text, created=now, updated=now)  # fmt: skip
        async with self.leases.hold(run.id, claimed=True) as held:
            assert held is not None
            try:
                started: _Log = ("run_started", None, {"version": version.seq})
                run = await self._commit(held, run, create=True, history=[started])
            except ConflictError:
                held.released = True  # the run is someone else's: nothing of ours to give back
                return None
            await self._drive(held, run, process, context)
        return run.id

    async def publish(
        self, name: str, payload: JSON, *, event_id: str | None = None
    ) -> PublishResult:
        """Start the runs this event triggers and resume the waiting runs it matches.

        The event is stored first (unconsumed), then delivered to each run waiting for
        it, and marked consumed once one took it. A worker that dies in between leaves it
        unconsumed: publishing it again with the same id (or :meth:`recover`) delivers
        it to the runs still waiting for it, and starts the runs it should have started.
        """
        event_id = event_id or uuid.uuid4().hex
        if not self._knows(name):  # deployed by another worker since we last looked?
            await self.refresh_versions()
        deployed = [await self.process(v.name, v.seq) for v in (await self._deployed()).values()]
        starters = [p for p in deployed if isinstance(p.trigger, Event) and p.trigger.name == name]
        for p in starters:
            assert isinstance(p.trigger, Event)
            _check_payload(p.trigger, payload, p.name)
        keys = await self._event_keys(name, payload)
        now = self._now()
        stored = InboxEvent(id=event_id, name=name, key=keys[0] if keys else None,
                            payload=self.scrub(canonical(payload)), received=now,
                            expires=now + self.event_ttl)  # fmt: skip
        fresh = await self.store.add_event(stored)
        resumed: list[str] = []
        for key in keys:
            waits = await self.store.find_waits(name, key)
            if not waits:
                continue
            if fresh:
                # Marked consumed as soon as a run recorded it (not after the runs went on:
                # a failure later must not leave it in the inbox for another run).
                mark = _Consumed(self.store, name, key, self._now) if key == stored.key else None
                resumed += await self.deliver(waits, payload, event_id, consumed=mark)
            else:
                # A known id: normally all was done. If its first delivery was cut short
                # (the worker died), it is still unconsumed: deliver it now.
                pending = await self.store.take_event(name, key, now=self._now())
                if pending is not None:
                    resumed += await self.deliver(waits, json.loads(pending.payload), pending.id)
        started: list[str] = []
        for p in starters:
            # A retried delivery finds its run there (None): it was started the first time.
            run_id = await self._start(p.name, payload, start_id(event_id, p.name))
            if run_id is not None:
                started.append(run_id)
        kept = fresh and not resumed and bool(keys)
        return PublishResult(event_id=event_id, started=tuple(started), resumed=tuple(resumed),
                             duplicate=not fresh, kept=kept)  # fmt: skip

    def _knows(self, event: str) -> bool:
        """Whether a loaded process starts on or waits for ``event``."""
        for p in self._processes.values():
            if isinstance(p.trigger, Event) and p.trigger.name == event:
                return True
            if any(isinstance(s, ResumeStep) and s.event == event for s in p.steps):
                return True
        return False

    async def deliver(
        self,
        waits: Sequence[Wait],
        payload: JSON,
        event_id: str,
        *,
        consumed: Callable[[], Awaitable[None]] | None = None,
    ) -> list[str]:
        """Resume each run of ``waits`` with the event; return the ids of those it resumed.

        Raises the first :class:`~orchestra.PersistenceError` of a run (the others went on).
        """
        waits = list({w.run_id: w for w in waits}.values())
        done: list[bool] = [False] * len(waits)
        errors: list[PersistenceError] = []
        event = _Delivery("", payload, event_id, consumed=consumed)

        async def one(i: int, wait: Wait) -> None:
            try:
                done[i] = await self._resume(wait, attrs.evolve(event, step=wait.step))
            except PersistenceError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i, w in enumerate(waits):
                tg.start_soon(one, i, w)
        if errors:
            raise errors[0]
        return [w.run_id for w, ok in zip(waits, done, strict=True) if ok]

    async def _resume(self, wait: Wait, event: _Delivery) -> bool:
        patience = min(self.leases.lease_seconds, 2.0)
        async with self.leases.hold(wait.run_id, patience=patience) as held:
            if held is None:
                return False  # a dead worker's lease: recovery re-parks it and finds the event
            try:
                run = held.record = await self.store.get_run(wait.run_id)
            except RunNotFoundError:
                return False
            process = await self.process(run.process, run.version)
            if run.status != "waiting" or _step_name(process, run.position) != wait.step:
                return False
            # Gone only if a worker died between claiming it and resuming: resume anyway.
            await self.store.delete_wait(run.id)
            self.timers.forget(run.id)
            await self._drive(held, run, process, json.loads(run.context), event=event)
            return True

    async def _event_keys(self, name: str, payload: JSON) -> list[str]:
        """Read the event's correlation keys, once per distinct key fragment in use."""
        sources: list[tuple[str, Event | None]] = []
        for p in list(self._processes.values()):
            declared = next((e for e in p.events if e.name == name), None)
            for s in p.steps:
                if isinstance(s, ResumeStep) and s.event == name:
                    src = s.event_key or (declared.key if declared else None)
                    if src is not None and all(src != have for have, _ in sources):
                        sources.append((src, declared))
        keys: list[str] = []
        for src, declared in sources:
            if declared is not None:
                _check_payload(declared, payload, "")
            try:
                value = await self.engine.sandbox.evaluate(
                    src, {"payload": payload}, name=f"{name}.key"
                )
            except StepError as exc:
                msg = f"event {name!r}: its correlation key could not be read: {exc}"
                raise EventError(msg) from exc
            if canonical(value) not in keys:
                keys.append(canonical(value))
        return keys

    # -- running ------------------------------------------------------------------------

    async def _drive(
        self,
        held: Held,
        run: RunRecord,
        process: Process,
        ctx: dict[str, JSON],
        *,
        event: _Delivery | None = None,
        resuming: bool = False,
    ) -> None:
        """Run ``run`` from its position until it waits, ends or fails (holding its lease).

        ``event`` is consumed when the run is at its resume step. ``resuming`` says the
        run was interrupted inside its step (a takeover): its checkpoints are read.
        """
        runner = self.engine.runner(process, ctx, run_id=run.id)
        held.record = run
        with held.scope:
            try:
                while run.position < len(process.steps):
                    if run.id in self._cancelled:
                        return
                    step = process.steps[run.position]
                    if isinstance(step, ResumeStep):
                        if event is not None and event.step == step.name:
                            run = await self._consume(held, run, process, ctx, event=event)
                            event = None
                            continue
                        resumed = await self._park(held, run, process, runner, step)
                        if resumed is None:
                            return
                        run = resumed
                    else:
                        run = await self._step(held, run, process, runner, step, resuming=resuming)
                        resuming = False  # a step never started has no checkpoints
                if process.output is not None:
                    ctx["output"] = await runner.js(
                        process.output, runner.bindings(""), name="output", step="output"
                    )
                    run = attrs.evolve(run, context=self._fit(process.name, "output", ctx))
            except StepError as exc:
                where = _step_name(process, run.position) or "output"
                exc.located(process=process.name, step=where, processor=None)
                error = str(exc)
                await self._commit(
                    held, attrs.evolve(run, status="failed", error=error),
                    history=[("step_failed", where, error), ("run_failed", None, error)],
                    release=True,
                )  # fmt: skip
                return
            await self._commit(
                held, attrs.evolve(run, status="completed"),
                history=[("run_completed", None, None)], drop=[None], release=True,
            )  # fmt: skip

    async def _step(
        self,
        held: Held,
        run: RunRecord,
        process: Process,
        runner: StepRunner,
        step: ProcessStep,
        *,
        resuming: bool,
    ) -> RunRecord:
        """Run a process step; its ``step_started`` goes with its first checkpoint."""
        b = runner.bindings(step.name)
        nxt = attrs.evolve(run, position=run.position + 1, status="running")
        if step.when is not None and not truthy(
            await runner.js(step.when, b, name=f"{step.name}.when", step=step.name)
        ):
            return await self._commit(held, nxt, history=[("step_skipped", step.name, None)])
        done = {}
        if resuming:
            checkpoints = await self.store.checkpoints(run.id, step.name)
            done = {c.processor: json.loads(c.output) for c in checkpoints}
        unstarted = [True]
        failed: list[PersistenceError] = []

        async def checkpoint(trace: ProcessorTrace, output: JSON) -> None:
            record = CheckpointRecord(
                run_id=run.id, step=step.name, processor=trace.processor,
                output=self.scrub(canonical(output)),
                trace=self.scrub(canonical(trace.to_dict())),
            )  # fmt: skip
            try:
                await self.leases.ensure(held)
                if unstarted[0]:
                    unstarted[0] = False
                    await self._started(record)
                else:
                    await self.store.put_checkpoint(record)
            except PersistenceError as exc:
                # Stop the step (not an error of the processor: the run's stored state is
                # as it was) and raise it as itself, not inside the step's task group.
                failed.append(exc)
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        with anyio.CancelScope() as scope:
            await runner.run(step, done=done, checkpoint=checkpoint)
        if failed:
            raise failed[0]
        nxt = attrs.evolve(nxt, context=self._fit(process.name, step.name, runner.context))
        history: list[_Log] = [("step_started", step.name, None)] if unstarted[0] else []
        history.append(("step_completed", step.name, None))
        return await self._commit(held, nxt, history=history, drop=[step.name])

    async def _started(self, checkpoint: CheckpointRecord) -> None:
        """Write a step's first checkpoint with its ``step_started`` entry (one transaction)."""
        entry = self._entry(checkpoint.run_id, "step_started", checkpoint.step, None)
        batch = getattr(self.store, "batch", None)
        if callable(batch):
            async with batch() as b:
                b.append_history(entry)
                b.put_checkpoint(checkpoint)
        else:
            await self.store.append_history(entry)
            await self.store.put_checkpoint(checkpoint)

    async def _park(
        self, held: Held, run: RunRecord, process: Process, runner: StepRunner, step: ResumeStep
    ) -> RunRecord | None:
        """Take a matching inbox event (return the resumed run) or park the run (``None``)."""
        key = canonical(
            await runner.js(
                step.key, runner.bindings(step.name), name=f"{step.name}.key", step=step.name
            )
        )
        ctx = runner.context
        event = await self.store.take_event(step.event, key, now=self._now())
        if event is not None:
            delivery = _Delivery(step.name, json.loads(event.payload), event.id)
            return await self._consume(held, run, process, ctx, event=delivery)
        deadline = self._now() + parse_duration(step.timeout) if step.timeout else None
        wait = Wait(run_id=run.id, step=step.name, event=step.event, key=key, deadline=deadline)
        detail: JSON = {"event": step.event, "key": json.loads(key), "deadline": deadline}
        run = await self._commit(
            held, attrs.evolve(run, status="waiting"), wait=wait,
            history=[("waiting", step.name, detail)],
        )  # fmt: skip
        return await self.settle(held, run, process, ctx, wait=wait)

    async def settle(
        self, held: Held, run: RunRecord, process: Process, ctx: dict[str, JSON], *, wait: Wait
    ) -> RunRecord | None:
        """After ``run`` was parked on ``wait``: take an event that came meanwhile, or let go.

        An event published while the run parked may have missed the wait: look once more
        while still holding the lease. Return the resumed run, or ``None`` once the lease
        is given back and the deadline scheduled.
        """
        if run.id in self._cancelled:
            return None
        event = await self.store.take_event(wait.event, wait.key, now=self._now())
        if event is not None and await self.store.delete_wait(run.id) is not None:
            delivery = _Delivery(wait.step, json.loads(event.payload), event.id)
            return await self._consume(held, run, process, ctx, event=delivery)
        self.timers.schedule(wait)
        await self.leases.release(held)
        await anyio.lowlevel.checkpoint()  # let the timer task take the new deadline
        return None

    async def _consume(
        self, held: Held, run: RunRecord, process: Process, ctx: dict[str, JSON], *,
        event: _Delivery,
    ) -> RunRecord:  # fmt: skip
        step = process.steps[run.position]
        assert isinstance(step, ResumeStep)
        events = ctx["events"]
        assert isinstance(events, dict)
        events[step.name] = event.payload
        detail: JSON = {"event": step.event, "id": event.event_id}
        run = await self._commit(
            held,
            attrs.evolve(run, position=run.position + 1, status="running",
                         context=self._fit(process.name, step.name, ctx)),
            history=[*event.before, ("event_consumed", step.name, detail)],
        )  # fmt: skip
        if event.consumed is not None:
            await event.consumed()
        return run

    async def fire(self, wait: Wait) -> bool:
        """Time out the run of ``wait`` if it still waits there past its deadline."""
        async with self.leases.hold(wait.run_id) as held:
            if held is None:
                return False  # another worker has it: it fires it, or recovery does later
            try:
                run = held.record = await self.store.get_run(wait.run_id)
            except RunNotFoundError:
                return False
            process = await self.process(run.process, run.version)
            if run.status != "waiting" or _step_name(process, run.position) != wait.step:
                return False
            current = await self.store.delete_wait(run.id)
            if current is None or current.deadline is None or current.deadline > self._now():
                # Not due after all (the run parked here again), or its wait was lost by a
                # worker that died resuming it: park it again, as it should be.
                step = process.steps[run.position]
                assert isinstance(step, ResumeStep)
                again = current or await self.recovery.lost_wait(run, step)
                await self.store.put_wait(again)
                ctx = json.loads(run.context)
                resumed = await self.settle(held, run, process, ctx, wait=again)
                if resumed is not None:
                    await self._drive(held, resumed, process, ctx)
                return False
            self.timers.forget(run.id)
            await self._timed_out(held, run, process)
            return True

    async def _timed_out(self, held: Held, run: RunRecord, process: Process) -> None:
        step = process.steps[run.position]
        assert isinstance(step, ResumeStep)
        timeout: _Log = ("timeout", step.name, {"timeout": step.timeout})
        ctx: dict[str, JSON] = json.loads(run.context)
        if step.on_timeout == "fail":
            error = (
                f"{process.name}/{step.name}: no {step.event!r} event arrived within {step.timeout}"
            )
            await self._commit(
                held, attrs.evolve(run, status="failed", error=error),
                history=[timeout, ("run_failed", None, error)], release=True,
            )  # fmt: skip
        elif step.on_timeout == "continue":
            event = _Delivery(step.name, step.default, "timeout", before=(timeout,))
            await self._drive(held, run, process, ctx, event=event)
        else:
            assert step.goto is not None
            target = next(i for i, s in enumerate(process.steps) if s.name == step.goto)
            run = await self._commit(
                held, attrs.evolve(run, position=target, status="running"),
                history=[timeout, ("goto", step.name, {"goto": step.goto})],
            )  # fmt: skip
            await self._drive(held, run, process, ctx)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; return False if it had already ended."""
        run = await self.store.get_run(run_id)
        if run.status in _TERMINAL:
            return False
        local = self.leases.held.get(run_id)
        if local is not None:
            # This worker is advancing it: stop at the next step boundary, write it here.
            self._cancelled.add(run_id)
            await self.store.delete_wait(run_id)
            self.timers.forget(run_id)
            ended = attrs.evolve(local.record or run, status="cancelled", updated=self._now(),
                                 owner=None, lease_expires=None)  # fmt: skip
            await self.store.update_run(ended)
            self.leases.wrote(local, ended)
            await self._append(None, run_id, "run_cancelled")
            return True
        patience = self.leases.lease_seconds + 1.0
        async with self.leases.hold(run_id, patience=patience) as held:
            if held is None:
                msg = f"run {run_id!r} is held by another worker; try again"
                raise ConflictError(msg)
            run = held.record = await self.store.get_run(run_id)
            if run.status in _TERMINAL:
                return False
            await self.store.delete_wait(run_id)
            self.timers.forget(run_id)
            await self._commit(held, attrs.evolve(run, status="cancelled"),
                               history=[("run_cancelled", None, None)], release=True)  # fmt: skip
            return True

    # -- queries ------------------------------------------------------------------------

    async def run(self, run_id: str) -> RunInfo:
        """Return the run with its history; raise :class:`~orchestra.RunNotFoundError`."""
        rec = await self.store.get_run(run_id)
        return await self._info(rec, tuple(await self.store.history(run_id)))

    async def runs(
        self, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunInfo]:
        """Return runs (without history), oldest first."""
        return [
            await self._info(r, ())
            for r in await self.store.list_runs(process=process, status=status)
        ]

    async def _info(self, rec: RunRecord, history: tuple[HistoryEntry, ...]) -> RunInfo:
        steps = (await self.process(rec.process, rec.version)).steps
        return RunInfo(id=rec.id, process=rec.process, version=rec.version, status=rec.status,
                       context=json.loads(rec.context), position=rec.position,
                       step=steps[rec.position].name if rec.position < len(steps) else None,
                       error=rec.error, created=rec.created, updated=rec.updated,
                       history=history, owner=rec.owner)  # fmt: skip

    # -- writing ------------------------------------------------------------------------

    def _now(self) -> float:
        return self.engine.executor.now()

    def _fit(self, process: str, step: str, ctx: dict[str, JSON]) -> str:
        text = canonical(ctx)
        size = len(text.encode())
        if size > self.max_context_bytes:
            limit = self.max_context_bytes
            msg = f"the run's context is {size} bytes of JSON, over the limit of {limit}"
            raise ContextLimitError(msg, process=process, step=step)
        return text

    def _entry(
        self, run_id: str, kind: HistoryKind, step: str | None, detail: JSON
    ) -> HistoryEntry:
        text = None if detail is None else self.scrub(canonical(detail))
        return HistoryEntry(run_id=run_id, kind=kind, at=self._now(), step=step, detail=text)

    async def _append(
        self, held: Held | None, run_id: str, kind: HistoryKind, step: str | None = None
    ) -> None:
        if held is not None:
            await self.leases.ensure(held)
        await self.store.append_history(self._entry(run_id, kind, step, None))

    async def _commit(
        self,
        held: Held,
        run: RunRecord,
        *,
        create: bool = False,
        history: Sequence[_Log] = (),
        wait: Wait | None = None,
        drop: Sequence[str | None] = (),
        release: bool = False,
    ) -> RunRecord:
        """Write a run's new state with its history in one transaction (if the store can).

        The record is written with this worker as owner and a fresh lease (a commit is a
        renewal), or with no owner when ``release``. ``drop`` names steps whose
        checkpoints go (``None``: every step's). Nothing is written for a cancelled run.
        """
        if run.id in self._cancelled:
            return run
        if not create:
            await self.leases.ensure(held)
        now = self._now()
        until = None if release else now + self.leases.lease_seconds
        run = attrs.evolve(
            run, context=self.scrub(run.context), error=self.scrub.optional(run.error),
            updated=now, owner=None if release else self.worker_id, lease_expires=until,
        )  # fmt: skip
        entries = [self._entry(run.id, kind, step, detail) for kind, step, detail in history]
        batch = getattr(self.store, "batch", None)
        if callable(batch):
            async with batch() as b:
                (b.create_run if create else b.update_run)(run)
                if wait is not None:
                    b.put_wait(wait)
                for e in entries:
                    b.append_history(e)
                for s in drop:
                    b.delete_checkpoints(run.id, s)
        else:
            await (self.store.create_run if create else self.store.update_run)(run)
            if wait is not None:
                await self.store.put_wait(wait)
            for e in entries:
                await self.store.append_history(e)
            for s in drop:
                await self.store.delete_checkpoints(run.id, s)
        self.leases.wrote(held, run)
        return run


def _step_name(process: Process, position: int) -> str | None:
    return process.steps[position].name if position < len(process.steps) else None


def _tokens(engine: Engine) -> list[str]:
    """The OAuth2 access tokens the engine holds (credentials too: never stored)."""
    cache: Any = getattr(engine._tokens, "_tokens", {})
    return [token for token, _ in cache.values()]


def _check_payload(event: Event, payload: JSON, process: str) -> None:
    if event.schema is None:
        return
    issues = validate_schema(payload, event.schema)
    if issues:
        first = issues[0]
        where = f" (process {process!r})" if process else ""
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise EventError(f"event {event.name!r}{where}: {first.message}{more}", path=first.path)
