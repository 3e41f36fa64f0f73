"""Group commit of :class:`~orchestra.stores.PostgresStore`.

The batches that several tasks commit in the same turn of the event loop are applied by
one call of the schema's ``apply_batches`` function: one round trip and one WAL flush
for the group, each batch in a subtransaction of its own. The store's class docstring
says what a caller can rely on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from orchestra.errors import ConflictError
from orchestra.stores._postgres_sql import _BATCH_ERRORS, _asyncpg

if TYPE_CHECKING:
    from orchestra.stores._batch import Op
    from orchestra.stores._postgres_conn import Conn, _Connections
    from orchestra.stores._postgres_sql import _SQL

logger = logging.getLogger("orchestra.stores")

_GROUP_MAX = 32
"""Batches in one group at most: each is a subtransaction, and PostgreSQL keeps the ids
of 64 per transaction in shared memory before other sessions' snapshots get slower."""


class _GroupCommit:
    """The commit of one store's batches, alone or grouped with this loop turn's."""

    def __init__(self, db: _Connections, sql: _SQL) -> None:
        self._db = db
        self._sql = sql
        self._group: list[_Pending] | None = None
        """The batches of this event-loop turn waiting for one call (see commit)."""
        self._flushing: set[asyncio.Task[None]] = set()

    async def commit(self, batch_ops: list[Op]) -> None:
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

    async def wait(self) -> None:
        """Wait until the groups already on their way are committed (or failed)."""
        if self._flushing:
            await asyncio.wait(set(self._flushing))

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
                results = await self._db.call("batch", False, self._apply_many, payload)
            except BaseException as exc:
                for p in group:
                    p.error = exc if isinstance(exc, Exception) else self._db.error(exc, "batch")
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
            if isinstance(exc, self._db.conn_errors):
                raise
            logger.debug("%s: a group of batches failed (%s); each commits alone", self._db, exc)
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

        await self._db.call("batch", False, apply)


class _Pending:
    """One batch waiting for its group's call (see _GroupCommit.commit)."""

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
