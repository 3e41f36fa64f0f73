"""What acts on a run from outside its steps: resume deadlines that pass, and cancelling.

A waiting run whose event did not come in time fails, goes on or jumps, as its step's
``on_timeout`` says. The deadlines themselves sit in :mod:`orchestra.engine._timers`; this
module fires one: it takes the run's lease, checks the run still waits where the deadline
was set, claims the wait (``delete_wait``) and commits the timeout. Cancelling a run
writes it ``cancelled`` under its lease (or, when this worker is advancing it, stops that
work at the next step boundary).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from orchestra._json import JSON
from orchestra.engine._common import TERMINAL, Delivery, Log, revise, step_name
from orchestra.engine._leases import LeaseLostError
from orchestra.errors import ConflictError, PersistenceError, RunNotFoundError
from orchestra.model import Process, ResumeStep
from orchestra.stores import OwnershipError, RunRecord, Wait

if TYPE_CHECKING:
    from orchestra.engine._business import Business
    from orchestra.engine._leases import Held

__all__ = ["Interrupts"]

log = logging.getLogger("orchestra.engine")


class Interrupts:
    """Fires the resume deadlines of one :class:`Business`'s runs, and cancels them."""

    def __init__(self, business: Business) -> None:
        self.b = business

    async def fire_logged(self, wait: Wait) -> None:
        """:meth:`fire` in a background task: a store failure is logged (the poll retries)."""
        try:
            await self.fire(wait)
        except PersistenceError as exc:
            log.warning("the deadline of run %s could not fire yet: %s", wait.run_id,
                        self.b.scrub(str(exc)))  # fmt: skip

    async def fire(self, wait: Wait) -> bool:
        """Time out the run of ``wait`` if it still waits there past its deadline."""
        try:
            return await self._fire(wait)
        except LeaseLostError:
            return False  # another worker took the run over: it carries on from there

    async def _fire(self, wait: Wait) -> bool:
        b = self.b
        async with b.leases.hold(wait.run_id) as held:
            if held is None:
                return False  # another worker has it: it fires it, or recovery does later
            try:
                run = held.record = await b.store.get_run(wait.run_id)
            except RunNotFoundError:
                return False
            process = await b.versions.process(run.process, run.version)
            if run.status != "waiting" or step_name(process, run.position) != wait.step:
                return False
            current = await b.store.delete_wait(run.id)
            if current is None or current.deadline is None or current.deadline > b.now():
                # Not due after all (the run parked here again), or its wait was lost by a
                # worker that died resuming it: park it again, as it should be.
                step = process.steps[run.position]
                assert isinstance(step, ResumeStep)
                again = current or await b.recovery.lost_wait(run, step)
                await b.store.put_wait(again)
                ctx = json.loads(run.context)
                resumed = await b.lifecycle.settle(held, run, process, ctx, wait=again)
                if resumed is not None:
                    await b.lifecycle.drive(held, resumed, process, ctx)
                return False
            b.timers.forget(run.id)
            await self._timed_out(held, run, process)
            return True

    async def _timed_out(self, held: Held, run: RunRecord, process: Process) -> None:
        b = self.b
        step = process.steps[run.position]
        assert isinstance(step, ResumeStep)
        timeout: Log = ("timeout", step.name, {"timeout": step.timeout})
        ctx: dict[str, JSON] = json.loads(run.context)
        if step.on_timeout == "fail":
            error = (
                f"{process.name}/{step.name}: no {step.event!r} event arrived within {step.timeout}"
            )
            await b.writer.commit(
                held, revise(run, status="failed", error=error),
                history=[timeout, ("run_failed", None, error)], release=True,
            )  # fmt: skip
        elif step.on_timeout == "continue":
            event = Delivery(step.name, step.default, "timeout", before=(timeout,))
            await b.lifecycle.drive(held, run, process, ctx, event=event)
        else:
            assert step.goto is not None
            target = next(i for i, s in enumerate(process.steps) if s.name == step.goto)
            run = await b.writer.commit(
                held, revise(run, position=target, status="running"),
                history=[timeout, ("goto", step.name, {"goto": step.goto})],
            )  # fmt: skip
            await b.lifecycle.drive(held, run, process, ctx)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; return False if it had already ended."""
        b = self.b
        run = await b.store.get_run(run_id)
        if run.status in TERMINAL:
            return False
        local = b.leases.held.get(run_id)
        if local is not None:
            # This worker is advancing it: stop at the next step boundary, write it here.
            b.cancelled.add(run_id)
            b.timers.forget(run_id)
            ended = revise(local.record or run, status="cancelled", updated=b.now(),
                                 owner=None, lease_expires=None)  # fmt: skip
            try:
                async with b.store.batch() as batch:
                    batch.update_run(ended, owner=b.worker_id)
                    batch.delete_wait(run_id)
                    batch.append_history(b.writer.entry(run_id, "run_cancelled", None, None))
            except OwnershipError as exc:
                b.cancelled.discard(run_id)
                raise b.leases.lost(local, str(exc)) from exc
            b.leases.wrote(local, ended)
            return True
        patience = b.leases.lease_seconds + 1.0
        async with b.leases.hold(run_id, patience=patience) as held:
            if held is None:
                msg = f"run {run_id!r} is held by another worker; try again"
                raise ConflictError(msg)
            run = held.record = await b.store.get_run(run_id)
            if run.status in TERMINAL:
                return False
            b.timers.forget(run_id)
            await b.writer.commit(
                held, revise(run, status="cancelled"), unwait=True, drop=[None],
                history=[("run_cancelled", None, None)], release=True,
            )  # fmt: skip
            return True
