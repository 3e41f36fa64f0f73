"""Helpers of bench_workers.py: the benchmark process, a worker subprocess and its client.

A worker is ``python bench/_workers_helpers.py --store URL --name A``: one Engine
(InProcessSandbox, LocalExecutor, no HTTP) on the store that ``URL`` names, entered as
an async context manager (so it recovers, renews leases, polls and listens like any
worker), with the benchmark process deployed. It reads JSON commands from stdin, one a
line, runs each in a task of its own (at most ``--concurrency`` at a time) and writes one
JSON reply a line to stdout, with the command's ``id``:

* ``{"op": "publish", "name", "payload", "event_id"}``: ``Engine.publish``; the reply has
  the runs started and resumed and ``t0``/``t1``, the ``time.perf_counter()`` (CLOCK_MONOTONIC
  on Linux: the same clock in every process of the machine) just before the call and just
  after it returned, and ``w0``, the wall clock just before it;
* ``{"op": "watch", "run"}``: read the run once (reply: its status), then keep reading it
  from the store every ``interval`` seconds until it completed;
* ``{"op": "watched", "run"}``: reply when that watch saw the run completed, with ``seen``
  (``perf_counter()`` then);
* ``{"op": "cpu"}``: reply with the worker's CPU time so far (``time.process_time()``);
* ``{"op": "quit"}``: close the engine and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process as AnyioProcess
from anyio.streams.buffered import BufferedByteReceiveStream

import orchestra as o

PROCESS = o.Process(
    name="wb",
    trigger=o.Event(name="wb.go"),
    events=(o.Event(name="wb.done", key="payload.id"),),
    steps=(
        o.ProcessStep(name="a", processors=(o.Processor(name="p", call=o.FunctionCall(name="mark")),)),
        o.ResumeStep(name="wait", event="wb.done", key="ctx.trigger.id", timeout="P5D", on_timeout="fail"),
        o.ProcessStep(name="b", processors=(o.Processor(name="p", call=o.FunctionCall(name="mark")),)),
    ),
)  # fmt: skip
"""A step, a resume step (5-day timeout), a step: each step is a Python function call."""

EXPECTED_HISTORY: dict[tuple[str, str | None], int] = {
    ("run_started", None): 1,
    ("step_started", "a"): 1,
    ("step_completed", "a"): 1,
    ("waiting", "wait"): 1,
    ("event_consumed", "wait"): 1,
    ("step_started", "b"): 1,
    ("step_completed", "b"): 1,
    ("run_completed", None): 1,
}
"""The history of one run of PROCESS that went through without a hitch: each entry once."""

HERE = Path(__file__).resolve().parent


def functions(worker: str) -> dict[str, Any]:
    """The engine's functions: ``mark`` returns the name of the worker that ran the step."""

    async def mark(value: o.JSON = None) -> o.JSON:
        return {"worker": worker}

    return {"mark": mark}


def engine(store: Any, worker: str, **kw: Any) -> o.Engine:
    """An engine measuring the engine and the store only: no HTTP, no JS worker pool."""
    from orchestra.executors import LocalExecutor
    from orchestra.sandbox import InProcessSandbox

    return o.Engine(
        store=store, sandbox=InProcessSandbox(), executor=LocalExecutor(),
        functions=functions(worker), worker_id=worker, **kw,
    )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99 and max of ``values`` (seconds), in milliseconds."""
    return {
        "p50": statistics.median(values) * 1e3,
        "p99": pct(values, 0.99) * 1e3,
        "max": max(values) * 1e3,
        "n": len(values),
    }


# -- the worker (a subprocess) ------------------------------------------------------------


async def worker_main(url: str, name: str, concurrency: int, interval: float) -> None:
    from orchestra.stores import open_store

    t0 = time.perf_counter()
    store = await open_store(url)
    out = sys.stdout

    def reply(msg_id: int, **data: Any) -> None:
        out.write(json.dumps({"id": msg_id, **data}) + "\n")
        out.flush()

    watches: dict[str, tuple[anyio.Event, list[float]]] = {}
    limiter = anyio.CapacityLimiter(concurrency)
    try:
        async with engine(store, name) as eng:
            await eng.deploy(PROCESS)

            async def watch(run_id: str, done: anyio.Event, seen: list[float]) -> None:
                while (await eng.store.get_run(run_id)).status != "completed":  # noqa: ASYNC110
                    await anyio.sleep(interval)
                seen.append(time.perf_counter())
                done.set()

            async def handle(msg: dict[str, Any]) -> None:
                op, msg_id = msg["op"], msg["id"]
                try:
                    if op == "publish":
                        async with limiter:
                            w0, t0 = time.time(), time.perf_counter()
                            res = await eng.publish(msg["name"], msg["payload"], id=msg["event_id"])
                            t1 = time.perf_counter()
                        reply(msg_id, started=list(res.started), resumed=list(res.resumed),
                              duplicate=res.duplicate, kept=res.kept, t0=t0, t1=t1, w0=w0)  # fmt: skip
                    elif op == "watch":
                        status = (await eng.store.get_run(msg["run"])).status
                        done, seen = anyio.Event(), list[float]()
                        watches[msg["run"]] = (done, seen)
                        tg.start_soon(watch, msg["run"], done, seen)
                        reply(msg_id, status=status)
                    elif op == "cpu":
                        reply(msg_id, cpu=time.process_time())
                    elif op == "watched":
                        done, seen = watches.pop(msg["run"])
                        await done.wait()
                        reply(msg_id, seen=seen[0])
                    else:
                        reply(msg_id, error=f"unknown op {op!r}")
                except Exception as exc:
                    reply(msg_id, error=f"{type(exc).__name__}: {exc}")

            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            reply(0, ready=True, open_s=time.perf_counter() - t0)
            async with anyio.create_task_group() as tg:
                while line := await reader.readline():
                    msg = json.loads(line)
                    if msg["op"] == "quit":
                        tg.cancel_scope.cancel()
                        break
                    tg.start_soon(handle, msg)
    finally:
        await store.aclose()


# -- the driver's side ------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker answered a command with an error, or died."""


class Worker:
    """A worker subprocess and the commands sent to it (use ``async with``)."""

    def __init__(self, url: str, name: str, log: Path, *, concurrency: int = 8) -> None:
        self.url, self.name, self.log, self.concurrency = url, name, log, concurrency
        self.proc: AnyioProcess | None = None
        self._next = 1
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._send_lock = anyio.Lock()
        self._ready = anyio.Event()
        self.open_s = 0.0

    async def start(self, tg: Any) -> None:
        """Start the subprocess (reader task in ``tg``); wait until its engine is open."""
        cmd = [sys.executable, str(HERE / "_workers_helpers.py"), "--store", self.url,
               "--name", self.name, "--concurrency", str(self.concurrency)]  # fmt: skip
        self._log_file = self.log.open("wb")
        self.proc = await anyio.open_process(cmd, stderr=self._log_file)
        tg.start_soon(self._read)
        with anyio.fail_after(60):
            await self._ready.wait()
        if not self.open_s:  # its output ended before it said it was ready
            with anyio.move_on_after(5):
                await self.proc.wait()
            raise WorkerError(f"worker {self.name} did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = BufferedByteReceiveStream(self.proc.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", 1 << 20)
                msg = json.loads(line)
                if msg["id"] == 0:
                    self.open_s = msg.get("open_s", 0.0)
                    self._ready.set()
                    continue
                done, box = self._waiting.pop(msg["id"])
                box.append(msg)
                done.set()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            pass
        finally:  # the worker is gone: fail whatever still waits for it
            self._ready.set()
            for done, box in self._waiting.values():
                box.append({"error": f"worker {self.name} exited"})
                done.set()
            self._waiting.clear()

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command, return its reply; raise :class:`WorkerError` for an error reply."""
        assert self.proc is not None and self.proc.stdin is not None
        msg_id, self._next = self._next, self._next + 1
        done, box = anyio.Event(), list[dict[str, Any]]()
        self._waiting[msg_id] = (done, box)
        line = (json.dumps({"id": msg_id, "op": op, **args}) + "\n").encode()
        try:
            async with self._send_lock:
                await self.proc.stdin.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._waiting.pop(msg_id, None)
            raise WorkerError(f"worker {self.name} is gone:\n{self.stderr()}") from exc
        await done.wait()
        if "error" in box[0]:
            raise WorkerError(f"worker {self.name}: {op}: {box[0]['error']}\n{self.stderr()}")
        reply: dict[str, Any] = box[0]
        return reply

    async def publish(self, name: str, payload: o.JSON, event_id: str) -> dict[str, Any]:
        return await self.call("publish", name=name, payload=payload, event_id=event_id)

    async def stop(self) -> None:
        """Ask the worker to quit (its engine closes); kill it if it does not within 10 s."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            if proc.returncode is None and proc.stdin is not None:
                with anyio.move_on_after(2):
                    await proc.stdin.send(b'{"id": -1, "op": "quit"}\n')
            with anyio.move_on_after(10):
                await proc.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()
            self._log_file.close()


def history_counts(rows: list[Mapping[str, Any]]) -> dict[str, dict[tuple[str, str | None], int]]:
    """Group ``(run_id, kind, step, n)`` rows by run."""
    out: dict[str, dict[tuple[str, str | None], int]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {})[(r["kind"], r["step"])] = r["n"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="a bench_workers.py worker")
    parser.add_argument("--store", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--interval", type=float, default=0.001, help="watch: seconds between reads"
    )
    args = parser.parse_args()
    anyio.run(
        worker_main, args.store, args.name, args.concurrency, args.interval, backend="asyncio"
    )


if __name__ == "__main__":
    main()
