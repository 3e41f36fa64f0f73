"""SQL text and row mappers of :class:`~orchestra.stores.PostgresStore`.

:class:`_SQL` holds every statement, built once per store for its schema (a name checked
to be a plain identifier); the functions turn asyncpg records into the store's records.
"""

# ruff: noqa: S608 - SQL text is built only from constants and a schema name checked to
# be a plain identifier; every value is a bound parameter.

from __future__ import annotations

import re
from typing import Any

from orchestra.errors import ConflictError, PersistenceError, RunNotFoundError
from orchestra.stores._base import (
    EventTakenError,
    InboxEvent,
    OwnershipError,
    RunRecord,
    Version,
    Wait,
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RUN_COLUMNS = (
    "id, process, version, status, context, position, error, created, updated, owner, lease_expires"
)
_WAIT_COLUMNS = "run_id, step, event, key, deadline"
_EVENT_COLUMNS = "id, name, key, payload, received, expires, consumed"
_VERSION_COLUMNS = "name, seq, digest, definition, deployed, created"
_ENDED = "('completed', 'failed', 'cancelled')"
_BATCH_ERRORS: dict[str, type[PersistenceError]] = {
    "OR001": ConflictError, "OR002": RunNotFoundError, "OR003": OwnershipError,
    "OR004": EventTakenError,
}  # fmt: skip
"""The SQLSTATEs ``apply_batch`` raises, and the store errors they become."""
_TERMINATED = ("terminating connection", "the database system is shutting down")
"""Words of the server's notice when it ends a session: its transaction did not commit."""


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        msg = "PostgresStore needs asyncpg: pip install 'orchestra[postgres]'"
        raise ImportError(msg) from exc
    return asyncpg


def _run(r: Any) -> RunRecord:
    return RunRecord(
        id=r[0], process=r[1], version=r[2], status=r[3], context=r[4], position=r[5],
        error=r[6], created=r[7], updated=r[8], owner=r[9], lease_expires=r[10],
    )  # fmt: skip


def _wait(r: Any) -> Wait:
    return Wait(run_id=r[0], step=r[1], event=r[2], key=r[3], deadline=r[4])


def _event(r: Any) -> InboxEvent:
    return InboxEvent(
        id=r[0], name=r[1], key=r[2], payload=r[3], received=r[4], expires=r[5], consumed=r[6]
    )


def _version(r: Any) -> Version:
    return Version(name=r[0], seq=r[1], digest=r[2], definition=r[3], deployed=r[4], created=r[5])


def _count(status: str) -> int:
    """The row count of a command status such as ``"UPDATE 3"``."""
    return int(status.rsplit(" ", 1)[-1])


class _SQL:
    """The store's statements, with the schema name filled in once."""

    def __init__(self, s: str) -> None:
        self.lock_version = "SELECT pg_advisory_xact_lock(hashtext($1))"
        self.latest_version = (
            f"SELECT {_VERSION_COLUMNS} FROM {s}.versions WHERE name = $1 ORDER BY seq DESC LIMIT 1"
        )
        self.get_version = (
            f"SELECT {_VERSION_COLUMNS} FROM {s}.versions WHERE name = $1 AND seq = $2"
        )
        self.list_versions = f"SELECT {_VERSION_COLUMNS} FROM {s}.versions ORDER BY name, seq"
        self.list_versions_of = (
            f"SELECT {_VERSION_COLUMNS} FROM {s}.versions WHERE name = $1 ORDER BY seq"
        )
        self.redeploy = f"UPDATE {s}.versions SET deployed = true WHERE name = $1 AND NOT deployed"
        self.insert_version = (
            f"INSERT INTO {s}.versions ({_VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, true, $5)"
        )
        self.set_deployed = f"UPDATE {s}.versions SET deployed = $2 WHERE name = $1"
        self.create_run = (
            f"INSERT INTO {s}.runs ({_RUN_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING"
        )
        self.get_run = f"SELECT {_RUN_COLUMNS} FROM {s}.runs WHERE id = $1"
        self.run_exists = f"SELECT 1 FROM {s}.runs WHERE id = $1"
        self.run_owner = f"SELECT owner FROM {s}.runs WHERE id = $1"
        self.update_run = (
            f"UPDATE {s}.runs SET process = $2, version = $3, status = $4, context = $5, "
            "position = $6, error = $7, created = $8, updated = $9, owner = $10, "
            "lease_expires = $11 WHERE id = $1"
        )
        self.update_owned_run = self.update_run + " AND owner = $12"
        self.list_runs = f"SELECT {_RUN_COLUMNS} FROM {s}.runs"
        leased = "status IN ('running', 'waiting')"
        # Three disjoint seeks in the index (status, owner, lease_expires); parked runs
        # (waiting, no owner) are never read.
        self.orphaned_runs = (
            f"SELECT {_RUN_COLUMNS} FROM ("
            f"SELECT {_RUN_COLUMNS}, ord FROM {s}.runs WHERE status = 'running' "
            "AND owner IS NULL "
            f"UNION ALL SELECT {_RUN_COLUMNS}, ord FROM {s}.runs WHERE {leased} AND owner = $1 "
            f"UNION ALL SELECT {_RUN_COLUMNS}, ord FROM {s}.runs WHERE {leased} "
            "AND owner IS NOT NULL AND owner <> $1 AND lease_expires <= $2"
            ") AS o ORDER BY created, ord"
        )
        # The oldest open event of each (name, key), joined with the waits for it.
        self.matched_waits = (
            "SELECT w.run_id, w.step, w.event, w.key, w.deadline, "
            "f.id, f.name, f.key, f.payload, f.received, f.expires, f.consumed "
            f"FROM (SELECT DISTINCT ON (name, key) {_EVENT_COLUMNS}, ord FROM {s}.events "
            "WHERE NOT consumed AND key IS NOT NULL AND expires > $1 "
            "ORDER BY name, key, received, ord) AS f "
            f"JOIN {s}.waits AS w ON w.event = f.name AND w.key = f.key "
            "ORDER BY f.received, f.ord, w.ord"
        )
        self.claim_run = (
            f"UPDATE {s}.runs SET owner = $2, lease_expires = $3 WHERE id = $1 "
            "AND (owner IS NULL OR owner = $2 OR lease_expires <= $4)"
        )
        self.put_checkpoint = (
            f"INSERT INTO {s}.checkpoints (run_id, step, processor, output, trace) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, step, processor) DO UPDATE "
            "SET output = EXCLUDED.output, trace = EXCLUDED.trace, ord = DEFAULT"
        )
        self.checkpoints = (
            f"SELECT processor, output, trace FROM {s}.checkpoints "
            "WHERE run_id = $1 AND step = $2 ORDER BY ord"
        )
        self.delete_checkpoints = f"DELETE FROM {s}.checkpoints WHERE run_id = $1"
        self.delete_step_checkpoints = (
            f"DELETE FROM {s}.checkpoints WHERE run_id = $1 AND step = $2"
        )
        self.put_wait = (
            f"INSERT INTO {s}.waits ({_WAIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (run_id) DO UPDATE SET step = EXCLUDED.step, event = EXCLUDED.event, "
            "key = EXCLUDED.key, deadline = EXCLUDED.deadline, ord = DEFAULT"
        )
        self.delete_wait = f"DELETE FROM {s}.waits WHERE run_id = $1 RETURNING {_WAIT_COLUMNS}"
        self.find_waits = (
            f"SELECT {_WAIT_COLUMNS} FROM {s}.waits WHERE event = $1 AND key = $2 ORDER BY ord"
        )
        self.due_waits = (
            f"SELECT {_WAIT_COLUMNS} FROM {s}.waits "
            "WHERE deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline, ord"
        )
        self.list_waits = f"SELECT {_WAIT_COLUMNS} FROM {s}.waits ORDER BY ord"
        self.add_event = (
            f"INSERT INTO {s}.events ({_EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self.take_event = (
            f"UPDATE {s}.events SET consumed = true WHERE id = ("
            f"SELECT id FROM {s}.events WHERE name = $1 AND key = $2 AND NOT consumed "
            "AND expires > $3 ORDER BY received, ord LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_EVENT_COLUMNS}"
        )
        self.peek_event = (
            f"SELECT {_EVENT_COLUMNS} FROM {s}.events WHERE name = $1 AND key = $2 "
            "AND NOT consumed AND expires > $3 ORDER BY received, ord LIMIT 1"
        )
        self.consume_event = f"UPDATE {s}.events SET consumed = true WHERE id = $1 AND NOT consumed"
        self.event_exists = f"SELECT 1 FROM {s}.events WHERE id = $1"
        self.purge_events = f"DELETE FROM {s}.events WHERE expires <= $1"
        self.purge_runs = (
            f"WITH gone AS (DELETE FROM {s}.runs WHERE status IN {_ENDED} AND updated <= $1 "
            "RETURNING id), "
            f"h AS (DELETE FROM {s}.history WHERE run_id IN (SELECT id FROM gone)), "
            f"c AS (DELETE FROM {s}.checkpoints WHERE run_id IN (SELECT id FROM gone)), "
            f"w AS (DELETE FROM {s}.waits WHERE run_id IN (SELECT id FROM gone)) "
            "SELECT count(*) FROM gone"
        )
        self.append_history = (
            f"INSERT INTO {s}.history (run_id, seq, kind, at, step, detail) "
            f"SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM {s}.history "
            "WHERE run_id = $1 RETURNING seq"
        )
        self.apply_batch = f"SELECT {s}.apply_batch($1::jsonb)"
        self.apply_batches = f"SELECT {s}.apply_batches($1::jsonb)::text"
        self.history = (
            f"SELECT seq, kind, at, step, detail FROM {s}.history WHERE run_id = $1 ORDER BY seq"
        )
