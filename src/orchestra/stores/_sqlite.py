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
"""

# ruff: noqa: S608 - SQL text is built only from constants and a schema name checked to
# be a plain identifier; every value is a bound parameter.

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Self, TypeVar

import anyio

from orchestra.errors import ConflictError, PersistenceError, RunNotFoundError
from orchestra.stores import _migrations
from orchestra.stores._base import (
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    RunRecord,
    RunStatus,
    Store,
    Subscription,
    Version,
    Wait,
)
from orchestra.stores._batch import Batch, Op
from orchestra.stores._sqlite_sql import (
    _RUN_COLUMNS,
    _WAIT_COLUMNS,
    _AbortGroup,
    _add_event,
    _append_history,
    _apply_batch,
    _claim_run,
    _consume_event,
    _create_run,
    _delete_checkpoints,
    _delete_wait,
    _is_busy,
    _matched_waits,
    _needs_savepoint,
    _nothing_ready,
    _notify,
    _orphaned_runs,
    _peek_event,
    _Pending,
    _purge_runs,
    _put_checkpoint,
    _put_version,
    _put_wait,
    _run,
    _running_loop,
    _take_event,
    _update_run,
    _version,
    _wait,
)

__all__ = ["SQLiteStore", "SQLiteSubscription"]

logger = logging.getLogger("orchestra.stores")

P = ParamSpec("P")
T = TypeVar("T")


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
        self._path = os.fspath(path)
        memory = self._path == ":memory:"
        # The file as it is now: a later chdir must not move the store (or its checkpointer).
        self._file = self._path if memory else os.path.abspath(self._path)
        self.busy_timeout = busy_timeout
        self._background = background_checkpoints and not memory
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        self._subscriptions: set[SQLiteSubscription] = set()
        self._seqs: dict[str, int] = {}
        """The next history seq of runs this store appended to (see _append_history)."""
        self._group: list[_Pending] | None = None
        """The batches of this event-loop turn waiting for one commit (see _commit_batch)."""

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
        await store._connect()
        return store

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    async def __aenter__(self) -> Self:
        return self

    # -- plumbing ---------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error, what: str) -> PersistenceError:
        if _is_busy(exc):
            msg = (
                f"SQLite store {self._path}: {what} failed: the database is locked (another "
                f"connection held it for more than the busy timeout of {self.busy_timeout} s)"
            )
        else:
            msg = f"SQLite store {self._path}: {what} failed: {exc}"
        return PersistenceError(msg)

    def _closed_error(self) -> PersistenceError:
        return PersistenceError(f"SQLite store {self._path} is closed")

    def _connect_sync(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._file, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal" and self._path != ":memory:":
                msg = f"SQLite store {self._path}: could not switch to WAL mode (got {mode!r})"
                raise PersistenceError(msg)
            conn.execute("PRAGMA synchronous = NORMAL")
            if self._background:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = _migrations.MIGRATIONS
        where = f"SQLite database {self._path}"
        current = _schema_version(conn)
        if not _migrations.pending(current, where, migrations):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = _schema_version(conn)  # another process may have migrated meanwhile
            for m in _migrations.pending(current, where, migrations):
                for statement in m.sqlite:
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR REPLACE INTO orchestra_meta (key, value) "
                    "VALUES ('schema_version', ?)",
                    (str(m.version),),
                )
                logger.info("%s: migrated to schema version %d", where, m.version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise self._closed_error()
        if self._conn is None:
            conn = await self._retry("opening the database", self._connect_sync)
            if self._conn is not None:  # pragma: no cover - another task won the race
                conn.close()
            else:
                self._conn = conn
                if self._background:
                    self._checkpointer = _Checkpointer(self._file)
        return self._conn

    async def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn``; while the database is busy, sleep (async) and call it again."""
        deadline: float | None = None
        delay = 0.0005
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._error(exc, what) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise self._error(exc, what) from exc
                await anyio.sleep(min(delay * (0.5 + random.random()), deadline - now))  # noqa: S311
                delay = min(delay * 2, 0.05)

    def _tx(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back if it raises."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise self._closed_error()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args, **kwargs)
                conn.execute("COMMIT")
            except BaseException:
                self._seqs.clear()  # numbers taken inside the rolled-back transaction
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

    def _one(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` (one statement, or reads) in autocommit mode."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise self._closed_error()
            return fn(conn, *args, **kwargs)

    async def _write(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        if self._conn is None:
            await self._connect()
        try:
            result = self._tx(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise self._error(exc, what) from exc
            result = await self._retry(what, lambda: self._tx(fn, *args, **kwargs))
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return result

    async def _read(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a read, or a single-statement write, in autocommit mode."""
        if self._conn is None:
            await self._connect()
        try:
            with self._lock:
                conn = self._conn
                if conn is None:
                    raise self._closed_error()
                return fn(conn, *args, **kwargs)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise self._error(exc, what) from exc
            return await self._retry(what, lambda: self._one(fn, *args, **kwargs))

    async def _single(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a write that is one statement (atomic by itself) in autocommit mode."""
        result = await self._read(what, fn, *args, **kwargs)
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return result

    async def aclose(self) -> None:
        """Close the connection (and stop the checkpoint thread); the store is unusable after."""
        self._closed = True
        for sub in list(self._subscriptions):
            sub.close()
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await anyio.to_thread.run_sync(checkpointer.stop)

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return await self._read("reading the schema version", _schema_version)

    # -- versions ---------------------------------------------------------------------

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version unless the latest has the same digest."""
        return await self._write("put_version", _put_version, name, digest, definition, now)

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

        return await self._read("get_version", get)

    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return versions by name, then seq."""

        def get(conn: sqlite3.Connection) -> list[Version]:
            cols = "SELECT name, seq, digest, definition, deployed, created FROM orchestra_versions"
            if name is None:
                rows = conn.execute(f"{cols} ORDER BY name, seq").fetchall()
            else:
                rows = conn.execute(f"{cols} WHERE name = ? ORDER BY seq", (name,)).fetchall()
            return [_version(r) for r in rows]

        return await self._read("list_versions", get)

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Flag every version of ``name``."""

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE orchestra_versions SET deployed = ? WHERE name = ?", (int(deployed), name)
            )
            return cur.rowcount > 0

        return await self._single("set_deployed", update)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run; ``ConflictError`` if its id exists."""
        await self._single("create_run", _create_run, run)

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

        return await self._read("get_run", get)

    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace a run (only while ``owner`` holds it, if given: one conditional UPDATE)."""
        await self._single("update_run", _update_run, run, owner)

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

        return await self._read("list_runs", get)

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take the run's lease if it is free, ours or expired (one conditional UPDATE)."""
        return await self._single("claim_run", _claim_run, run_id, owner, until, now)

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker (seeks in an index, no scan)."""
        return await self._read("orphaned_runs", _orphaned_runs, worker, now)

    # -- checkpoints ------------------------------------------------------------------

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        await self._single("put_checkpoint", _put_checkpoint, checkpoint)

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

        return await self._read("checkpoints", get)

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete a run's checkpoints."""
        await self._single("delete_checkpoints", _delete_checkpoints, run_id, step)

    # -- waits ------------------------------------------------------------------------

    async def put_wait(self, wait: Wait) -> None:
        """Record a wait, replacing the run's previous one."""
        await self._single("put_wait", _put_wait, wait)

    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove and return a run's wait (``DELETE ... RETURNING``: one winner)."""
        return await self._single("delete_wait", _delete_wait, run_id)

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``(event, key)``."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits "
                "WHERE event = ? AND key = ? ORDER BY rowid",
                (event, key),
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._read("find_waits", get)

    async def due_waits(self, now: float) -> list[Wait]:
        """Return due waits, earliest first."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits "
                "WHERE deadline IS NOT NULL AND deadline <= ? ORDER BY deadline, rowid",
                (now,),
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._read("due_waits", get)

    async def list_waits(self) -> list[Wait]:
        """Return every wait."""

        def get(conn: sqlite3.Connection) -> list[Wait]:
            rows = conn.execute(
                f"SELECT {_WAIT_COLUMNS} FROM orchestra_waits ORDER BY rowid"
            ).fetchall()
            return [_wait(r) for r in rows]

        return await self._read("list_waits", get)

    # -- inbox ------------------------------------------------------------------------

    async def add_event(self, event: InboxEvent) -> bool:
        """Keep an event unless its id is known."""
        return await self._single("add_event", _add_event, event)

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event (one ``UPDATE ... RETURNING``)."""
        return await self._single("take_event", _take_event, name, key, now)

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest matching event without consuming it."""
        return await self._read("peek_event", _peek_event, name, key, now)

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait an inbox event matches, with that event (one query)."""
        return await self._read("matched_waits", _matched_waits, now)

    async def consume_event(self, event_id: str) -> None:
        """Mark an event consumed (one conditional UPDATE); ``EventTakenError`` if it was."""
        await self._single("consume_event", _consume_event, event_id)

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM orchestra_events WHERE expires <= ?", (now,)).rowcount

        return await self._single("purge_events", purge)

    # -- history ----------------------------------------------------------------------

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append to a run's history; the store numbers it."""
        seq = await self._single("append_history", _append_history, entry, self._seqs)
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

        return await self._read("history", get)

    # -- housekeeping -----------------------------------------------------------------

    async def purge_runs(self, *, before: float) -> int:
        """Delete ended runs last updated at or before ``before`` (one transaction)."""
        return await self._write("purge_runs", _purge_runs, before)

    # -- batches and notifications ----------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes and commit them in one transaction when the block ends.

        One commit instead of one per write: ``async with store.batch() as b:
        b.append_history(...); b.update_run(...)``. If the block raises, nothing is
        written; if a write or a condition fails, none is. Batches of other tasks
        committed in the same loop turn may share the transaction (see the class's
        group commit), each still all or nothing.
        """
        return Batch(self._commit_batch)

    async def _commit_batch(self, ops: list[Op]) -> None:
        """Commit ``ops``: alone, or in one transaction with the batches of this loop turn.

        The first batch of a turn leads: it yields once, so that the tasks ready in this
        turn can add theirs, then commits the group synchronously (no await inside the
        transaction) and wakes the others. When nothing else is ready to run, or under a
        backend other than asyncio, the batch commits at once, alone, as it always did.
        """
        if self._conn is None:
            await self._connect()
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
            await self._write("batch", _apply_batch, ops, self._seqs)
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
            await self._write("batch", _apply_batch, pending.ops, self._seqs)

    def _flush(self, group: list[_Pending]) -> None:
        """Commit ``group``'s batches in one transaction, each failing alone; never raises.

        Each batch that needs one (see ``_needs_savepoint``) runs inside a savepoint, so
        a batch whose condition fails is rolled back alone and gets its error; the others
        commit. If the transaction itself fails (the database is busy, a disk error), it
        is rolled back whole and every batch is marked to commit again on its own, with
        the usual retries and errors.
        """
        group = [p for p in group if p.future is None or not p.future.done()]
        try:
            if len(group) == 1:
                group[0].retry = True  # alone after all: the ordinary path
            elif group:
                self._tx(self._apply_group, group)
                if self._checkpointer is not None:
                    self._checkpointer.committed()
        except (sqlite3.Error, _AbortGroup, PersistenceError):
            for p in group:
                p.error, p.retry = None, True
        except Exception as exc:  # pragma: no cover - a bug: every batch fails with it
            for p in group:
                p.error = exc
        except BaseException:  # pragma: no cover - KeyboardInterrupt: nothing was written
            for p in group:
                p.error = PersistenceError(f"SQLite store {self._path}: batch interrupted")
            raise
        finally:
            for p in group:
                if p.future is not None and not p.future.done():
                    p.future.set_result(None)

    def _apply_group(self, conn: sqlite3.Connection, group: list[_Pending]) -> None:
        seqs = self._seqs
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
        await self._write("notify", _notify, channel, payload, time.time())
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


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orchestra_meta'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT value FROM orchestra_meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


class SQLiteSubscription(Subscription):
    """Notifications on one channel of a :class:`SQLiteStore`; see :meth:`SQLiteStore.subscribe`."""

    def __init__(self, store: SQLiteStore, channel: str, poll_interval: float) -> None:
        self.channel = channel
        self._store = store
        self._poll = poll_interval
        self._last: int | None = None
        self._version: int | None = None
        self._pending: list[str] = []
        self._event = anyio.Event()
        self._closed = False

    def wake(self) -> None:
        """Make a waiting iteration look for new rows now."""
        self._event.set()

    def close(self) -> None:
        """Stop: a waiting or later iteration ends."""
        self._closed = True
        self._store._subscriptions.discard(self)
        self._event.set()

    async def aclose(self) -> None:
        """Stop: a waiting or later iteration ends (as :meth:`close`)."""
        self.close()

    async def _start(self) -> None:
        if self._last is None:

            def start(conn: sqlite3.Connection) -> tuple[int, int]:
                row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM orchestra_notifications")
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                return int(row.fetchone()[0]), int(version)

            self._last, self._version = await self._store._read("subscribe", start)
            self._store._subscriptions.add(self)

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __anext__(self) -> str:
        """Wait for the next payload; end once closed."""
        await self._start()
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            woken = self._event.is_set()
            if woken:
                self._event = anyio.Event()
            if woken or await self._changed():
                await self._fetch()
                continue
            with anyio.move_on_after(self._poll):
                await self._event.wait()
        return self._pending.pop(0)

    async def _changed(self) -> bool:
        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        v = await self._store._read("subscribe", version)
        changed, self._version = v != self._version, v
        return changed

    async def _fetch(self) -> None:
        def rows(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(
                "SELECT id, payload FROM orchestra_notifications WHERE id > ? AND channel = ? "
                "ORDER BY id",
                (self._last, self.channel),
            ).fetchall()

        for i, payload in await self._store._read("subscribe", rows):
            self._last = i
            self._pending.append(payload)


class _Checkpointer:
    """A thread that checkpoints the WAL into the database file, off the event loop.

    The store's own connection has automatic checkpoints off; every ``_EVERY`` commits
    (or once a second after any) this thread runs a PASSIVE checkpoint, which never
    blocks readers or writers, on a connection of its own.
    """

    _EVERY = 1000

    def __init__(self, path: str) -> None:
        self._path = path
        self._count = 0
        self._dirty = False
        self._event = threading.Event()
        self._stop = False
        self._thread = threading.Thread(
            target=self._main, name=f"orchestra-sqlite-checkpoint({path})", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        self._dirty = True
        self._count += 1
        if self._count >= self._EVERY:
            self._count = 0
            self._event.set()

    def stop(self) -> None:
        self._stop = True
        self._event.set()
        self._thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop:
                self._event.wait(1.0)
                self._event.clear()
                if not self._dirty or self._stop:
                    continue
                self._dirty = False
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self._path, timeout=1.0, isolation_level=None, check_same_thread=False
                        )
                        conn.execute("PRAGMA synchronous = NORMAL")
                    # Copy the WAL into the database without stopping anyone; then,
                    # holding the write lock only for the last frames and the sync, let
                    # the WAL start over (a WAL that only grows slows every page read).
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except sqlite3.Error:  # pragma: no cover - the next round tries again
                    logger.debug("WAL checkpoint of %s failed", self._path, exc_info=True)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                conn.close()
