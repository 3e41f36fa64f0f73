"""Subscriptions of :class:`~orchestra.stores.SQLiteStore`: notifications by polling.

SQLite has no LISTEN/NOTIFY: a notification is a row of ``orchestra_notifications``.
A subscription reads the rows after the last it saw when its store notified in this
process, or when ``PRAGMA data_version`` (cheap: no table is read) shows that another
connection committed something; otherwise it sleeps for the poll interval.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Self

import anyio

from orchestra.stores._base import Subscription

if TYPE_CHECKING:
    from orchestra.stores._sqlite import SQLiteStore

__all__ = ["SQLiteSubscription"]


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

            self._last, self._version = await self._store._db.read("subscribe", start)
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

        v = await self._store._db.read("subscribe", version)
        changed, self._version = v != self._version, v
        return changed

    async def _fetch(self) -> None:
        def rows(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(
                "SELECT id, payload FROM orchestra_notifications WHERE id > ? AND channel = ? "
                "ORDER BY id",
                (self._last, self.channel),
            ).fetchall()

        for i, payload in await self._store._db.read("subscribe", rows):
            self._last = i
            self._pending.append(payload)
