"""The connection of :class:`~orchestra.stores.SQLiteStore`, and its busy retries.

Every statement runs synchronously on the event loop's thread (a short transaction costs
less than a hop to a worker thread) and never waits there: SQLite's busy handler is off.
A statement that finds the write lock held fails at once with ``SQLITE_BUSY``, having
changed nothing, and is retried after a short *async* sleep, with backoff, until the
store's ``busy_timeout`` has passed. Nothing awaits while a transaction is open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import anyio

from orchestra.errors import PersistenceError
from orchestra.stores import _migrations
from orchestra.stores._sqlite_checkpoint import _Checkpointer
from orchestra.stores._sqlite_sql import _is_busy

logger = logging.getLogger("orchestra.stores")

P = ParamSpec("P")
T = TypeVar("T")


class _Connection:
    """The one connection of a store, opened on first use (see :meth:`connect`).

    ``write`` runs a function of the connection in one ``BEGIN IMMEDIATE`` transaction,
    ``single`` a write that is one statement, ``read`` a read; each retries while the
    database is busy. With ``background_checkpoints`` a :class:`_Checkpointer` thread
    checkpoints the WAL, told of every commit.
    """

    def __init__(self, path: str, *, busy_timeout: float, background_checkpoints: bool) -> None:
        self.path = path
        memory = path == ":memory:"
        # The file as it is now: a later chdir must not move the store (or its checkpointer).
        self.file = path if memory else os.path.abspath(path)
        self.busy_timeout = busy_timeout
        self.background = background_checkpoints and not memory
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()
        self.closed = False
        self.checkpointer: _Checkpointer | None = None
        self.seqs: dict[str, int] = {}
        """The next history seq of runs this store appended to (see _append_history)."""

    def error(self, exc: sqlite3.Error, what: str) -> PersistenceError:
        """The store's error for ``exc``, raised while doing ``what``."""
        if _is_busy(exc):
            msg = (
                f"SQLite store {self.path}: {what} failed: the database is locked (another "
                f"connection held it for more than the busy timeout of {self.busy_timeout} s)"
            )
        else:
            msg = f"SQLite store {self.path}: {what} failed: {exc}"
        return PersistenceError(msg)

    def closed_error(self) -> PersistenceError:
        """The error of a call after the store was closed."""
        return PersistenceError(f"SQLite store {self.path} is closed")

    def _connect_sync(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.file, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                msg = f"SQLite store {self.path}: could not switch to WAL mode (got {mode!r})"
                raise PersistenceError(msg)
            conn.execute("PRAGMA synchronous = NORMAL")
            if self.background:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = _migrations.MIGRATIONS
        where = f"SQLite database {self.path}"
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

    async def connect(self) -> sqlite3.Connection:
        """Return the connection, opening it (and creating or migrating the schema) first."""
        if self.closed:
            raise self.closed_error()
        if self.conn is None:
            conn = await self.retry("opening the database", self._connect_sync)
            if self.conn is not None:  # pragma: no cover - another task won the race
                conn.close()
            else:
                self.conn = conn
                if self.background:
                    self.checkpointer = _Checkpointer(self.file)
        return self.conn

    async def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn``; while the database is busy, sleep (async) and call it again."""
        deadline: float | None = None
        delay = 0.0005
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self.error(exc, what) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise self.error(exc, what) from exc
                await anyio.sleep(min(delay * (0.5 + random.random()), deadline - now))  # noqa: S311
                delay = min(delay * 2, 0.05)

    def tx(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back if it raises."""
        with self.lock:
            conn = self.conn
            if conn is None:
                raise self.closed_error()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args, **kwargs)
                conn.execute("COMMIT")
            except BaseException:
                self.seqs.clear()  # numbers taken inside the rolled-back transaction
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

    def one(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` (one statement, or reads) in autocommit mode."""
        with self.lock:
            conn = self.conn
            if conn is None:
                raise self.closed_error()
            return fn(conn, *args, **kwargs)

    async def write(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` in one transaction (see :meth:`tx`), retrying while the database is busy."""
        if self.conn is None:
            await self.connect()
        try:
            result = self.tx(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise self.error(exc, what) from exc
            result = await self.retry(what, lambda: self.tx(fn, *args, **kwargs))
        if self.checkpointer is not None:
            self.checkpointer.committed()
        return result

    async def read(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a read, or a single-statement write, in autocommit mode."""
        if self.conn is None:
            await self.connect()
        try:
            return self.one(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise self.error(exc, what) from exc
            return await self.retry(what, lambda: self.one(fn, *args, **kwargs))

    async def single(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run a write that is one statement (atomic by itself) in autocommit mode."""
        result = await self.read(what, fn, *args, **kwargs)
        if self.checkpointer is not None:
            self.checkpointer.committed()
        return result

    async def aclose(self) -> None:
        """Close the connection and stop the checkpoint thread; unusable after."""
        self.closed = True
        with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close()
        if self.checkpointer is not None:
            checkpointer, self.checkpointer = self.checkpointer, None
            await anyio.to_thread.run_sync(checkpointer.stop)


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orchestra_meta'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT value FROM orchestra_meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])
