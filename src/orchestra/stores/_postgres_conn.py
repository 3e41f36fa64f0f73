"""Connections of :class:`~orchestra.stores.PostgresStore`: its pool, and safe retries.

When the server restarts (or kills the store's connections) the pool opens new ones.
A call that fails because its connection died is retried once on a fresh connection when
that is safe: when the call is idempotent (reads, replacing writes, a lease renewal), or
when the server's own termination notice shows the statement was not committed. As with
any networked database, a call cancelled while its statement is on the server may still
commit (asyncpg asks the server to cancel it, which can arrive too late).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from orchestra.errors import OrchestraError, PersistenceError
from orchestra.stores._postgres_sql import _TERMINATED, _asyncpg

if TYPE_CHECKING:
    from types import TracebackType

logger = logging.getLogger("orchestra.stores")

P = ParamSpec("P")
T = TypeVar("T")
Conn = Any
"""An ``asyncpg.Connection`` (asyncpg ships no type information)."""


class _Connections:
    """The connection pool of one store, opened on first use; see :meth:`call`.

    ``migrate`` runs on the pool's first connection, before any call, to create or
    migrate the schema.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        *,
        min_size: int,
        max_size: int,
        settings: dict[str, str],
        connect_timeout: float,
        migrate: Callable[[Conn], Awaitable[None]],
    ) -> None:
        self.url = url
        self.schema = schema
        self.min = min_size
        self.max = max_size
        self.settings = settings
        """Server settings of every connection (``synchronous_commit``)."""
        self.connect_timeout = connect_timeout
        self._migrate = migrate
        self.pool: Any = None
        self._opening: asyncio.Lock | None = None
        self.closed = False
        self.errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        """Every error of asyncpg or the network (its exceptions load with the pool)."""
        self.conn_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        """The errors of a lost connection."""
        self._unsent: tuple[type[BaseException], ...] = ()
        self.held: Conn = None
        """A pooled connection kept between calls (see _Checkout)."""
        self.held_busy = False

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    def error(self, exc: BaseException, what: str) -> PersistenceError:
        """The store's error for ``exc``, raised while doing ``what``."""
        return PersistenceError(f"PostgreSQL store (schema {self.schema}): {what} failed: {exc}")

    async def get_pool(self) -> Any:
        """Return the pool, creating it (and the schema) on the first call."""
        if self.pool is not None:
            return self.pool
        if self.closed:
            msg = f"PostgreSQL store (schema {self.schema}) is closed"
            raise PersistenceError(msg)
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.pool is None:
                asyncpg = _asyncpg()
                internal = asyncpg.exceptions.InternalClientError
                self.errors = (
                    asyncpg.PostgresError, asyncpg.InterfaceError, internal, OSError, TimeoutError
                )  # fmt: skip
                self.conn_errors = (
                    asyncpg.PostgresConnectionError,
                    asyncpg.InterfaceError,
                    asyncpg.exceptions.OperatorInterventionError,
                    internal,
                    OSError,
                )
                # A connection whose server session ended while it sat idle fails the
                # next call with a protocol-state error, before anything is sent.
                self._unsent = (internal,)
                kwargs: dict[str, Any] = {
                    "min_size": self.min, "max_size": self.max,
                    "timeout": self.connect_timeout, "server_settings": self.settings,
                }  # fmt: skip
                if "reset" in inspect.signature(asyncpg.create_pool).parameters:
                    kwargs["reset"] = _no_reset  # the store leaves no session state behind
                try:
                    pool = await asyncpg.create_pool(self.url, **kwargs)
                except self.errors as exc:
                    raise self.error(exc, "connecting") from exc
                try:
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                except BaseException as exc:
                    await pool.close()
                    if isinstance(exc, self.errors):
                        raise self.error(exc, "creating the schema") from exc
                    raise
                self.pool = pool
        return self.pool

    async def call(
        self,
        what: str,
        idempotent: bool,
        fn: Callable[Concatenate[Conn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` on a pooled connection; on a dead one, retry if that is safe."""
        pool = self.pool if self.pool is not None else await self.get_pool()
        # Each dead connection found is closed, so after max_size of them a new one comes.
        attempts = self.max + 1
        refused = 0  # connecting failed: once more at most (the server may be down)
        for attempt in range(1, attempts + 1):
            sent = False
            try:
                async with _Checkout(self, pool) as conn:
                    sent = True
                    try:
                        return await fn(conn, *args, **kwargs)
                    except self.conn_errors:
                        with contextlib.suppress(Exception):  # it may be gone already
                            conn.terminate()  # never hand a half-dead connection out again
                        raise
            except self.errors as exc:
                lost = isinstance(exc, self.conn_errors)
                safe = (
                    not sent
                    or idempotent
                    or any(t in str(exc) for t in _TERMINATED)
                    or isinstance(exc, self._unsent)
                )
                refused += not sent
                if attempt < attempts and lost and safe and refused <= 1 and not self.closed:
                    logger.info("%s: lost a connection (%s); retrying", self, exc)
                    continue
                raise self.error(exc, what) from exc
        raise AssertionError  # pragma: no cover - the loop returns or raises

    async def aclose(self) -> None:
        """Close the pool; no call can be made after."""
        self.closed = True
        pool, self.pool = self.pool, None
        if pool is not None:
            held, self.held = self.held, None
            if held is not None and not self.held_busy:
                await pool.release(held)
            await pool.close()


class _Checkout:
    """A connection for one call: the store's held connection when it is free, else the pool's.

    Taking a connection from asyncpg's pool and giving it back costs more CPU than a
    small query, so the store keeps one between calls; concurrent calls use the pool. A
    call that fails other than with the store's own errors hands the held connection
    back to the pool, which rolls it back or replaces it.
    """

    def __init__(self, db: _Connections, pool: Any) -> None:
        self.db = db
        self.pool = pool
        self.conn: Conn = None
        self.held = False

    async def __aenter__(self) -> Conn:
        db = self.db
        held = db.held
        if held is not None and not _usable(held):
            db.held = held = None  # its server session ended: the pool took it back
        if held is not None and not db.held_busy:
            db.held_busy = True
            self.conn, self.held = held, True
        else:
            self.conn = await self.pool.acquire()
        return self.conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self.db
        if self.held:
            db.held_busy = False
        healthy = exc_type is None or issubclass(exc_type, OrchestraError)
        if healthy and not db.closed:
            if self.held:
                return
            if db.held is None and db.max > 1:  # keep it (one stays for the pool)
                db.held = self.conn
                return
        if self.held:
            db.held = None
        await self.pool.release(self.conn)


def _usable(conn: Conn) -> bool:
    """Whether a connection taken from the pool is still attached and open."""
    try:
        return getattr(conn, "_con", None) is not None and not conn.is_closed()
    except Exception:  # a detached proxy raises on any use
        return False


async def _no_reset(conn: Conn) -> None:
    """Pool reset hook: the store sets no session state, so skip asyncpg's reset query."""
