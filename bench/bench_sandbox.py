"""Benchmark of the sandboxes: per-call latency, batches, throughput and kill-to-ready time.

Run ``python bench/bench_sandbox.py``; prints medians of several rounds as a table.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from orchestra._json import JSON
from orchestra.errors import StepTimeoutError
from orchestra.sandbox import (
    EachCall,
    FragmentCall,
    InProcessSandbox,
    SandboxLimits,
    WorkerSandbox,
)

ROUNDS = 5
CALLS = 300
BINDINGS: dict[str, JSON] = {
    "ctx": {
        **{f"field{i}": i for i in range(10)},
        **{f"name{i}": f"value {i}" for i in range(8)},
        "flag": True,
        "ratio": 0.5,
    }
}
SOURCE = "ctx.field3 + ctx.name2.length"
# A processor's request: input, then path and query built from it (one round trip).
BATCH = (
    FragmentCall("p.input", "({n: ctx.field3, s: ctx.name2})", bind="input"),
    FragmentCall("p.path", "({id: input.s})"),
    FragmentCall("p.query", "({n: input.n, flag: ctx.flag})"),
)

# A for_each over three items, and each item's request (what evaluate_each does in one trip).
LIST = (FragmentCall("p.for_each", "[ctx.name1, ctx.name2, ctx.name3]"),)
ITEM = (
    FragmentCall("p.input", "({s: item, i: index})", bind="input"),
    FragmentCall("p.query", "({s: input.s, flag: ctx.flag})"),
)
EACH = EachCall(over=0, fragments=ITEM)


async def list_then_items(pool: WorkerSandbox) -> None:
    """The for_each batch, then one batch per item, concurrently (the engine without chains)."""
    (items,) = await pool.evaluate_all(LIST, BINDINGS)
    assert isinstance(items, list)
    async with anyio.create_task_group() as tg:
        for i, item in enumerate(items):
            tg.start_soon(pool.evaluate_all, ITEM, {**BINDINGS, "item": item, "index": i})


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def per_call(call: Callable[[], Awaitable[object]], calls: int = CALLS) -> float:
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        rounds.append((time.perf_counter() - start) / calls)
    return median_us(rounds)


def raw_pythonmonkey() -> float:
    import json

    import pythonmonkey as pm

    fn = pm.eval(
        "(function (t) { const b = JSON.parse(t); return JSON.stringify(b.ctx.field3 + b.ctx.name2.length) })"
    )
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS * 5):
            json.loads(fn(json.dumps(BINDINGS)))
        rounds.append((time.perf_counter() - start) / (CALLS * 5))
    return median_us(rounds)


def pipe_round_trip() -> float:
    """Median round trip of 100 bytes to a child Python process and back over pipes.

    The floor under any call to a worker process on this machine (a wake-up of another
    process each way), measured in the same run as the pool's figures.
    """
    import os
    import subprocess
    import sys

    echo = "import os\nwhile d := os.read(0, 65536):\n    os.write(1, d)\n"
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", echo],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert child.stdin is not None and child.stdout is not None
    out, back = child.stdin.fileno(), child.stdout.fileno()
    message = b"x" * 99 + b"\n"
    try:
        rounds = []
        for _ in range(ROUNDS):
            samples = []
            for _ in range(CALLS):
                start = time.perf_counter()
                os.write(out, message)
                got = os.read(back, 65536)
                while len(got) < len(message):
                    got += os.read(back, 65536)
                samples.append(time.perf_counter() - start)
            rounds.append(statistics.median(samples))
        return median_us(rounds)
    finally:
        child.stdin.close()
        child.wait()


async def throughput(sandbox: WorkerSandbox, callers: int) -> float:
    per_caller = max(20, 800 // callers)
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()

        async def caller() -> None:
            for _ in range(per_caller):
                await sandbox.evaluate(SOURCE, BINDINGS)

        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        rounds.append(callers * per_caller / (time.perf_counter() - start))
    return statistics.median(rounds)


async def kill_to_ready(spares: int) -> float:
    rounds = []
    async with WorkerSandbox(1, limits=SandboxLimits(spares=spares)) as sandbox:
        await sandbox.evaluate("1", {})
        for _ in range(ROUNDS):
            await anyio.sleep(0.5 if spares else 0)  # let the spare warm up
            with contextlib.suppress(StepTimeoutError):
                await sandbox.evaluate("while (true) {}", {}, timeout=0.05)
            start = time.perf_counter()
            await sandbox.evaluate("1", {})
            rounds.append(time.perf_counter() - start)
    return statistics.median(rounds) * 1e3


async def main() -> None:
    rows: list[tuple[str, str]] = []
    inproc = InProcessSandbox()
    await inproc.evaluate(SOURCE, BINDINGS)
    rows.append(
        (
            "in-process sandbox, per call",
            f"{await per_call(lambda: inproc.evaluate(SOURCE, BINDINGS), CALLS * 5):8.1f} us",
        )
    )
    rows.append(("raw PythonMonkey + JSON text, per call", f"{raw_pythonmonkey():8.1f} us"))
    rows.append(("pipe round trip to a child process (floor)", f"{pipe_round_trip():8.1f} us"))
    rows.append(
        (
            "in-process, 3-fragment batch, per batch",
            f"{await per_call(lambda: inproc.evaluate_all(BATCH, BINDINGS), CALLS * 5):8.1f} us",
        )
    )
    async with WorkerSandbox(8) as pool:
        await pool.evaluate(SOURCE, BINDINGS)
        rows.append(
            (
                "worker pool, per call (1 caller)",
                f"{await per_call(lambda: pool.evaluate(SOURCE, BINDINGS)):8.1f} us",
            )
        )
        rows.append(
            (
                "worker pool, 3-fragment batch (1 caller)",
                f"{await per_call(lambda: pool.evaluate_all(BATCH, BINDINGS)):8.1f} us",
            )
        )
        rows.append(
            (
                "worker pool, for_each + 3 items, 4 batches (1 caller)",
                f"{await per_call(lambda: list_then_items(pool)):8.1f} us",
            )
        )
        rows.append(
            (
                "worker pool, for_each + 3 items, evaluate_each (1 caller)",
                f"{await per_call(lambda: pool.evaluate_each(LIST, BINDINGS, EACH)):8.1f} us",
            )
        )
        for callers in (2, 8, 50):
            await pool.evaluate(SOURCE, BINDINGS)
            rows.append(
                (
                    f"worker pool, {callers} concurrent callers",
                    f"{await throughput(pool, callers):8.0f} calls/s",
                )
            )
    rows.append(("deadline kill -> next call (warm spare)", f"{await kill_to_ready(1):8.1f} ms"))
    rows.append(("deadline kill -> next call (no spare)", f"{await kill_to_ready(0):8.1f} ms"))
    width = max(len(r[0]) for r in rows)
    print(
        f"sandbox benchmark ({Path(__file__).name}, medians of {ROUNDS} rounds, ~20-field object)"
    )
    print("-" * (width + 18))
    for label, value in rows:
        print(f"{label:<{width}}  {value:>14}")


if __name__ == "__main__":
    anyio.run(main)
