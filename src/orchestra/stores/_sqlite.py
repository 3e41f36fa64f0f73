"""The SQLite store: one file, safe for several processes on one machine.

How it stays fast from async code. A commit in WAL mode with ``synchronous=NORMAL``
writes to the OS page cache and syncs nothing (the WAL is synced when it is checkpointed
into the database file), so one short transaction costs tens of microseconds, less than
a hop to a worker thread. Every statement therefore runs synchronously on the event
loop's thread, and never waits there: SQLite's own busy handler is off. When another
connection holds the write lock, the statement fails at once with ``SQLITE_BUSY`` and
the store retries it after a short *async* sleep, with backoff, until ``busy_timeout``
has passed; then it raises :class:`~orchestra.PersistenceError`. A statement that fails
that way has changed nothing, so a retry is safe, and a store method never awaits while
it holds a transaction open: cancelling a task cannot leave one half-written.

Writes that must be exclusive are single statements (``UPDATE ... WHERE`` a condition,
``DELETE ... RETURNING``) or ``BEGIN IMMEDIATE`` transactions, so two processes racing to
claim a run or delete a wait get exactly one winner. WAL checkpoints (the only syncs)
run on a background thread with a connection of its own, off the event loop.

Group commit. Under asyncio, the batches that several tasks commit in the same turn of
the event loop (many runs in flight) share one transaction, each inside a savepoint when
it needs one: a commit, the WAL write of every page it dirtied, is paid once for the
group. See :class:`SQLiteStore` for what a caller can rely on.

The store's public surface is here; its parts live in modules of their own:
``_sqlite_conn`` (the connection, transactions and busy retries), ``_sqlite_group``
(group commit of batches), ``_sqlite_checkpoint`` (the WAL checkpoint thread),
``_sqlite_listen`` (subscriptions, by polling) and ``_sqlite_sql`` (the SQL text, row
mappers and writes).
"""

# ruff: noqa: S608 - SQL text is built only from constants and a schema name checked to
# be a plain identifier; every value is a bound parameter.

from __future__ import annotations

import os
import sqlite3
import time
from typing import Self

from orchestra.errors import RunNotFoundError
from orchestra.stores._base import (
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    RunRecord,
    RunStatus,
    Store,
    Version,
    Wait,
)
from orchestra.stores._batch import Batch
from orchestra.stores._sqlite_conn import _Connection, _schema_version
from orchestra.stores._sqlite_group import _GroupCommit
from orchestra.stores._sqlite_listen import SQLiteSubscription
from orchestra.stores._sqlite_sql import (
    _RUN_COLUMNS,
    _WAIT_COLUMNS,
    _add_event,
    _append_history,
    _claim_run,
    _consume_event,
    _create_run,
    _delete_checkpoints,
    _delete_wait,
    _matched_waits,
    _notify,
    _orphaned_runs,
    _peek_event,
    _purge_runs,
    _put_checkpoint,
    _put_version,
    _put_wait,
    _run,
    _take_event,
    _update_run,
    _version,
    _wait,
)

__all__ = ["SQLiteStore", "SQLiteSubscription"]


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file (WAL mode), shared safely by several processes.

    ``path`` is the database file (created with its schema if missing; ``":memory:"``
    keeps everything in memory, for tests). Nothing is opened until the first call (or
    :meth:`open`). A write that finds the database locked by another connection is
    retried for up to ``busy_timeout`` seconds, without blocking the event loop, before
    it raises :class:`~orchestra.PersistenceError`. With ``background_checkpoints`` (the
    default) WAL checkpoints, the only disk syncs, run on a thread of the store's own
    instead of inside commits on the event loop.

    Each process (each store) has its own connection; use one store per event loop.

    **Group commit.** Under asyncio, batches (:meth:`batch`) that tasks commit in the
    same turn of the event loop are written in one transaction: the first yields once
    so that the tasks ready to run can add theirs, then the group is committed (no
    await inside the transaction). What a caller can rely on is unchanged:

    * ``async with store.batch()`` returns only once its batch is committed, and a
      batch is all or nothing;
    * a batch that fails (``OwnershipError``, ``ConflictError``, ``EventTakenError``,
      ``RunNotFoundError``) raises its own error and writes nothing; the other batches
      of its group commit (each runs inside a savepoint when a failure could follow
      one of its writes);
    * if the group's transaction cannot commit (the database is locked by another
      process, a disk error), nothing of it is written, and every batch is committed
      again on its own with the usual busy retries and errors;
    * a batch cancelled while it waits for its group is left out of it (nothing
      written), unless the group was committed already (then all of it is written);
    * history numbers stay consecutive per run.

    A batch that finds nothing else ready to run in the loop commits at once, alone, as
    does every batch under another backend (trio) and every single-write method.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        background_checkpoints: bool = True,
    ) -> None:
        self._db = _Connection(
            os.fspath(path),
            busy_timeout=busy_timeout,
            background_checkpoints=background_checkpoints,
        )
        self._subscriptions: set[SQLiteSubscription] = set()
        self._group = _GroupCommit(self._db)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        background_checkpoints: bool = True,
    ) -> SQLiteStore:
        """Open the database at ``path`` now (creating or migrating its schema)."""
        store = cls(path, busy_timeout=busy_timeout, background_checkpoints=background_checkpoints)
        await store._db.connect()
        return store

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    @property
    def busy_timeout(self) -> float:
        """Seconds a write retries while another connection holds the database locked."""
        return self._db.busy_timeout

    @busy_timeout.setter
    def busy_timeout(self, value: float) -> None:
        self._db.busy_timeout = value

    def __repr__(self) -> str:
        return f"SQLiteStore({self._db.path!r})"

    async def __aenter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        """Close the connection (and stop the checkpoint thread); the store is unusable after."""
        self._db.closed = True
        for sub in list(self._subscriptions):
            sub.close()
        await self._db.aclose()

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return await self._db.read("reading the schema version", _schema_version)

    # -- versions ---------------------------------------------------------------------

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version unless the latest has the same digest."""
        return await self._db.write("put_version", _put_version, name, digest, definition, now)

    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        """Return one version, or the latest."""

        def get(conn: sqlite3.Connection) -> Version | None:
            cols = "SELECT name, seq, digest, definition, deployed, created FROM orchestra_versions"
            if seq is None:
                row = conn.execute(
                    f"{cols} WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,)
                ).fetchone()
            else:
                row = conn.execute(f"{cols} WHERE name = ? AND seq = ?", (name, seq)).fetchone()
            return None if row is None else _version(row)

        return await self._db.read("get_version", get)

    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return versions by name, then seq."""

        def get(conn: sqlite3.Connection) -> list[Version]:
            cols = "SELECT name, seq, digest, definition, deployed, created FROM orchestra_versions"
            if name is None:
                rows = conn.execute(f"{cols} ORDER BY name, seq").fetchall()
            else:
                rows = conn.execute(f"{cols} WHERE name = ? ORDER BY seq", (name,)).fetchall()
            return [_version(r) for r in rows]

        return await self._db.read("list_versions", get)

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Flag every version of ``name``."""

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE orchestra_versions SET deployed = ? WHERE name = ?", (int(deployed), name)
            )
            return cur.rowcount > 0

        return await self._db.single("set_deployed", update)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run; ``ConflictError`` if its id exists."""
        await self._db.single("create_run", _create_run, run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a run; ``RunNotFoundError`` if there is none."""

        def get(conn: sqlite3.Connection) -> RunRecord:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM orchestra_runs WHERE id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                msg = f"no run {run_id!r}"
                raise RunNotFoundError(msg)
            return _run(row)

        return await self._db.read("get_run", get)

    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace a run (only while ``owner`` holds it, if given: one conditional UPDATE)."""
        await self._db.single("update_run", _update_run, run, owner)

    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """Return runs, oldest first."""
        where, params = [], []
        if process is not None:
            where.append("process = ?")
            params.append(process)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT {_RUN_COLUMNS} FROM orchestra_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, ord"

        def get(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_run(r) for r in conn.execute(sql, params).fetchall()]

        return await self._db.read("list_runs", get)

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take the run's lease if it is free, ours or expired (one conditional UPDATE)."""
        return await self._db.single("claim_run", _claim_run, run_id, owner, until, now)

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker (seeks in an index, no scan)."""
        return await self._db.read("orphaned_runs", _orphaned_runs, worker, now)

    # -- checkpoints ------------------------------------------------------------------

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        await self._db.single("put_checkpoint", _put_checkpoint, checkpoint)

    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        """Return a step's checkpoints in write order."""

        def get(conn: sqlite3.Connection) -> list[CheckpointRecord]:
            rows = conn.execute(
                "SELECT processor, output, trace FROM orchestra_checkpoints "
                "WHERE run_id = ? AND step = ? ORDER BY ord",
                (run_id, step),
            ).fetchall()
            return [
                CheckpointRecord(run_id=run_id, step=step, processor=p, output=o, trace=t)
                for p, o, t in rows
            ]

        return await self._db.read("checkpoints", get)

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete a run's checkpoints."""
        await self._db.single("delete_checkpoints", _delete_checkpoints, run_id, step)

    # -- waits ------------------------------------------------------------------------

    async def put_wait(self, wait: Wait) -> None:
        """Record a wait, replacing the run's previous one."""
        await self._db.single("put_wait", _put_wait, wait)

    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove and return a run's wait (``DELETE ... RETURNING``: one winner)."""
        return await self._db.single("delete_wait", _delete_wait, run_id)

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``(event, key)``."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits "
                "WHERE event = ? AND key = ? ORDER BY rowid",
                (event, key),
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._db.read("find_waits", get)

    async def due_waits(self, now: float) -> list[Wait]:
        """Return due waits, earliest first."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits "
                "WHERE deadline IS NOT NULL AND deadline <= ? ORDER BY deadline, rowid",
                (now,),
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._db.read("due_waits", get)

    async def list_waits(self) -> list[Wait]:
        """Return every wait."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits ORDER BY rowid"
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._db.read("list_waits", get)

    # -- inbox ------------------------------------------------------------------------

    async def add_event(self, event: InboxEvent) -> bool:
        """Keep an event unless its id is known."""
        return await self._db.single("add_event", _add_event, event)

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event (one ``UPDATE ... RETURNING``)."""
        return await self._db.single("take_event", _take_event, name, key, now)

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest matching event without consuming it."""
        return await self._db.read("peek_event", _peek_event, name, key, now)

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait an inbox event matches, with that event (one query)."""
        return await self._db.read("matched_waits", _matched_waits, now)

    async def consume_event(self, event_id: str) -> None:
        """Mark an event consumed (one conditional UPDATE); ``EventTakenError`` if it was."""
        await self._db.single("consume_event", _consume_event, event_id)

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM orchestra_events WHERE expires <= ?", (now,)).rowcount

        return await self._db.single("purge_events", purge)

    # -- history ----------------------------------------------------------------------

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append to a run's history; the store numbers it."""
        seq = await self._db.single("append_history", _append_history, entry, self._db.seqs)
        return HistoryEntry(
            run_id=entry.run_id, kind=entry.kind, at=entry.at, step=entry.step,
            detail=entry.detail, seq=seq,
        )  # fmt: skip

    async def history(self, run_id: str) -> list[HistoryEntry]:
        """Return a run's history."""

        def get(conn: sqlite3.Connection) -> list[HistoryEntry]:
            rows = conn.execute(
                "SELECT seq, kind, at, step, detail FROM orchestra_history "
                "WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
            return [
                HistoryEntry(run_id=run_id, seq=s, kind=k, at=a, step=st, detail=d)
                for s, k, a, st, d in rows
            ]

        return await self._db.read("history", get)

    # -- housekeeping -----------------------------------------------------------------

    async def purge_runs(self, *, before: float) -> int:
        """Delete ended runs last updated at or before ``before`` (one transaction)."""
        return await self._db.write("purge_runs", _purge_runs, before)

    # -- batches and notifications ----------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes and commit them in one transaction when the block ends.

        One commit instead of one per write: ``async with store.batch() as b:
        b.append_history(...); b.update_run(...)``. If the block raises, nothing is
        written; if a write or a condition fails, none is. Batches of other tasks
        committed in the same loop turn may share the transaction (see the class's
        group commit), each still all or nothing.
        """
        return Batch(self._group.commit)

    @property
    def supports_notify(self) -> bool:
        """True: notifications reach subscribers in every process using the file."""
        return True

    async def notify(self, channel: str, payload: str = "") -> None:
        """Publish ``payload`` on ``channel`` to every subscriber, in any process.

        SQLite has no LISTEN/NOTIFY: the notification is a row in a small table that
        subscribers in other processes poll (cheaply: ``PRAGMA data_version`` tells them
        whether anything was committed); subscribers of this store wake at once. Rows are
        kept for a minute.
        """
        await self._db.write("notify", _notify, channel, payload, time.time())
        for sub in self._subscriptions:
            if sub.channel == channel:
                sub.wake()

    def subscribe(self, channel: str, *, poll_interval: float = 0.02) -> SQLiteSubscription:
        """Return a subscription to ``channel``: an async iterator of notification payloads.

        Use it as ``async with store.subscribe("ch") as sub: async for payload in sub:``;
        it receives what is notified after it was entered (or first iterated). Other
        processes' notifications arrive within about ``poll_interval`` seconds.
        """
        return SQLiteSubscription(self, channel, poll_interval)
