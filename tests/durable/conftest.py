"""Fixtures of the durability tests: PO-triage engines on SQLite files and PostgreSQL schemas.

PostgreSQL tests read ``ORCHESTRA_TEST_POSTGRES_URL`` and get a private schema each. Without
the variable they are skipped (with the reason shown by ``-ra``); with
``ORCHESTRA_REQUIRE_POSTGRES=1`` a missing variable or an unreachable server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

import orchestra as o
from orchestra.errors import PersistenceError
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import Store

from ._worker import SECRETS, load_process, mocked_client

PG_URL = os.environ.get("ORCHESTRA_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("ORCHESTRA_REQUIRE_POSTGRES") == "1"


@pytest.fixture
def anyio_backend() -> str:
    """Durability tests run on asyncio."""
    return "asyncio"


def po_engine(
    store: Store,
    worker_id: str,
    *,
    client: httpx.AsyncClient | None = None,
    lease_seconds: float = 2.0,
    **kw: Any,
) -> o.Engine:
    """An engine for the PO-triage example: in-process JS, mocked HTTP, the example's secrets."""
    return o.Engine(
        store=store, sandbox=InProcessSandbox(), client=client or mocked_client(lambda _: None),
        secrets=SECRETS, worker_id=worker_id, lease_seconds=lease_seconds, **kw,
    )  # fmt: skip


async def wait_for(engine: o.Engine, run_id: str, status: str, timeout: float = 5.0) -> o.RunInfo:
    """Wait until the run has ``status`` (another worker or the poll is moving it)."""
    with anyio.fail_after(timeout):
        while (run := await engine.run(run_id)).status != status:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return run


async def wait_all(engine: o.Engine, status: str, timeout: float = 10.0) -> None:
    """Wait until every run in the engine's store has ``status``."""
    with anyio.fail_after(timeout):
        while any(r.status != status for r in await engine.runs()):  # noqa: ASYNC110
            await anyio.sleep(0.05)


@pytest.fixture
def po_process() -> o.Process:
    """The PO-triage example (with idempotency keys on its HTTP calls)."""
    return load_process()


async def open_pg(schema: str) -> Any:
    """Open a PostgresStore on ``schema``; skip or fail as the module docstring says."""
    from orchestra.stores import PostgresStore

    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("ORCHESTRA_REQUIRE_POSTGRES=1 but ORCHESTRA_TEST_POSTGRES_URL is not set")
        pytest.skip("ORCHESTRA_TEST_POSTGRES_URL is not set: PostgreSQL tests skipped")
    try:
        return await PostgresStore.open(PG_URL, schema=schema)
    except PersistenceError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL at ORCHESTRA_TEST_POSTGRES_URL is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at ORCHESTRA_TEST_POSTGRES_URL is unreachable: {exc}")


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, Callable[[], Any]]]:
    """A private schema name and an opener of stores on it; the schema is dropped after."""
    schema = "od_" + uuid.uuid4().hex[:12]
    opened: list[Any] = []

    async def opener() -> Any:
        store = await open_pg(schema)
        opened.append(store)
        return store

    yield schema, opener
    if not opened:
        return
    for store in opened:
        await store.aclose()
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
