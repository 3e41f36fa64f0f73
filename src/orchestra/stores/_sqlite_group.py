"""Group commit of :class:`~orchestra.stores.SQLiteStore`.

Under asyncio, the batches that several tasks commit in the same turn of the event loop
share one transaction, each inside a savepoint when it needs one: a commit, the WAL write
of every page it dirtied, is paid once for the group. The store's class docstring says
what a caller can rely on.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

from orchestra._loops import asyncio_loop
from orchestra.errors import ConflictError, PersistenceError, RunNotFoundError
from orchestra.stores._sqlite_sql import _apply_batch

if TYPE_CHECKING:
    from orchestra.stores._batch import Op
    from orchestra.stores._sqlite_conn import _Connection


class _GroupCommit:
    """The commit of one store's batches, alone or grouped with this loop turn's."""

    def __init__(self, db: _Connection) -> None:
        self._db = db
        self._group: list[_Pending] | None = None
        """The batches of this event-loop turn waiting for one commit (see commit)."""

    async def commit(self, ops: list[Op]) -> None:
        """Commit ``ops``: alone, or in one transaction with the batches of this loop turn.

        The first batch of a turn leads: it yields once, so that the tasks ready in this
        turn can add theirs, then commits the group synchronously (no await inside the
        transaction) and wakes the others. When nothing else is ready to run, or under a
        backend other than asyncio, the batch commits at once, alone, as it always did.
        """
        db = self._db
        if db.conn is None:
            await db.connect()
        group = self._group
        if group is not None:  # a leader collects this turn's batches: join them
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pending = _Pending(ops, future)
            group.append(pending)
            await future  # cancelled before the group's commit: left out, written never
            await self._settle(pending)
            return
        loop = _running_loop()
        if loop is None or _nothing_ready(loop):
            await db.write("batch", _apply_batch, ops, db.seqs)
            return
        pending = _Pending(ops, None)
        group = self._group = [pending]
        try:
            await asyncio.sleep(0)  # one turn: the tasks ready now may add their batches
        except BaseException:
            if self._group is group:
                self._group = None
            group.remove(pending)
            self._flush(group)  # synchronous: the others are committed (or told to retry)
            raise
        if self._group is group:
            self._group = None
        self._flush(group)
        await self._settle(pending)

    async def _settle(self, pending: _Pending) -> None:
        """Finish a batch after its group's commit: raise its error, or commit it alone."""
        if pending.error is not None:
            raise pending.error
        if pending.retry:
            db = self._db
            await db.write("batch", _apply_batch, pending.ops, db.seqs)

    def _flush(self, group: list[_Pending]) -> None:
        """Commit ``group``'s batches in one transaction, each failing alone; never raises.

        Each batch that needs one (see ``_needs_savepoint``) runs inside a savepoint, so
        a batch whose condition fails is rolled back alone and gets its error; the others
        commit. If the transaction itself fails (the database is busy, a disk error), it
        is rolled back whole and every batch is marked to commit again on its own, with
        the usual retries and errors.
        """
        db = self._db
        group = [p for p in group if p.future is None or not p.future.done()]
        try:
            if len(group) == 1:
                group[0].retry = True  # alone after all: the ordinary path
            elif group:
                db.tx(self._apply_group, group)
                if db.checkpointer is not None:
                    db.checkpointer.committed()
        except (sqlite3.Error, _AbortGroup, PersistenceError):
            for p in group:
                p.error, p.retry = None, True
        except Exception as exc:  # pragma: no cover - a bug: every batch fails with it
            for p in group:
                p.error = exc
        except BaseException:  # pragma: no cover - KeyboardInterrupt: nothing was written
            for p in group:
                p.error = PersistenceError(f"SQLite store {db.path}: batch interrupted")
            raise
        finally:
            for p in group:
                if p.future is not None and not p.future.done():
                    p.future.set_result(None)

    def _apply_group(self, conn: sqlite3.Connection, group: list[_Pending]) -> None:
        seqs = self._db.seqs
        for p in group:
            savepoint = _needs_savepoint(p.ops)
            if savepoint:
                conn.execute("SAVEPOINT orchestra_batch")
            changes = conn.total_changes
            try:
                _apply_batch(conn, p.ops, seqs)
            except (ConflictError, RunNotFoundError) as exc:
                if savepoint:
                    conn.execute("ROLLBACK TO orchestra_batch")
                    conn.execute("RELEASE orchestra_batch")
                elif conn.total_changes != changes:
                    raise _AbortGroup from exc
                for name, args in p.ops:  # numbers it took were rolled back
                    if name == "append_history":
                        seqs.pop(args[0].run_id, None)  # type: ignore[attr-defined]
                    elif name == "create_run":
                        seqs.pop(args[0].id, None)  # type: ignore[attr-defined]
                p.error = exc
            else:
                if savepoint:
                    conn.execute("RELEASE orchestra_batch")


_FALLIBLE = frozenset({"create_run", "update_run", "require_owner", "consume_event"})
"""Batch operations that may fail the batch (each writes nothing when it fails)."""


def _needs_savepoint(ops: list[Op]) -> bool:
    """Whether a failing operation of ``ops`` may come after one that wrote.

    Only then does a batch committed in a group need a savepoint of its own to undo its
    writes: every fallible operation writes nothing when it fails, so a batch whose
    conditions all come before its writes (the common case) fails having written nothing.
    """
    wrote = False
    for name, _ in ops:
        if name in _FALLIBLE and wrote:
            return True
        if name != "require_owner":
            wrote = True
    return False


class _Pending:
    """One batch waiting for its group's commit (see _GroupCommit.commit)."""

    __slots__ = ("error", "future", "ops", "retry")

    def __init__(self, ops: list[Op], future: asyncio.Future[None] | None) -> None:
        self.ops = ops
        self.future = future
        self.error: BaseException | None = None
        """The batch's own error (a condition that failed): it was not written."""
        self.retry = False
        """The group could not commit: the batch was not written and commits on its own."""


class _AbortGroup(Exception):
    """A batch of a group failed having written (no savepoint): the whole group rolls back."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or ``None`` under another backend (trio)."""
    return asyncio_loop()


def _nothing_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """True when no other callback waits to run in this turn of ``loop`` (asyncio's own).

    Then no other task can commit before this one's batch would be flushed, so waiting
    for companions would only add latency. Loops without the ready queue (uvloop) say False.
    """
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready
