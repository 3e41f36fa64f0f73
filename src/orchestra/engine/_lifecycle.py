"""A run's life: started, advanced step by step, parked on resume steps, resumed, ended.

Every move is one commit (:mod:`orchestra.engine._commits`), made while this worker holds
the run's lease (:mod:`orchestra.engine._leases`). What a step writes:

* a step with one processor: nothing until it ends; then one commit holds its output
  (in the context), ``step_started`` (stamped with the step's start), ``step_completed``
  and the run's new position;
* a step with several: a checkpoint per processor as it ends (the first with
  ``step_started``), except the last to end, whose output travels in the step's end
  commit, which also drops the step's checkpoints;
* the last step's end and the run's end (``run_completed``, the lease given back) are
  one commit.

An event reaches a run at its resume step in one commit too: the event in the context,
``event_consumed``, the run's new position, its wait deleted and, when the event came
from the inbox, the inbox event marked consumed (``consume_event``: the commit fails if
another run took it first, and the run looks again).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.lowlevel
import attrs

from orchestra._json import JSON
from orchestra.engine._commits import ContextText
from orchestra.engine._common import (
    Delivery,
    InboxClaim,
    Log,
    canonical,
    check_payload,
    revise,
    step_name,
)
from orchestra.engine._leases import LeaseLostError
from orchestra.engine._steps import StepRunner, truthy
from orchestra.engine._trace import ProcessorTrace
from orchestra.engine._versions import NotDeployedError
from orchestra.errors import ConflictError, PersistenceError, StepError
from orchestra.model import Event, Process, ProcessStep, ResumeStep
from orchestra.model._duration import parse_duration
from orchestra.stores import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    RunRecord,
    Wait,
)

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from orchestra.engine._business import Business
    from orchestra.engine._leases import Held

__all__ = ["Lifecycle"]

log = logging.getLogger("orchestra.engine")


class _Ending(NamedTuple):
    """A step that ended, not yet committed: the run after it and what to write with it."""

    run: RunRecord
    history: list[Log | HistoryEntry]
    drop: list[str | None]


@attrs.define
class _Progress:
    """What :meth:`Lifecycle.drive` was asked to deliver, and whether it did."""

    event: Delivery | None
    consumed: bool = False


class Lifecycle:
    """Starts, advances, parks and resumes the runs of one :class:`Business`."""

    def __init__(self, business: Business) -> None:
        self.b = business

    # -- starting -----------------------------------------------------------------------

    async def start(
        self, name: str, payload: JSON, run_id: str, *, wait: bool = True
    ) -> str | None:
        """Start run ``run_id`` of ``name``'s latest version; ``None`` if the id exists.

        With ``wait`` the run goes as far as it can before this returns; without, this
        returns once the run is stored and the engine's background tasks drive it.
        """
        if wait:
            return await self._start(name, payload, run_id)
        started: str | None = await self.b.start_background(self._start, name, payload, run_id)
        return started

    async def _start(
        self,
        name: str,
        payload: JSON,
        run_id: str,
        *,
        task_status: TaskStatus[str | None] = anyio.TASK_STATUS_IGNORED,
    ) -> str | None:
        b = self.b
        version = (await b.versions.deployed()).get(name)
        if version is None:
            raise NotDeployedError(name)
        process = await b.versions.process(name, version.seq)
        if isinstance(process.trigger, Event):
            check_payload(process.trigger, payload, process.name)
        context: dict[str, JSON] = {"trigger": payload, "steps": {}, "events": {}}
        text = b.writer.fit(process.name, "trigger", context)
        now = b.now()
        run = RunRecord(id=run_id, process=name, version=version.seq, status="running",
                        context=text, created=now, updated=now)  # fmt: skip
        async with b.leases.hold(run.id, claimed=True) as held:
            assert held is not None
            try:
                started: Log = ("run_started", None, {"version": version.seq})
                run = await b.writer.commit(held, run, create=True, history=[started])
            except ConflictError:
                held.released = True  # the run is someone else's: nothing of ours to give back
                task_status.started(None)
                return None
            task_status.started(run.id)
            await self.drive(held, run, process, context)
        return run.id

    # -- advancing ----------------------------------------------------------------------

    async def drive(
        self,
        held: Held,
        run: RunRecord,
        process: Process,
        ctx: dict[str, JSON],
        *,
        event: Delivery | None = None,
        resuming: bool = False,
    ) -> bool:
        """Run ``run`` from its position until it waits, ends or fails (holding its lease).

        ``event`` is consumed when the run is at its resume step; returns whether it was.
        ``resuming`` says the run was interrupted inside its step (a takeover): its
        checkpoints are read. A lease lost on the way stops the run here, quietly.
        """
        progress = _Progress(event)
        try:
            with held.scope:
                await self._advance(held, run, process, ctx, progress, resuming=resuming)
        except LeaseLostError as exc:
            log.info("worker %s stops advancing run %s: %s", self.b.worker_id, run.id, exc)
        return progress.consumed

    async def _advance(
        self,
        held: Held,
        run: RunRecord,
        process: Process,
        ctx: dict[str, JSON],
        progress: _Progress,
        *,
        resuming: bool,
    ) -> None:
        b = self.b
        runner = b.engine.runner(process, ctx, run_id=run.id)
        held.record = run
        steps = process.steps
        # Checkpoints outlive their step only if it failed, or on a takeover.
        drop_all: list[str | None] = [None] if resuming or _checkpointed(process) else []
        last: _Ending | None = None  # the last step's end goes with the run's end
        texts = ContextText()  # each step encodes only what it adds to the context
        try:
            while run.position < len(steps):
                if run.id in b.cancelled:
                    return
                step = steps[run.position]
                if isinstance(step, ResumeStep):
                    if progress.event is not None and progress.event.step == step.name:
                        run = await self.consume(held, run, process, ctx, progress.event)
                        progress.event, progress.consumed = None, True
                        continue
                    resumed = await self._park(held, run, process, runner, step)
                    if resumed is None:
                        return
                    run = resumed
                    continue
                ending = await self._step(
                    held, run, process, runner, step, texts=texts, resuming=resuming
                )
                resuming = False  # a step never started has no checkpoints
                if ending.run.position < len(steps):
                    run = await b.writer.commit(
                        held, ending.run, history=ending.history, drop=ending.drop
                    )
                else:
                    last, run = ending, ending.run
            if process.output is not None:
                ctx["output"] = await runner.js(
                    process.output, runner.bindings(""), name="output", step="output"
                )
                run = revise(run, context=b.writer.fit(process.name, "output", ctx, texts))
        except StepError as exc:
            where = step_name(process, run.position) or "output"
            exc.located(process=process.name, step=where, processor=None)
            error = str(exc)
            history = [*(last.history if last else ()), ("step_failed", where, error),
                       ("run_failed", None, error)]  # fmt: skip
            await b.writer.commit(
                held, revise(run, status="failed", error=error),
                history=history, drop=drop_all, release=True,
            )  # fmt: skip
            return
        history = [*(last.history if last else ()), ("run_completed", None, None)]
        await b.writer.commit(
            held, revise(run, status="completed"), history=history, drop=drop_all,
            release=True,
        )  # fmt: skip

    async def _step(
        self,
        held: Held,
        run: RunRecord,
        process: Process,
        runner: StepRunner,
        step: ProcessStep,
        *,
        texts: ContextText,
        resuming: bool,
    ) -> _Ending:
        """Run a process step; return its end for the caller to commit."""
        b = self.b
        if step.when is not None:
            when = runner.js(
                step.when, runner.bindings(step.name), name=f"{step.name}.when", step=step.name
            )
            if not truthy(await when):
                nxt = revise(run, position=run.position + 1, status="running")
                return _Ending(nxt, [("step_skipped", step.name, None)], [])
        started_at = b.now()
        done: dict[str, JSON] = {}
        if resuming:
            checkpoints = await b.store.checkpoints(run.id, step.name)
            done = {c.processor: json.loads(c.output) for c in checkpoints}
        total = len(step.processors)
        ended = len(done)
        unstarted = True
        failed: list[PersistenceError] = []

        async def checkpoint(trace: ProcessorTrace, output: JSON) -> None:
            nonlocal ended, unstarted
            ended += 1
            if ended >= total:
                return  # the last output to arrive is written with the step's end
            record = CheckpointRecord(
                run_id=run.id, step=step.name, processor=trace.processor,
                output=b.scrub(canonical(output)),
                trace=b.scrub(canonical(trace.to_dict())),
            )  # fmt: skip
            first = None
            if unstarted:
                unstarted = False
                first = b.writer.entry(run.id, "step_started", step.name, None, at=started_at)
            try:
                await b.writer.checkpoint(held, record, started=first)
            except PersistenceError as exc:
                # Stop the step (not an error of the processor: the run's stored state is
                # as it was) and raise it as itself, not inside the step's task group.
                failed.append(exc)
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        if total > 1:
            with anyio.CancelScope() as scope:
                await runner.run(step, done=done, checkpoint=checkpoint)
        else:  # nothing to checkpoint: no scope to cancel
            await runner.run(step, done=done)
        if failed:
            raise failed[0]
        text = b.writer.fit(process.name, step.name, runner.context, texts)
        nxt = revise(run, position=run.position + 1, status="running", context=text)
        history: list[Log | HistoryEntry] = []
        if unstarted:
            history.append(b.writer.entry(run.id, "step_started", step.name, None, at=started_at))
        history.append(("step_completed", step.name, None))
        return _Ending(nxt, history, [step.name] if total > 1 or done else [])

    # -- waiting and resuming -----------------------------------------------------------

    async def _park(
        self, held: Held, run: RunRecord, process: Process, runner: StepRunner, step: ResumeStep
    ) -> RunRecord | None:
        """Take a matching inbox event (return the resumed run) or park the run (``None``)."""
        b = self.b
        key = canonical(
            await runner.js(
                step.key, runner.bindings(step.name), name=f"{step.name}.key", step=step.name
            )
        )
        ctx = runner.context
        resumed = await self._take_early(
            held, run, process, ctx, Wait(run_id=run.id, step=step.name, event=step.event, key=key)
        )
        if resumed is not None:
            return resumed
        deadline = b.now() + parse_duration(step.timeout) if step.timeout else None
        wait = Wait(run_id=run.id, step=step.name, event=step.event, key=key, deadline=deadline)
        detail: JSON = {"event": step.event, "key": json.loads(key), "deadline": deadline}
        run = await b.writer.commit(
            held, revise(run, status="waiting"), wait=wait,
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
        b = self.b
        if run.id in b.cancelled:
            return None
        resumed = await self._take_early(held, run, process, ctx, wait)
        if resumed is not None:
            return resumed
        b.timers.schedule(wait)
        await b.leases.release(held)
        await anyio.lowlevel.checkpoint()  # let the timer task take the new deadline
        return None

    async def _take_early(
        self, held: Held, run: RunRecord, process: Process, ctx: dict[str, JSON], wait: Wait
    ) -> RunRecord | None:
        """Consume the oldest inbox event for ``wait`` (return the run), if there is one."""
        b = self.b
        while (found := await b.store.peek_event(wait.event, wait.key, now=b.now())) is not None:
            claim = InboxClaim(found.id, exclusive=True)
            delivery = Delivery(wait.step, json.loads(found.payload), found.id, claim=claim)
            try:
                return await self.consume(held, run, process, ctx, delivery)
            except EventTakenError:
                continue  # another run took it first: look again
        return None

    async def consume(
        self, held: Held, run: RunRecord, process: Process, ctx: dict[str, JSON],
        event: Delivery,
    ) -> RunRecord:  # fmt: skip
        """Record ``event`` at the run's resume step: one commit moves the run past it.

        Raises :class:`~orchestra.stores.EventTakenError` for an event taken from the inbox
        (an exclusive claim) that another run consumed first; the run is unchanged.
        """
        b = self.b
        step = process.steps[run.position]
        assert isinstance(step, ResumeStep)
        events = ctx["events"]
        assert isinstance(events, dict)
        events[step.name] = event.payload
        detail: JSON = {"event": step.event, "id": event.event_id}
        history = [*event.before, ("event_consumed", step.name, detail)]
        try:
            nxt = revise(run, position=run.position + 1, status="running",
                               context=b.writer.fit(process.name, step.name, ctx))  # fmt: skip
        except StepError:
            del events[step.name]
            raise
        claim = event.claim
        consume = claim.event_id if claim is not None and not claim.done else None
        try:
            nxt = await b.writer.commit(held, nxt, history=history, unwait=True, consume=consume)
        except EventTakenError:
            assert claim is not None
            claim.done = True
            if claim.exclusive:
                del events[step.name]
                raise
            # The event was delivered to this run while it waited; another run took it
            # out of the inbox meanwhile. This run still records it.
            return await b.writer.commit(held, nxt, history=history, unwait=True)
        if claim is not None:
            claim.done = True
        return nxt


def _checkpointed(process: Process) -> bool:
    """Whether runs of ``process`` write checkpoints (a step has several processors)."""
    return any(isinstance(s, ProcessStep) and len(s.processors) > 1 for s in process.steps)
