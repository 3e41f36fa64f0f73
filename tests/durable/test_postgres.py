"""PostgreSQL drops the engine's connections mid-run (as on a server restart).

The server is not restarted (other tests share it): ``pg_terminate_backend`` ends every
connection the store holds, pooled and listening, which is what a restart does to them.
The engine must reconnect and carry on: every run completes, each step recorded once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.testing import MockHTTP

from ._worker import EVENT, HERE
from .conftest import PG_URL, po_engine, wait_all
from .test_race import ENDINGS, EXPECTED, publish, start_payload, supplier_payload

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

N = 10


async def test_the_engine_reconnects_when_postgres_drops_its_connections(
    pg_schema: tuple[str, Any], po_process: o.Process
) -> None:
    schema, open_store = pg_schema
    store = await open_store()
    import asyncpg

    admin = await asyncpg.connect(PG_URL)
    killed: list[int] = []

    async def drop_connections() -> None:
        n = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE $1",
            f"%{schema}%",
        )
        killed.append(n)

    mocks = MockHTTP.from_file(HERE / "mocks.json")
    mails = 0

    async def mail(request: httpx.Request) -> httpx.Response:
        nonlocal mails
        mails += 1
        if mails in (3, 8):  # while send_form runs: its checkpoint goes to a dead connection
            await drop_connections()
        return httpx.Response(202, json={"message_id": f"msg_{mails}"})

    patches = 0

    async def erp(request: httpx.Request) -> httpx.Response:
        nonlocal patches
        patches += 1
        if patches == 4:  # while write_back runs
            await drop_connections()
        return httpx.Response(200, json={"status": "updated"})

    mocks.add("POST", "https://mail.example.com/v1/send", handler=mail)
    mocks.add("PATCH", "https://erp.example.com/api/purchase-orders/{number}", handler=erp)
    try:
        async with po_engine(store, "pg-worker", client=mocks.client(), lease_seconds=1) as eng:
            await eng.deploy(po_process)
            for i in range(N):
                await publish(eng, "po.unconfirmed", start_payload(i), f"start-{i}")
            await drop_connections()  # between two events
            for i in range(N):
                await publish(eng, EVENT["name"], supplier_payload(i), f"supplier-{i}")
            await wait_all(eng, "completed", timeout=20)
            runs = [await eng.run(r.id) for r in await eng.runs()]
    finally:
        await admin.close()
    assert len(killed) == 4
    assert all(n >= 1 for n in killed), killed
    assert len(runs) == N
    for r in runs:
        ends = Counter((h.kind, h.step) for h in r.history if h.kind in ENDINGS)
        assert ends == EXPECTED, (r.id, r.path)
