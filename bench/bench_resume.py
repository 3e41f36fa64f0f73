"""Resume latency, memory per waiting run and idle CPU with many runs waiting.

Run: python bench/bench_resume.py   (in-memory store, LocalExecutor, InProcessSandbox)
The default sandbox is the isolated worker pool; each fragment would cost ~110-170 us
more there (see DESIGN.md), and a resume evaluates two or three fragments.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

import anyio

import orchestra as o
from orchestra.executors import LocalExecutor
from orchestra.sandbox import InProcessSandbox

PROCESS = o.Process(
    name="bench",
    trigger=o.Event(name="go"),
    events=(o.Event(name="done", key="payload.id"),),
    steps=(
        o.ResumeStep(name="wait", event="done", key="ctx.trigger.id", timeout="P5D", on_timeout="fail"),
        o.ProcessStep(name="finish", processors=(
            o.Processor(name="f", call=o.FunctionCall(name="echo"), input="ctx.events.wait.value"),
        )),
    ),
)  # fmt: skip


async def echo(x: o.JSON) -> o.JSON:
    return x


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def latency(engine: o.Engine, ids: list[int], samples: int) -> tuple[float, float]:
    times = []
    for i in ids[:samples]:
        t0 = time.perf_counter()
        res = await engine.publish("done", {"id": i, "value": i})
        times.append(time.perf_counter() - t0)
        assert len(res.resumed) == 1
    run = await engine.run(res.resumed[0])
    assert run.status == "completed", run
    return statistics.median(times) * 1e6, pct(times, 0.99) * 1e6


async def scenario(waiting: int, samples: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with o.Engine(
        sandbox=InProcessSandbox(), executor=LocalExecutor(), functions={"echo": echo}
    ) as engine:
        await engine.deploy(PROCESS)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        for i in range(waiting + samples):
            await engine.start("bench", {"id": i})
        out["start_us"] = (time.perf_counter() - t0) / (waiting + samples) * 1e6
        gc.collect()
        out["bytes_per_run"] = (tracemalloc.get_traced_memory()[0] - before) / (waiting + samples)
        tracemalloc.stop()
        ids = list(range(waiting, waiting + samples))
        out["p50_us"], out["p99_us"] = await latency(engine, ids, samples)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(2.0)
        out["idle_cpu_pct"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
    return out


async def main() -> None:
    rows = [("1 waiting", await scenario(0, 200)), ("10,000 waiting", await scenario(10_000, 200))]
    print("publish -> resumed run completed (in-memory store, LocalExecutor, InProcessSandbox)")
    print(
        f"{'':16} {'p50 us':>9} {'p99 us':>9} {'start us/run':>13} {'bytes/run':>10} {'idle CPU %':>11}"
    )
    for name, r in rows:
        print(f"{name:16} {r['p50_us']:9.0f} {r['p99_us']:9.0f} {r['start_us']:13.0f} "
              f"{r['bytes_per_run']:10.0f} {r['idle_cpu_pct']:11.2f}")  # fmt: skip
    print(
        "bytes/run: traced Python memory per run started and left waiting (store rows, timer entry,"
    )
    print("history); idle CPU: process CPU over 2 s with the runs waiting and nothing happening.")


if __name__ == "__main__":
    anyio.run(main)
