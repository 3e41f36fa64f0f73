"""Business processes: deployed versions, durable runs, events that start and resume them.

A waiting run costs a store row and an entry in one in-memory timer heap; no task sleeps
per run. One timer task (started by ``async with engine``) sleeps on the executor's clock
until the earliest deadline, so a virtual clock fires deadlines as it is advanced.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import uuid
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.lowlevel
import attrs

from orchestra._json import JSON
from orchestra._jsonschema import validate as validate_schema
from orchestra.engine._steps import StepRunner, truthy
from orchestra.engine._trace import ProcessorTrace
from orchestra.errors import EventError, OrchestraError, StepError
from orchestra.executors import Executor, VirtualClock
from orchestra.executors._inmemory import _Sleeper
from orchestra.model import Event, Process, ProcessStep, ResumeStep
from orchestra.model._duration import parse_duration
from orchestra.stores import (
    CheckpointRecord,
    HistoryEntry,
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

__all__ = ["Business", "ContextLimitError", "NotDeployedError", "PublishResult", "RunInfo"]

_TERMINAL = ("completed", "failed", "cancelled")


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
    """True when an event with this id was published before; nothing happened."""
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


class Business:
    """The business-process half of an :class:`~orchestra.Engine`; the engine delegates here."""

    def __init__(
        self, engine: Engine, store: Store, *, event_ttl: float, max_context_bytes: int
    ) -> None:
        self.engine = engine
        self.store = store
        self.event_ttl = event_ttl
        self.max_context_bytes = max_context_bytes
        self._processes: dict[tuple[str, int], Process] = {}
        self._latest: dict[str, Version] | None = None
        self._heap: list[tuple[float, int, str]] = []
        self._deadline: dict[str, float] = {}
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until = float("inf")
        self._tg: TaskGroup | None = None
        self._cancelled: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def run_timers(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load every stored deadline, then fire deadlines as they come, until cancelled."""
        for w in await self.store.list_waits():
            if w.deadline is not None:
                self._schedule(w.run_id, w.deadline)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._timer_loop()
            finally:
                self._tg = None

    async def _timer_loop(self) -> None:
        ex = self.engine.executor
        while True:
            if not self._heap:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            delay = self._heap[0][0] - ex.now()
            if delay > 0:
                with anyio.CancelScope() as scope:
                    self._sleep, self._sleep_until = scope, self._heap[0][0]
                    await _sleep(ex, delay)
                self._sleep, self._sleep_until = None, float("inf")
                continue
            await self.fire_due(spawn=True)

    def _schedule(self, run_id: str, deadline: float) -> None:
        self._deadline[run_id] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), run_id))
        if self._wake is not None:
            self._wake.set()
        if self._sleep is not None and deadline < self._sleep_until:
            self._sleep.cancel()

    async def fire_due(self, *, spawn: bool = False) -> list[str]:
        """Time out every run whose deadline has passed; return their ids."""
        now = self.engine.executor.now()
        fired = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, run_id = heapq.heappop(self._heap)
            if self._deadline.get(run_id) != deadline:
                continue  # stale entry: the run was resumed or waits elsewhere now
            del self._deadline[run_id]
            wait = await self.store.delete_wait(run_id)
            if wait is None:
                continue
            fired.append(run_id)
            if spawn and self._tg is not None:
                self._tg.start_soon(self._timed_out, wait)
            else:
                await self._timed_out(wait)
        return fired

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
            latest: dict[str, Version] = {}
            for v in await self.store.list_versions():
                latest[v.name] = v
            self._latest = {n: v for n, v in latest.items() if v.deployed}
        return self._latest

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
        version = (await self._deployed()).get(name)
        if version is None:
            raise NotDeployedError(name)
        process = await self.process(name, version.seq)
        if isinstance(process.trigger, Event):
            _check_payload(process.trigger, payload, process.name)
        context: dict[str, JSON] = {"trigger": payload, "steps": {}, "events": {}}
        text = self._fit(process.name, "trigger", context)
        now = self._now()
        run = RunRecord(id=run_id or uuid.uuid4().hex, process=name, version=version.seq,
                        status="running", context=text, created=now, updated=now)  # fmt: skip
        await self.store.create_run(run)
        await self._log(run.id, "run_started", detail={"version": version.seq})
        await self.advance(run.id)
        return run.id

    async def publish(
        self, name: str, payload: JSON, *, event_id: str | None = None
    ) -> PublishResult:
        """Start the runs this event triggers and resume the waiting runs it matches."""
        event_id = event_id or uuid.uuid4().hex
        deployed = [await self.process(v.name, v.seq) for v in (await self._deployed()).values()]
        starters = [p for p in deployed if isinstance(p.trigger, Event) and p.trigger.name == name]
        for p in starters:
            assert isinstance(p.trigger, Event)
            _check_payload(p.trigger, payload, p.name)
        keys = await self._event_keys(name, payload)
        waits = [w for k in keys for w in await self.store.find_waits(name, k)]
        now = self._now()
        stored = InboxEvent(id=event_id, name=name, key=keys[0] if keys else None,
                            payload=canonical(payload), received=now,
                            expires=now + self.event_ttl, consumed=bool(waits))  # fmt: skip
        if not await self.store.add_event(stored):
            return PublishResult(event_id=event_id, duplicate=True)
        resumed: list[str] = []
        async with anyio.create_task_group() as tg:
            for w in waits:
                if await self.store.delete_wait(w.run_id) is not None:
                    self._deadline.pop(w.run_id, None)
                    resumed.append(w.run_id)
                    tg.start_soon(self._resume, w.run_id, w.step, payload, event_id)
        started = [await self.start(p.name, payload) for p in starters]
        return PublishResult(event_id=event_id, started=tuple(started), resumed=tuple(resumed),
                             kept=not waits and keys != [])  # fmt: skip

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

    async def advance(self, run_id: str, *, event: tuple[str, JSON, str] | None = None) -> None:
        """Run ``run_id`` from its position until it waits, ends or fails.

        ``event`` is ``(resume step, payload, event id)`` when an event resumes the run.
        """
        run = await self.store.get_run(run_id)
        process = await self.process(run.process, run.version)
        ctx: dict[str, JSON] = json.loads(run.context)
        runner = self.engine.runner(process, ctx, run_id=run_id)
        pos = run.position
        run = attrs.evolve(run, status="running")
        try:
            while pos < len(process.steps):
                if run_id in self._cancelled:
                    return
                step = process.steps[pos]
                if isinstance(step, ResumeStep):
                    if event is not None and event[0] == step.name:
                        await self._consume(run_id, ctx, step, event[1], event[2])
                        event = None
                    elif not await self._wait(run, process, runner, step, pos):
                        return
                else:
                    await self._step(run_id, process, runner, step)
                pos += 1
                run = await self._save(run, ctx, pos, "running")
        except StepError as exc:
            exc.located(process=process.name, step=process.steps[pos].name, processor=None)
            await self._log(run_id, "step_failed", process.steps[pos].name, str(exc))
            await self._save(run, ctx, pos, "failed", error=str(exc))
            await self._log(run_id, "run_failed", detail=str(exc))
            return
        if process.output is not None:
            ctx["output"] = await runner.js(
                process.output, runner.bindings(""), name="output", step="output"
            )
        await self._save(run, ctx, pos, "completed")
        await self._log(run_id, "run_completed")
        await self.store.delete_checkpoints(run_id)

    async def _step(
        self, run_id: str, process: Process, runner: StepRunner, step: ProcessStep
    ) -> None:
        b = runner.bindings(step.name)
        if step.when is not None and not truthy(
            await runner.js(step.when, b, name=f"{step.name}.when", step=step.name)
        ):
            await self._log(run_id, "step_skipped", step.name)
            return
        await self._log(run_id, "step_started", step.name)
        done = {
            c.processor: json.loads(c.output)
            for c in await self.store.checkpoints(run_id, step.name)
        }

        async def checkpoint(trace: ProcessorTrace, output: JSON) -> None:
            await self.store.put_checkpoint(CheckpointRecord(
                run_id=run_id, step=step.name, processor=trace.processor,
                output=canonical(output), trace=canonical(trace.to_dict())))  # fmt: skip

        await runner.run(step, done=done, checkpoint=checkpoint)
        self._fit(process.name, step.name, runner.context)
        await self._log(run_id, "step_completed", step.name)
        await self.store.delete_checkpoints(run_id, step.name)

    async def _wait(
        self, run: RunRecord, process: Process, runner: StepRunner, step: ResumeStep, pos: int
    ) -> bool:
        """Take a matching inbox event (True) or park the run on ``step`` (False)."""
        key = canonical(
            await runner.js(
                step.key, runner.bindings(step.name), name=f"{step.name}.key", step=step.name
            )
        )
        ctx = runner.context
        event = await self.store.take_event(step.event, key, now=self._now())
        if event is not None:
            await self._consume(run.id, ctx, step, json.loads(event.payload), event.id)
            return True
        deadline = self._now() + parse_duration(step.timeout) if step.timeout else None
        await self.store.put_wait(
            Wait(run_id=run.id, step=step.name, event=step.event, key=key, deadline=deadline)
        )
        await self._save(run, ctx, pos, "waiting")
        await self._log(
            run.id,
            "waiting",
            step.name,
            {"event": step.event, "key": json.loads(key), "deadline": deadline},
        )
        # An event published while we parked may have missed the wait: look once more.
        event = await self.store.take_event(step.event, key, now=self._now())
        if event is not None and await self.store.delete_wait(run.id) is not None:
            await self._consume(run.id, ctx, step, json.loads(event.payload), event.id)
            return True
        if deadline is not None:
            self._schedule(run.id, deadline)
            await anyio.lowlevel.checkpoint()  # let the timer task take the new deadline
        return False

    async def _consume(
        self, run_id: str, ctx: dict[str, JSON], step: ResumeStep, payload: JSON, event_id: str
    ) -> None:
        events = ctx["events"]
        assert isinstance(events, dict)
        events[step.name] = payload
        await self._log(run_id, "event_consumed", step.name, {"event": step.event, "id": event_id})

    async def _resume(self, run_id: str, step: str, payload: JSON, event_id: str) -> None:
        await self.advance(run_id, event=(step, payload, event_id))

    async def _timed_out(self, wait: Wait) -> None:
        run = await self.store.get_run(wait.run_id)
        process = await self.process(run.process, run.version)
        step = process.step(wait.step)
        assert isinstance(step, ResumeStep)
        await self._log(run.id, "timeout", step.name, {"timeout": step.timeout})
        if step.on_timeout == "fail":
            error = (
                f"{process.name}/{step.name}: no {step.event!r} event arrived within {step.timeout}"
            )
            await self._save(run, json.loads(run.context), run.position, "failed", error=error)
            await self._log(run.id, "run_failed", detail=error)
        elif step.on_timeout == "continue":
            await self.advance(run.id, event=(step.name, step.default, "timeout"))
        else:
            assert step.goto is not None
            target = next(i for i, s in enumerate(process.steps) if s.name == step.goto)
            await self._log(run.id, "goto", step.name, {"goto": step.goto})
            await self.store.update_run(attrs.evolve(run, position=target, status="running"))
            await self.advance(run.id)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; return False if it had already ended."""
        run = await self.store.get_run(run_id)
        if run.status in _TERMINAL:
            return False
        self._cancelled.add(run_id)
        await self.store.delete_wait(run_id)
        self._deadline.pop(run_id, None)
        await self.store.update_run(attrs.evolve(run, status="cancelled", updated=self._now()))
        await self._log(run_id, "run_cancelled")
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
                       history=history)  # fmt: skip

    # -- helpers ------------------------------------------------------------------------

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

    async def _save(self, run: RunRecord, ctx: dict[str, JSON], pos: int, status: RunStatus,
                    *, error: str | None = None) -> RunRecord:  # fmt: skip
        if run.id in self._cancelled:
            return run
        run = attrs.evolve(run, context=canonical(ctx), position=pos, status=status,
                           error=error, updated=self._now())  # fmt: skip
        await self.store.update_run(run)
        return run

    async def _log(self, run_id: str, kind: Literal[
        "run_started", "step_started", "step_completed", "step_skipped", "step_failed", "waiting",
        "event_consumed", "timeout", "goto", "run_completed", "run_failed", "run_cancelled",
    ], step: str | None = None, detail: JSON = None) -> None:  # fmt: skip
        text = None if detail is None else canonical(detail)
        await self.store.append_history(
            HistoryEntry(run_id=run_id, kind=kind, at=self._now(), step=step, detail=text)
        )


def _check_payload(event: Event, payload: JSON, process: str) -> None:
    if event.schema is None:
        return
    issues = validate_schema(payload, event.schema)
    if issues:
        first = issues[0]
        where = f" (process {process!r})" if process else ""
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise EventError(f"event {event.name!r}{where}: {first.message}{more}", path=first.path)


async def _sleep(executor: Executor, seconds: float) -> None:
    """Sleep on the executor's clock; on a virtual clock, wait for time to be moved.

    A resume deadline days away must not make a virtual clock jump by itself whenever the
    loop is idle: it fires when a test advances the clock (or another sleeper drives it).
    """
    clock = getattr(executor, "clock", None)
    if not isinstance(clock, VirtualClock):
        await executor.sleep(seconds)
        return
    me = _Sleeper(clock.now() + seconds, next(clock._seq))
    heapq.heappush(clock._heap, me)
    try:
        await me.event.wait()
    finally:
        if me in clock._heap:
            clock._heap.remove(me)
            heapq.heapify(clock._heap)
