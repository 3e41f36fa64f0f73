"""WorkerSandbox as a pool: deadlines, healing, spares, recycling, fairness, shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest

from orchestra.errors import SandboxError, StepTimeoutError
from orchestra.sandbox import SandboxLimits, WorkerSandbox, _process

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_import_does_not_load_pythonmonkey() -> None:
    code = "import sys, orchestra.sandbox; sys.exit('pythonmonkey' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_limits_are_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="timeout"):
        SandboxLimits(timeout=0)
    with pytest.raises(ValueError, match="spares"):
        SandboxLimits(spares=-1)
    limits = SandboxLimits()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        limits.timeout = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="size"):
        WorkerSandbox(0)


async def test_lazy_start_and_aclose_kills_workers() -> None:
    sandbox = WorkerSandbox(1, limits=SandboxLimits(spares=1))
    assert sandbox.worker_pids == []
    assert await sandbox.evaluate("1", {}) == 1
    pids = sandbox.worker_pids
    assert len(pids) == 2  # the worker and its warm spare
    await sandbox.aclose()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(SandboxError, match="closed"):
        await sandbox.evaluate("1", {})


async def test_deadline_kills_and_spare_takes_over() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("1", {})
        before = set(sandbox.worker_pids)
        start = time.monotonic()
        with pytest.raises(StepTimeoutError, match="deadline of 0.1 s"):
            await sandbox.evaluate("while (true) {}", {}, timeout=0.1, name="loop")
        assert time.monotonic() - start < 1.0
        assert await sandbox.evaluate("2", {}) == 2
        after = set(sandbox.worker_pids)
        assert len(before - after) == 1  # the killed worker is gone ...
        assert before & after  # ... and the spare, already warm, served the next call
        assert all(not alive(pid) for pid in before - after)


async def test_default_deadline_from_limits() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=0.2, spares=0)) as sandbox:
        with pytest.raises(StepTimeoutError, match="0.2 s"):
            await sandbox.evaluate("for (;;) {}", {})


async def test_cancelled_caller_kills_its_worker() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        await sandbox.evaluate("1", {})
        (pid,) = sandbox.worker_pids
        with anyio.move_on_after(0.2):
            await sandbox.evaluate("while (true) {}", {})
        assert not alive(pid)
        assert await sandbox.evaluate("3", {}) == 3


async def test_more_callers_than_workers_queue_fairly() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        await sandbox.evaluate("0", {})
        order: list[int] = []

        async def caller(i: int) -> None:
            await sandbox.evaluate(
                "let t = Date.now(); while (Date.now() - t < 5) {} return i", {"i": i}
            )
            order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(caller, i)
                await anyio.sleep(0.001)
        assert order == list(range(8))
        assert len(sandbox.worker_pids) == 1


async def test_concurrent_calls_use_at_most_size_workers() -> None:
    async with WorkerSandbox(2, limits=SandboxLimits(spares=1)) as sandbox:
        results: list[object] = []

        async def caller(i: int) -> None:
            results.append(await sandbox.evaluate("i * 2", {"i": i}))

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(caller, i)
        assert sorted(results) == [i * 2 for i in range(30)]  # type: ignore[type-var]
        assert len(sandbox.worker_pids) <= 3


async def test_two_pools_in_one_process() -> None:
    async with (
        WorkerSandbox(1, limits=SandboxLimits(spares=0)) as a,
        WorkerSandbox(1, limits=SandboxLimits(spares=0)) as b,
    ):
        out: dict[str, object] = {}

        async def use(name: str, sandbox: WorkerSandbox) -> None:
            out[name] = [await sandbox.evaluate("x", {"x": name}) for _ in range(5)]

        async with anyio.create_task_group() as tg:
            tg.start_soon(use, "a", a)
            tg.start_soon(use, "b", b)
        assert out == {"a": ["a"] * 5, "b": ["b"] * 5}
        assert not set(a.worker_pids) & set(b.worker_pids)
        await a.aclose()
        assert await b.evaluate("1", {}) == 1


async def test_workers_recycled_after_max_calls() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(max_calls_per_worker=3, spares=0)) as sandbox:
        seen = set()
        for _ in range(7):
            assert await sandbox.evaluate("1", {}) == 1
            seen.update(sandbox.worker_pids)
        assert len(seen) == 3


async def test_workers_recycled_past_rss_limit() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(max_rss_bytes=1, spares=0)) as sandbox:
        await sandbox.evaluate("1", {})
        assert sandbox.worker_pids == []  # retired right after its call
        assert await sandbox.evaluate("2", {}) == 2


async def test_output_limit_is_configurable() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(max_output_chars=100, spares=0)) as sandbox:
        assert await sandbox.evaluate("'x'.repeat(90)", {}) == "x" * 90
        with pytest.raises(SandboxError, match="output limit"):
            await sandbox.evaluate("'x'.repeat(200)", {})


async def test_memory_limit_is_configurable() -> None:
    limits = SandboxLimits(memory_bytes=128 * 1024 * 1024, timeout=10, spares=0)
    async with WorkerSandbox(1, limits=limits) as sandbox:
        with pytest.raises(SandboxError, match="out of memory"):
            await sandbox.evaluate("let a = []; while (true) a.push(new Array(1e6).fill(1.5))", {})
        assert await sandbox.evaluate("new Array(1e6).fill(1).length", {}) == 1_000_000


async def test_worker_that_cannot_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "worker.py"
    bad.write_text("import sys; sys.stdout.write('nope\\n')")
    monkeypatch.setattr(_process, "_WORKER_SCRIPT", bad)
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        with pytest.raises(SandboxError, match="failed to start"):
            await sandbox.evaluate("1", {})
        assert sandbox.worker_pids == []


async def test_worker_that_dies_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "worker.py"
    bad.write_text("import sys; sys.stderr.write('boom'); sys.exit(3)")
    monkeypatch.setattr(_process, "_WORKER_SCRIPT", bad)
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        with pytest.raises(SandboxError, match="exit code 3.*boom"):
            await sandbox.evaluate("1", {})


async def test_worker_env_is_minimal() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        assert await sandbox.evaluate("new Date(0).getTimezoneOffset()", {}) == 0
        (pid,) = sandbox.worker_pids
        environ = await anyio.Path(f"/proc/{pid}/environ").read_bytes()
        assert environ.split(b"\0")[0] == b"TZ=UTC"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
