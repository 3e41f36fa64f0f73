"""SQLite statements of :class:`~orchestra.stores.SQLiteStore`: row mappers and writes.

Each write is a function of a connection, run inside the store's transactions; a batch
applies them in order (:func:`_apply_batch`); ``_sqlite_group`` commits a group of batches
together (see the store's group commit).
"""

# ruff: noqa: S608 - SQL text is built only from constants; every value is a bound parameter.

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from orchestra.errors import ConflictError, RunNotFoundError
from orchestra.stores._base import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    RunRecord,
    Version,
    Wait,
)
from orchestra.stores._batch import Op

_RUN_COLUMNS = (
    "id, process, version, status, context, position, error, created, updated, owner, lease_expires"
)
_WAIT_COLUMNS = "run_id, step, event, key, deadline"
_EVENT_COLUMNS = "id, name, key, payload, received, expires, consumed"
_ENDED = "('completed', 'failed', 'cancelled')"
_NOTIFICATION_RETENTION = 60.0
"""Seconds a notification stays in its table for subscribers that poll."""


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)  # pragma: no cover - Python < 3.11


def _run(row: Sequence[object]) -> RunRecord:
    return RunRecord(
        id=row[0], process=row[1], version=row[2], status=row[3], context=row[4],  # type: ignore[arg-type]
        position=row[5], error=row[6], created=row[7], updated=row[8], owner=row[9],  # type: ignore[arg-type]
        lease_expires=row[10],  # type: ignore[arg-type]
    )  # fmt: skip


def _wait(row: Sequence[object]) -> Wait:
    return Wait(run_id=row[0], step=row[1], event=row[2], key=row[3], deadline=row[4])  # type: ignore[arg-type]


def _event(row: Sequence[object]) -> InboxEvent:
    return InboxEvent(
        id=row[0], name=row[1], key=row[2], payload=row[3], received=row[4],  # type: ignore[arg-type]
        expires=row[5], consumed=bool(row[6]),  # type: ignore[arg-type]
    )  # fmt: skip


def _version(row: Sequence[object]) -> Version:
    return Version(
        name=row[0], seq=row[1], digest=row[2], definition=row[3],  # type: ignore[arg-type]
        deployed=bool(row[4]), created=row[5],  # type: ignore[arg-type]
    )  # fmt: skip


# -- statements, each run inside one transaction (or as one autocommit statement) -------


def _put_version(
    conn: sqlite3.Connection, name: str, digest: str, definition: str, now: float
) -> Version:
    row = conn.execute(
        "SELECT name, seq, digest, definition, deployed, created FROM orchestra_versions "
        "WHERE name = ? ORDER BY seq DESC LIMIT 1",
        (name,),
    ).fetchone()
    if row is not None and row[2] == digest:
        if not row[4]:
            conn.execute("UPDATE orchestra_versions SET deployed = 1 WHERE name = ?", (name,))
        return _version((*row[:4], 1, row[5]))
    conn.execute(
        "UPDATE orchestra_versions SET deployed = 1 WHERE name = ? AND deployed = 0", (name,)
    )
    seq = 1 if row is None else row[1] + 1
    conn.execute(
        "INSERT INTO orchestra_versions (name, seq, digest, definition, deployed, created) "
        "VALUES (?, ?, ?, ?, 1, ?)",
        (name, seq, digest, definition, now),
    )
    return Version(name=name, seq=seq, digest=digest, definition=definition, created=now)


def _create_run(conn: sqlite3.Connection, run: RunRecord) -> None:
    cur = conn.execute(
        f"INSERT INTO orchestra_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (run.id, run.process, run.version, run.status, run.context, run.position, run.error,
         run.created, run.updated, run.owner, run.lease_expires),
    )  # fmt: skip
    if cur.rowcount == 0:
        msg = f"run {run.id!r} already exists"
        raise ConflictError(msg)


_UPDATE_RUN = (
    "UPDATE orchestra_runs SET process = ?, version = ?, status = ?, context = ?, "
    "position = ?, error = ?, created = ?, updated = ?, owner = ?, lease_expires = ? "
    "WHERE id = ?"
)


_UPDATE_RUN_FENCED = _UPDATE_RUN + " AND owner = ?"
_UPDATE_STEP = (
    "UPDATE orchestra_runs SET context = ?, position = ?, error = ?, updated = ? "
    "WHERE id = ? AND owner = ? AND status = ? AND lease_expires IS ? AND process = ? "
    "AND version = ? AND created = ?"
)
"""A run's step, when only its context, position, error and time change (the common case).

It leaves the columns of the lease index alone (status, owner, lease_expires), so SQLite
neither updates that index nor writes its page: a fifth cheaper than the whole update
(most of it in the commit). It matches only a row whose other columns already hold the
record's values, so what it writes is exactly what the whole update would write; when it
matches nothing (the status or lease changed, another owner) the whole update runs.
"""


def _update_run(conn: sqlite3.Connection, run: RunRecord, owner: str | None = None) -> None:
    if owner is None:
        cur = conn.execute(_UPDATE_RUN, _run_values(run))
    else:
        if run.owner == owner:
            cur = conn.execute(
                _UPDATE_STEP,
                (run.context, run.position, run.error, run.updated, run.id, owner, run.status,
                 run.lease_expires, run.process, run.version, run.created),
            )  # fmt: skip
            if cur.rowcount:
                return
        cur = conn.execute(_UPDATE_RUN_FENCED, (*_run_values(run), owner))
    if cur.rowcount == 0:
        _not_owned(conn, run.id, owner)


def _run_values(run: RunRecord) -> tuple[object, ...]:
    return (run.process, run.version, run.status, run.context, run.position, run.error,
            run.created, run.updated, run.owner, run.lease_expires, run.id)  # fmt: skip


def _not_owned(conn: sqlite3.Connection, run_id: str, owner: str | None) -> None:
    """Raise why a write conditional on ``owner`` found no row: no run, or another owner."""
    row = conn.execute("SELECT owner FROM orchestra_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        msg = f"no run {run_id!r}"
        raise RunNotFoundError(msg)
    msg = f"run {run_id!r} is held by {row[0]!r}, not {owner!r}"
    raise OwnershipError(msg)


def _require_owner(conn: sqlite3.Connection, run_id: str, owner: str) -> None:
    row = conn.execute("SELECT owner FROM orchestra_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None or row[0] != owner:
        _not_owned(conn, run_id, owner)


def _claim_run(conn: sqlite3.Connection, run_id: str, owner: str, until: float, now: float) -> bool:
    cur = conn.execute(
        "UPDATE orchestra_runs SET owner = ?, lease_expires = ? WHERE id = ? "
        "AND (owner IS NULL OR owner = ? OR lease_expires <= ?)",
        (owner, until, run_id, owner, now),
    )
    if cur.rowcount:
        return True
    if conn.execute("SELECT 1 FROM orchestra_runs WHERE id = ?", (run_id,)).fetchone() is None:
        msg = f"no run {run_id!r}"
        raise RunNotFoundError(msg)
    return False


_LEASED = "status IN ('running', 'waiting')"
_ORPHANED_RUNS = (
    # Three disjoint seeks in the index (status, owner, lease_expires): unowned running
    # runs, the caller's own, and leased ones (few: those being worked on) with an
    # expired lease. Parked runs (waiting, no owner) are never read.
    f"SELECT {_RUN_COLUMNS} FROM ("
    f"SELECT {_RUN_COLUMNS}, ord FROM orchestra_runs WHERE status = 'running' AND owner IS NULL "
    f"UNION ALL SELECT {_RUN_COLUMNS}, ord FROM orchestra_runs WHERE {_LEASED} AND owner = ? "
    f"UNION ALL SELECT {_RUN_COLUMNS}, ord FROM orchestra_runs WHERE {_LEASED} "
    "AND owner IS NOT NULL AND owner <> ? AND lease_expires <= ?"
    ") ORDER BY created, ord"
)
_MATCHED_WAITS = (
    # The oldest open event of each (name, key), read in the order of the partial index
    # of open events; then, for each, its waits by the index (event, key). Driven by the
    # open events (CROSS JOIN: SQLite keeps that order), never by every wait.
    "WITH first AS (SELECT id, name, key, payload, received, expires, consumed, ord, "
    "row_number() OVER (PARTITION BY name, key ORDER BY received, ord) AS rn "
    "FROM orchestra_events WHERE consumed = 0 AND key IS NOT NULL AND expires > ?) "
    "SELECT w.run_id, w.step, w.event, w.key, w.deadline, "
    "f.id, f.name, f.key, f.payload, f.received, f.expires, f.consumed "
    "FROM first AS f CROSS JOIN orchestra_waits AS w ON w.event = f.name AND w.key = f.key "
    "WHERE f.rn = 1 ORDER BY f.received, f.ord, w.rowid"
)


def _orphaned_runs(conn: sqlite3.Connection, worker: str, now: float) -> list[RunRecord]:
    return [_run(r) for r in conn.execute(_ORPHANED_RUNS, (worker, worker, now)).fetchall()]


def _matched_waits(conn: sqlite3.Connection, now: float) -> list[tuple[Wait, InboxEvent]]:
    return [(_wait(r[:5]), _event(r[5:])) for r in conn.execute(_MATCHED_WAITS, (now,))]


_last_ord = 0


def _next_ord() -> int:
    """A number that grows with every call: the write order of checkpoints.

    Nanoseconds of the wall clock, kept increasing within the process. Only the worker
    holding a run's lease writes its checkpoints, so order across processes never matters.
    """
    global _last_ord  # noqa: PLW0603 - one counter per process
    _last_ord = max(_last_ord + 1, time.time_ns())
    return _last_ord


def _put_checkpoint(conn: sqlite3.Connection, c: CheckpointRecord) -> None:
    # One B-tree (no rowid): one page written per checkpoint of ordinary size.
    conn.execute(
        "INSERT OR REPLACE INTO orchestra_checkpoints "
        "(run_id, step, processor, ord, output, trace) VALUES (?, ?, ?, ?, ?, ?)",
        (c.run_id, c.step, c.processor, _next_ord(), c.output, c.trace),
    )


def _delete_checkpoints(conn: sqlite3.Connection, run_id: str, step: str | None) -> None:
    if step is None:
        conn.execute("DELETE FROM orchestra_checkpoints WHERE run_id = ?", (run_id,))
    else:
        conn.execute(
            "DELETE FROM orchestra_checkpoints WHERE run_id = ? AND step = ?", (run_id, step)
        )


def _put_wait(conn: sqlite3.Connection, w: Wait) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO orchestra_waits ({_WAIT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (w.run_id, w.step, w.event, w.key, w.deadline),
    )


def _drop_wait(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM orchestra_waits WHERE run_id = ?", (run_id,))


def _delete_wait(conn: sqlite3.Connection, run_id: str) -> Wait | None:
    row = conn.execute(
        f"DELETE FROM orchestra_waits WHERE run_id = ? RETURNING {_WAIT_COLUMNS}",
        (run_id,),
    ).fetchone()
    return None if row is None else _wait(row)


def _add_event(conn: sqlite3.Connection, e: InboxEvent) -> bool:
    cur = conn.execute(
        f"INSERT INTO orchestra_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (e.id, e.name, e.key, e.payload, e.received, e.expires, int(e.consumed)),
    )
    return cur.rowcount == 1


def _take_event(conn: sqlite3.Connection, name: str, key: str, now: float) -> InboxEvent | None:
    row = conn.execute(
        "UPDATE orchestra_events SET consumed = 1 WHERE ord = ("
        "SELECT ord FROM orchestra_events WHERE name = ? AND key = ? AND consumed = 0 "
        "AND expires > ? ORDER BY received, ord LIMIT 1) "
        f"RETURNING {_EVENT_COLUMNS}",
        (name, key, now),
    ).fetchone()
    return None if row is None else _event(row)


def _peek_event(conn: sqlite3.Connection, name: str, key: str, now: float) -> InboxEvent | None:
    row = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM orchestra_events WHERE name = ? AND key = ? "
        "AND consumed = 0 AND expires > ? ORDER BY received, ord LIMIT 1",
        (name, key, now),
    ).fetchone()
    return None if row is None else _event(row)


def _consume_event(conn: sqlite3.Connection, event_id: str) -> None:
    cur = conn.execute(
        "UPDATE orchestra_events SET consumed = 1 WHERE id = ? AND consumed = 0", (event_id,)
    )
    if cur.rowcount == 0:
        known = conn.execute("SELECT 1 FROM orchestra_events WHERE id = ?", (event_id,)).fetchone()
        msg = f"inbox event {event_id!r} is {'consumed already' if known else 'gone'}"
        raise EventTakenError(msg)


def _purge_runs(conn: sqlite3.Connection, before: float) -> int:
    ended = f"SELECT id FROM orchestra_runs WHERE status IN {_ENDED} AND updated <= ?"
    for table in ("orchestra_history", "orchestra_checkpoints", "orchestra_waits"):
        conn.execute(f"DELETE FROM {table} WHERE run_id IN ({ended})", (before,))
    cur = conn.execute(
        f"DELETE FROM orchestra_runs WHERE status IN {_ENDED} AND updated <= ?", (before,)
    )
    return cur.rowcount


_INSERT_HISTORY = (
    "INSERT INTO orchestra_history (run_id, seq, kind, at, step, detail) VALUES (?, ?, ?, ?, ?, ?)"
)
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM orchestra_history WHERE run_id = ?"
_SEQ_CACHE = 4096


def _append_history(conn: sqlite3.Connection, e: HistoryEntry, seqs: dict[str, int]) -> int:
    """Insert ``e`` with the run's next seq; ``seqs`` remembers it per run.

    The worker holding a run's lease is normally the only one appending to its history,
    so the remembered number is right and one plain INSERT does it (an ``INSERT ...
    SELECT MAX(seq)`` costs SQLite a temporary table). If another connection appended
    meanwhile, the primary key refuses the number and the next one is read.
    """
    seq = seqs.get(e.run_id)
    for _ in range(20):
        if seq is None:
            seq = int(conn.execute(_NEXT_SEQ, (e.run_id,)).fetchone()[0])
        try:
            conn.execute(_INSERT_HISTORY, (e.run_id, seq, e.kind, e.at, e.step, e.detail))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            seq = None  # taken by another writer: read the number again
            continue
        _remember(seqs, e.run_id, seq + 1)
        return seq
    msg = f"could not append to the history of run {e.run_id!r}: too many concurrent writers"
    raise ConflictError(msg)


def _remember(seqs: dict[str, int], run_id: str, seq: int) -> None:
    if len(seqs) >= _SEQ_CACHE and run_id not in seqs:
        del seqs[next(iter(seqs))]
    seqs[run_id] = seq


def _notify(conn: sqlite3.Connection, channel: str, payload: str, now: float) -> None:
    conn.execute(
        "DELETE FROM orchestra_notifications WHERE at < ?", (now - _NOTIFICATION_RETENTION,)
    )
    conn.execute(
        "INSERT INTO orchestra_notifications (channel, payload, at) VALUES (?, ?, ?)",
        (channel, payload, now),
    )


_BATCH_OPS: dict[str, Callable[..., object]] = {
    "create_run": _create_run,
    "update_run": _update_run,
    "require_owner": _require_owner,
    "put_checkpoint": _put_checkpoint,
    "delete_checkpoints": _delete_checkpoints,
    "put_wait": _put_wait,
    "delete_wait": _drop_wait,
    "consume_event": _consume_event,
}


def _apply_batch(conn: sqlite3.Connection, ops: list[Op], seqs: dict[str, int]) -> None:
    for name, args in ops:
        if name == "append_history":
            _append_history(conn, args[0], seqs)  # type: ignore[arg-type]
        elif name == "create_run":
            _create_run(conn, args[0])  # type: ignore[arg-type]
            # A run created now has no history yet (else the insert numbering its first
            # entry 1 fails, and the number is read): no MAX(seq) to look up.
            _remember(seqs, args[0].id, 1)  # type: ignore[attr-defined]
        else:
            _BATCH_OPS[name](conn, *args)
