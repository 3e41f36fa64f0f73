"""Recovery: taking over the runs of workers that died, and everything found half done.

What a crash can leave behind, and what :meth:`Recovery.recover` (run when the engine is
entered, and by hand) and the poll that follows do about it:

* a run ``running`` whose worker is gone (its lease expired, or it has no owner, or it is
  this worker's own from before a restart): take its lease and go on from its position;
  the step it was in starts again, skipping the processors that have checkpoints;
* a run ``waiting`` that still has an owner: a worker died while resuming or parking it,
  perhaps after claiming its wait. Park it again (the wait is rebuilt from the history's
  ``waiting`` entry, with its original deadline) and take an event that came meanwhile;
* waits with deadlines: back into the timer heap; deadlines that passed while no worker
  ran fire at once, late rather than never;
* an event stored but not delivered (its publisher died in between): delivered to the
  runs waiting for it.

While the engine is open a poll repeats the first checks every ``poll_interval``
(``min(1 s, lease_seconds / 4)``) and fires due deadlines of other workers' runs. When
the store can notify (``Store.supports_notify``: PostgreSQL ``LISTEN``/``NOTIFY``,
SQLite's notification table, the in-memory store's own subscribers) a worker that gives
a running run back wakes the others at once instead of at their next poll. With
``retention`` the poll also deletes runs that ended longer ago than that
(``Store.purge_runs``), and expired inbox events.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio

from orchestra.engine._common import InboxClaim, canonical
from orchestra.engine._leases import LeaseLostError
from orchestra.errors import PersistenceError, RunNotFoundError
from orchestra.model import Process, ResumeStep
from orchestra.model._duration import parse_duration
from orchestra.stores import InboxEvent, RunRecord, Wait

if TYPE_CHECKING:
    from orchestra.engine._business import Business

__all__ = ["CHANNEL", "Recovery"]

log = logging.getLogger("orchestra.engine")

CHANNEL = "orchestra_runs"
"""The notification channel workers wake each other on (payload: a run id, a hint)."""
_TERMINAL = ("completed", "failed", "cancelled")
_EVENTS_PURGE_EVERY = 60.0


class Recovery:
    """Recovery, takeover and housekeeping for one :class:`Business`."""

    def __init__(self, business: Business, *, retention: float | None) -> None:
        if retention is not None and retention < 0:
            msg = f"retention must be a number of seconds >= 0, got {retention!r}"
            raise ValueError(msg)
        self.b = business
        self.retention = retention
        self.poll_interval = min(1.0, business.leases.lease_seconds / 4)
        self._poke = anyio.Event()
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._next_purge = 0.0
        self._next_events_purge = 0.0

    # -- recovering -----------------------------------------------------------------------

    async def recover(self) -> list[str]:
        """Take over orphaned runs, rebuild timers, deliver undelivered events.

        Returns the ids of the runs taken over. Runs are continued (as far as they go)
        before this returns.
        """
        b = self.b
        store = b.store
        await b.versions.refresh()
        taken = await self._take_over_all(await self._orphans())
        await b.timers.load(store.due_waits)
        # Events stored but not delivered: one query pairs them with the waits they match.
        groups: dict[str, tuple[InboxEvent, list[Wait]]] = {}
        for w, event in await store.matched_waits(now=b.now()):
            groups.setdefault(event.id, (event, []))[1].append(w)
        for event, group in groups.values():
            log.info("delivering event %s, stored but never delivered", event.id)
            claim = InboxClaim(event.id, exclusive=False)
            await b.events.deliver(group, json.loads(event.payload), event.id, claim=claim)
        await b.fire_due()
        await self._housekeeping()
        if taken:
            log.info("worker %s took over %d run(s)", b.worker_id, len(taken))
        return taken

    async def _orphans(self) -> list[str]:
        """The runs to take over: the store's orphaned runs that are not ours right now."""
        now = self.b.now()
        found = await self.b.store.orphaned_runs(worker=self.b.worker_id, now=now)
        return [r.id for r in found if self._orphan(r, now)]

    def _orphan(self, run: RunRecord, now: float) -> bool:
        """Whether ``run`` needs a new worker: not ours now, and nobody else's alive."""
        if self.b.leases.active(run.id) or self._retry_at.get(run.id, 0.0) > time.monotonic():
            return False
        if run.owner is None or run.owner == self.b.worker_id:
            return True
        return run.lease_expires is not None and run.lease_expires <= now

    async def _take_over_all(self, run_ids: Iterable[str]) -> list[str]:
        taken: list[str] = []
        limiter = anyio.CapacityLimiter(8)

        async def one(run_id: str) -> None:
            async with limiter:
                if await self.take_over(run_id):
                    taken.append(run_id)

        async with anyio.create_task_group() as tg:
            for run_id in run_ids:
                tg.start_soon(one, run_id)
        return taken

    async def take_over(self, run_id: str) -> bool:
        """Take the run's lease if nobody alive holds it and go on with it.

        Never raises for a store failure: it is logged, and the run is tried again later
        (after 1, 2, 4 ... up to 60 s).
        """
        try:
            ok = await self._take_over(run_id)
        except PersistenceError as exc:
            n = self._failures[run_id] = self._failures.get(run_id, 0) + 1
            self._retry_at[run_id] = time.monotonic() + min(2.0 ** (n - 1), 60.0)
            log.warning("run %s could not be continued: %s", run_id, self.b.scrub(str(exc)))
            return False
        except Exception:  # a bug must not stop the other runs' recovery
            self._retry_at[run_id] = time.monotonic() + 60.0
            log.exception("run %s could not be continued", run_id)
            return False
        self._failures.pop(run_id, None)
        self._retry_at.pop(run_id, None)
        return ok

    async def _take_over(self, run_id: str) -> bool:
        b = self.b
        async with b.leases.hold(run_id) as held:
            if held is None:
                return False
            try:
                run = held.record = await b.store.get_run(run_id)
            except RunNotFoundError:
                held.released = True
                return False
            if run.status in _TERMINAL:
                return False
            process = await b.versions.process(run.process, run.version)
            log.info("worker %s continues run %s of %s at step %d (%s)", b.worker_id, run.id,
                     run.process, run.position, run.status)  # fmt: skip
            ctx: dict[str, Any] = json.loads(run.context)
            if run.status == "waiting":
                step = process.steps[run.position]
                assert isinstance(step, ResumeStep)
                wait = await self.lost_wait(run, step)
                await b.store.put_wait(wait)
                try:
                    resumed = await b.lifecycle.settle(held, run, process, ctx, wait=wait)
                except LeaseLostError:
                    return False
                if resumed is None:
                    return True
                run = resumed
            await b.lifecycle.drive(held, run, process, ctx, resuming=True)
            return True

    async def lost_wait(self, run: RunRecord, step: ResumeStep) -> Wait:
        """Rebuild the wait of a run parked on ``step``: key and deadline as they were."""
        for h in reversed(await self.b.store.history(run.id)):
            if h.kind == "waiting" and h.step == step.name and h.detail is not None:
                detail = json.loads(h.detail)
                return Wait(run_id=run.id, step=step.name, event=step.event,
                            key=canonical(detail["key"]), deadline=detail["deadline"])  # fmt: skip
        # No history of it (a store whose batches are not atomic lost it): compute it again.
        process: Process = await self.b.versions.process(run.process, run.version)
        runner = self.b.engine.runner(process, json.loads(run.context), run_id=run.id)
        key = await runner.js(
            step.key, runner.bindings(step.name), name=f"{step.name}.key", step=step.name
        )
        deadline = run.updated + parse_duration(step.timeout) if step.timeout else None
        return Wait(run_id=run.id, step=step.name, event=step.event, key=canonical(key),
                    deadline=deadline)  # fmt: skip

    # -- while the engine is open ---------------------------------------------------------

    def poke(self) -> None:
        """Make the poll look at the store now."""
        self._poke.set()

    async def poll_loop(self) -> None:
        """Look for orphaned runs and due deadlines every ``poll_interval``, until cancelled."""
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._poke.wait()
            self._poke = anyio.Event()
            try:
                await self.poll()
            except PersistenceError as exc:
                log.warning("polling the store failed: %s", self.b.scrub(str(exc)))

    async def poll(self) -> None:
        """One round of the poll: take over orphans, fire due deadlines, housekeeping."""
        b = self.b
        await b.versions.refresh()
        now = b.now()
        for run_id in await self._orphans():
            b.spawn(self.take_over, run_id)
        for w in await b.store.due_waits(now):
            if not b.leases.active(w.run_id):
                b.spawn(b.interrupts.fire_logged, w)
        await self._housekeeping()

    async def _housekeeping(self) -> None:
        b = self.b
        mono = time.monotonic()
        if self.retention is not None and mono >= self._next_purge:
            self._next_purge = mono + min(60.0, max(self.retention / 2, self.poll_interval))
            await self.purge()
        if mono >= self._next_events_purge:
            self._next_events_purge = mono + _EVENTS_PURGE_EVERY
            await b.store.purge_events(b.now())

    async def purge(self) -> int:
        """Delete the runs that ended more than ``retention`` seconds ago; return how many."""
        if self.retention is None:
            return 0
        count = await self.b.store.purge_runs(before=self.b.now() - self.retention)
        if count:
            log.info("deleted %d run(s) that ended over %g s ago", count, self.retention)
        return count

    async def listen(self) -> None:
        """Wake the poll on every notification of another worker, until cancelled."""
        while True:
            try:
                async with self.b.store.subscribe(CHANNEL) as sub:
                    async for _ in sub:
                        self.poke()
            except PersistenceError as exc:
                log.info("listening for other workers failed: %s", self.b.scrub(str(exc)))
            await anyio.sleep(1.0)

    async def released(self, run: RunRecord) -> None:
        """After a lease was given back mid-run: tell the other workers they may take it."""
        if run.status != "running":
            return
        self.poke()
        if self.b.store.supports_notify:
            try:
                await self.b.store.notify(CHANNEL, run.id)
            except PersistenceError as exc:
                log.info("could not notify other workers: %s", self.b.scrub(str(exc)))
