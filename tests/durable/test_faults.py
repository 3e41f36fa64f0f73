"""A locked SQLite file or a full disk: a clear PersistenceError, and no corrupted run.

The run's stored state stays what it was before the failed write, and the run completes
once the store works again (the engine's poll takes it back up).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.errors import PersistenceError
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import SQLiteStore
from orchestra.testing import MockHTTP

from ._worker import EVENT, HERE, SAMPLE
from .conftest import po_engine, wait_for

pytestmark = pytest.mark.anyio


async def test_a_locked_database_fails_the_write_cleanly_and_the_run_completes_later(
    tmp_path: Path, po_process: o.Process
) -> None:
    db = tmp_path / "runs.db"
    locker = sqlite3.connect(db, isolation_level=None)
    mocks = MockHTTP.from_file(HERE / "mocks.json")
    patches: list[httpx.Request] = []

    def erp(request: httpx.Request) -> httpx.Response:
        patches.append(request)
        if len(patches) == 1:  # another process locks the file while the ERP answers
            locker.execute("BEGIN EXCLUSIVE")
        return httpx.Response(200, json={"status": "updated"})

    mocks.add("PATCH", "https://erp.example.com/api/purchase-orders/{number}", handler=erp)
    async with (
        SQLiteStore(db, busy_timeout=0.3) as store,
        po_engine(store, "w1", client=mocks.client()) as eng,
    ):
        await eng.deploy(po_process)
        (run_id,) = (await eng.publish("po.unconfirmed", SAMPLE)).started
        with pytest.raises(PersistenceError) as info:
            await eng.publish(EVENT["name"], EVENT["payload"], id=EVENT["id"])
        assert "locked" in str(info.value)
        assert str(db) in str(info.value)
        # What is stored is the state before the failed write: resumed, at write_back,
        # the ERP's answer not recorded.
        stored = await store.get_run(run_id)
        assert (stored.status, stored.position, stored.owner) == ("running", 2, "w1")
        assert json.loads(stored.context)["events"]["wait_for_supplier"] == EVENT["payload"]
        assert await store.checkpoints(run_id, "write_back") == []
        history = [(h.kind, h.step) for h in await store.history(run_id)]
        assert history[-1] == ("event_consumed", "wait_for_supplier")
        locker.execute("ROLLBACK")
        run = await wait_for(eng, run_id, "completed", timeout=15)
    locker.close()
    assert run.path == ["send_form:completed", "wait_for_supplier:resumed",
                        "write_back:completed", "escalate:skipped"]  # fmt: skip
    assert [(h.kind, h.step) for h in run.history].count(("step_completed", "write_back")) == 1
    # The ERP was called again (at least once), with the same idempotency key.
    keys = {r.headers["idempotency-key"] for r in patches}
    assert len(patches) == 2
    assert keys == {f"{run_id}:write_back:erp:0"}


async def test_a_full_disk_fails_the_write_cleanly_and_the_run_completes_later(
    tmp_path: Path,
) -> None:
    calls: list[int] = []

    def big(_: Any) -> Any:
        calls.append(1)
        return {"blob": "x" * 300_000}

    process = o.Process(name="big", trigger=o.Event(name="go"), steps=(
        o.ProcessStep(name="small", processors=(
            o.Processor(name="one", call=o.FunctionCall(name="one")),
        )),
        o.ProcessStep(name="large", processors=(
            o.Processor(name="blob", call=o.FunctionCall(name="big")),
        )),
    ))  # fmt: skip
    db = tmp_path / "runs.db"
    async with SQLiteStore(db) as store:
        eng = o.Engine(store=store, sandbox=InProcessSandbox(), worker_id="w1", lease_seconds=2,
                       functions={"one": lambda _: 1, "big": big})  # fmt: skip
        async with eng:
            await eng.deploy(process)
            assert store._db.conn is not None
            pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
            store._db.conn.execute(f"PRAGMA max_page_count = {pages + 8}")
            with pytest.raises(PersistenceError) as info:
                await eng.start("big", {})
            assert "full" in str(info.value)
            (stored,) = await store.list_runs()
            assert (stored.status, stored.position) == ("running", 1)
            assert json.loads(stored.context)["steps"] == {"small": {"one": 1}}
            assert await store.checkpoints(stored.id, "large") == []
            store._db.conn.execute("PRAGMA max_page_count = 1073741823")
            run = await wait_for(eng, stored.id, "completed", timeout=15)
    assert len(calls) == 2
    ctx: Any = run.context
    assert ctx["steps"]["large"]["blob"] == {"blob": "x" * 300_000}
    assert [h.kind for h in run.history].count("step_completed") == 2
