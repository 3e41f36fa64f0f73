"""The PostgreSQL store: asyncpg, a connection pool, one schema of tables per store.

asyncpg is imported when the store first connects, never by ``import orchestra``; it
comes with ``pip install 'orchestra[postgres]'``.

Exclusive writes are single conditional statements: a lease is taken by ``UPDATE ...
WHERE`` the lease is free, a wait is claimed by ``DELETE ... RETURNING`` (a second
deleter finds no row), an inbox event by ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED)``. Deploying takes a transaction-scoped advisory lock per process name.

When the server restarts (or kills the store's connections) the pool opens new ones.
A call that fails because its connection died is retried once on a fresh connection when
that is safe: when the call is idempotent (reads, replacing writes, a lease renewal), or
when the server's own termination notice shows the statement was not committed. As with
any networked database, a call cancelled while its statement is on the server may still
commit (asyncpg asks the server to cancel it, which can arrive too late).

Group commit. The batches that several tasks commit in the same turn of the event loop
are applied by one call of the schema's ``apply_batches`` function: one round trip and
one WAL flush for the group, each batch in a subtransaction of its own. See
:class:`PostgresStore` for what a caller can rely on.
"""

# ruff: noqa: S608 - SQL text is built only from constants and a schema name checked to
# be a plain identifier; every value is a bound parameter.

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import operator
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

import attrs

from orchestra.errors import ConflictError, OrchestraError, PersistenceError, RunNotFoundError
from orchestra.stores import _migrations
from orchestra.stores._base import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    RunRecord,
    RunStatus,
    Store,
    Subscription,
    Version,
    Wait,
)
from orchestra.stores._batch import Batch, Op
from orchestra.stores._postgres_sql import (
    _BATCH_ERRORS,
    _IDENT,
    _SQL,
    _TERMINATED,
    _asyncpg,
    _count,
    _event,
    _run,
    _version,
    _wait,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["PostgresStore", "PostgresSubscription"]

logger = logging.getLogger("orchestra.stores")

P = ParamSpec("P")
T = TypeVar("T")
Conn = Any
"""An ``asyncpg.Connection`` (asyncpg ships no type information)."""


class PostgresStore(Store):
    """A :class:`Store` in a PostgreSQL schema, shared by any number of workers.

    ``url`` is a libpq URL (``postgresql://user:password@host:5432/db``); the tables live
    in ``schema`` (created with its tables if missing). Nothing connects until the first
    call (or :meth:`open`). The pool holds ``min_size`` to ``max_size`` connections.
    ``synchronous_commit`` sets that PostgreSQL setting for the store's connections:
    ``None`` keeps the server's (``on``: a commit waits for its WAL flush); ``"off"``
    makes commits return before the flush, several times faster on slow disks, and a
    server crash (never an application crash) may lose the last fraction of a second of
    commits, without corrupting anything.

    **Group commit.** Batches (:meth:`batch`) that tasks commit in the same turn of the
    event loop, up to 32, are sent together: one call, one transaction and one WAL
    flush (the bulk of a commit's time) for all of them. The first yields once so that
    the tasks ready to run can add theirs; a task of the store's own sends the group.
    What a caller can rely on is unchanged:

    * ``async with store.batch()`` returns only once its batch is committed, and a
      batch is all or nothing;
    * a batch that fails (``OwnershipError``, ``ConflictError``, ``EventTakenError``,
      ``RunNotFoundError``) raises its own error and writes nothing: each runs in a
      subtransaction (``BEGIN ... EXCEPTION`` in ``apply_batches``), so the other
      batches of its group commit;
    * a batch that would wait for a row another transaction holds (beyond 20 ms) or
      whose history number another writer took meanwhile is rolled back alone and
      committed again on its own, so a group never holds up its other batches, nor
      deadlocks with another worker's group; every batch of a group the server refused
      for another reason (nothing of it was written) is committed again on its own;
    * a lost connection fails the group's batches as it fails a lone batch;
    * cancelling a caller never cancels the others' commit; a batch cancelled before
      its group was sent is left out of it, one cancelled later may still commit (as
      any statement already on its way to the server).

    A batch that finds nothing else ready to run in the loop is sent at once, alone,
    as is every single-write method.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "orchestra",
        min_size: int = 1,
        max_size: int = 10,
        synchronous_commit: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not _IDENT.match(schema):
            msg = f"schema must be a plain identifier of at most 63 characters, not {schema!r}"
            raise ValueError(msg)
        self._url = url
        self.schema = schema
        self._s = f'"{schema}"'
        self._sql = _SQL(self._s)
        self._min = min_size
        self._max = max_size
        self._settings = {} if synchronous_commit is None else {
            "synchronous_commit": synchronous_commit
        }  # fmt: skip
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._closed = False
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._conn_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._unsent: tuple[type[BaseException], ...] = ()
        self._subscriptions: set[PostgresSubscription] = set()
        self._held: Conn = None
        """A pooled connection kept between calls (see _Checkout)."""
        self._held_busy = False
        self._group: list[_Pending] | None = None
        """The batches of this event-loop turn waiting for one call (see _commit_batch)."""
        self._flushing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str = "orchestra",
        min_size: int = 1,
        max_size: int = 10,
        synchronous_commit: str | None = None,
        connect_timeout: float = 10.0,
    ) -> PostgresStore:
        """Connect now (creating or migrating the schema) and return the store."""
        store = cls(
            url, schema=schema, min_size=min_size, max_size=max_size,
            synchronous_commit=synchronous_commit, connect_timeout=connect_timeout,
        )  # fmt: skip
        await store._get_pool()
        return store

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    async def __aenter__(self) -> Self:
        return self

    # -- plumbing ---------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str) -> PersistenceError:
        return PersistenceError(f"PostgreSQL store (schema {self.schema}): {what} failed: {exc}")

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._closed:
            msg = f"PostgreSQL store (schema {self.schema}) is closed"
            raise PersistenceError(msg)
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                asyncpg = _asyncpg()
                internal = asyncpg.exceptions.InternalClientError
                self._errors = (
                    asyncpg.PostgresError, asyncpg.InterfaceError, internal, OSError, TimeoutError
                )  # fmt: skip
                self._conn_errors = (
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
                    "min_size": self._min, "max_size": self._max,
                    "timeout": self._connect_timeout, "server_settings": self._settings,
                }  # fmt: skip
                if "reset" in inspect.signature(asyncpg.create_pool).parameters:
                    kwargs["reset"] = _no_reset  # the store leaves no session state behind
                try:
                    pool = await asyncpg.create_pool(self._url, **kwargs)
                except self._errors as exc:
                    raise self._error(exc, "connecting") from exc
                try:
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                except BaseException as exc:
                    await pool.close()
                    if isinstance(exc, self._errors):
                        raise self._error(exc, "creating the schema") from exc
                    raise
                self._pool = pool
        return self._pool

    async def _migrate(self, conn: Conn) -> None:
        migrations = _migrations.MIGRATIONS
        where = f"PostgreSQL schema {self.schema}"
        if not _migrations.pending(await self._schema_version(conn), where, migrations):
            return
        async with conn.transaction():
            await conn.execute(self._sql.lock_version, f"orchestra-migrate:{self.schema}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            for m in _migrations.pending(await self._schema_version(conn), where, migrations):
                for statement in m.postgres:
                    await conn.execute(statement.format(schema=self._s))
                await conn.execute(
                    f"INSERT INTO {self._s}.meta (key, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    str(m.version),
                )
                logger.info("%s: migrated to schema version %d", where, m.version)

    async def _schema_version(self, conn: Conn) -> int:
        if await conn.fetchval("SELECT to_regclass($1)", f"{self._s}.meta") is None:
            return 0
        value = await conn.fetchval(
            f"SELECT value FROM {self._s}.meta WHERE key = 'schema_version'"
        )
        return 0 if value is None else int(value)

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return await self._call("reading the schema version", True, self._schema_version)

    async def _call(
        self,
        what: str,
        idempotent: bool,
        fn: Callable[Concatenate[Conn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` on a pooled connection; on a dead one, retry if that is safe."""
        pool = self._pool if self._pool is not None else await self._get_pool()
        # Each dead connection found is closed, so after max_size of them a new one comes.
        attempts = self._max + 1
        refused = 0  # connecting failed: once more at most (the server may be down)
        for attempt in range(1, attempts + 1):
            sent = False
            try:
                async with _Checkout(self, pool) as conn:
                    sent = True
                    try:
                        return await fn(conn, *args, **kwargs)
                    except self._conn_errors:
                        with contextlib.suppress(Exception):  # it may be gone already
                            conn.terminate()  # never hand a half-dead connection out again
                        raise
            except self._errors as exc:
                lost = isinstance(exc, self._conn_errors)
                safe = (
                    not sent
                    or idempotent
                    or any(t in str(exc) for t in _TERMINATED)
                    or isinstance(exc, self._unsent)
                )
                refused += not sent
                if attempt < attempts and lost and safe and refused <= 1 and not self._closed:
                    logger.info("%s: lost a connection (%s); retrying", self, exc)
                    continue
                raise self._error(exc, what) from exc
        raise AssertionError  # pragma: no cover - the loop returns or raises

    async def aclose(self) -> None:
        """Close the pool and every subscription; the store is unusable after.

        Groups of batches already on their way are committed (or fail) first.
        """
        if self._flushing:
            await asyncio.wait(set(self._flushing))
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            held, self._held = self._held, None
            if held is not None and not self._held_busy:
                await pool.release(held)
            await pool.close()

    # -- versions ---------------------------------------------------------------------

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        """Store a new version unless the latest has the same digest (under a lock per name)."""

        async def put(conn: Conn) -> Version:
            async with conn.transaction():
                await conn.execute(self._sql.lock_version, f"{self.schema}:{name}")
                row = await conn.fetchrow(self._sql.latest_version, name)
                if row is not None and row[2] == digest:
                    if not row[4]:
                        await conn.execute(self._sql.redeploy, name)
                    return _version((*row[:4], True, row[5]))
                await conn.execute(self._sql.redeploy, name)
                seq = 1 if row is None else row[1] + 1
                await conn.execute(self._sql.insert_version, name, seq, digest, definition, now)
                return Version(
                    name=name, seq=seq, digest=digest, definition=definition, created=now
                )

        return await self._call("put_version", True, put)

    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        """Return one version, or the latest."""

        async def get(conn: Conn) -> Version | None:
            if seq is None:
                row = await conn.fetchrow(self._sql.latest_version, name)
            else:
                row = await conn.fetchrow(self._sql.get_version, name, seq)
            return None if row is None else _version(row)

        return await self._call("get_version", True, get)

    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return versions by name, then seq."""

        async def get(conn: Conn) -> list[Version]:
            if name is None:
                return [_version(r) for r in await conn.fetch(self._sql.list_versions)]
            return [_version(r) for r in await conn.fetch(self._sql.list_versions_of, name)]

        return await self._call("list_versions", True, get)

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Flag every version of ``name``."""

        async def update(conn: Conn) -> bool:
            return _count(await conn.execute(self._sql.set_deployed, name, deployed)) > 0

        return await self._call("set_deployed", True, update)

    # -- runs -------------------------------------------------------------------------

    async def _create_run(self, conn: Conn, run: RunRecord) -> None:
        status = await conn.execute(
            self._sql.create_run, run.id, run.process, run.version, run.status, run.context,
            run.position, run.error, run.created, run.updated, run.owner, run.lease_expires,
        )  # fmt: skip
        if _count(status) == 0:
            msg = f"run {run.id!r} already exists"
            raise ConflictError(msg)

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run; ``ConflictError`` if its id exists."""
        await self._call("create_run", False, self._create_run, run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a run; ``RunNotFoundError`` if there is none."""

        async def get(conn: Conn) -> RunRecord:
            row = await conn.fetchrow(self._sql.get_run, run_id)
            if row is None:
                msg = f"no run {run_id!r}"
                raise RunNotFoundError(msg)
            return _run(row)

        return await self._call("get_run", True, get)

    async def _update_run(self, conn: Conn, run: RunRecord, owner: str | None) -> None:
        values = (run.id, run.process, run.version, run.status, run.context, run.position,
                  run.error, run.created, run.updated, run.owner, run.lease_expires)  # fmt: skip
        if owner is None:
            status = await conn.execute(self._sql.update_run, *values)
        else:
            status = await conn.execute(self._sql.update_owned_run, *values, owner)
        if _count(status) == 0:
            row = await conn.fetchrow(self._sql.run_owner, run.id)
            if row is None:
                msg = f"no run {run.id!r}"
                raise RunNotFoundError(msg)
            msg = f"run {run.id!r} is held by {row[0]!r}, not {owner!r}"
            raise OwnershipError(msg)

    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace a run (only while ``owner`` holds it, if given: one conditional UPDATE)."""
        # A replacing write: retried after a lost connection. Conditional on the owner, a
        # retry of a write that did commit may find the run given back and refuse it.
        await self._call("update_run", True, self._update_run, run, owner)

    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """Return runs, oldest first."""
        where: list[str] = []
        params: list[object] = []
        if process is not None:
            params.append(process)
            where.append(f"process = ${len(params)}")
        if status is not None:
            params.append(status)
            where.append(f"status = ${len(params)}")
        sql = self._sql.list_runs
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, ord"

        async def get(conn: Conn) -> list[RunRecord]:
            return [_run(r) for r in await conn.fetch(sql, *params)]

        return await self._call("list_runs", True, get)

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take the run's lease if it is free, ours or expired (one conditional UPDATE)."""

        async def claim(conn: Conn) -> bool:
            if _count(await conn.execute(self._sql.claim_run, run_id, owner, until, now)):
                return True
            if await conn.fetchval(self._sql.run_exists, run_id) is None:
                msg = f"no run {run_id!r}"
                raise RunNotFoundError(msg)
            return False

        return await self._call("claim_run", True, claim)

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker (seeks in an index, no scan)."""

        async def get(conn: Conn) -> list[RunRecord]:
            return [_run(r) for r in await conn.fetch(self._sql.orphaned_runs, worker, now)]

        return await self._call("orphaned_runs", True, get)

    # -- checkpoints ------------------------------------------------------------------

    async def _put_checkpoint(self, conn: Conn, c: CheckpointRecord) -> None:
        await conn.execute(
            self._sql.put_checkpoint, c.run_id, c.step, c.processor, c.output, c.trace
        )

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        await self._call("put_checkpoint", True, self._put_checkpoint, checkpoint)

    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        """Return a step's checkpoints in write order."""

        async def get(conn: Conn) -> list[CheckpointRecord]:
            rows = await conn.fetch(self._sql.checkpoints, run_id, step)
            return [
                CheckpointRecord(run_id=run_id, step=step, processor=p, output=o, trace=t)
                for p, o, t in rows
            ]

        return await self._call("checkpoints", True, get)

    async def _delete_checkpoints(self, conn: Conn, run_id: str, step: str | None) -> None:
        if step is None:
            await conn.execute(self._sql.delete_checkpoints, run_id)
        else:
            await conn.execute(self._sql.delete_step_checkpoints, run_id, step)

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete a run's checkpoints."""
        await self._call("delete_checkpoints", True, self._delete_checkpoints, run_id, step)

    # -- waits ------------------------------------------------------------------------

    async def _put_wait(self, conn: Conn, w: Wait) -> None:
        await conn.execute(self._sql.put_wait, w.run_id, w.step, w.event, w.key, w.deadline)

    async def put_wait(self, wait: Wait) -> None:
        """Record a wait, replacing the run's previous one."""
        await self._call("put_wait", True, self._put_wait, wait)

    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove and return a run's wait (``DELETE ... RETURNING``: one winner)."""

        async def delete(conn: Conn) -> Wait | None:
            row = await conn.fetchrow(self._sql.delete_wait, run_id)
            return None if row is None else _wait(row)

        return await self._call("delete_wait", False, delete)

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``(event, key)``."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.find_waits, event, key)]

        return await self._call("find_waits", True, get)

    async def due_waits(self, now: float) -> list[Wait]:
        """Return due waits, earliest first."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.due_waits, now)]

        return await self._call("due_waits", True, get)

    async def list_waits(self) -> list[Wait]:
        """Return every wait."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.list_waits)]

        return await self._call("list_waits", True, get)

    # -- inbox ------------------------------------------------------------------------

    async def add_event(self, event: InboxEvent) -> bool:
        """Keep an event unless its id is known."""

        async def add(conn: Conn) -> bool:
            e = event
            status = await conn.execute(
                self._sql.add_event, e.id, e.name, e.key, e.payload, e.received, e.expires,
                e.consumed,
            )  # fmt: skip
            return _count(status) == 1

        return await self._call("add_event", False, add)

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event (``FOR UPDATE SKIP LOCKED``: one taker)."""

        async def take(conn: Conn) -> InboxEvent | None:
            row = await conn.fetchrow(self._sql.take_event, name, key, now)
            return None if row is None else _event(row)

        return await self._call("take_event", False, take)

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest matching event without consuming it."""

        async def peek(conn: Conn) -> InboxEvent | None:
            row = await conn.fetchrow(self._sql.peek_event, name, key, now)
            return None if row is None else _event(row)

        return await self._call("peek_event", True, peek)

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait an inbox event matches, with that event (one query)."""

        async def get(conn: Conn) -> list[tuple[Wait, InboxEvent]]:
            rows = await conn.fetch(self._sql.matched_waits, now)
            return [(_wait(r[:5]), _event(r[5:])) for r in rows]

        return await self._call("matched_waits", True, get)

    async def consume_event(self, event_id: str) -> None:
        """Mark an event consumed (one conditional UPDATE); ``EventTakenError`` if it was."""

        async def consume(conn: Conn) -> None:
            if _count(await conn.execute(self._sql.consume_event, event_id)) == 0:
                known = await conn.fetchval(self._sql.event_exists, event_id) is not None
                msg = f"inbox event {event_id!r} is {'consumed already' if known else 'gone'}"
                raise EventTakenError(msg)

        await self._call("consume_event", False, consume)

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""

        async def purge(conn: Conn) -> int:
            return _count(await conn.execute(self._sql.purge_events, now))

        return await self._call("purge_events", True, purge)

    # -- history ----------------------------------------------------------------------

    async def _append_history(self, conn: Conn, e: HistoryEntry) -> int:
        unique = _asyncpg().UniqueViolationError
        for _ in range(20):  # two writers appending to one run at once: take the next seq
            try:
                seq: int = await conn.fetchval(
                    self._sql.append_history, e.run_id, e.kind, e.at, e.step, e.detail
                )
            except unique:
                if conn.is_in_transaction():
                    raise
                continue
            return seq
        msg = f"could not append to the history of run {e.run_id!r}: too many concurrent writers"
        raise ConflictError(msg)

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        """Append to a run's history; the store numbers it."""
        seq = await self._call("append_history", False, self._append_history, entry)
        return HistoryEntry(
            run_id=entry.run_id, kind=entry.kind, at=entry.at, step=entry.step,
            detail=entry.detail, seq=seq,
        )  # fmt: skip

    async def history(self, run_id: str) -> list[HistoryEntry]:
        """Return a run's history."""

        async def get(conn: Conn) -> list[HistoryEntry]:
            return [
                HistoryEntry(run_id=run_id, seq=s, kind=k, at=a, step=st, detail=d)
                for s, k, a, st, d in await conn.fetch(self._sql.history, run_id)
            ]

        return await self._call("history", True, get)

    # -- housekeeping -----------------------------------------------------------------

    async def purge_runs(self, *, before: float) -> int:
        """Delete ended runs last updated at or before ``before`` (one statement)."""

        async def purge(conn: Conn) -> int:
            count: int = await conn.fetchval(self._sql.purge_runs, before)
            return count

        return await self._call("purge_runs", True, purge)

    # -- batches and notifications ----------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes and commit them in one transaction when the block ends.

        If the block raises nothing is written; if a write or a condition fails, none
        is. The batch is one round trip: a function in the schema applies it. Batches
        of other tasks committed in the same loop turn may share the round trip and the
        transaction (see the class's group commit), each still all or nothing.
        """
        return Batch(self._commit_batch)

    async def _commit_batch(self, batch_ops: list[Op]) -> None:
        """Commit a batch: alone, or in one call and transaction with this loop turn's.

        The first batch of a turn leads: it yields once, so that the tasks ready in this
        turn can add theirs (up to ``_GROUP_MAX``), then a task of the store's own sends
        them together (a caller's cancellation never cancels the others' commit) and
        every caller waits for its batch's outcome. A batch that ends up alone, or finds
        nothing else ready to run, is sent at once by its caller, as it always was.
        """
        ops = json.dumps([_batch_op(name, args) for name, args in batch_ops])
        group = self._group
        if group is not None and len(group) < _GROUP_MAX:  # a leader collects: join it
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pending = _Pending(ops, _batch_key(batch_ops), future)
            group.append(pending)
            await future  # cancelled: left out if the group is not sent yet, else may commit
            await self._settle(pending)
            return
        loop = asyncio.get_running_loop()
        if _nothing_ready(loop):
            await self._apply_one(ops)
            return
        pending = _Pending(ops, _batch_key(batch_ops), None)
        group = self._group = [pending]
        try:
            await asyncio.sleep(0)  # one turn: the tasks ready now may add their batches
        except BaseException:
            if self._group is group:
                self._group = None
            group.remove(pending)
            self._launch(group)
            raise
        if self._group is group:
            self._group = None
        if not any(p.future is not None and not p.future.done() for p in group):
            await self._apply_one(ops)  # alone after all
            return
        pending.future = future = loop.create_future()
        self._launch(group)
        await future
        await self._settle(pending)

    def _launch(self, group: list[_Pending]) -> None:
        """Send ``group`` from a task of the store's own."""
        if group:
            task = asyncio.get_running_loop().create_task(self._flush(group))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _settle(self, pending: _Pending) -> None:
        """Finish a batch after its group's call: raise its error, or commit it alone."""
        if pending.error is not None:
            raise pending.error
        if pending.retry:
            await self._apply_one(pending.ops)

    async def _flush(self, group: list[_Pending]) -> None:
        """Apply ``group``'s batches with one call of ``apply_batches``; never raises.

        Each batch runs in a subtransaction: one whose condition fails gets its error and
        the others commit. A batch whose history seq another writer took or that would
        wait for a row lock, or every batch when the call fails on the server for another
        reason (it then changed nothing), is marked to be committed again alone; a lost
        connection fails them all as it fails a lone batch.
        """
        group = [p for p in group if p.future is None or not p.future.done()]
        try:
            if len(group) == 1:
                group[0].retry = True
                return
            # In the order of their runs: two groups lock the rows they share in the same
            # order (what waits nonetheless is rolled back alone: see apply_batches).
            group.sort(key=lambda p: p.key)
            payload = "[" + ",".join(p.ops for p in group) + "]"
            try:
                results = await self._call("batch", False, self._apply_many, payload)
            except BaseException as exc:
                for p in group:
                    p.error = exc if isinstance(exc, Exception) else self._error(exc, "batch")
                if not isinstance(exc, Exception):
                    raise
                return
            if results is None or len(results) != len(group):
                for p in group:
                    p.retry = True
                return
            for p, result in zip(group, results, strict=True):
                if result is not None:
                    code, message = result
                    error = _BATCH_ERRORS.get(code)
                    if error is None:
                        p.retry = True  # a history seq was taken, or a row lock held
                    else:
                        p.error = error(message)
        finally:
            for p in group:
                if p.future is not None and not p.future.done():
                    p.future.set_result(None)

    async def _apply_many(self, conn: Conn, payload: str) -> list[Any] | None:
        try:
            text = await conn.fetchval(self._sql.apply_batches, payload)
        except _asyncpg().PostgresError as exc:
            if isinstance(exc, self._conn_errors):
                raise
            logger.debug("%s: a group of batches failed (%s); each commits alone", self, exc)
            return None
        results: list[Any] = json.loads(text)
        return results

    async def _apply_one(self, ops: str) -> None:
        unique = _asyncpg().UniqueViolationError

        async def apply(conn: Conn) -> None:
            for _ in range(20):  # another writer took a history seq: the batch did nothing
                try:
                    await conn.execute(self._sql.apply_batch, ops)
                except unique:
                    continue
                except _asyncpg().PostgresError as exc:
                    error = _BATCH_ERRORS.get(getattr(exc, "sqlstate", None) or "")
                    if error is not None:
                        raise error(str(exc)) from exc
                    raise
                return
            msg = "could not apply a batch: too many concurrent history writers"
            raise ConflictError(msg)

        await self._call("batch", False, apply)

    @property
    def supports_notify(self) -> bool:
        """True: ``NOTIFY`` reaches subscribers on every machine using the schema."""
        return True

    def _channel(self, channel: str) -> str:
        full = f"{self.schema}.{channel}"
        if len(full.encode()) > 63:
            msg = f"channel name {full!r} is longer than PostgreSQL's 63 bytes"
            raise ValueError(msg)
        return full

    async def notify(self, channel: str, payload: str = "") -> None:
        """Publish ``payload`` (at most ~8000 bytes) on ``channel`` with ``NOTIFY``.

        Every subscriber to ``channel`` of a store on the same database and schema, in
        any process, receives it within milliseconds.
        """
        full = self._channel(channel)

        async def send(conn: Conn) -> None:
            await conn.execute("SELECT pg_notify($1, $2)", full, payload)

        await self._call("notify", False, send)

    def subscribe(self, channel: str) -> PostgresSubscription:
        """Return a subscription to ``channel``: an async iterator of notification payloads.

        Use it as ``async with store.subscribe("ch") as sub: async for payload in sub:``.
        It holds a connection of its own (``LISTEN``), outside the pool. If that
        connection is lost it reconnects and yields ``""`` once: notifications sent
        meanwhile are lost, so treat payloads as hints and look at the store.
        """
        return PostgresSubscription(self, self._channel(channel))


_GROUP_MAX = 32
"""Batches in one group at most: each is a subtransaction, and PostgreSQL keeps the ids
of 64 per transaction in shared memory before other sessions' snapshots get slower."""


class _Pending:
    """One batch waiting for its group's call (see PostgresStore._commit_batch)."""

    __slots__ = ("error", "future", "key", "ops", "retry")

    def __init__(self, ops: str, key: str, future: asyncio.Future[None] | None) -> None:
        self.ops = ops
        """The batch's operations as the JSON array ``apply_batch`` reads."""
        self.key = key
        """The run the batch writes: groups apply their batches in this order."""
        self.future = future
        self.error: BaseException | None = None
        """Why the batch failed; it was not written (or, after a lost connection, may be)."""
        self.retry = False
        """The group could not apply it: it was not written and commits on its own."""


def _nothing_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """True when no other callback waits to run in this turn of ``loop`` (asyncio's own).

    Then no other task can add a batch before this one's would leave, so waiting for
    companions would only add latency. Loops without the ready queue (uvloop) say False.
    """
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _batch_key(ops: list[Op]) -> str:
    """The id of the run a batch writes (its first operation's), or ``""``."""
    for name, args in ops:
        if name == "consume_event":
            continue
        first = args[0]
        if isinstance(first, str):
            return first
        return str(getattr(first, "run_id", None) or getattr(first, "id", ""))
    return ""


_GETTERS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[object, ...]]]] = {}
"""Per record class: its field names, and a getter of their values (faster than asdict)."""


def _batch_op(name: str, args: tuple[object, ...]) -> dict[str, object]:
    """One batch operation as the JSON object ``apply_batch`` reads."""
    if name == "delete_checkpoints":
        return {"op": name, "run_id": args[0], "step": args[1]}
    if name == "require_owner":
        return {"op": name, "run_id": args[0], "expect_owner": args[1]}
    if name == "delete_wait":
        return {"op": name, "run_id": args[0]}
    if name == "consume_event":
        return {"op": name, "id": args[0]}
    record = args[0]
    kind = type(record)
    get = _GETTERS.get(kind)
    if get is None:
        names = tuple(a.name for a in attrs.fields(kind))  # type: ignore[arg-type]
        get = _GETTERS[kind] = (names, operator.attrgetter(*names))
    fields: dict[str, object] = dict(zip(get[0], get[1](record), strict=True))
    fields["op"] = name
    if name == "update_run":
        fields["expect_owner"] = args[1]
    return fields


class _Checkout:
    """A connection for one call: the store's held connection when it is free, else the pool's.

    Taking a connection from asyncpg's pool and giving it back costs more CPU than a
    small query, so the store keeps one between calls; concurrent calls use the pool. A
    call that fails other than with the store's own errors hands the held connection
    back to the pool, which rolls it back or replaces it.
    """

    def __init__(self, store: PostgresStore, pool: Any) -> None:
        self.store = store
        self.pool = pool
        self.conn: Conn = None
        self.held = False

    async def __aenter__(self) -> Conn:
        store = self.store
        held = store._held
        if held is not None and not _usable(held):
            store._held = held = None  # its server session ended: the pool took it back
        if held is not None and not store._held_busy:
            store._held_busy = True
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
        store = self.store
        if self.held:
            store._held_busy = False
        healthy = exc_type is None or issubclass(exc_type, OrchestraError)
        if healthy and not store._closed:
            if self.held:
                return
            if store._held is None and store._max > 1:  # keep it (one stays for the pool)
                store._held = self.conn
                return
        if self.held:
            store._held = None
        await self.pool.release(self.conn)


def _usable(conn: Conn) -> bool:
    """Whether a connection taken from the pool is still attached and open."""
    try:
        return getattr(conn, "_con", None) is not None and not conn.is_closed()
    except Exception:  # a detached proxy raises on any use
        return False


async def _no_reset(conn: Conn) -> None:
    """Pool reset hook: the store sets no session state, so skip asyncpg's reset query."""


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
        store = self._store
        try:
            conn = await asyncpg.connect(
                store._url, timeout=store._connect_timeout, server_settings=store._settings
            )
        except store._errors as exc:
            raise store._error(exc, f"subscribing to {self.channel}") from exc
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
