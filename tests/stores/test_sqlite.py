import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from orchestra.errors import PersistenceError, RunNotFoundError
from orchestra.stores import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    RunRecord,
    SQLiteStore,
    Store,
    Wait,
    _migrations,
    _sqlite_group,
    _sqlite_sql,
)
from orchestra.stores.contract import StoreContract
from orchestra.stores.contract_durable import DurableStoreContract

pytestmark = pytest.mark.anyio


def run(run_id: str = "r1", **kw: object) -> RunRecord:
    fields: dict[str, object] = {
        "id": run_id, "process": "p", "version": 1, "status": "running",
        "context": '{"n": 1}', "created": 1.0, "updated": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return RunRecord(**fields)  # type: ignore[arg-type]


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        async with SQLiteStore(tmp_path / "db.sqlite") as s:
            yield s


class TestSQLiteStoreInMemory(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with SQLiteStore(":memory:") as s:
            yield s


class TestSQLiteDurable(DurableStoreContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Callable[[], Awaitable[Store]]:
        async def opener() -> Store:
            return await SQLiteStore.open(tmp_path / "db.sqlite", busy_timeout=10.0)

        return opener


# -- schema and migrations ---------------------------------------------------------------


def meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM orchestra_meta").fetchall())


LATEST = _migrations.latest_version()
NEXT = LATEST + 1
V2 = _migrations.Migration(
    version=NEXT,
    description="sample: a tag on runs",
    sqlite=(
        "ALTER TABLE orchestra_runs ADD COLUMN tag TEXT",
        "CREATE INDEX orchestra_runs_tag ON orchestra_runs (tag)",
    ),
    postgres=("ALTER TABLE {schema}.runs ADD COLUMN tag TEXT",),
)


async def test_new_database_gets_the_latest_schema(tmp_path: Path) -> None:
    """A new file is created in WAL mode with the schema and its version recorded."""
    path = tmp_path / "new.db"
    async with await SQLiteStore.open(path) as store:
        assert await store.schema_version() == _migrations.latest_version()
    assert meta(path) == {"schema_version": str(_migrations.latest_version())}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_v0_database_is_migrated_and_keeps_the_hosts_tables(tmp_path: Path) -> None:
    """A database at version 0 (made by hand, holding a host table) is migrated to the latest."""
    path = tmp_path / "v0.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE host_notes (note TEXT)")
        conn.execute("INSERT INTO host_notes VALUES ('keep me')")
        conn.execute("CREATE TABLE orchestra_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO orchestra_meta VALUES ('schema_version', '0')")
    conn.close()
    async with SQLiteStore(path) as store:
        await store.create_run(run())
        assert await store.schema_version() == LATEST
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT note FROM host_notes").fetchall() == [("keep me",)]
    conn.close()


async def test_an_older_schema_is_migrated_keeping_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database opened by code that knows one more version is migrated; its runs stay."""
    path = tmp_path / "db.sqlite"
    async with SQLiteStore(path) as store:
        await store.create_run(run("r1", context='{"a": 1}'))
    monkeypatch.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, V2))
    async with SQLiteStore(path) as store:
        assert await store.schema_version() == NEXT
        assert (await store.get_run("r1")).context == '{"a": 1}'
        await store.create_run(run("r2"))
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(orchestra_runs)")]
    conn.close()
    assert "tag" in cols


def query_plan(path: Path, sql: str, params: tuple[object, ...]) -> str:
    with sqlite3.connect(path) as conn:
        plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    conn.close()
    return plan


async def test_a_v2_database_gets_the_lease_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 indexes runs by (status, owner, lease_expires) and drops the status index.

    The poll's query for orphaned runs and the recovery's for matched waits then seek
    in indexes: neither reads the table of runs (or of waits) from end to end.
    """
    path = tmp_path / "db.sqlite"
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:2])
        async with SQLiteStore(path) as store:
            await store.create_run(run("r1"))
            await store.create_run(run("r2", status="waiting", owner="w", lease_expires=5.0))
    assert meta(path)["schema_version"] == "2"
    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST
        found = await store.orphaned_runs(worker="me", now=10.0)
        assert [r.id for r in found] == ["r1", "r2"]
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    indexes = {r[0] for r in rows}
    conn.close()
    assert "orchestra_runs_lease" in indexes
    assert "orchestra_runs_status" not in indexes
    plan = query_plan(path, _sqlite_sql._ORPHANED_RUNS, ("me", "me", 10.0))
    assert plan.count("SEARCH orchestra_runs USING INDEX orchestra_runs_lease") == 3, plan
    assert "SCAN orchestra_runs" not in plan, plan
    plan = query_plan(path, _sqlite_sql._MATCHED_WAITS, (10.0,))
    assert "SEARCH w USING INDEX orchestra_waits_key" in plan, plan
    assert "SCAN w" not in plan and "SCAN orchestra_waits" not in plan, plan


async def test_a_newer_schema_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database written by a newer orchestra is refused with a clear error, untouched."""
    path = tmp_path / "db.sqlite"
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, V2))
        async with SQLiteStore(path) as store:
            await store.create_run(run())
    store = SQLiteStore(path)
    newer = rf"schema version {NEXT}, newer than .* \({LATEST}\)"
    with pytest.raises(PersistenceError, match=newer):
        await store.get_run("r1")
    await store.aclose()
    assert meta(path)["schema_version"] == str(NEXT)


async def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails rolls back: the version and the data stay as they were."""
    path = tmp_path / "db.sqlite"
    async with SQLiteStore(path) as store:
        await store.create_run(run())
    bad = _migrations.Migration(
        version=NEXT,
        description="broken",
        sqlite=("ALTER TABLE orchestra_runs ADD COLUMN tag TEXT", "THIS IS NOT SQL"),
        postgres=(),
    )
    monkeypatch.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, bad))
    store = SQLiteStore(path)
    with pytest.raises(PersistenceError, match="syntax error") as info:
        await store.get_run("r1")
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await store.aclose()
    monkeypatch.undo()
    assert meta(path)["schema_version"] == str(LATEST)
    async with SQLiteStore(path) as store:
        assert (await store.get_run("r1")).id == "r1"


async def test_a_v1_database_is_migrated_to_fenced_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by the first schema gets version 2: its runs stay, the new ops work."""
    path = tmp_path / "db.sqlite"
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:1])
        async with SQLiteStore(path) as store:
            await store.create_run(run("r1", owner="w1", status="completed", updated=1.0))
            await store.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=9.0)
            )
        assert meta(path)["schema_version"] == "1"
    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST  # v2 and every later migration
        async with store.batch() as b:
            b.update_run(run("r1", owner="w1", status="completed", updated=1.0), owner="w1")
            b.consume_event("e1")
        assert await store.peek_event("e", '"k"', now=2.0) is None
        assert await store.purge_runs(before=1.0) == 1
    with sqlite3.connect(path) as conn:
        indexes = [r[1] for r in conn.execute("PRAGMA index_list(orchestra_runs)")]
    conn.close()
    assert "orchestra_runs_ended" in indexes


# -- failures ----------------------------------------------------------------------------


async def test_a_locked_database_gives_persistence_error_without_blocking(tmp_path: Path) -> None:
    """A write while another connection holds BEGIN EXCLUSIVE waits (without blocking the
    loop), then fails with PersistenceError; nothing is corrupted, and it works after."""
    path = tmp_path / "db.sqlite"
    async with await SQLiteStore.open(path, busy_timeout=0.3) as store:
        await store.create_run(run())
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            t = time.monotonic()
            with pytest.raises(PersistenceError, match="locked") as info:
                await store.update_run(run(status="failed"))
            elapsed = time.monotonic() - t
            tg.cancel_scope.cancel()
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert 0.25 < elapsed < 2.0
        assert ticks >= 5  # the event loop kept running while the store waited
        assert (await store.get_run("r1")).status == "running"  # WAL: reads still work
        other.execute("ROLLBACK")
        other.close()
        await store.update_run(run(status="failed"))
        assert (await store.get_run("r1")).status == "failed"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_a_write_waits_for_a_short_lock(tmp_path: Path) -> None:
    """A lock released before the busy timeout only delays the write."""
    path = tmp_path / "db.sqlite"
    async with await SQLiteStore.open(path, busy_timeout=5.0) as store:
        await store.create_run(run())
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE orchestra_runs SET error = 'from other' WHERE id = 'r1'")

        async def release() -> None:
            await anyio.sleep(0.2)
            other.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            assert await store.claim_run("r1", "w", until=5.0, now=1.0)
        other.close()
        got = await store.get_run("r1")
        assert (got.owner, got.error) == ("w", "from other")


async def test_cancelling_a_waiting_write_writes_nothing(tmp_path: Path) -> None:
    """A write cancelled while it waits for the lock leaves the stored state as it was."""
    path = tmp_path / "db.sqlite"
    async with await SQLiteStore.open(path) as store:
        await store.create_run(run())
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with anyio.move_on_after(0.1):
            await store.update_run(run(status="failed"))
        other.execute("ROLLBACK")
        other.close()
        assert (await store.get_run("r1")).status == "running"
        await store.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
        assert [h.seq for h in await store.history("r1")] == [1]


async def test_a_full_disk_gives_persistence_error_and_keeps_the_run(tmp_path: Path) -> None:
    """'database or disk is full' becomes PersistenceError; the run keeps its stored state."""
    path = tmp_path / "db.sqlite"
    async with await SQLiteStore.open(path) as store:
        await store.create_run(run(context='{"small": true}'))
        assert store._db.conn is not None
        pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
        store._db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = json.dumps({"blob": "x" * 200_000})
        with pytest.raises(PersistenceError, match="full") as info:
            await store.update_run(run(context=big, position=3))
        assert isinstance(info.value.__cause__, sqlite3.Error)
        with pytest.raises(PersistenceError, match="full"):
            async with store.batch() as b:
                b.append_history(HistoryEntry(run_id="r1", kind="step_completed", at=2.0))
                b.put_checkpoint(
                    CheckpointRecord(run_id="r1", step="s", processor="a", output=big, trace="{}")
                )
        got = await store.get_run("r1")
        assert (got.context, got.position) == ('{"small": true}', 0)
        assert await store.history("r1") == []
        assert await store.checkpoints("r1", "s") == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_a_read_only_database_gives_persistence_error(tmp_path: Path) -> None:
    """Writing to a database that became read-only fails with PersistenceError."""
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        await store.create_run(run())
        assert store._db.conn is not None
        store._db.conn.execute("PRAGMA query_only = 1")
        with pytest.raises(PersistenceError, match="readonly"):
            await store.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
        assert (await store.get_run("r1")).id == "r1"


async def test_an_unopenable_path_gives_persistence_error(tmp_path: Path) -> None:
    """A path in a missing directory fails with PersistenceError on first use."""
    store = SQLiteStore(tmp_path / "missing" / "db.sqlite")
    with pytest.raises(PersistenceError, match="unable to open"):
        await store.list_runs()
    await store.aclose()


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    """After aclose, calls raise PersistenceError instead of reopening."""
    store = await SQLiteStore.open(tmp_path / "db.sqlite")
    await store.aclose()
    with pytest.raises(PersistenceError, match="closed"):
        await store.list_runs()


async def test_background_checkpoints_move_the_wal_into_the_database(tmp_path: Path) -> None:
    """With background checkpoints the database file grows as commits pile up in the WAL."""
    path = tmp_path / "db.sqlite"
    async with await SQLiteStore.open(path) as store:
        size = path.stat().st_size
        for i in range(300):
            await store.put_checkpoint(
                CheckpointRecord(run_id="r", step=f"s{i}", processor="a", output="x" * 1000,
                                 trace="{}")
            )  # fmt: skip
        with anyio.fail_after(5):
            while path.stat().st_size <= size:  # noqa: ASYNC110 - a file size has no event
                await anyio.sleep(0.02)


# -- several processes -------------------------------------------------------------------

RACER = textwrap.dedent(
    """
    import json, os, random, sys, time
    import anyio
    from orchestra.stores import SQLiteStore

    async def main(path, who, n, go):
        async with await SQLiteStore.open(path, busy_timeout=20.0) as store:
            while not os.path.exists(go):
                time.sleep(0.001)
            won = {"leases": [], "waits": [], "events": []}
            order = list(range(n))
            random.Random(who).shuffle(order)  # each process its own order: real collisions
            for i in order:
                if await store.claim_run(f"r{i}", who, until=100.0, now=1.0):
                    won["leases"].append(i)
                if await store.delete_wait(f"r{i}") is not None:
                    won["waits"].append(i)
                event = await store.take_event("e", '"k"', now=1.0)
                if event is not None:
                    won["events"].append(event.id)
            print(json.dumps(won))

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
    """
)


def race(script: str, path: Path, n: int, go: Path) -> list[Any]:
    """Start three processes running ``script``, let them go at once, return their outputs."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), f"p{k}", str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        for k in range(3)
    ]
    time.sleep(0.8)  # let the children import and open the store
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


async def test_processes_racing_for_runs_waits_and_events_have_one_winner_each(
    tmp_path: Path,
) -> None:
    """Three processes race claim_run/delete_wait/take_event on one file: one winner each."""
    path = tmp_path / "db.sqlite"
    n = 150
    async with await SQLiteStore.open(path) as store:
        for i in range(n):
            await store.create_run(run(f"r{i}"))
            await store.put_wait(Wait(run_id=f"r{i}", step="w", event="e", key=f'"{i}"'))
            await store.add_event(InboxEvent(
                id=f"e{i}", name="e", key='"k"', payload="{}", received=float(i), expires=1e9,
            ))  # fmt: skip
    results = await anyio.to_thread.run_sync(race, RACER, path, n, tmp_path / "go")
    leases = sorted(i for r in results for i in r["leases"])
    waits = sorted(i for r in results for i in r["waits"])
    events = sorted(e for r in results for e in r["events"])
    assert leases == list(range(n))
    assert waits == list(range(n))
    assert events == sorted(f"e{i}" for i in range(n))
    async with SQLiteStore(path) as store:
        owners = {r.id: r.owner for r in await store.list_runs()}
    for k, r in enumerate(results):
        assert all(owners[f"r{i}"] == f"p{k}" for i in r["leases"])


OPENER = textwrap.dedent(
    """
    import json, os, sys, time
    import anyio
    from orchestra.stores import HistoryEntry, RunRecord, SQLiteStore

    async def main(path, who, go):
        while not os.path.exists(go):
            time.sleep(0.001)
        async with SQLiteStore(path, busy_timeout=20.0) as store:
            await store.create_run(RunRecord(
                id=who, process="p", version=1, status="running", context="{}"))
            entry = await store.append_history(
                HistoryEntry(run_id=who, kind="run_started", at=1.0))
            print(json.dumps(entry.seq))

    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[4])
    """
)


async def test_processes_creating_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Three processes opening one new file at the same moment all work on one schema."""
    path = tmp_path / "new.db"
    results = await anyio.to_thread.run_sync(race, OPENER, path, 0, tmp_path / "go")
    assert results == [1, 1, 1]
    async with SQLiteStore(path) as store:
        assert sorted(r.id for r in await store.list_runs()) == ["p0", "p1", "p2"]
        assert await store.schema_version() == LATEST


async def test_a_migration_rechecks_the_version_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that saw an old version, while another migrated, does not migrate again."""
    from orchestra.stores import _sqlite_conn

    path = tmp_path / "db.sqlite"
    async with SQLiteStore(path) as first:
        await first.create_run(run())
    real = _sqlite_conn._schema_version
    calls = []

    def stale_then_real(conn: sqlite3.Connection) -> int:
        calls.append(1)
        return 0 if len(calls) == 1 else real(conn)  # the first look predates the migration

    monkeypatch.setattr(_sqlite_conn, "_schema_version", stale_then_real)
    async with SQLiteStore(path) as second:
        assert (await second.get_run("r1")).id == "r1"
    assert len(calls) == 2


# -- group commit ------------------------------------------------------------------------


def step_batch(store: Store, run_id: str, *, owner: str = "w") -> Any:
    """A step's batch: fenced update, history entry and checkpoint (a context manager)."""
    b = store.batch()
    b.update_run(run(run_id, position=1, owner=owner), owner=owner)
    b.append_history(HistoryEntry(run_id=run_id, kind="step_completed", at=2.0))
    b.put_checkpoint(CheckpointRecord(run_id=run_id, step="s", processor="p", output="1",
                                      trace="{}"))  # fmt: skip
    return b


def spy_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every group SQLiteStore commits in one transaction."""
    sizes: list[int] = []
    real = _sqlite_group._GroupCommit._apply_group

    def spy(self: Any, conn: sqlite3.Connection, group: list[Any]) -> None:
        sizes.append(len(group))
        real(self, conn, group)

    monkeypatch.setattr(_sqlite_group._GroupCommit, "_apply_group", spy)
    return sizes


async def test_batches_of_one_turn_commit_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks committing in the same loop turn share one transaction; a lone batch does not."""
    sizes = spy_groups(monkeypatch)
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        for i in range(10):
            await store.create_run(run(f"r{i}", owner="w"))
        async with step_batch(store, "r0"):
            pass
        assert sizes == []  # alone: committed at once, as ever

        async def commit(run_id: str) -> None:
            async with step_batch(store, run_id):
                pass

        async with anyio.create_task_group() as tg:
            for i in range(1, 10):
                tg.start_soon(commit, f"r{i}")
        assert sizes == [9]
        for i in range(10):
            assert (await store.get_run(f"r{i}")).position == 1
            assert [h.seq for h in await store.history(f"r{i}")] == [1]


async def test_a_cancelled_leader_leaves_the_others_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch that leads a group is cancelled before the commit: only it is not written."""
    sizes = spy_groups(monkeypatch)
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        for i in range(4):
            await store.create_run(run(f"r{i}", owner="w"))
        scope = anyio.CancelScope()
        outcome: dict[str, str] = {}

        async def leader() -> None:
            with scope:
                async with step_batch(store, "r0"):
                    pass
                outcome["r0"] = "committed"

        async def follower(run_id: str) -> None:
            async with step_batch(store, run_id):
                pass
            outcome[run_id] = "committed"

        async def cancel() -> None:
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            for i in range(1, 4):
                tg.start_soon(follower, f"r{i}")
            tg.start_soon(cancel)  # runs in the same turn, after the others joined
        assert outcome == {"r1": "committed", "r2": "committed", "r3": "committed"}
        assert sizes == [3]
        assert (await store.get_run("r0")).position == 0
        assert await store.history("r0") == []
        for i in range(1, 4):
            assert (await store.get_run(f"r{i}")).position == 1


async def test_a_busy_database_makes_grouped_batches_commit_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that finds the database locked is rolled back; each batch waits and commits."""
    path = tmp_path / "db.sqlite"
    sizes = spy_groups(monkeypatch)
    async with await SQLiteStore.open(path, busy_timeout=5.0) as store:
        for i in range(5):
            await store.create_run(run(f"r{i}", owner="w"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        async def commit(run_id: str) -> None:
            async with step_batch(store, run_id):
                pass

        async def release() -> None:
            await anyio.sleep(0.2)
            other.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            for i in range(5):
                tg.start_soon(commit, f"r{i}")
        other.close()
        assert sizes == []  # BEGIN IMMEDIATE failed before any batch was applied
        for i in range(5):
            assert (await store.get_run(f"r{i}")).position == 1
            assert [h.seq for h in await store.history(f"r{i}")] == [1]


async def test_a_batch_failing_after_its_writes_without_a_savepoint_aborts_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a batch fail having written with no savepoint, the group rolls back and every
    batch commits alone: the failing one gets its error, the others commit."""
    monkeypatch.setattr(_sqlite_group, "_needs_savepoint", lambda ops: False)
    sizes = spy_groups(monkeypatch)
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        for i in range(4):
            await store.create_run(run(f"r{i}", owner="w"))
        outcome: dict[str, str] = {}

        async def commit(run_id: str) -> None:
            try:
                async with step_batch(store, run_id) as b:
                    if run_id == "r2":
                        b.consume_event("gone")  # fails after the batch's writes
            except EventTakenError:
                outcome[run_id] = "taken"
            else:
                outcome[run_id] = "committed"

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(commit, f"r{i}")
        assert sizes == [4]
        assert outcome == {"r0": "committed", "r1": "committed", "r2": "taken", "r3": "committed"}
        for i in range(4):
            written = i != 2
            assert (await store.get_run(f"r{i}")).position == int(written)
            assert len(await store.history(f"r{i}")) == int(written)


def test_only_batches_failing_after_a_write_need_a_savepoint() -> None:
    """Conditions before every write (the engine's batches) need none."""
    needs = _sqlite_group._needs_savepoint
    assert not needs([("require_owner", ()), ("append_history", ()), ("put_checkpoint", ())])
    assert not needs([("update_run", ()), ("append_history", ()), ("delete_checkpoints", ())])
    assert not needs([("create_run", ()), ("append_history", ())])
    assert needs([("update_run", ()), ("consume_event", ()), ("append_history", ())])
    assert needs([("put_checkpoint", ()), ("require_owner", ())])


async def test_a_v3_database_is_migrated_to_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 4 (group commit needs no new SQLite schema) opens a v3 file, keeping its runs."""
    path = tmp_path / "db.sqlite"
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:3])
        async with SQLiteStore(path) as store:
            for i in range(3):
                await store.create_run(run(f"r{i}", owner="w"))
    assert meta(path)["schema_version"] == "3"
    async with SQLiteStore(path) as store:
        assert await store.schema_version() == LATEST

        async def commit(run_id: str) -> None:
            async with step_batch(store, run_id):
                pass

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(commit, f"r{i}")
        for i in range(3):
            assert (await store.get_run(f"r{i}")).position == 1


async def test_batches_commit_alone_without_an_asyncio_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under another backend (trio: no asyncio loop runs) every batch commits at once, alone."""
    monkeypatch.setattr(_sqlite_group, "_running_loop", lambda: None)
    sizes = spy_groups(monkeypatch)
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        for i in range(4):
            await store.create_run(run(f"r{i}", owner="w"))

        async def commit(run_id: str) -> None:
            async with step_batch(store, run_id):
                pass

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(commit, f"r{i}")
        assert sizes == []
        for i in range(4):
            assert (await store.get_run(f"r{i}")).position == 1


# -- a step's update ---------------------------------------------------------------------


async def test_a_fenced_update_writes_the_whole_record_whatever_changed(tmp_path: Path) -> None:
    """``update_run(..., owner=)`` writes every field, by the short path or the whole one.

    A step's update (only context, position, error and time changed) leaves the lease
    columns alone; any other change, or a row that does not hold the expected values,
    takes the whole update. Either way the stored record is the one written.
    """
    statements: list[str] = []
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        await store.create_run(run(owner="w", lease_expires=10.0))
        conn = store._db.conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        changes: list[dict[str, Any]] = [
            {"position": 1, "context": '{"n": 2}', "updated": 2.0},  # a step: the short path
            {"error": "oops", "updated": 3.0},
            {"lease_expires": 20.0},  # renewed
            {"status": "waiting"},
            {"process": "q", "version": 2, "created": 0.5},  # not a step's change
            {"lease_expires": None, "position": 4},
            {"position": 5},
        ]
        current = run(owner="w", lease_expires=10.0)
        for change in changes:
            current = attrs.evolve(current, **change)
            statements.clear()
            await store.update_run(current, owner="w")
            assert await store.get_run("r1") == current, change
            short = [s for s in statements if s.startswith("UPDATE orchestra_runs SET context")]
            whole = [s for s in statements if s.startswith("UPDATE orchestra_runs SET process")]
            assert len(short) == 1, change
            is_step = not (change.keys() - {"position", "context", "updated", "error"})
            assert len(whole) == (0 if is_step else 1), change
        # A row changed behind the store's back (the lease, here) is written whole too.
        conn.execute("UPDATE orchestra_runs SET lease_expires = 99.0 WHERE id = 'r1'")
        current = attrs.evolve(current, position=6)
        await store.update_run(current, owner="w")
        assert await store.get_run("r1") == current
        conn.set_trace_callback(None)
        # Fencing holds on both paths: another owner, or no run.
        with pytest.raises(OwnershipError):
            await store.update_run(current, owner="thief")
        thief = attrs.evolve(current, owner="thief")
        with pytest.raises(OwnershipError):
            await store.update_run(thief, owner="thief")
        with pytest.raises(RunNotFoundError):
            await store.update_run(run("nope", owner="w"), owner="w")
        async with store.batch() as b:
            nxt = attrs.evolve(current, position=7)
            b.update_run(nxt, owner="w")
        assert await store.get_run("r1") == nxt


async def test_a_run_created_in_a_batch_numbers_its_history_without_a_lookup(
    tmp_path: Path,
) -> None:
    """Its first entry is 1 (no MAX(seq) read); entries left under its id still count."""
    statements: list[str] = []
    async with await SQLiteStore.open(tmp_path / "db.sqlite") as store:
        await store.create_run(run("r0"))
        conn = store._db.conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        async with store.batch() as b:
            b.create_run(run("r1", owner="w"))
            b.append_history(HistoryEntry(run_id="r1", kind="run_started", at=1.0))
            b.append_history(HistoryEntry(run_id="r1", kind="step_started", at=2.0, step="a"))
        conn.set_trace_callback(None)
        assert not [s for s in statements if "MAX(seq)" in s]
        assert [h.seq for h in await store.history("r1")] == [1, 2]
        # History under an id with no run (written by another process, say): appended after.
        conn.execute(
            "INSERT INTO orchestra_history (run_id, seq, kind, at) "
            "VALUES ('r2', 1, 'run_started', 0)"
        )
        async with store.batch() as b:
            b.create_run(run("r2", owner="w"))
            b.append_history(HistoryEntry(run_id="r2", kind="run_started", at=1.0))
        assert [h.seq for h in await store.history("r2")] == [1, 2]
        # A batch that fails after creating its run leaves no number behind.
        with pytest.raises(RunNotFoundError):
            async with store.batch() as b:
                b.create_run(run("r3", owner="w"))
                b.update_run(run("nope"), owner="w")
        assert "r3" not in store._db.seqs
        with pytest.raises(RunNotFoundError):
            await store.get_run("r3")
