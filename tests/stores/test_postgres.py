"""PostgresStore against the server named by ORCHESTRA_TEST_POSTGRES_URL.

Without that variable these tests skip (with the reason shown by ``-ra``); with
``ORCHESTRA_REQUIRE_POSTGRES=1`` (as in CI) a missing or unreachable server fails them.
Each test works in a schema of its own, dropped afterwards.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from orchestra.errors import PersistenceError
from orchestra.stores import (
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    OwnershipError,
    PostgresStore,
    RunRecord,
    Store,
    Wait,
    _migrations,
    open_store,
)
from orchestra.stores._postgres_group import _GroupCommit
from orchestra.stores.contract import StoreContract
from orchestra.stores.contract_durable import DurableStoreContract

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def run(run_id: str = "r1", **kw: object) -> RunRecord:
    fields: dict[str, object] = {
        "id": run_id, "process": "p", "version": 1, "status": "running",
        "context": '{"n": 1}', "created": 1.0, "updated": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return RunRecord(**fields)  # type: ignore[arg-type]


def _unavailable(reason: str) -> None:
    if os.environ.get("ORCHESTRA_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"ORCHESTRA_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test server's URL, checked once; skips (or fails, when required) without it."""
    url = os.environ.get("ORCHESTRA_TEST_POSTGRES_URL")
    if not url:
        _unavailable(
            "ORCHESTRA_TEST_POSTGRES_URL is not set "
            "(e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
        raise AssertionError  # unreachable: skip or fail raised
    try:
        import asyncpg
    except ImportError:
        _unavailable("asyncpg is not installed (pip install 'orchestra[postgres]')")
        raise

    async def ping() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        asyncio.run(ping())
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        _unavailable(f"the PostgreSQL server at {url} is unreachable: {exc!r}")
    return url


@pytest.fixture
async def schema(pg_url: str) -> AsyncIterator[str]:
    """A fresh schema name, dropped after the test."""
    import asyncpg

    name = "orchestra_test_" + uuid.uuid4().hex[:12]
    yield name
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def admin(pg_url: str, sql: str, *args: object) -> Any:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, pg_url: str, schema: str) -> AsyncIterator[Store]:
        async with await PostgresStore.open(pg_url, schema=schema) as s:
            yield s


class TestPostgresDurable(DurableStoreContract):
    @pytest.fixture
    def open_store(self, pg_url: str, schema: str) -> Callable[[], Awaitable[Store]]:
        async def opener() -> Store:
            return await PostgresStore.open(pg_url, schema=schema, max_size=4)

        return opener


# -- schema and migrations ---------------------------------------------------------------

LATEST = _migrations.latest_version()
NEXT = LATEST + 1
V2 = _migrations.Migration(
    version=NEXT,
    description="sample: a tag on runs",
    sqlite=("ALTER TABLE orchestra_runs ADD COLUMN tag TEXT",),
    postgres=(
        "ALTER TABLE {schema}.runs ADD COLUMN tag TEXT",
        "CREATE INDEX runs_tag ON {schema}.runs (tag)",
    ),
)


async def version_of(pg_url: str, schema: str) -> str:
    rows = await admin(pg_url, f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'")
    return str(rows[0][0])


async def test_new_schema_gets_the_latest_version(pg_url: str, schema: str) -> None:
    """Opening creates the schema, its tables and the version record."""
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        assert await store.schema_version() == _migrations.latest_version()
    assert await version_of(pg_url, schema) == str(_migrations.latest_version())


async def test_a_v0_schema_is_migrated_keeping_the_hosts_tables(pg_url: str, schema: str) -> None:
    """A schema at version 0 made by hand, with a host table in it, is migrated to the latest."""
    await admin(pg_url, f'CREATE SCHEMA "{schema}"')
    await admin(pg_url, f'CREATE TABLE "{schema}".host_notes (note TEXT)')
    await admin(pg_url, f"INSERT INTO \"{schema}\".host_notes VALUES ('keep me')")
    await admin(pg_url, f'CREATE TABLE "{schema}".meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)')
    await admin(pg_url, f"INSERT INTO \"{schema}\".meta VALUES ('schema_version', '0')")
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        await store.create_run(run())
    assert await version_of(pg_url, schema) == str(LATEST)
    rows = await admin(pg_url, f'SELECT note FROM "{schema}".host_notes')
    assert [r[0] for r in rows] == ["keep me"]


async def test_a_v2_schema_gets_the_lease_index(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 indexes runs by (status, owner, lease_expires) and drops the status index."""
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:2])
        async with await PostgresStore.open(pg_url, schema=schema) as store:
            await store.create_run(run("r1"))
            await store.create_run(run("r2", status="waiting", owner="w", lease_expires=5.0))
    assert await version_of(pg_url, schema) == "2"
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        assert await store.schema_version() == LATEST
        found = await store.orphaned_runs(worker="me", now=10.0)
        assert [r.id for r in found] == ["r1", "r2"]
    rows = await admin(pg_url, "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
    indexes = {r[0] for r in rows}
    assert "runs_lease" in indexes
    assert "runs_status" not in indexes


async def test_an_older_schema_is_migrated_and_a_newer_refused(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data survives the sample migration; the code before it then refuses the newer schema."""
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        await store.create_run(run("r1", context='{"a": 1}'))
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, V2))
        async with await PostgresStore.open(pg_url, schema=schema) as store:
            assert await store.schema_version() == NEXT
            assert (await store.get_run("r1")).context == '{"a": 1}'
    newer = rf"schema version {NEXT}, newer than .* \({LATEST}\)"
    with pytest.raises(PersistenceError, match=newer):
        await PostgresStore.open(pg_url, schema=schema)
    assert await version_of(pg_url, schema) == str(NEXT)


async def test_a_failing_migration_changes_nothing(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails rolls back as a whole (PostgreSQL DDL is transactional)."""
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        await store.create_run(run())
    bad = _migrations.Migration(
        version=NEXT,
        description="broken",
        sqlite=(),
        postgres=("ALTER TABLE {schema}.runs ADD COLUMN tag TEXT", "THIS IS NOT SQL"),
    )
    monkeypatch.setattr(_migrations, "MIGRATIONS", (*_migrations.MIGRATIONS, bad))
    with pytest.raises(PersistenceError, match="syntax error"):
        await PostgresStore.open(pg_url, schema=schema)
    monkeypatch.undo()
    assert await version_of(pg_url, schema) == str(LATEST)
    cols = await admin(
        pg_url,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'runs'",
        schema,
    )
    assert "tag" not in {c[0] for c in cols}


async def test_a_v1_schema_is_migrated_to_fenced_batches(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema of the first version gets v2's apply_batch: fenced updates, consume_event."""
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:1])
        async with await PostgresStore.open(pg_url, schema=schema) as store:
            await store.create_run(run("r1", owner="w1"))
            await store.add_event(
                InboxEvent(id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=9.0)
            )
        assert await version_of(pg_url, schema) == "1"
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        assert await store.schema_version() == LATEST  # v2 and every later migration
        with pytest.raises(OwnershipError):
            async with store.batch() as b:
                b.update_run(run("r1", position=1), owner="w2")
        async with store.batch() as b:
            b.update_run(run("r1", position=1, owner="w1"), owner="w1")
            b.consume_event("e1")
        assert (await store.get_run("r1")).position == 1
        assert await store.peek_event("e", '"k"', now=2.0) is None


async def test_concurrent_opens_migrate_once(pg_url: str, schema: str) -> None:
    """Several workers opening a new schema at once all succeed (one migrates)."""
    stores = await asyncio.gather(
        *(PostgresStore.open(pg_url, schema=schema, min_size=1) for _ in range(4))
    )
    for s in stores:
        assert await s.schema_version() == LATEST
        await s.aclose()


def test_schema_names_are_checked() -> None:
    """A schema name that is not a plain identifier is refused before any I/O."""
    with pytest.raises(ValueError, match="plain identifier"):
        PostgresStore("postgresql://x/y", schema='bad"; DROP TABLE x; --')


# -- failures and reconnection -----------------------------------------------------------


async def test_an_unreachable_server_gives_persistence_error() -> None:
    """Nothing listening: PersistenceError, with the connection error chained."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=2)
    with pytest.raises(PersistenceError, match="connecting") as info:
        await store.list_runs()
    assert isinstance(info.value.__cause__, OSError)
    await store.aclose()


async def kill_connections(pg_url: str, store: PostgresStore) -> int:
    pids = [h._con.get_server_pid() for h in store._db.pool._holders if h._con is not None]
    for sub in store._subscriptions:
        pids.append(sub._conn.get_server_pid())
    rows = await admin(
        pg_url, "SELECT count(pg_terminate_backend(pid)) FROM unnest($1::int[]) AS pid", pids
    )
    return int(rows[0][0])


async def test_the_store_keeps_working_after_its_connections_are_killed(
    pg_url: str, schema: str
) -> None:
    """After pg_terminate_backend of every connection, every kind of call still works."""
    async with await PostgresStore.open(pg_url, schema=schema, min_size=2, max_size=2) as store:
        await store.create_run(run("r1"))
        await store.put_wait(Wait(run_id="r1", step="w", event="e", key='"k"'))
        await store.add_event(InboxEvent(
            id="e1", name="e", key='"k"', payload="{}", received=1.0, expires=1e9,
        ))  # fmt: skip
        async with store.subscribe("wake") as sub:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: store.get_run("r1"),
                lambda: store.append_history(HistoryEntry(run_id="r1", kind="goto", at=1.0)),
                lambda: store.delete_wait("r1"),
                lambda: store.take_event("e", '"k"', now=1.0),
                lambda: store.create_run(run("r2")),
                lambda: store.put_checkpoint(
                    CheckpointRecord(run_id="r1", step="s", processor="a", output="1", trace="")
                ),
                lambda: store.claim_run("r1", "w", until=9.0, now=1.0),
            ]
            for call in calls:
                assert await kill_connections(pg_url, store) >= 1
                await call()  # at once: the dead connection is found mid-call
            assert [h.seq for h in await store.history("r1")] == [1]
            assert await store.list_waits() == []
            assert (await store.get_run("r1")).owner == "w"
            # The subscription reconnects: it yields "" (a wake-up), then new payloads.
            with anyio.fail_after(10):
                assert await anext(sub) == ""
                await store.notify("wake", "after")
                assert await anext(sub) == "after"


class Proxy:
    """A TCP proxy to the test server that can be stopped and restarted: a server restart."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_the_store_recovers_after_the_server_restarts(pg_url: str, schema: str) -> None:
    """While the server is away calls fail with PersistenceError; once back, all works."""
    proxy = Proxy(pg_url)
    await proxy.start()
    parts = urllib.parse.urlsplit(pg_url)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    async with await PostgresStore.open(url, schema=schema, connect_timeout=3) as store:
        await store.create_run(run())
        await proxy.stop()
        with anyio.fail_after(10):
            with pytest.raises(PersistenceError) as info:
                await store.get_run("r1")
            assert info.value.__cause__ is not None
            with pytest.raises(PersistenceError):
                await store.append_history(HistoryEntry(run_id="r1", kind="goto", at=1.0))
        await proxy.start()
        assert (await store.get_run("r1")).id == "r1"
        entry = await store.append_history(HistoryEntry(run_id="r1", kind="goto", at=2.0))
        assert entry.seq == 1
    await proxy.stop()


async def test_a_cancelled_call_leaves_the_store_usable(pg_url: str, schema: str) -> None:
    """A call cancelled while it waits on a row lock is cancelled on the server too (once
    the driver's cancel request arrives: until then it may still apply); later calls work."""
    import asyncpg

    async with await PostgresStore.open(pg_url, schema=schema) as store:
        await store.create_run(run())
        other = await asyncpg.connect(pg_url)
        try:
            lock = other.transaction()
            await lock.start()
            await other.execute(f'SELECT 1 FROM "{schema}".runs WHERE id = $1 FOR UPDATE', "r1")
            with anyio.move_on_after(0.3) as scope:
                await store.update_run(run(status="failed"))
            assert scope.cancelled_caught
            await anyio.sleep(0.3)  # the driver's cancel request reaches the server
            await lock.rollback()
        finally:
            await other.close()
        assert (await store.get_run("r1")).status == "running"
        await store.update_run(run(status="completed"))
        assert (await store.get_run("r1")).status == "completed"
        assert (await store.append_history(HistoryEntry(run_id="r1", kind="goto", at=1.0))).seq == 1


async def test_notifications_arrive_within_milliseconds(pg_url: str, schema: str) -> None:
    """A NOTIFY from one store reaches another store's subscriber quickly."""
    async with (
        await PostgresStore.open(pg_url, schema=schema) as a,
        await PostgresStore.open(pg_url, schema=schema) as b,
        b.subscribe("runs") as sub,
    ):
        delays = []
        for i in range(20):
            t = time.perf_counter()
            await a.notify("runs", str(i))
            with anyio.fail_after(5):
                assert await anext(sub) == str(i)
            delays.append(time.perf_counter() - t)
        assert sorted(delays)[10] < 0.05


async def test_channel_names_are_limited(pg_url: str, schema: str) -> None:
    """A channel name PostgreSQL would truncate is refused."""
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        with pytest.raises(ValueError, match="63 bytes"):
            await store.notify("x" * 64)


# -- open_store --------------------------------------------------------------------------


async def test_open_store_opens_postgres_with_a_schema(pg_url: str, schema: str) -> None:
    """``postgresql://...?schema=NAME`` opens a PostgresStore with its tables in NAME."""
    sep = "&" if "?" in pg_url else "?"
    store = await open_store(f"{pg_url}{sep}schema={schema}")
    async with store:
        assert isinstance(store, PostgresStore)
        assert store.schema == schema
        await store.create_run(run())
    rows = await admin(pg_url, f'SELECT id FROM "{schema}".runs')
    assert [r[0] for r in rows] == ["r1"]


def test_required_postgres_fails_instead_of_skipping() -> None:
    """With ORCHESTRA_REQUIRE_POSTGRES=1 an unreachable server fails the tests."""
    env = {
        **os.environ,
        "ORCHESTRA_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/nothing",
        "ORCHESTRA_REQUIRE_POSTGRES": "1",
    }
    args = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
            "-k", "test_new_schema_gets_the_latest_version"]  # fmt: skip
    done = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "ORCHESTRA_REQUIRE_POSTGRES=1 but the PostgreSQL server" in done.stdout
    env.pop("ORCHESTRA_REQUIRE_POSTGRES")
    done = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
    assert "skipped" in done.stdout


# -- group commit ------------------------------------------------------------------------


def spy_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of batches in every call of ``apply_batches``."""
    sizes: list[int] = []
    real = _GroupCommit._apply_many

    async def spy(self: _GroupCommit, conn: Any, payload: str) -> Any:
        sizes.append(len(json.loads(payload)))
        return await real(self, conn, payload)

    monkeypatch.setattr(_GroupCommit, "_apply_many", spy)
    return sizes


async def commit_step(store: Store, run_id: str, *, owner: str = "w") -> None:
    async with store.batch() as b:
        b.update_run(run(run_id, position=1, owner=owner), owner=owner)
        b.append_history(HistoryEntry(run_id=run_id, kind="step_completed", at=2.0))
        b.put_checkpoint(
            CheckpointRecord(run_id=run_id, step="s", processor="p", output="1", trace="{}")
        )


async def test_batches_of_one_turn_commit_in_one_call(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks committing in the same loop turn share one call; a lone batch does not."""
    sizes = spy_groups(monkeypatch)
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        for i in range(10):
            await store.create_run(run(f"r{i}", owner="w"))
        await commit_step(store, "r0")
        assert sizes == []
        async with anyio.create_task_group() as tg:
            for i in range(1, 10):
                tg.start_soon(commit_step, store, f"r{i}")
        assert sizes == [9]
        for i in range(10):
            assert (await store.get_run(f"r{i}")).position == 1
            assert [h.seq for h in await store.history(f"r{i}")] == [1]


async def test_a_cancelled_leader_leaves_the_others_committed(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch that leads a group is cancelled before it is sent: only it is not written."""
    sizes = spy_groups(monkeypatch)
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        for i in range(4):
            await store.create_run(run(f"r{i}", owner="w"))
        scope = anyio.CancelScope()
        done: list[str] = []

        async def leader() -> None:
            with scope:
                await commit_step(store, "r0")
                done.append("r0")

        async def follower(run_id: str) -> None:
            await commit_step(store, run_id)
            done.append(run_id)

        async def cancel() -> None:
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            for i in range(1, 4):
                tg.start_soon(follower, f"r{i}")
            tg.start_soon(cancel)  # runs in the same turn, after the others joined
        assert sorted(done) == ["r1", "r2", "r3"]
        assert sizes == [3]
        assert (await store.get_run("r0")).position == 0
        for i in range(1, 4):
            assert (await store.get_run(f"r{i}")).position == 1


async def test_a_group_refused_by_the_server_commits_each_batch_alone(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the group's call fails on the server (it changed nothing), each batch commits
    alone, with its own outcome."""
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        for i in range(4):
            await store.create_run(run(f"r{i}", owner="w"))
        store._sql.apply_batches = "SELECT ($1::jsonb)::text::integer::text"  # always fails
        sizes = spy_groups(monkeypatch)
        outcome: dict[str, str] = {}

        async def commit(run_id: str) -> None:
            try:
                await commit_step(store, run_id, owner="x" if run_id == "r2" else "w")
            except OwnershipError:
                outcome[run_id] = "refused"
            else:
                outcome[run_id] = "committed"

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(commit, f"r{i}")
        assert sizes == [4]
        assert outcome == {"r0": "committed", "r1": "committed", "r2": "refused", "r3": "committed"}
        for i in range(4):
            assert (await store.get_run(f"r{i}")).position == int(i != 2)


async def test_a_v3_schema_gets_group_commit(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 4 adds apply_batches to a v3 schema; its runs stay and groups fail alone."""
    with monkeypatch.context() as m:
        m.setattr(_migrations, "MIGRATIONS", _migrations.MIGRATIONS[:3])
        async with await PostgresStore.open(pg_url, schema=schema) as store:
            for i in range(3):
                await store.create_run(run(f"r{i}", owner="w"))
        assert await version_of(pg_url, schema) == "3"
    sizes = spy_groups(monkeypatch)
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        assert await store.schema_version() == LATEST
        outcome: dict[str, str] = {}

        async def commit(run_id: str) -> None:
            try:
                await commit_step(store, run_id, owner="x" if run_id == "r1" else "w")
            except OwnershipError:
                outcome[run_id] = "refused"
            else:
                outcome[run_id] = "committed"

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(commit, f"r{i}")
        assert sizes == [3]
        assert outcome == {"r0": "committed", "r1": "refused", "r2": "committed"}
        assert [h.seq for h in await store.history("r0")] == [1]
        assert await store.history("r1") == []


async def test_a_batch_waiting_for_a_row_lock_does_not_hold_up_its_group(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that would wait for a row another transaction holds is rolled back alone
    (its locks released) and committed on its own once the row is free; the others of
    its group commit meanwhile. Two workers' groups thus never deadlock."""
    import asyncpg

    sizes = spy_groups(monkeypatch)
    async with await PostgresStore.open(pg_url, schema=schema) as store:
        for i in range(3):
            await store.create_run(run(f"r{i}", owner="w"))
        other = await asyncpg.connect(pg_url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute(f'SELECT 1 FROM "{schema}".runs WHERE id = $1 FOR UPDATE', "r0")
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(commit_step, store, f"r{i}")
                with anyio.fail_after(5):
                    while (await store.get_run("r2")).position != 1:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert (await store.get_run("r1")).position == 1
                assert (await store.get_run("r0")).position == 0  # still waiting for the row
                await tx.rollback()
        finally:
            await other.close()
        assert sizes == [3]
        assert [h.seq for h in await store.history("r0")] == [1]
        assert (await store.get_run("r0")).position == 1
