"""Events: publishing one stores it in the inbox, starts runs and resumes the runs waiting.

An event is stored first (unconsumed), then delivered to each run waiting for it: the
publishing worker takes the run's lease and commits the event into the run. The first of
those commits also marks the event consumed in the inbox (one transaction), so an event
either reached a run and left the inbox, or neither. An event no run was waiting for stays
in the inbox until a run reaches its resume step and takes it (in that run's commit too).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from orchestra._json import JSON
from orchestra.engine._common import (
    Delivery,
    InboxClaim,
    canonical,
    check_payload,
    start_id,
    step_name,
)
from orchestra.errors import EventError, PersistenceError, RunNotFoundError, StepError
from orchestra.model import Event, ResumeStep
from orchestra.stores import InboxEvent, Wait

if TYPE_CHECKING:
    from orchestra.engine._business import Business

__all__ = ["Events", "PublishResult"]


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
    background: bool = False
    """True when published with ``wait=False``: the event and the runs it starts are
    stored, and the engine's background tasks go on with them. ``resumed`` then lists the
    runs the event is being delivered to (one that moved on meanwhile will not take it)."""


class Events:
    """Publishes events to the runs of one :class:`Business`."""

    def __init__(self, business: Business) -> None:
        self.b = business

    async def publish(
        self, name: str, payload: JSON, *, event_id: str | None = None, wait: bool = True
    ) -> PublishResult:
        """Start the runs this event triggers and resume the waiting runs it matches.

        A worker that dies in between leaves the event unconsumed (unless a run recorded
        it): publishing it again with the same id (or :meth:`recover`) delivers it to the
        runs still waiting for it, and starts the runs it should have started. Without
        ``wait``, this returns once the event and the runs it starts are stored; the
        deliveries and the runs go on in the engine's background tasks.
        """
        b = self.b
        if not wait:
            b.require_open()
        event_id = event_id or uuid.uuid4().hex
        if not b.versions.knows(name):  # deployed by another worker since we last looked?
            await b.versions.refresh()
        deployed = [
            await b.versions.process(v.name, v.seq) for v in (await b.versions.deployed()).values()
        ]
        starters = [p for p in deployed if isinstance(p.trigger, Event) and p.trigger.name == name]
        for p in starters:
            assert isinstance(p.trigger, Event)
            check_payload(p.trigger, payload, p.name)
        keys = await self._event_keys(name, payload)
        now = b.now()
        stored = InboxEvent(id=event_id, name=name, key=keys[0] if keys else None,
                            payload=b.scrub(canonical(payload)), received=now,
                            expires=now + b.event_ttl)  # fmt: skip
        fresh = await b.store.add_event(stored)
        resumed: list[str] = []
        for key in keys:
            waits = await b.store.find_waits(name, key)
            if not waits:
                continue
            if fresh:
                # Taken out of the inbox by the first run's commit that records it.
                claim = InboxClaim(event_id, exclusive=False) if key == stored.key else None
                resumed += await self._deliver(waits, payload, event_id, claim, wait=wait)
            else:
                # A known id: normally all was done. If its first delivery was cut short
                # (the worker died before any run recorded it), it is still in the inbox.
                pending = await b.store.peek_event(name, key, now=b.now())
                if pending is not None:
                    claim = InboxClaim(pending.id, exclusive=False)
                    payload_then = json.loads(pending.payload)
                    resumed += await self._deliver(
                        waits, payload_then, pending.id, claim, wait=wait
                    )
        started: list[str] = []
        for p in starters:
            # A retried delivery finds its run there (None): it was started the first time.
            run_id = await b.lifecycle.start(p.name, payload, start_id(event_id, p.name), wait=wait)
            if run_id is not None:
                started.append(run_id)
        kept = fresh and not resumed and bool(keys)
        return PublishResult(event_id=event_id, started=tuple(started), resumed=tuple(resumed),
                             duplicate=not fresh, kept=kept, background=not wait)  # fmt: skip

    async def _deliver(
        self,
        waits: Sequence[Wait],
        payload: JSON,
        event_id: str,
        claim: InboxClaim | None,
        *,
        wait: bool,
    ) -> list[str]:
        """Deliver now (return the runs resumed) or in the background (the runs found)."""
        if wait:
            return await self.deliver(waits, payload, event_id, claim=claim)
        # The event is in the inbox, unconsumed: if this worker dies before a run records
        # it, recovery delivers it (Store.matched_waits).
        self.b.start_soon_logged(functools.partial(self.deliver, claim=claim), waits, payload,
                                 event_id)  # fmt: skip
        return list(dict.fromkeys(w.run_id for w in waits))

    async def deliver(
        self,
        waits: Sequence[Wait],
        payload: JSON,
        event_id: str,
        *,
        claim: InboxClaim | None = None,
    ) -> list[str]:
        """Resume each run of ``waits`` with the event; return the ids of those it resumed.

        ``claim`` is the inbox event the first recording run consumes. Raises the first
        :class:`~orchestra.PersistenceError` of a run (the others went on).
        """
        waits = list({w.run_id: w for w in waits}.values())
        done: list[bool] = [False] * len(waits)
        errors: list[PersistenceError] = []
        event = Delivery("", payload, event_id, claim=claim)

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

    async def _resume(self, wait: Wait, event: Delivery) -> bool:
        b = self.b
        patience = min(b.leases.lease_seconds, 2.0)
        async with b.leases.hold(wait.run_id, patience=patience) as held:
            if held is None:
                return False  # a dead worker's lease: recovery re-parks it and finds the event
            try:
                run = held.record = await b.store.get_run(wait.run_id)
            except RunNotFoundError:
                return False
            process = await b.versions.process(run.process, run.version)
            if run.status != "waiting" or step_name(process, run.position) != wait.step:
                return False
            b.timers.forget(run.id)
            # The commit that records the event deletes the wait with it.
            return await b.lifecycle.drive(held, run, process, json.loads(run.context),
                                           event=event)  # fmt: skip

    async def _event_keys(self, name: str, payload: JSON) -> list[str]:
        """Read the event's correlation keys, once per distinct key fragment in use."""
        b = self.b
        sources: list[tuple[str, Event | None]] = []
        for p in list(b.versions.processes.values()):
            declared = next((e for e in p.events if e.name == name), None)
            for s in p.steps:
                if isinstance(s, ResumeStep) and s.event == name:
                    src = s.event_key or (declared.key if declared else None)
                    if src is not None and all(src != have for have, _ in sources):
                        sources.append((src, declared))
        keys: list[str] = []
        for src, declared in sources:
            if declared is not None:
                check_payload(declared, payload, "")
            try:
                value = await b.engine.sandbox.evaluate(
                    src, {"payload": payload}, name=f"{name}.key"
                )
            except StepError as exc:
                msg = f"event {name!r}: its correlation key could not be read: {exc}"
                raise EventError(msg) from exc
            if canonical(value) not in keys:
                keys.append(canonical(value))
        return keys
