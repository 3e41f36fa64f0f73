"""Durable steps: what orchestra's stores cost per step, beside raw drivers, DBOS and Temporal.

    python bench/bench_durable.py [--runs 200] [--rounds 3] [--postgres URL] [--no-compare]

A "durable step" at the store level is what the engine writes when a processor ends:
one checkpoint (~300 bytes of JSON) and one history entry, each committed. Runs are 10
steps long; every figure is milliseconds per step, the median of ``--rounds`` rounds
(contenders interleaved, so machine noise hits them alike). Baselines, measured in the
same run: one raw ``sqlite3`` insert of 1 KB + commit (WAL, ``synchronous=NORMAL``) and
one raw asyncpg insert of 1 KB (autocommit), and DBOS Transact's 10-step workflow on
SQLite, as shipped and with WAL patched in (``compare_dbos.py``, in every round; skipped
with a message without ``dbos``). Targets (issue 5): <= 0.1 ms per durable step on
SQLite ("10x better than DBOS with WAL, 28x better than DBOS as shipped", on a machine
where a raw commit took 14 us), <= 1 ms on PostgreSQL; the last lines give the engine's
SQLite figure as ratios to the baselines of the same rounds, which the machine's speed
of the moment cancels out of.

"batch" rows write the step's checkpoint and history in one transaction with the
stores' ``batch()``; "16 runs at once" rows do so from 16 tasks, each writing its own
runs' steps one after another (a worker with 16 runs in flight), and give wall time /
steps: there the stores commit the batches of one event-loop turn together (group
commit). "sync_commit=off" rows use ``PostgresStore(synchronous_commit="off")``
(commits do not wait for the WAL flush; see docs/how-to/sqlite-and-postgres.md). The
end-to-end rows run a deployed 10-step business process of no-op Python steps (one
processor each) through ``Engine.start``: per run, one commit creates it and one commit
ends each step (the last one with the run's end), 11 transactions in all. The in-memory
row is the engine's own cost; the line after the table subtracts it from the durable
rows to show what the store adds to a step. The engine rows "16 at once" start runs from
16 tasks (a busy worker): wall time / steps, the stores grouping the commits of runs
whose steps end in the same loop turn. The targets apply to every SQLite and PostgreSQL
row, the end-to-end ones being the honest measure. PostgreSQL rows need a server
(``--postgres``, else ``ORCHESTRA_TEST_POSTGRES_URL``, else the local default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_dbos
import compare_temporal

import orchestra as o
from orchestra.stores import (
    CheckpointRecord,
    HistoryEntry,
    InMemoryStore,
    PostgresStore,
    SQLiteStore,
    Store,
)

STEPS = 10
CONCURRENT = 16
"""Runs in flight in the concurrent rows."""
OUTPUT = json.dumps({"id": 123, "status": "ok", "items": [{"sku": "A-1", "qty": 2}] * 4})
TRACE = json.dumps({"processor": "p", "started": 1.0, "ms": 0.1, "attempts": 1})
RAW_ROW = json.dumps({"payload": "x" * 1000})
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"

Cost = tuple[float, float]
"""(wall ms, CPU ms of the event loop's thread) per step or per commit."""
Measure = Callable[[], Awaitable[Cost]]


class Clock:
    """Wall time and this thread's CPU time since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def per(self, n: int) -> Cost:
        wall, cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu
        return wall / n * 1000, cpu / n * 1000


# -- baselines ---------------------------------------------------------------------------


async def raw_sqlite(tmp: Path, n: int) -> Cost:
    """ms per insert + commit of 1 KB in a fresh WAL database."""
    path = tmp / f"raw-{uuid.uuid4().hex}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    clock = Clock()
    for _ in range(n):
        conn.execute("INSERT INTO t (body) VALUES (?)", (RAW_ROW,))
    cost = clock.per(n)
    conn.close()
    return cost


async def raw_asyncpg(url: str, n: int) -> Cost:
    """ms per autocommit insert of 1 KB on one connection."""
    import asyncpg

    conn = await asyncpg.connect(url)
    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    try:
        clock = Clock()
        for _ in range(n):
            await conn.execute(f"INSERT INTO {table} (body) VALUES ($1)", RAW_ROW)
        return clock.per(n)
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()


# -- orchestra at the store level -----------------------------------------------------------


async def store_steps(store: Store, runs: int, *, batch: bool) -> Cost:
    """ms per durable step: a checkpoint and a history entry per step, 10 steps a run."""
    clock = Clock()
    for _ in range(runs):
        run_id = uuid.uuid4().hex
        for i in range(STEPS):
            cp = CheckpointRecord(
                run_id=run_id, step=f"s{i}", processor="p", output=OUTPUT, trace=TRACE
            )
            entry = HistoryEntry(run_id=run_id, kind="step_completed", at=time.time(), step=f"s{i}")
            if batch:
                async with store.batch() as b:
                    b.put_checkpoint(cp)
                    b.append_history(entry)
            else:
                await store.put_checkpoint(cp)
                await store.append_history(entry)
    return clock.per(runs * STEPS)


async def store_steps_concurrent(store: Store, runs: int, *, tasks: int = CONCURRENT) -> Cost:
    """ms per durable step with ``tasks`` runs in flight: wall time / steps, batched writes.

    Each task writes its own runs' steps one after another (a checkpoint and a history
    entry in one ``batch()`` per step), as a worker with that many runs in flight does;
    the stores may commit batches of different tasks together (group commit).
    """

    async def one_task(n: int) -> None:
        for _ in range(n):
            run_id = uuid.uuid4().hex
            for i in range(STEPS):
                cp = CheckpointRecord(
                    run_id=run_id, step=f"s{i}", processor="p", output=OUTPUT, trace=TRACE
                )
                entry = HistoryEntry(
                    run_id=run_id, kind="step_completed", at=time.time(), step=f"s{i}"
                )
                async with store.batch() as b:
                    b.put_checkpoint(cp)
                    b.append_history(entry)

    per_task = max(1, runs // tasks)
    clock = Clock()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(one_task, per_task)
    return clock.per(per_task * tasks * STEPS)


async def ungrouped(measure: Awaitable[Cost]) -> Cost:
    """Run ``measure`` with the stores' group commit off: each batch commits alone.

    The baseline of the concurrent rows: what the same work costs with one transaction
    per batch, as before group commit (a private switch of the stores, for this bench).
    """
    from orchestra.stores import _postgres_group, _sqlite_group

    modules: list[Any] = [_sqlite_group, _postgres_group]
    saved = [m._nothing_ready for m in modules]
    for m in modules:
        m._nothing_ready = lambda loop: True
    try:
        return await measure
    finally:
        for m, fn in zip(modules, saved, strict=True):
            m._nothing_ready = fn


# -- orchestra end to end ----------------------------------------------------------------------

PROCESS = o.Process(
    name="bench",
    trigger=o.Event(name="go"),
    steps=tuple(
        o.ProcessStep(
            name=f"s{i}", processors=(o.Processor(name="p", call=o.FunctionCall(name="noop")),)
        )
        for i in range(STEPS)
    ),
)


async def noop(value: o.JSON = None) -> o.JSON:
    return {"ok": True}


async def engine_steps(store: Store, runs: int) -> Cost:
    """ms per step of the 10-step business process, started and run to its end."""
    from orchestra.executors import LocalExecutor
    from orchestra.sandbox import InProcessSandbox

    async with o.Engine(
        store=store, functions={"noop": noop}, sandbox=InProcessSandbox(), executor=LocalExecutor()
    ) as engine:
        await engine.deploy(PROCESS)
        await engine.start("bench", {"n": -1})
        clock = Clock()
        for i in range(runs):
            await engine.start("bench", {"n": i})
        cost = clock.per(runs * STEPS)
        last = await engine.runs("bench", status="completed")
        assert len(last) == runs + 1, "every run completes"
    return cost


async def engine_steps_concurrent(store: Store, runs: int, *, tasks: int = CONCURRENT) -> Cost:
    """ms per step of the 10-step process with ``tasks`` runs in flight (wall / steps).

    ``tasks`` tasks each start runs one after another through ``Engine.start``, so that
    many runs are in flight at once, as on a busy worker; the stores may then commit
    the steps of different runs together (group commit).
    """
    from orchestra.executors import LocalExecutor
    from orchestra.sandbox import InProcessSandbox

    per_task = max(1, runs // tasks)
    async with o.Engine(
        store=store, functions={"noop": noop}, sandbox=InProcessSandbox(), executor=LocalExecutor()
    ) as engine:
        await engine.deploy(PROCESS)
        await engine.start("bench", {"n": -1})

        async def one_task(t: int) -> None:
            for i in range(per_task):
                await engine.start("bench", {"n": t * per_task + i})

        clock = Clock()
        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(one_task, t)
        cost = clock.per(per_task * tasks * STEPS)
        done = await engine.runs("bench", status="completed")
        assert len(done) == per_task * tasks + 1, "every run completes"
    return cost


# -- driver ------------------------------------------------------------------------------------


async def pg_reachable(url: str) -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "skipped: asyncpg not installed (pip install 'orchestra[postgres]')"
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception as exc:
        return f"skipped: no PostgreSQL at {url} ({type(exc).__name__})"
    await conn.close()
    return None


async def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, list[Cost]] = {}
    notes: dict[str, str] = {}
    pg_why = await pg_reachable(args.postgres)
    schemas: list[str] = []

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        async def sqlite_store() -> SQLiteStore:
            return await SQLiteStore.open(tmp / f"{uuid.uuid4().hex}.db")

        async def pg_store(**kw: Any) -> PostgresStore:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            schemas.append(schema)
            return await PostgresStore.open(args.postgres, schema=schema, **kw)

        async def on(
            open_store: Callable[[], Awaitable[Store]], fn: Callable[[Store], Awaitable[Cost]]
        ) -> Cost:
            store = await open_store()
            async with store:
                return await fn(store)

        contenders: list[tuple[str, Measure]] = [
            ("raw sqlite3 insert+commit (baseline)", lambda: raw_sqlite(tmp, args.runs * STEPS)),
            (
                "SQLiteStore checkpoint+history",
                lambda: on(sqlite_store, lambda s: store_steps(s, args.runs, batch=False)),
            ),
            (
                "SQLiteStore checkpoint+history, batch",
                lambda: on(sqlite_store, lambda s: store_steps(s, args.runs, batch=True)),
            ),
            (
                f"SQLiteStore ..., batch, {CONCURRENT} runs at once",
                lambda: on(sqlite_store, lambda s: store_steps_concurrent(s, args.runs)),
            ),
            (
                f"SQLiteStore ..., {CONCURRENT} at once, no group commit",
                lambda: on(sqlite_store, lambda s: ungrouped(store_steps_concurrent(s, args.runs))),
            ),
        ]
        if pg_why is None:
            contenders += [
                (
                    "raw asyncpg insert (baseline)",
                    lambda: raw_asyncpg(args.postgres, args.runs * STEPS // 2),
                ),
                (
                    "PostgresStore checkpoint+history",
                    lambda: on(pg_store, lambda s: store_steps(s, args.runs // 2, batch=False)),
                ),
                (
                    "PostgresStore checkpoint+history, batch",
                    lambda: on(pg_store, lambda s: store_steps(s, args.runs // 2, batch=True)),
                ),
                (
                    f"PostgresStore ..., batch, {CONCURRENT} runs at once",
                    lambda: on(pg_store, lambda s: store_steps_concurrent(s, args.runs)),
                ),
                (
                    f"PostgresStore ..., {CONCURRENT} at once, no group commit",
                    lambda: on(pg_store, lambda s: ungrouped(store_steps_concurrent(s, args.runs))),
                ),
                (
                    "PostgresStore ..., sync_commit=off",
                    lambda: on(
                        lambda: pg_store(synchronous_commit="off"),
                        lambda s: store_steps(s, args.runs // 2, batch=False),
                    ),
                ),
                (
                    "PostgresStore ..., batch, sync_commit=off",
                    lambda: on(
                        lambda: pg_store(synchronous_commit="off"),
                        lambda s: store_steps(s, args.runs // 2, batch=True),
                    ),
                ),
                (
                    f"PostgresStore ..., {CONCURRENT} at once, sync_commit=off",
                    lambda: on(
                        lambda: pg_store(synchronous_commit="off"),
                        lambda s: store_steps_concurrent(s, args.runs),
                    ),
                ),
            ]
        else:
            notes["PostgreSQL"] = pg_why
        if not args.no_engine:
            contenders += [
                (
                    "Engine 10-step process, InMemoryStore",
                    lambda: on(_memory, lambda s: engine_steps(s, args.runs // 2)),
                ),
                (
                    "Engine 10-step process, SQLiteStore",
                    lambda: on(sqlite_store, lambda s: engine_steps(s, args.runs // 2)),
                ),
            ]
            contenders.append(
                (
                    f"Engine 10-step, SQLiteStore, {CONCURRENT} at once",
                    lambda: on(sqlite_store, lambda s: engine_steps_concurrent(s, args.runs // 2)),
                )
            )
            if pg_why is None:
                contenders += [
                    (
                        "Engine 10-step process, PostgresStore",
                        lambda: on(pg_store, lambda s: engine_steps(s, args.runs // 8)),
                    ),
                    (
                        f"Engine 10-step, PostgresStore, {CONCURRENT} at once",
                        lambda: on(pg_store, lambda s: engine_steps_concurrent(s, args.runs // 2)),
                    ),
                ]
        if not args.no_compare:
            contenders += _dbos_contenders(notes)
        for _ in range(args.rounds):
            for name, fn in contenders:
                rows.setdefault(name, []).append(await fn())
    if schemas:
        import asyncpg

        conn = await asyncpg.connect(args.postgres)
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    medians = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in rows.items()
    }
    return {"rows": medians, "samples": rows, "notes": notes}


DBOS_SHIPPED = "DBOS Transact, SQLite as shipped"
DBOS_WAL = "DBOS Transact, SQLite, WAL patched in"
ENGINE_SQLITE = "Engine 10-step process, SQLiteStore"
RAW_SQLITE = "raw sqlite3 insert+commit (baseline)"


def _dbos_contenders(notes: dict[str, str]) -> list[tuple[str, Measure]]:
    """DBOS on SQLite, as shipped and with WAL, measured in every round like the others."""
    if not compare_dbos.available():
        notes["DBOS"] = "skipped: dbos not installed (pip install dbos)"
        return []

    def dbos(wal: bool) -> Measure:
        async def measure() -> Cost:
            ms, note = await anyio.to_thread.run_sync(lambda: compare_dbos.measure(20, wal=wal))
            notes[DBOS_WAL if wal else DBOS_SHIPPED] = note
            return ms, float("nan")  # a subprocess: no CPU time of this loop's thread

        return measure

    return [(DBOS_SHIPPED, dbos(False)), (DBOS_WAL, dbos(True))]


def same_round_ratios(samples: dict[str, list[Cost]]) -> list[str]:
    """Issue 5's SQLite target as ratios to baselines measured in the same rounds.

    The issue sets 0.1 ms per step as "10x better than DBOS with WAL, 28x better than
    DBOS as shipped", on a machine where a raw insert+commit took 14 us (so 0.1 ms is 7.1
    raw commits). Ratios of figures taken in the same round cancel out how fast the
    (shared, noisy) machine happens to be; each line is the median over rounds.
    """
    engine = samples.get(ENGINE_SQLITE)
    if not engine:
        return []
    lines = []
    checks = [
        (DBOS_WAL, 10.0, "x faster than DBOS with WAL", "target >= 10x"),
        (DBOS_SHIPPED, 28.0, "x faster than DBOS as shipped", "target >= 28x"),
    ]
    for name, target, what, label in checks:
        other = samples.get(name)
        if other:
            ratio = statistics.median(o[0] / e[0] for o, e in zip(other, engine, strict=True))
            lines.append(f"  {ratio:6.1f}{what:34} {label:18} {verdict(ratio >= target)}")
    raw = samples.get(RAW_SQLITE)
    if raw:
        ratio = statistics.median(e[0] / r[0] for e, r in zip(engine, raw, strict=True))
        what = " raw sqlite3 commits per step"
        lines.append(
            f"  {ratio:6.1f}{what:34} {'target <= 7.1':18} {verdict(ratio <= 0.1 / 0.014)}"
        )
    return lines


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def _memory() -> Store:
    return InMemoryStore()


def target_for(name: str) -> float | None:
    if "SQLiteStore" in name:
        return 0.1
    if "PostgresStore" in name:
        return 1.0
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="10-step runs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("ORCHESTRA_TEST_POSTGRES_URL", DEFAULT_PG),
        help="PostgreSQL URL (default: $ORCHESTRA_TEST_POSTGRES_URL or the local server)",
    )
    parser.add_argument("--no-compare", action="store_true", help="skip DBOS and Temporal")
    parser.add_argument("--no-engine", action="store_true", help="skip the end-to-end rows")
    args = parser.parse_args()

    t0 = time.perf_counter()
    result = anyio.run(measure_all, args)
    rows: dict[str, Cost] = result["rows"]
    notes: dict[str, str] = result["notes"]
    compare: dict[str, tuple[float, str] | str] = {}
    if not args.no_compare:
        try:
            compare["Temporal dev server, 10-activity workflow"] = compare_temporal.measure(8)
        except RuntimeError as exc:
            compare["Temporal dev server, 10-activity workflow"] = str(exc)

    print(
        f"Durable steps, ms per step (median of {args.rounds} rounds; {args.runs} runs x {STEPS} steps)"
    )
    print(f"{'':46} {'ms/step':>9} {'CPU ms':>8} {'target':>7} {'vs target':>10}")
    for name, (ms, cpu) in rows.items():
        target = target_for(name)
        against = "" if target is None else f"{ms / target:9.2f}x"
        tgt = "" if target is None else f"{target:.1f}"
        cpu_text = "" if cpu != cpu else f"{cpu:8.4f}"  # NaN: not measured here
        print(f"{name:46} {ms:9.4f} {cpu_text:>8} {tgt:>7} {against:>10}")
    for name, got in compare.items():
        if isinstance(got, str):
            print(f"{name:46} {got}")
        else:
            print(f"{name:46} {got[0]:9.4f} {'':>8} {'':>7} {'':>10}  ({got[1]})")
    for what, note in notes.items():
        print(f"{what}: {note}")
    print(
        "CPU ms: CPU time of the event loop's thread (the part other work on the loop waits for)."
    )
    engine_memory = rows.get("Engine 10-step process, InMemoryStore")
    if engine_memory:
        shares = [
            f"{kind} {rows[name][0] - engine_memory[0]:.3f} ms"
            for kind in ("SQLiteStore", "PostgresStore")
            if (name := f"Engine 10-step process, {kind}") in rows
        ]
        if shares:
            print("Engine: the store's share of a step (its row minus InMemoryStore's): "
                  + ", ".join(shares))  # fmt: skip
    base = rows.get("raw sqlite3 insert+commit (baseline)")
    store = rows.get("SQLiteStore checkpoint+history")
    if base and store:
        print(f"SQLiteStore step = {store[0] / base[0]:.1f} raw sqlite3 commits of wall time, "
              f"{store[1] / base[1]:.1f} of CPU (a step writes 2 records)")  # fmt: skip
    ratios = same_round_ratios(result["samples"])
    if ratios:
        print(f"{ENGINE_SQLITE}, one run at a time, against same-round baselines "
              f"(median of per-round ratios):")  # fmt: skip
        print("\n".join(ratios))
    print(f"(bench took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    asyncio.get_event_loop_policy()  # asyncio is the backend (asyncpg needs it)
    main()
