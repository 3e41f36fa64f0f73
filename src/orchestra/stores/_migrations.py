"""The durable stores' schema: its versions and the migrations between them.

The schema is versioned by one integer, kept in the ``meta`` table under the key
``schema_version`` (``orchestra_meta`` in SQLite). A store that opens a database:

* with no ``meta`` table (a new database, or one made before orchestra used it) treats it
  as version 0 and applies every migration;
* at an older version applies the migrations after it, in one transaction together with
  the new version number (under a lock, so two processes never both migrate), so a
  failing migration changes nothing;
* at the version this code knows opens it as it is;
* at a *newer* version refuses it with a :class:`~orchestra.PersistenceError`: this
  orchestra would not understand what a newer one wrote.

Policy: a released migration is never edited. A change to the schema is a new
:class:`Migration` appended to :data:`MIGRATIONS`, with the statements for both backends;
additive changes (a table, a nullable column, an index) keep older readers working, but
an older orchestra still refuses the newer database, so upgrade every worker first.
"""

from __future__ import annotations

import attrs

from orchestra.errors import PersistenceError

__all__ = ["MIGRATIONS", "Migration", "check_version", "latest_version", "pending"]


@attrs.frozen(kw_only=True)
class Migration:
    """The statements that take the schema from ``version - 1`` to ``version``.

    PostgreSQL statements name tables as ``{schema}.table``; the store formats them with
    its quoted schema name.
    """

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_SQLITE_V1 = (
    "CREATE TABLE IF NOT EXISTS orchestra_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE orchestra_versions (
        name TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
        definition TEXT NOT NULL, deployed INTEGER NOT NULL, created REAL NOT NULL,
        PRIMARY KEY (name, seq))""",
    """CREATE TABLE orchestra_runs (
        ord INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, process TEXT NOT NULL,
        version INTEGER NOT NULL, status TEXT NOT NULL, context TEXT NOT NULL,
        position INTEGER NOT NULL, error TEXT, created REAL NOT NULL, updated REAL NOT NULL,
        owner TEXT, lease_expires REAL)""",
    "CREATE INDEX orchestra_runs_status ON orchestra_runs (status)",
    """CREATE TABLE orchestra_checkpoints (
        run_id TEXT NOT NULL, step TEXT NOT NULL, processor TEXT NOT NULL,
        ord INTEGER NOT NULL, output TEXT NOT NULL, trace TEXT NOT NULL,
        PRIMARY KEY (run_id, step, processor)) WITHOUT ROWID""",
    """CREATE TABLE orchestra_waits (
        run_id TEXT PRIMARY KEY, step TEXT NOT NULL, event TEXT NOT NULL, key TEXT NOT NULL,
        deadline REAL)""",
    "CREATE INDEX orchestra_waits_key ON orchestra_waits (event, key)",
    """CREATE INDEX orchestra_waits_deadline ON orchestra_waits (deadline)
        WHERE deadline IS NOT NULL""",
    """CREATE TABLE orchestra_events (
        ord INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, key TEXT,
        payload TEXT NOT NULL, received REAL NOT NULL, expires REAL NOT NULL,
        consumed INTEGER NOT NULL)""",
    """CREATE INDEX orchestra_events_open ON orchestra_events (name, key, received, ord)
        WHERE consumed = 0""",
    "CREATE INDEX orchestra_events_expires ON orchestra_events (expires)",
    """CREATE TABLE orchestra_history (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
        step TEXT, detail TEXT, PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE orchestra_notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, payload TEXT NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX orchestra_notifications_at ON orchestra_notifications (at)",
)

_POSTGRES_V1 = (
    "CREATE TABLE IF NOT EXISTS {schema}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE {schema}.versions (
        name TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
        definition TEXT NOT NULL, deployed BOOLEAN NOT NULL, created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, seq))""",
    """CREATE TABLE {schema}.runs (
        ord BIGSERIAL, id TEXT PRIMARY KEY, process TEXT NOT NULL, version INTEGER NOT NULL,
        status TEXT NOT NULL, context TEXT NOT NULL, position INTEGER NOT NULL, error TEXT,
        created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, owner TEXT,
        lease_expires DOUBLE PRECISION)""",
    "CREATE INDEX runs_status ON {schema}.runs (status)",
    """CREATE TABLE {schema}.checkpoints (
        run_id TEXT NOT NULL, step TEXT NOT NULL, processor TEXT NOT NULL,
        output TEXT NOT NULL, trace TEXT NOT NULL, ord BIGSERIAL,
        PRIMARY KEY (run_id, step, processor))""",
    """CREATE TABLE {schema}.waits (
        run_id TEXT PRIMARY KEY, step TEXT NOT NULL, event TEXT NOT NULL, key TEXT NOT NULL,
        deadline DOUBLE PRECISION, ord BIGSERIAL)""",
    "CREATE INDEX waits_key ON {schema}.waits (event, key)",
    "CREATE INDEX waits_deadline ON {schema}.waits (deadline) WHERE deadline IS NOT NULL",
    """CREATE TABLE {schema}.events (
        ord BIGSERIAL, id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT,
        payload TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL, consumed BOOLEAN NOT NULL)""",
    """CREATE INDEX events_open ON {schema}.events (name, key, received, ord)
        WHERE NOT consumed""",
    "CREATE INDEX events_expires ON {schema}.events (expires)",
    """CREATE TABLE {schema}.history (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL, step TEXT, detail TEXT, PRIMARY KEY (run_id, seq))""",
    # One round trip and one commit for a batch of writes (PostgresStore.batch): the
    # operations come as a JSON array; a missing or duplicate run aborts the whole batch.
    """CREATE FUNCTION {schema}.apply_batch(ops jsonb) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        op jsonb;
        n integer;
    BEGIN
        FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
            CASE op->>'op'
            WHEN 'create_run' THEN
                INSERT INTO {schema}.runs (id, process, version, status, context, position,
                    error, created, updated, owner, lease_expires)
                VALUES (op->>'id', op->>'process', (op->>'version')::integer, op->>'status',
                    op->>'context', (op->>'position')::integer, op->>'error',
                    (op->>'created')::double precision, (op->>'updated')::double precision,
                    op->>'owner', (op->>'lease_expires')::double precision)
                ON CONFLICT (id) DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n = 0 THEN
                    RAISE EXCEPTION 'run % already exists', op->>'id' USING ERRCODE = 'OR001';
                END IF;
            WHEN 'update_run' THEN
                UPDATE {schema}.runs SET process = op->>'process',
                    version = (op->>'version')::integer, status = op->>'status',
                    context = op->>'context', position = (op->>'position')::integer,
                    error = op->>'error', created = (op->>'created')::double precision,
                    updated = (op->>'updated')::double precision, owner = op->>'owner',
                    lease_expires = (op->>'lease_expires')::double precision
                WHERE id = op->>'id';
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n = 0 THEN
                    RAISE EXCEPTION 'no run %', op->>'id' USING ERRCODE = 'OR002';
                END IF;
            WHEN 'put_checkpoint' THEN
                INSERT INTO {schema}.checkpoints (run_id, step, processor, output, trace)
                VALUES (op->>'run_id', op->>'step', op->>'processor', op->>'output',
                    op->>'trace')
                ON CONFLICT (run_id, step, processor) DO UPDATE SET output = EXCLUDED.output,
                    trace = EXCLUDED.trace, ord = DEFAULT;
            WHEN 'delete_checkpoints' THEN
                DELETE FROM {schema}.checkpoints WHERE run_id = op->>'run_id'
                    AND (op->>'step' IS NULL OR step = op->>'step');
            WHEN 'put_wait' THEN
                INSERT INTO {schema}.waits (run_id, step, event, key, deadline)
                VALUES (op->>'run_id', op->>'step', op->>'event', op->>'key',
                    (op->>'deadline')::double precision)
                ON CONFLICT (run_id) DO UPDATE SET step = EXCLUDED.step,
                    event = EXCLUDED.event, key = EXCLUDED.key, deadline = EXCLUDED.deadline,
                    ord = DEFAULT;
            WHEN 'append_history' THEN
                INSERT INTO {schema}.history (run_id, seq, kind, at, step, detail)
                SELECT op->>'run_id', COALESCE(MAX(h.seq), 0) + 1, op->>'kind',
                    (op->>'at')::double precision, op->>'step', op->>'detail'
                FROM {schema}.history h WHERE h.run_id = op->>'run_id';
            ELSE
                RAISE EXCEPTION 'unknown batch operation %', op->>'op';
            END CASE;
        END LOOP;
    END
    $$""",
)

_SQLITE_V2 = (
    """CREATE INDEX orchestra_runs_ended ON orchestra_runs (updated)
        WHERE status IN ('completed', 'failed', 'cancelled')""",
)

_POSTGRES_V2 = (
    """CREATE INDEX runs_ended ON {schema}.runs (updated)
        WHERE status IN ('completed', 'failed', 'cancelled')""",
    # The batch operations of orchestra.stores.Batch. Errors: OR001 the run exists,
    # OR002 no run, OR003 the run is held by another owner, OR004 the event was consumed.
    """CREATE OR REPLACE FUNCTION {schema}.apply_batch(ops jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        op jsonb;
        n integer;
        holder text;
    BEGIN
        FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
            CASE op->>'op'
            WHEN 'create_run' THEN
                INSERT INTO {schema}.runs (id, process, version, status, context, position,
                    error, created, updated, owner, lease_expires)
                VALUES (op->>'id', op->>'process', (op->>'version')::integer, op->>'status',
                    op->>'context', (op->>'position')::integer, op->>'error',
                    (op->>'created')::double precision, (op->>'updated')::double precision,
                    op->>'owner', (op->>'lease_expires')::double precision)
                ON CONFLICT (id) DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n = 0 THEN
                    RAISE EXCEPTION 'run % already exists', op->>'id' USING ERRCODE = 'OR001';
                END IF;
            WHEN 'update_run' THEN
                UPDATE {schema}.runs SET process = op->>'process',
                    version = (op->>'version')::integer, status = op->>'status',
                    context = op->>'context', position = (op->>'position')::integer,
                    error = op->>'error', created = (op->>'created')::double precision,
                    updated = (op->>'updated')::double precision, owner = op->>'owner',
                    lease_expires = (op->>'lease_expires')::double precision
                WHERE id = op->>'id'
                    AND (op->>'expect_owner' IS NULL OR owner = op->>'expect_owner');
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n = 0 THEN
                    SELECT owner INTO holder FROM {schema}.runs WHERE id = op->>'id';
                    IF NOT FOUND THEN
                        RAISE EXCEPTION 'no run %', op->>'id' USING ERRCODE = 'OR002';
                    END IF;
                    RAISE EXCEPTION 'run % is held by %, not %', op->>'id', holder,
                        op->>'expect_owner' USING ERRCODE = 'OR003';
                END IF;
            WHEN 'require_owner' THEN
                -- FOR SHARE: a claim of the run waits until this batch committed.
                SELECT owner INTO holder FROM {schema}.runs WHERE id = op->>'run_id' FOR SHARE;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no run %', op->>'run_id' USING ERRCODE = 'OR002';
                END IF;
                IF holder IS DISTINCT FROM op->>'expect_owner' THEN
                    RAISE EXCEPTION 'run % is held by %, not %', op->>'run_id', holder,
                        op->>'expect_owner' USING ERRCODE = 'OR003';
                END IF;
            WHEN 'put_checkpoint' THEN
                INSERT INTO {schema}.checkpoints (run_id, step, processor, output, trace)
                VALUES (op->>'run_id', op->>'step', op->>'processor', op->>'output',
                    op->>'trace')
                ON CONFLICT (run_id, step, processor) DO UPDATE SET output = EXCLUDED.output,
                    trace = EXCLUDED.trace, ord = DEFAULT;
            WHEN 'delete_checkpoints' THEN
                DELETE FROM {schema}.checkpoints WHERE run_id = op->>'run_id'
                    AND (op->>'step' IS NULL OR step = op->>'step');
            WHEN 'put_wait' THEN
                INSERT INTO {schema}.waits (run_id, step, event, key, deadline)
                VALUES (op->>'run_id', op->>'step', op->>'event', op->>'key',
                    (op->>'deadline')::double precision)
                ON CONFLICT (run_id) DO UPDATE SET step = EXCLUDED.step,
                    event = EXCLUDED.event, key = EXCLUDED.key, deadline = EXCLUDED.deadline,
                    ord = DEFAULT;
            WHEN 'delete_wait' THEN
                DELETE FROM {schema}.waits WHERE run_id = op->>'run_id';
            WHEN 'append_history' THEN
                INSERT INTO {schema}.history (run_id, seq, kind, at, step, detail)
                SELECT op->>'run_id', COALESCE(MAX(h.seq), 0) + 1, op->>'kind',
                    (op->>'at')::double precision, op->>'step', op->>'detail'
                FROM {schema}.history h WHERE h.run_id = op->>'run_id';
            WHEN 'consume_event' THEN
                UPDATE {schema}.events SET consumed = true
                WHERE id = op->>'id' AND NOT consumed;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n = 0 THEN
                    RAISE EXCEPTION 'inbox event % is consumed already or gone', op->>'id'
                        USING ERRCODE = 'OR004';
                END IF;
            ELSE
                RAISE EXCEPTION 'unknown batch operation %', op->>'op';
            END CASE;
        END LOOP;
    END
    $$""",
)

# Runs by status, owner and lease: the recovery's poll finds orphaned runs (running with
# no owner, or leased and expired) by seeking in it, never reading every waiting run. It
# starts with status, so it replaces the index of runs by status (one index per run write).
_SQLITE_V3 = (
    "CREATE INDEX orchestra_runs_lease ON orchestra_runs (status, owner, lease_expires)",
    "DROP INDEX IF EXISTS orchestra_runs_status",
)

_POSTGRES_V3 = (
    "CREATE INDEX runs_lease ON {schema}.runs (status, owner, lease_expires)",
    "DROP INDEX IF EXISTS {schema}.runs_status",
)

# Group commit (PostgresStore): the batches of several tasks in one call and one
# transaction, each in a subtransaction of its own (BEGIN ... EXCEPTION), so a batch whose
# condition fails (OR001-OR004) is rolled back alone; the result has one element per
# batch: null, or [SQLSTATE, message]. A batch whose history seq was taken meanwhile
# (unique_violation), or that would wait more than a moment for a row another transaction
# holds (lock_not_available; deadlock_detected), is rolled back alone too, releasing its
# locks, and the store commits it again on its own: a group never makes its other batches
# wait on another group (two workers' groups creating the same runs in different orders
# would otherwise deadlock, and PostgreSQL finds a deadlock only after a second).
# SQLite groups batches with savepoints and needs no change.
_POSTGRES_V4 = (
    """CREATE FUNCTION {schema}.apply_batches(batches jsonb) RETURNS jsonb
    LANGUAGE plpgsql AS $$
    DECLARE
        b jsonb;
        results jsonb := '[]'::jsonb;
    BEGIN
        PERFORM set_config('lock_timeout', '20ms', true);
        FOR b IN SELECT value FROM jsonb_array_elements(batches) LOOP
            BEGIN
                PERFORM {schema}.apply_batch(b);
                results := results || '[null]'::jsonb;
            EXCEPTION
                WHEN SQLSTATE 'OR001' OR SQLSTATE 'OR002' OR SQLSTATE 'OR003'
                    OR SQLSTATE 'OR004' OR unique_violation OR lock_not_available
                    OR deadlock_detected THEN
                    results := results || jsonb_build_array(jsonb_build_array(SQLSTATE, SQLERRM));
            END;
        END LOOP;
        RETURN results;
    END
    $$""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(version=1, description="initial schema", sqlite=_SQLITE_V1, postgres=_POSTGRES_V1),
    Migration(
        version=2,
        description="fenced and event-consuming batches; an index of ended runs for purging",
        sqlite=_SQLITE_V2,
        postgres=_POSTGRES_V2,
    ),
    Migration(
        version=3,
        description="an index of runs by status, owner and lease, for finding orphaned runs",
        sqlite=_SQLITE_V3,
        postgres=_POSTGRES_V3,
    ),
    Migration(
        version=4,
        description="group commit: several batches in one transaction, each failing alone",
        sqlite=(),
        postgres=_POSTGRES_V4,
    ),
)
"""Every migration, in order; the last one's version is the schema this code writes."""


def latest_version(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Return the schema version that ``migrations`` lead to."""
    return migrations[-1].version if migrations else 0


def check_version(current: int, where: str, migrations: tuple[Migration, ...]) -> None:
    """Refuse a database whose schema is newer than ``migrations`` know."""
    known = latest_version(migrations)
    if current > known:
        msg = (
            f"{where} has orchestra schema version {current}, newer than this orchestra "
            f"knows ({known}): upgrade orchestra to open it"
        )
        raise PersistenceError(msg)


def pending(current: int, where: str, migrations: tuple[Migration, ...]) -> list[Migration]:
    """Return the migrations to apply to a database at version ``current``, in order."""
    check_version(current, where, migrations)
    return [m for m in migrations if m.version > current]
