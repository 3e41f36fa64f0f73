"""Leases: which worker may advance a run, renewed by a heartbeat while it does.

A worker advances a run only while it holds the run's lease (``Store.claim_run``: the
run's ``owner`` and ``lease_expires``). :meth:`Leases.hold` takes it (waiting a little if
another worker holds it), registers it with the heartbeat, and gives it back when the
work ends. Inside one process a lock per run keeps two tasks of the same worker apart,
since the store cannot tell them from each other.

Every write the engine makes for a held run goes through :meth:`Leases.ensure` first: a
lease with less than half its time left is renewed before the write. Every write is also
*fenced* at the store: the run's record is written with ``update_run(..., owner=...)``
(and checkpoints with the batch condition ``require_owner``), which the store refuses
with ``OwnershipError`` when another worker took the run (ours expired while we stalled,
however long the stall). The engine then marks the lease lost (:meth:`Leases.lost`),
stops working on the run and writes nothing more. The heartbeat renews every held lease
each third of ``lease_seconds``; when a renewal finds the lease taken it cancels the work
on that run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import attrs

from orchestra.engine._common import revise
from orchestra.errors import ConflictError, PersistenceError, RunNotFoundError
from orchestra.executors import Executor
from orchestra.stores import OwnershipError, RunRecord, Store

__all__ = ["Held", "LeaseLostError", "Leases"]

log = logging.getLogger("orchestra.engine")


class LeaseLostError(ConflictError):
    """Another worker took over the run (this worker's lease had expired)."""


@attrs.define(eq=False)
class Held:
    """A run whose lease this worker holds, while it works on it."""

    run_id: str
    expires: float
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    """Serializes this run's lease writes: renewals and the release."""
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    """Cancelled when the lease is lost: the work on the run stops."""
    record: RunRecord | None = None
    """The run as this worker last read or wrote it."""
    released: bool = False
    lost: bool = False


class Leases:
    """The leases one worker (``worker_id``) holds in ``store``."""

    def __init__(
        self, store: Store, executor: Executor, *, worker_id: str, lease_seconds: float
    ) -> None:
        if lease_seconds <= 0:
            msg = f"lease_seconds must be positive, got {lease_seconds!r}"
            raise ValueError(msg)
        self.store = store
        self.executor = executor
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.held: dict[str, Held] = {}
        self.on_release: Callable[[RunRecord], Awaitable[None]] | None = None
        """Called after a lease is given back (the recovery wakes other workers with it)."""
        self._local: dict[str, tuple[anyio.Lock, int]] = {}

    def active(self, run_id: str) -> bool:
        """Whether a task of this worker is working on ``run_id`` (or waiting to)."""
        return run_id in self._local

    def until(self) -> float:
        """The expiry of a lease taken or renewed now."""
        return self.executor.now() + self.lease_seconds

    @asynccontextmanager
    async def hold(
        self, run_id: str, *, patience: float = 0.0, claimed: bool = False
    ) -> AsyncIterator[Held | None]:
        """Hold the run's lease for the block; yield ``None`` if it could not be had.

        ``patience`` is how long to wait (seconds, real time) for another holder to let
        go; ``claimed`` says the caller already owns it (it created the run with this
        worker as owner). On leaving, a lease still held is given back (owner cleared),
        so another worker can take the run at once.
        """
        lock, users = self._local.get(run_id, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._local[run_id] = (lock, users + 1)
        held: Held | None = None
        try:
            got = False
            try:
                lock.acquire_nowait()
                got = True
            except anyio.WouldBlock:
                with anyio.move_on_after(patience):
                    await lock.acquire()
                    got = True
            if not got:
                yield None
                return
            try:
                deadline = time.monotonic() + patience
                until = self.until() if claimed else await self._claim(run_id, deadline)
                if until is None:
                    yield None
                    return
                held = Held(run_id, until)
                self.held[run_id] = held
                try:
                    yield held
                finally:
                    del self.held[run_id]
                    if not held.released and not held.lost:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                            await self._release(held)
            finally:
                lock.release()
        finally:
            lock2, users = self._local[run_id]
            if users <= 1:
                del self._local[run_id]
            else:
                self._local[run_id] = (lock2, users - 1)

    async def _claim(self, run_id: str, deadline: float) -> float | None:
        """Claim the run's lease; return its expiry as stored, ``None`` if it is taken."""
        delay = 0.005
        while True:
            now = self.executor.now()
            until = now + self.lease_seconds
            if await self.store.claim_run(run_id, self.worker_id, until=until, now=now):
                return until
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    def fresh(self, held: Held, now: float) -> bool:
        """Whether ``held`` has more than half its time left at ``now`` (no renewal needed)."""
        return held.expires - now > self.lease_seconds / 2

    async def ensure(self, held: Held) -> None:
        """Make sure ``held`` is still ours for a while before a write; renew if needed."""
        if held.lost:
            raise LeaseLostError(f"run {held.run_id!r}: this worker lost its lease")
        if self.fresh(held, self.executor.now()):
            return
        async with held.lock:
            await self._renew(held)
        if held.lost:
            raise LeaseLostError(f"run {held.run_id!r}: another worker took over the run")

    async def _renew(self, held: Held) -> None:
        now = self.executor.now()
        until = now + self.lease_seconds
        try:
            ok = await self.store.claim_run(held.run_id, self.worker_id, until=until, now=now)
        except RunNotFoundError:
            ok = False
        if ok:
            held.expires = until
        else:
            self.lost(held, "another worker took it")

    def renewed(self, held: Held, now: float) -> float:
        """The lease expiry a commit for ``held`` writes at ``now``.

        A commit renews the lease only once a quarter of it has passed: in between, the
        run's lease fields stay as they are, and the store need not update its index of
        runs by lease for a step (SQLite writes one page less per commit). The lease then
        always has three quarters of its time left after a commit, and at least half
        before a write (:meth:`ensure`).
        """
        if held.expires - now > self.lease_seconds * 0.75:
            return held.expires
        return now + self.lease_seconds

    def lost(self, held: Held, reason: str) -> LeaseLostError:
        """Mark the lease of ``held`` lost: its work is cancelled; return the error to raise."""
        if not held.lost:
            held.lost = True
            held.scope.cancel()
            log.warning(
                "worker %s lost the lease of run %s (%s); it stops working on it",
                self.worker_id, held.run_id, reason,
            )  # fmt: skip
        return LeaseLostError(f"run {held.run_id!r}: this worker lost its lease ({reason})")

    def wrote(self, held: Held, record: RunRecord) -> None:
        """Note that ``record`` was written for ``held`` (its lease fields renew the lease)."""
        held.record = record
        if record.owner is None:
            held.released = True
        elif record.lease_expires is not None:
            held.expires = record.lease_expires

    async def release(self, held: Held) -> None:
        """Give the lease of ``held`` back (clear the run's owner) now."""
        await self._release(held)

    async def _release(self, held: Held) -> None:
        async with held.lock:
            if held.released or held.lost:
                return
            held.released = True
            try:
                run = held.record or await self.store.get_run(held.run_id)
                if run.owner not in (None, self.worker_id):
                    return
                run = revise(run, owner=None, lease_expires=None)
                await self.store.update_run(run, owner=self.worker_id)
                held.record = run
            except OwnershipError as exc:
                self.lost(held, str(exc))
                return
            except PersistenceError as exc:
                log.info("could not give back the lease of run %s: %s", held.run_id, exc)
                return
        if self.on_release is not None:
            await self.on_release(run)

    async def heartbeat(self) -> None:
        """Renew every held lease each third of ``lease_seconds``, until cancelled."""
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            for held in list(self.held.values()):
                if held.released or held.lost or held.lock.locked():
                    continue
                async with held.lock:
                    if held.released or held.lost:
                        continue
                    try:
                        await self._renew(held)
                    except PersistenceError as exc:
                        log.warning("could not renew the lease of run %s: %s", held.run_id, exc)
