"""The PostgreSQL store: asyncpg, a connection pool, one schema of tables per store.

asyncpg is imported when the store first connects, never by ``import orchestra``; it
comes with ``pip install 'orchestra[postgres]'``.

Exclusive writes are single conditional statements: a lease is taken by ``UPDATE ...
WHERE`` the lease is free, a wait is claimed by ``DELETE ... RETURNING`` (a second
deleter finds no row), an inbox event by ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED)``. Deploying takes a transaction-scoped advisory lock per process name.

The store's public surface is here; its parts live in modules of their own:
``_postgres_conn`` (the pool, retrying a call when its connection died),
``_postgres_group`` (group commit of batches), ``_postgres_listen`` (``LISTEN``
subscriptions) and ``_postgres_sql`` (the SQL text and row mappers).
"""

# ruff: noqa: S608 - SQL text is built only from constants and a schema name checked to
# be a plain identifier; every value is a bound parameter.

from __future__ import annotations

import logging
from typing import Self

from orchestra.errors import ConflictError, RunNotFoundError
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
    Version,
    Wait,
)
from orchestra.stores._batch import Batch
from orchestra.stores._postgres_conn import Conn, _Connections
from orchestra.stores._postgres_group import _GroupCommit
from orchestra.stores._postgres_listen import PostgresSubscription
from orchestra.stores._postgres_sql import (
    _IDENT,
    _SQL,
    _asyncpg,
    _count,
    _event,
    _run,
    _version,
    _wait,
)

__all__ = ["PostgresStore", "PostgresSubscription"]

logger = logging.getLogger("orchestra.stores")


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
        self.schema = schema
        self._s = f'"{schema}"'
        self._sql = _SQL(self._s)
        settings = {} if synchronous_commit is None else {
            "synchronous_commit": synchronous_commit
        }  # fmt: skip
        self._db = _Connections(
            url, schema, min_size=min_size, max_size=max_size, settings=settings,
            connect_timeout=connect_timeout, migrate=self._migrate,
        )  # fmt: skip
        self._group = _GroupCommit(self._db, self._sql)
        self._subscriptions: set[PostgresSubscription] = set()

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
        await store._db.get_pool()
        return store

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    async def __aenter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        """Close the pool and every subscription; the store is unusable after.

        Groups of batches already on their way are committed (or fail) first.
        """
        await self._group.wait()
        self._db.closed = True
        for sub in list(self._subscriptions):
            await sub.aclose()
        await self._db.aclose()

    # -- schema -----------------------------------------------------------------------

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
        return await self._db.call("reading the schema version", True, self._schema_version)

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

        return await self._db.call("put_version", True, put)

    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        """Return one version, or the latest."""

        async def get(conn: Conn) -> Version | None:
            if seq is None:
                row = await conn.fetchrow(self._sql.latest_version, name)
            else:
                row = await conn.fetchrow(self._sql.get_version, name, seq)
            return None if row is None else _version(row)

        return await self._db.call("get_version", True, get)

    async def list_versions(self, name: str | None = None) -> list[Version]:
        """Return versions by name, then seq."""

        async def get(conn: Conn) -> list[Version]:
            if name is None:
                return [_version(r) for r in await conn.fetch(self._sql.list_versions)]
            return [_version(r) for r in await conn.fetch(self._sql.list_versions_of, name)]

        return await self._db.call("list_versions", True, get)

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        """Flag every version of ``name``."""

        async def update(conn: Conn) -> bool:
            return _count(await conn.execute(self._sql.set_deployed, name, deployed)) > 0

        return await self._db.call("set_deployed", True, update)

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
        await self._db.call("create_run", False, self._create_run, run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a run; ``RunNotFoundError`` if there is none."""

        async def get(conn: Conn) -> RunRecord:
            row = await conn.fetchrow(self._sql.get_run, run_id)
            if row is None:
                msg = f"no run {run_id!r}"
                raise RunNotFoundError(msg)
            return _run(row)

        return await self._db.call("get_run", True, get)

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
        await self._db.call("update_run", True, self._update_run, run, owner)

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

        return await self._db.call("list_runs", True, get)

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        """Take the run's lease if it is free, ours or expired (one conditional UPDATE)."""

        async def claim(conn: Conn) -> bool:
            if _count(await conn.execute(self._sql.claim_run, run_id, owner, until, now)):
                return True
            if await conn.fetchval(self._sql.run_exists, run_id) is None:
                msg = f"no run {run_id!r}"
                raise RunNotFoundError(msg)
            return False

        return await self._db.call("claim_run", True, claim)

    async def orphaned_runs(self, *, worker: str, now: float) -> list[RunRecord]:
        """Return the runs that may need a new worker (seeks in an index, no scan)."""

        async def get(conn: Conn) -> list[RunRecord]:
            return [_run(r) for r in await conn.fetch(self._sql.orphaned_runs, worker, now)]

        return await self._db.call("orphaned_runs", True, get)

    # -- checkpoints ------------------------------------------------------------------

    async def _put_checkpoint(self, conn: Conn, c: CheckpointRecord) -> None:
        await conn.execute(
            self._sql.put_checkpoint, c.run_id, c.step, c.processor, c.output, c.trace
        )

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        await self._db.call("put_checkpoint", True, self._put_checkpoint, checkpoint)

    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        """Return a step's checkpoints in write order."""

        async def get(conn: Conn) -> list[CheckpointRecord]:
            rows = await conn.fetch(self._sql.checkpoints, run_id, step)
            return [
                CheckpointRecord(run_id=run_id, step=step, processor=p, output=o, trace=t)
                for p, o, t in rows
            ]

        return await self._db.call("checkpoints", True, get)

    async def _delete_checkpoints(self, conn: Conn, run_id: str, step: str | None) -> None:
        if step is None:
            await conn.execute(self._sql.delete_checkpoints, run_id)
        else:
            await conn.execute(self._sql.delete_step_checkpoints, run_id, step)

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete a run's checkpoints."""
        await self._db.call("delete_checkpoints", True, self._delete_checkpoints, run_id, step)

    # -- waits ------------------------------------------------------------------------

    async def _put_wait(self, conn: Conn, w: Wait) -> None:
        await conn.execute(self._sql.put_wait, w.run_id, w.step, w.event, w.key, w.deadline)

    async def put_wait(self, wait: Wait) -> None:
        """Record a wait, replacing the run's previous one."""
        await self._db.call("put_wait", True, self._put_wait, wait)

    async def delete_wait(self, run_id: str) -> Wait | None:
        """Remove and return a run's wait (``DELETE ... RETURNING``: one winner)."""

        async def delete(conn: Conn) -> Wait | None:
            row = await conn.fetchrow(self._sql.delete_wait, run_id)
            return None if row is None else _wait(row)

        return await self._db.call("delete_wait", False, delete)

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        """Return the waits for ``(event, key)``."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.find_waits, event, key)]

        return await self._db.call("find_waits", True, get)

    async def due_waits(self, now: float) -> list[Wait]:
        """Return due waits, earliest first."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.due_waits, now)]

        return await self._db.call("due_waits", True, get)

    async def list_waits(self) -> list[Wait]:
        """Return every wait."""

        async def get(conn: Conn) -> list[Wait]:
            return [_wait(r) for r in await conn.fetch(self._sql.list_waits)]

        return await self._db.call("list_waits", True, get)

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

        return await self._db.call("add_event", False, add)

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Consume the oldest matching event (``FOR UPDATE SKIP LOCKED``: one taker)."""

        async def take(conn: Conn) -> InboxEvent | None:
            row = await conn.fetchrow(self._sql.take_event, name, key, now)
            return None if row is None else _event(row)

        return await self._db.call("take_event", False, take)

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        """Return the oldest matching event without consuming it."""

        async def peek(conn: Conn) -> InboxEvent | None:
            row = await conn.fetchrow(self._sql.peek_event, name, key, now)
            return None if row is None else _event(row)

        return await self._db.call("peek_event", True, peek)

    async def matched_waits(self, *, now: float) -> list[tuple[Wait, InboxEvent]]:
        """Return each wait an inbox event matches, with that event (one query)."""

        async def get(conn: Conn) -> list[tuple[Wait, InboxEvent]]:
            rows = await conn.fetch(self._sql.matched_waits, now)
            return [(_wait(r[:5]), _event(r[5:])) for r in rows]

        return await self._db.call("matched_waits", True, get)

    async def consume_event(self, event_id: str) -> None:
        """Mark an event consumed (one conditional UPDATE); ``EventTakenError`` if it was."""

        async def consume(conn: Conn) -> None:
            if _count(await conn.execute(self._sql.consume_event, event_id)) == 0:
                known = await conn.fetchval(self._sql.event_exists, event_id) is not None
                msg = f"inbox event {event_id!r} is {'consumed already' if known else 'gone'}"
                raise EventTakenError(msg)

        await self._db.call("consume_event", False, consume)

    async def purge_events(self, now: float) -> int:
        """Forget expired events."""

        async def purge(conn: Conn) -> int:
            return _count(await conn.execute(self._sql.purge_events, now))

        return await self._db.call("purge_events", True, purge)

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
        seq = await self._db.call("append_history", False, self._append_history, entry)
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

        return await self._db.call("history", True, get)

    # -- housekeeping -----------------------------------------------------------------

    async def purge_runs(self, *, before: float) -> int:
        """Delete ended runs last updated at or before ``before`` (one statement)."""

        async def purge(conn: Conn) -> int:
            count: int = await conn.fetchval(self._sql.purge_runs, before)
            return count

        return await self._db.call("purge_runs", True, purge)

    # -- batches and notifications ----------------------------------------------------

    def batch(self) -> Batch:
        """Collect writes and commit them in one transaction when the block ends.

        If the block raises nothing is written; if a write or a condition fails, none
        is. The batch is one round trip: a function in the schema applies it. Batches
        of other tasks committed in the same loop turn may share the round trip and the
        transaction (see the class's group commit), each still all or nothing.
        """
        return Batch(self._group.commit)

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

        await self._db.call("notify", False, send)

    def subscribe(self, channel: str) -> PostgresSubscription:
        """Return a subscription to ``channel``: an async iterator of notification payloads.

        Use it as ``async with store.subscribe("ch") as sub: async for payload in sub:``.
        It holds a connection of its own (``LISTEN``), outside the pool. If that
        connection is lost it reconnects and yields ``""`` once: notifications sent
        meanwhile are lost, so treat payloads as hints and look at the store.
        """
        return PostgresSubscription(self, self._channel(channel))
