"""A worker process for the crash tests: runs the PO-triage example on a SQLite file.

``crash`` mode deploys ``examples/po-confirmation-triage/process.json``, publishes the
start event and the supplier's event (``--early-events``: the supplier's first, so the run
takes it from the inbox), and SIGKILLs itself just before or just after the Nth write to
the store (``--crash N --when before|after``; ``--crash 0`` never: it prints the writes it
made, to calibrate). ``recover`` mode is the restarted worker: for each database it opens
a fresh engine (recovery runs on entering it), deploys, publishes both events again (a
host redelivers what it did not see acknowledged, with the same ids), waits for the runs
to end, starts a second run for the same PO (which must not find the supplier's event
again) and writes a JSON report of what the store holds, the inbox included.

HTTP is mocked (MockHTTP) and every request is appended to ``<db>.http`` with its
idempotency key, with unbuffered writes so that the lines of a killed worker survive.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import (
    Batch,
    CheckpointRecord,
    HistoryEntry,
    InboxEvent,
    RunRecord,
    RunStatus,
    SQLiteStore,
    Store,
    Version,
    Wait,
)
from orchestra.stores._batch import Op
from orchestra.testing import MockHTTP

HERE = Path(__file__).resolve().parents[2] / "examples" / "po-confirmation-triage"
SECRETS = {
    "forms_token": "forms-token-0123456789",
    "mail_token": "mail-token-0123456789",
    "erp_client_secret": "erp-client-secret-0123456789",
}
IDEMPOTENCY_HEADER = "Idempotency-Key"
T = TypeVar("T")


def load_process() -> o.Process:
    """The example, with an idempotency key header on every HTTP call."""
    data = json.loads((HERE / "process.json").read_text())
    for step in data["steps"]:
        for proc in step.get("processors", []):
            if proc["call"]["type"] == "http":
                proc["call"]["idempotency_key"] = IDEMPOTENCY_HEADER
    return o.Process.from_dict(data)


SAMPLE: Any = json.loads((HERE / "sample.json").read_text())
EVENT: Any = json.loads((HERE / "events.json").read_text())[0]
START_ID = "po-unconfirmed-4500012345"


class CrashingStore(Store):
    """Delegates to a store; counts its writes and SIGKILLs the process at one of them."""

    def __init__(self, inner: SQLiteStore, crash: str, when: str, log: Callable[[str], None]):
        self.inner = inner
        self.crash = crash
        """The Nth write (``"5"``), or the first whose name has this (``"@put_checkpoint:erp"``)."""
        self.when = when
        self.log = log
        self.writes: list[str] = []
        self._target: int | None = None if crash.startswith("@") else int(crash)

    def _tick(self, name: str, phase: str) -> None:
        if phase == "before":
            self.writes.append(name)
            if self._target is None and self.crash[1:] in name:
                self._target = len(self.writes)
        if len(self.writes) == self._target and phase == self.when:
            self.log(f"KILL {self.when}:{self.crash} {name}")
            os.kill(os.getpid(), signal.SIGKILL)

    async def _w(self, name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self._tick(name, "before")
        result = await fn(*args, **kw)
        self._tick(name, "after")
        return result

    async def put_version(self, name: str, digest: str, definition: str, *, now: float) -> Version:
        return await self._w("put_version", self.inner.put_version, name, digest, definition,  # type: ignore[no-any-return]
                             now=now)  # fmt: skip

    async def get_version(self, name: str, seq: int | None = None) -> Version | None:
        return await self.inner.get_version(name, seq)

    async def list_versions(self, name: str | None = None) -> list[Version]:
        return await self.inner.list_versions(name)

    async def set_deployed(self, name: str, deployed: bool) -> bool:
        return await self._w("set_deployed", self.inner.set_deployed, name, deployed)  # type: ignore[no-any-return]

    async def create_run(self, run: RunRecord) -> None:
        await self._w("create_run", self.inner.create_run, run)

    async def get_run(self, run_id: str) -> RunRecord:
        return await self.inner.get_run(run_id)

    async def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        await self._w(f"update_run:{run.status}", self.inner.update_run, run, owner=owner)

    async def list_runs(
        self, *, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunRecord]:
        return await self.inner.list_runs(process=process, status=status)

    async def claim_run(self, run_id: str, owner: str, *, until: float, now: float) -> bool:
        return await self._w("claim_run", self.inner.claim_run, run_id, owner, until=until, now=now)  # type: ignore[no-any-return]

    async def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        await self._w(f"put_checkpoint:{checkpoint.processor}", self.inner.put_checkpoint,
                      checkpoint)  # fmt: skip

    async def checkpoints(self, run_id: str, step: str) -> list[CheckpointRecord]:
        return await self.inner.checkpoints(run_id, step)

    async def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        await self._w("delete_checkpoints", self.inner.delete_checkpoints, run_id, step)

    async def put_wait(self, wait: Wait) -> None:
        await self._w("put_wait", self.inner.put_wait, wait)

    async def delete_wait(self, run_id: str) -> Wait | None:
        return await self._w("delete_wait", self.inner.delete_wait, run_id)  # type: ignore[no-any-return]

    async def find_waits(self, event: str, key: str) -> list[Wait]:
        return await self.inner.find_waits(event, key)

    async def due_waits(self, now: float) -> list[Wait]:
        return await self.inner.due_waits(now)

    async def list_waits(self) -> list[Wait]:
        return await self.inner.list_waits()

    async def add_event(self, event: InboxEvent) -> bool:
        return await self._w(f"add_event:{event.name}", self.inner.add_event, event)  # type: ignore[no-any-return]

    async def take_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        return await self._w("take_event", self.inner.take_event, name, key, now=now)  # type: ignore[no-any-return]

    async def peek_event(self, name: str, key: str, *, now: float) -> InboxEvent | None:
        return await self.inner.peek_event(name, key, now=now)

    async def consume_event(self, event_id: str) -> None:
        await self._w("consume_event", self.inner.consume_event, event_id)

    async def purge_runs(self, *, before: float) -> int:
        return await self._w("purge_runs", self.inner.purge_runs, before=before)  # type: ignore[no-any-return]

    async def purge_events(self, now: float) -> int:
        return await self._w("purge_events", self.inner.purge_events, now)  # type: ignore[no-any-return]

    async def append_history(self, entry: HistoryEntry) -> HistoryEntry:
        return await self._w(f"append_history:{entry.kind}", self.inner.append_history, entry)  # type: ignore[no-any-return]

    async def history(self, run_id: str) -> list[HistoryEntry]:
        return await self.inner.history(run_id)

    def batch(self) -> Batch:
        return Batch(self._commit_batch)

    async def _commit_batch(self, ops: list[Op]) -> None:
        name = "batch:" + "+".join(_op_name(op, args) for op, args in ops)
        self._tick(name, "before")
        async with self.inner.batch() as b:
            b.ops.extend(ops)
        self._tick(name, "after")

    @property
    def supports_notify(self) -> bool:
        return self.inner.supports_notify

    async def notify(self, channel: str, payload: str = "") -> None:
        await self.inner.notify(channel, payload)

    def subscribe(self, channel: str) -> Any:
        return self.inner.subscribe(channel)


def _op_name(op: str, args: tuple[Any, ...]) -> str:
    if op == "append_history":
        return f"h.{args[0].kind}"
    if op == "put_checkpoint":
        return f"put_checkpoint:{args[0].processor}"
    if op == "update_run":
        return f"update_run:{args[0].status}"
    return op


def http_log(path: Path) -> Callable[[str], None]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    return write


def mocked_client(log: Callable[[str], None]) -> httpx.AsyncClient:
    mocks = MockHTTP.from_file(HERE / "mocks.json")

    async def handle(request: httpx.Request) -> httpx.Response:
        key = request.headers.get(IDEMPOTENCY_HEADER, "-")
        log(f"HTTP {request.method} {request.url.copy_with(query=None)} {key}")
        return await mocks.handle(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def engine(store: Store, worker_id: str, log: Callable[[str], None]) -> o.Engine:
    return o.Engine(
        store=store, sandbox=InProcessSandbox(), client=mocked_client(log), secrets=SECRETS,
        worker_id=worker_id, lease_seconds=2.0,
    )  # fmt: skip


def file_name(point: str) -> str:
    """A file name for a crash point (``"early/before:@consume_event"``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", point).strip("-")


def split_point(point: str) -> tuple[bool, str, str]:
    """``"[early/]when:crash"`` as (early, when, crash)."""
    early = point.startswith("early/")
    when, crash = point.removeprefix("early/").split(":", 1)
    return early, when, crash


async def publish_all(eng: o.Engine, *, early: bool) -> list[o.PublishResult]:
    """The start event and the supplier's; with ``early`` the supplier's comes first.

    Early, the supplier's event waits in the inbox until the run reaches its resume step
    and takes it from there: the path where a run consumes an *inbox* event.
    """
    start = ("po.unconfirmed", SAMPLE, START_ID)
    supplier = (EVENT["name"], EVENT["payload"], EVENT["id"])
    return [
        await eng.publish(name, payload, id=event_id)
        for name, payload, event_id in ((supplier, start) if early else (start, supplier))
    ]


async def crash_mode(db: Path, crash: str, when: str, early: bool = False) -> None:
    log = http_log(db.with_suffix(".http"))
    store = CrashingStore(SQLiteStore(db), crash, when, log)
    async with engine(store, "w1", log) as eng:
        await eng.deploy(load_process())
        await publish_all(eng, early=early)
    await store.inner.aclose()
    print(json.dumps(store.writes))


async def recover_mode(db: Path, worker_id: str, early: bool = False) -> dict[str, Any]:
    """Recover ``db``, publish both events again, report; then check the event is not reused.

    After the run completed, a second run for the same PO is started: it must *wait* for
    a supplier event, not find the first one still in the inbox.
    """
    write = http_log(db.with_suffix(".http"))
    quiet = [False]

    def log(line: str) -> None:
        if not quiet[0]:
            write(line)

    store = SQLiteStore(db)
    started = time.perf_counter()
    async with engine(store, worker_id, log) as eng:
        recovered = time.perf_counter() - started
        await eng.deploy(load_process())
        again = await publish_all(eng, early=early)
        with anyio.move_on_after(10):
            while any(r.status != "completed" for r in await eng.runs()) or not await eng.runs():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        runs = []
        for r in await eng.runs():
            info = await eng.run(r.id)
            runs.append({
                "id": info.id, "status": info.status, "error": info.error, "path": info.path,
                "owner": info.owner, "history": [[h.kind, h.step] for h in info.history],
                "context": info.context,
            })  # fmt: skip
        waits = len(await store.list_waits())
        quiet[0] = True  # the second run's calls are not the first run's
        (second_id,) = (await eng.publish("po.unconfirmed", SAMPLE, id=START_ID + "-2")).started
        second = await eng.run(second_id)
        report = {
            "runs": runs,
            "waits": waits,
            "republished": [[p.duplicate, list(p.started), list(p.resumed)] for p in again],
            "recovered_in": recovered,
            "second": {
                "status": second.status,
                "path": second.path,
                "events": second.context["events"],
            },  # fmt: skip
        }
    await store.aclose()
    with sqlite3.connect(db) as conn:
        report["inbox"] = dict(conn.execute("SELECT id, consumed FROM orchestra_events"))
    conn.close()
    return report


def crash_many(points: list[str], directory: Path, parallel: int) -> dict[str, int]:
    """Run one crashing worker per point (``"after:5"``), forked from this warmed-up process.

    Importing the JS engine costs a second per process; a fork costs milliseconds. The
    children are separate processes all the same, and each dies by its own SIGKILL.
    """

    async def warm() -> None:
        await InProcessSandbox().evaluate("1", {}, name="warm-up")

    anyio.run(warm)
    status: dict[str, int] = {}
    running: dict[int, str] = {}
    for point in points:
        while len(running) >= parallel:
            pid, code = os.wait()
            status[running.pop(pid)] = code
        early, when, n = split_point(point)
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                with open(os.devnull, "w") as null:
                    sys.stdout = null
                    db = directory / f"{file_name(point)}.sqlite"
                    anyio.run(crash_mode, db, n, when, early)
            finally:
                os._exit(0)
        running[pid] = point
    while running:
        pid, code = os.wait()
        status[running.pop(pid)] = code
    return {p: os.waitstatus_to_exitcode(c) for p, c in status.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["crash", "crash-many", "recover"])
    parser.add_argument("dbs", nargs="+", type=Path)
    parser.add_argument("--crash", default="0")
    parser.add_argument("--when", choices=["before", "after"], default="after")
    parser.add_argument("--points", default="")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--worker-id", action="append", default=[])
    parser.add_argument("--early", action="append", default=[], help="per db: 1 or 0")
    parser.add_argument("--early-events", action="store_true", help="crash mode: supplier first")
    args = parser.parse_args()
    if args.mode == "crash":
        anyio.run(crash_mode, args.dbs[0], args.crash, args.when, args.early_events)
        return
    if args.mode == "crash-many":
        codes = crash_many(args.points.split(","), args.dbs[0], args.parallel)
        print(json.dumps(codes))
        return

    async def recover_all() -> None:
        for i, db in enumerate(args.dbs):
            worker_id = args.worker_id[i] if i < len(args.worker_id) else "w2"
            early = i < len(args.early) and args.early[i] == "1"
            report = await recover_mode(db, worker_id, early)
            db.with_suffix(".json").write_text(json.dumps(report))

    anyio.run(recover_all)


if __name__ == "__main__":
    main()
