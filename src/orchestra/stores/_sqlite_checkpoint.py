"""The WAL checkpointer of :class:`~orchestra.stores.SQLiteStore`: its only disk syncs.

A commit in WAL mode with ``synchronous=NORMAL`` syncs nothing; the WAL is synced when it
is checkpointed into the database file. The store turns automatic checkpoints off and
leaves them to a thread of its own, so that no commit on the event loop pays for one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading

logger = logging.getLogger("orchestra.stores")


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
