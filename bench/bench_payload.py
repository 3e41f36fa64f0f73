"""Payload construction: orchestra against hand-written aiohttp and httpx on the same DAG.

    python bench/bench_payload.py [--rounds 5] [--window 1.0] [--latency-n 20] [--baseline]

The DAG is ``examples/product-page`` (10 HTTP calls, critical path 3, JavaScript shaping
on every processor) against its fake APIs in a subprocess. Prints medians over rounds
(contenders interleaved within each round, so noise hits them alike) and the ratios the
issue sets as targets. ``--baseline`` adds orchestra on httpx's stock transport.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _dag

Payload = Callable[[], Awaitable[Any]]


async def latency_ms(fn: Payload, n: int) -> float:
    """Median latency of ``n`` payloads one after another (after two warm-up payloads)."""
    for _ in range(2):
        await fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


CPU_PER_PAYLOAD: dict[int, float] = {}
"""The host process's CPU time per payload (ms) of the last :func:`throughput` call, by id of fn."""


async def throughput(fn: Payload, concurrency: int, window: float) -> float:
    """Payloads per second with ``concurrency`` payloads in flight for ``window`` seconds."""
    await asyncio.gather(*(fn() for _ in range(concurrency)))  # warm up: open connections
    done = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    stop = t0 + window

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    CPU_PER_PAYLOAD[id(fn)] = (time.process_time() - cpu0) / max(done, 1) * 1000
    return done / (time.perf_counter() - t0)


class Contenders:
    """Opens every client once and hands out one payload function per contender."""

    def __init__(self, base: str, latency: float, args: argparse.Namespace) -> None:
        self.base, self.latency, self.args = base, latency, args
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self.sandbox_label = ""

    async def build(self, names: list[str]) -> dict[str, Payload]:
        import aiohttp
        import httpx

        import orchestra as o

        out: dict[str, Payload] = {}
        base = self.base
        if "no-HTTP limit" in names:
            get = _dag.sleep_get(self.latency)
            out["no-HTTP limit"] = lambda: _dag.page(get, base, "tr-042", "c-17")
        if "aiohttp" in names:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
            self.closers.append(session.close)
            aget = _dag.aiohttp_get(session)
            out["aiohttp"] = lambda: _dag.page(aget, base, "tr-042", "c-17")
        if "httpx" in names:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
            client = httpx.AsyncClient(limits=limits)
            self.closers.append(client.aclose)
            hget = _dag.httpx_get(client)
            out["httpx"] = lambda: _dag.page(hget, base, "tr-042", "c-17")
        for name in names:
            if not name.startswith("orchestra"):
                continue
            client_arg = None
            if "stock httpx" in name:
                client_arg = httpx.AsyncClient(limits=httpx.Limits(max_connections=200,
                                                                    max_keepalive_connections=100))  # fmt: skip
            engine = o.Engine(sandbox=self._sandbox(), client=client_arg)
            self.closers.append(engine.aclose)
            if client_arg is not None:
                self.closers.append(client_arg.aclose)
            process = _dag.load_process(base)
            await engine.validate(process)
            req = _dag.request()
            out[name] = _invoker(engine, process, req)
        return out

    def _sandbox(self) -> Any:
        if self.args.sandbox == "default":
            self.sandbox_label = "WorkerSandbox (default)"
            return None  # the engine makes its own
        from orchestra.sandbox import InProcessSandbox

        self.sandbox_label = "InProcessSandbox"
        return InProcessSandbox()

    async def close(self) -> None:
        for c in reversed(self.closers):
            await c()


def _invoker(engine: Any, process: Any, req: Any) -> Payload:
    async def run() -> Any:
        return (await engine.invoke(process, req)).payload

    return run


async def phase(latency_ms_: float, names: list[str], args: argparse.Namespace,
                *, measure_latency: bool) -> tuple[dict[str, dict[str, float]], str]:  # fmt: skip
    """Run every contender for ``args.rounds`` rounds; return medians per contender."""
    with _dag.Backend(latency_ms_) as backend:
        cont = Contenders(backend.base, latency_ms_ / 1000, args)
        fns = await cont.build(names)
        samples: dict[str, dict[str, list[float]]] = {
            n: {"lat": [], "tput": [], "cpu": []} for n in names
        }
        try:
            for _ in range(args.rounds):
                for name in names:
                    if measure_latency:
                        samples[name]["lat"].append(await latency_ms(fns[name], args.latency_n))
                    samples[name]["tput"].append(
                        await throughput(fns[name], args.concurrency, args.window)
                    )
                    samples[name]["cpu"].append(CPU_PER_PAYLOAD[id(fns[name])])
        finally:
            await cont.close()
    result = {n: {k: statistics.median(v) for k, v in s.items() if v} for n, s in samples.items()}
    PER_ROUND[latency_ms_] = samples
    return result, cont.sandbox_label


PER_ROUND: dict[float, dict[str, dict[str, list[float]]]] = {}
"""Every round's figures, by backend latency, contender and measure (see :func:`paired`)."""


def paired(latency: float, measure: str, name: str, baseline: str) -> float:
    """Median over rounds of ``name``'s figure divided by ``baseline``'s in the same round.

    Contenders run one after another within each round, so a ratio taken within a round
    cancels most of the machine's drift from round to round (a shared, noisy machine).
    """
    rounds = PER_ROUND[latency]
    pairs = zip(rounds[name][measure], rounds[baseline][measure], strict=True)
    return statistics.median(a / b for a, b in pairs)


async def per_call(args: argparse.Namespace) -> dict[str, float]:
    """Single GETs per second at c=50, 0 ms backend: the HTTP client path alone."""
    import aiohttp
    import httpx

    from orchestra.executors import LocalExecutor
    from orchestra.http import RequestParts, TokenCache, default_client, perform
    from orchestra.http._transport import FastTransport
    from orchestra.model import HttpCall

    with _dag.Backend(0) as backend:
        url = f"{backend.base}/commerce/stock/tr-042"
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        stock = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
        fast = httpx.AsyncClient(transport=FastTransport())
        engine_client = default_client()
        call, parts, ex, tok = HttpCall(url=url), RequestParts(), LocalExecutor(), TokenCache()

        async def a() -> Any:
            async with session.get(url) as r:
                return await r.json()

        async def perf() -> Any:
            return await perform(call, parts, client=engine_client, executor=ex, secrets={},
                                 tokens=tok)  # fmt: skip

        fns: dict[str, Payload] = {
            "aiohttp session.get": a,
            "httpx stock transport": lambda: stock.get(url),
            "httpx on FastTransport": lambda: fast.get(url),
            "orchestra perform() (short path)": perf,
        }
        out: dict[str, list[float]] = {n: [] for n in fns}
        try:
            for _ in range(args.rounds):
                for n, fn in fns.items():
                    out[n].append(await throughput(fn, args.concurrency, args.window / 2))
        finally:
            await session.close()
            for c in (stock, fast, engine_client):
                await c.aclose()
    return {n: statistics.median(v) for n, v in out.items()}


def import_time_ms() -> float:
    """Median wall time of ``import orchestra`` in a fresh interpreter (5 runs)."""
    code = "import time; t = time.perf_counter(); import orchestra; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(5)
    ]
    return statistics.median(runs) * 1000


def verdict(value: float, target: float, *, lower_is_better: bool = False) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "ok" if ok else "MISSED"


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    names20 = ["no-HTTP limit", "aiohttp", "httpx", "orchestra"]
    if args.baseline:
        names20.append("orchestra (stock httpx transport)")
    r20, label = await phase(20, names20, args, measure_latency=True)
    r0, _ = await phase(0, ["no-HTTP limit", "aiohttp", "orchestra"], args, measure_latency=False)
    calls = await per_call(args)
    imp = import_time_ms()

    print(f"\nproduct-page DAG: 10 HTTP calls, critical path 3, JS on every processor; "
          f"sandbox: {label}; medians of {args.rounds} rounds\n")  # fmt: skip
    print(f"{'contender':36} {'c=1 ms (20ms)':>14} {'c=50 /s (20ms)':>15} {'c=50 /s (0ms)':>14}"
          f" {'CPU ms/payload':>15}")  # fmt: skip
    for name in names20:
        zero = r0.get(name, {}).get("tput")
        print(f"{name:36} {r20[name]['lat']:14.1f} {r20[name]['tput']:15.0f} "
              f"{(f'{zero:14.0f}' if zero else '-'.rjust(14))} {r20[name]['cpu']:15.2f}")  # fmt: skip
    print(
        "CPU ms/payload: the host process's CPU time per payload at c=50 (20 ms), which bounds"
        "\nits throughput on one core (sandbox workers and the fake APIs run in other processes)"
    )
    lat_ratio = paired(20, "lat", "orchestra", "no-HTTP limit")
    tput_ratio = paired(20, "tput", "orchestra", "aiohttp")
    zero_ratio = paired(0, "tput", "orchestra", "aiohttp")
    print("\ntarget                                              measured   target")
    print(f"latency c=1 vs no-HTTP limit (20 ms)                {lat_ratio:7.3f}x  <= 1.10x  "
          f"{verdict(lat_ratio, 1.10, lower_is_better=True)}")  # fmt: skip
    print(f"throughput c=50 vs aiohttp (20 ms)                  {tput_ratio:7.3f}x  >= 0.90x  "
          f"{verdict(tput_ratio, 0.90)}")  # fmt: skip
    print(f"throughput c=50 vs aiohttp (0 ms, JS everywhere)    {zero_ratio:7.3f}x  >= 0.50x  "
          f"{verdict(zero_ratio, 0.50)}")  # fmt: skip
    print(f"import orchestra (median of 5)                      {imp:6.0f} ms  <  100 ms  "
          f"{verdict(imp, 100, lower_is_better=True)}")  # fmt: skip
    print(
        "ratios: the median over rounds of the ratio within each round (contenders of a "
        "round run back to back)"
    )
    print("\nHTTP client path alone: one GET, c=50, 0 ms backend (calls/s, ratio to aiohttp)")
    for n, v in calls.items():
        print(f"  {n:36} {v:8.0f}  {v / calls['aiohttp session.get']:5.2f}x")
    print(f"\n(total bench time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per throughput sample")
    parser.add_argument("--latency-n", type=int, default=20, help="payloads per latency sample")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--baseline", action="store_true", help="add orchestra on stock httpx")
    parser.add_argument("--sandbox", choices=["default", "inprocess"], default="default")
    asyncio.run(main(parser.parse_args()))
