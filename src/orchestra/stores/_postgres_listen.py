"""``LISTEN``/``NOTIFY`` subscriptions of :class:`~orchestra.stores.PostgresStore`."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Self

from orchestra.errors import PersistenceError
from orchestra.stores._base import Subscription
from orchestra.stores._postgres_sql import _asyncpg

if TYPE_CHECKING:
    from orchestra.stores._postgres import PostgresStore
    from orchestra.stores._postgres_conn import Conn

__all__ = ["PostgresSubscription"]


class PostgresSubscription(Subscription):
    """``LISTEN`` on one channel; see :meth:`PostgresStore.subscribe`."""

    def __init__(self, store: PostgresStore, channel: str) -> None:
        self.channel = channel
        self._store = store
        self._conn: Conn = None
        self._queue: collections.deque[str] = collections.deque()
        self._event = asyncio.Event()
        self._lost = False
        self._closed = False

    def _on_notify(self, conn: Conn, pid: int, channel: str, payload: str) -> None:
        self._queue.append(payload)
        self._event.set()

    def _on_terminate(self, conn: Conn) -> None:
        if conn is self._conn:
            self._lost = True
            self._event.set()

    async def _listen(self) -> None:
        asyncpg = _asyncpg()
        db = self._store._db
        try:
            conn = await asyncpg.connect(
                db.url, timeout=db.connect_timeout, server_settings=db.settings
            )
        except db.errors as exc:
            raise db.error(exc, f"subscribing to {self.channel}") from exc
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lost = False
        conn.add_termination_listener(self._on_terminate)

    async def __aenter__(self) -> Self:
        if self._conn is None:
            await self._listen()
            self._store._subscriptions.add(self)
        return self

    async def aclose(self) -> None:
        """Stop listening and close the subscription's connection."""
        self._closed = True
        self._event.set()
        self._store._subscriptions.discard(self)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:  # closing a broken connection
                conn.terminate()

    async def __anext__(self) -> str:
        """Wait for the next payload (``""`` once after a reconnection); end once closed."""
        await self.__aenter__()
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._lost:
                delay = 0.05
                while True:
                    try:
                        await self._listen()
                        break
                    except PersistenceError:
                        if delay > 5:
                            raise
                        await asyncio.sleep(delay)
                        delay *= 2
                return ""
            self._event.clear()
            await self._event.wait()
        return self._queue.popleft()
