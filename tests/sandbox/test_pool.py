"""WorkerSandbox as a pool: deadlines, healing, spares, recycling, fairness, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest

from orchestra.errors import SandboxError, ScriptError, StepTimeoutError
from orchestra.sandbox import (
    EachCall,
    FragmentCall,
    SandboxLimits,
    WorkerSandbox,
    _lane,
    _process,
)

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


# -- pipelining: many calls in flight on one worker ---------------------------------------

BUSY = "let t = Date.now(); while (Date.now() - t < ms) {} return tag"


async def test_calls_are_batched_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    send = _lane._Lane.send

    def spy(lane: _lane._Lane, batch: list[_lane._Task]) -> None:
        sizes.append(len(batch))
        send(lane, batch)

    monkeypatch.setattr(_lane._Lane, "send", spy)
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        await sandbox.evaluate("0", {})
        results: dict[int, object] = {}

        async def caller(i: int) -> None:
            results[i] = await sandbox.evaluate("i * 2", {"i": i})

        sizes.clear()
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(caller, i)
        assert results == {i: i * 2 for i in range(40)}
        assert sum(sizes) == 40
        assert len(sizes) < 10  # many calls per round trip


async def test_lone_call_is_sent_at_once_and_later_ones_join_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[int] = []
    send = _lane._Lane.send

    def spy(lane: _lane._Lane, batch: list[_lane._Task]) -> None:
        sent.append(len(batch))
        send(lane, batch)

    monkeypatch.setattr(_lane._Lane, "send", spy)
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        await sandbox.evaluate("0", {})
        sent.clear()
        call = sandbox.evaluate("1", {})
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0)  # the call runs up to its first wait: it is sent by then
        assert sent == [1]
        assert await task == 1
        # Calls made in one turn: the first goes at once, the rest join it at the turn's
        # end on the same worker (not one by one as each reply comes back).
        sent.clear()
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(sandbox.evaluate, "i", {"i": i})
        assert sent == [1, 9]


async def test_hanging_call_among_many_fails_alone() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("0", {})
        results: dict[int, object] = {}
        start = time.monotonic()

        async def caller(i: int) -> None:
            try:
                if i == 5:
                    await sandbox.evaluate("while (true) {}", {}, timeout=0.3, name="hang")
                else:
                    results[i] = await sandbox.evaluate("i + 1", {"i": i})
            except StepTimeoutError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(caller, i)
        hang = results.pop(5)
        assert isinstance(hang, StepTimeoutError)
        assert "'hang'" in str(hang)
        assert "deadline of 0.3 s" in str(hang)
        assert results == {i: i + 1 for i in range(10) if i != 5}
        assert time.monotonic() - start < 5
        assert await sandbox.evaluate("2", {}) == 2


async def test_hung_call_behind_others_fails_at_its_own_deadline() -> None:
    # The calls before it are answered but their replies wait in the worker (it writes
    # them in bursts): the worker's progress page still tells which call runs.
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("0", {})
        results: dict[int, object] = {}
        ended: dict[int, float] = {}
        start = time.monotonic()

        async def caller(i: int) -> None:
            try:
                if i == 3:
                    await sandbox.evaluate("while (true) {}", {}, timeout=1, name="hang")
                else:
                    results[i] = await sandbox.evaluate("i + 1", {"i": i})
            except StepTimeoutError as exc:
                results[i] = exc
            ended[i] = time.monotonic() - start

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(caller, i)
        assert isinstance(results.pop(3), StepTimeoutError)
        assert results == {i: i + 1 for i in range(6) if i != 3}
        # Reported at its deadline, not after a second one on another worker.
        assert 1 <= ended[3] < 1.8


async def test_slow_call_behind_another_gets_its_whole_deadline() -> None:
    # "a" is done (its reply waits in the worker) when "b" is still running at the
    # soonest deadline counted from sending: "b" started later, so nothing is killed.
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("0", {})
        (pid,) = [lane.worker.pid for lane in sandbox._lanes]
        results: dict[str, object] = {}

        async def caller(tag: str) -> None:
            results[tag] = await sandbox.evaluate(BUSY, {"ms": 300, "tag": tag}, timeout=0.5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "a")
            tg.start_soon(caller, "b")
        assert results == {"a": "a", "b": "b"}
        assert [lane.worker.pid for lane in sandbox._lanes] == [pid]


async def test_without_progress_page_a_hung_call_still_fails_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No memfd (not Linux): the worker writes each reply at once, so the oldest
    # unanswered call is the one running.
    monkeypatch.setattr(_process, "_progress_fd", lambda: None)
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("0", {})
        results: dict[int, object] = {}

        async def caller(i: int) -> None:
            try:
                if i == 2:
                    await sandbox.evaluate("while (true) {}", {}, timeout=0.3, name="hang")
                else:
                    results[i] = await sandbox.evaluate("i + 1", {"i": i})
            except StepTimeoutError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(caller, i)
        assert isinstance(results.pop(2), StepTimeoutError)
        assert results == {i: i + 1 for i in range(5) if i != 2}


async def test_killed_worker_runs_its_other_calls_again() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=1)) as sandbox:
        await sandbox.evaluate("0", {})
        busy = sandbox._lanes[0].worker.pid
        results: dict[str, object] = {}

        async def caller(tag: str, ms: int) -> None:
            try:
                results[tag] = await sandbox.evaluate(BUSY, {"ms": ms, "tag": tag})
            except SandboxError as exc:
                results[tag] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "slow", 300)
            tg.start_soon(caller, "a", 0)
            tg.start_soon(caller, "b", 0)
            await anyio.sleep(0.1)
            os.kill(busy, signal.SIGKILL)
        died = results.pop("slow")  # it was running: the death is its fault, as when alone
        assert isinstance(died, SandboxError)
        assert "died (signal 9)" in str(died)
        assert results == {"a": "a", "b": "b"}
        assert busy not in sandbox.worker_pids


async def test_cancelled_queued_call_leaves_the_worker_alone() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        await sandbox.evaluate("0", {})
        (pid,) = sandbox.worker_pids
        results: dict[str, object] = {}

        async def caller(tag: str, ms: int) -> None:
            results[tag] = await sandbox.evaluate(BUSY, {"ms": ms, "tag": tag})

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "slow", 200)
            await anyio.sleep(0.05)  # "slow" runs; the next calls wait for the worker
            with anyio.CancelScope() as scope:
                scope.cancel()
                await caller("cancelled", 0)
            tg.start_soon(caller, "after", 0)
        assert results == {"slow": "slow", "after": "after"}
        assert sandbox.worker_pids == [pid]


async def test_cancelled_call_sent_behind_another_is_dropped() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        await sandbox.evaluate("0", {})
        (pid,) = sandbox.worker_pids
        results: dict[str, object] = {}

        async def caller(tag: str, ms: int) -> None:
            results[tag] = await sandbox.evaluate(BUSY, {"ms": ms, "tag": tag})

        async def cancelled() -> None:
            with anyio.move_on_after(0.1):  # sent right behind "slow", not started by then
                await caller("cancelled", 0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "slow", 200)
            tg.start_soon(cancelled)
        await anyio.sleep(0.01)
        assert results == {"slow": "slow"}
        assert await sandbox.evaluate("1", {}) == 1
        assert sandbox.worker_pids == [pid]


async def test_batch_deadline_is_per_batch() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        frags = [FragmentCall(f"f{i}", BUSY) for i in range(3)]
        assert await sandbox.evaluate_all(frags, {"ms": 50, "tag": 1}, timeout=1) == [1, 1, 1]
        with pytest.raises(StepTimeoutError, match="batch of fragments 'f0', 'f1', 'f2'"):
            await sandbox.evaluate_all(frags, {"ms": 150, "tag": 1}, timeout=0.3)


async def test_each_deadline_covers_the_whole_call_and_kills_a_hung_worker() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        await sandbox.evaluate("1", {})
        (pid,) = sandbox.worker_pids
        each = EachCall(over=0, fragments=(FragmentCall("p.query", "while (item) {}"),))
        with pytest.raises(StepTimeoutError, match="'p.for_each', 'p.query'.*deadline of 0.2 s"):
            await sandbox.evaluate_each(
                [FragmentCall("p.for_each", "[0, 1]")], {}, each, timeout=0.2
            )
        assert not alive(pid)
        assert await sandbox.evaluate_each([FragmentCall("x", "[2]")], {}, attrs.evolve(
            each, fragments=(FragmentCall("y", "item * 2"),))) == ([[2]], [[4]])  # fmt: skip


async def test_one_call_per_worker_mode() -> None:
    """The path taken on event loops other than asyncio, forced here."""
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=5, spares=0)) as sandbox:
        sandbox._pipelined = False
        assert await sandbox.evaluate("a + 1", {"a": 1}) == 2
        frags = [FragmentCall("x", "a + 1", bind="a"), FragmentCall("y", "a * 10")]
        assert await sandbox.evaluate_all(frags, {"a": 1}) == [2, 20]
        with pytest.raises(ScriptError) as info:
            await sandbox.evaluate_all([FragmentCall("x", "1"), FragmentCall("y", "nope")], {})
        assert info.value.fragment == "y"
        await sandbox.check("1 + 1")
        (pid,) = sandbox.worker_pids
        with pytest.raises(StepTimeoutError, match="deadline of 0.1 s"):
            await sandbox.evaluate("while (true) {}", {}, timeout=0.1)
        assert not alive(pid)
        results = []

        async def caller(i: int) -> None:
            results.append(await sandbox.evaluate("i", {"i": i}))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(caller, i)
        assert sorted(results) == list(range(5))  # type: ignore[type-var]
        assert sandbox._lanes == []


SECOND_LOOP = """
import anyio
from orchestra.sandbox import SandboxLimits, WorkerSandbox

sandbox = WorkerSandbox(1, limits=SandboxLimits(spares=1))

async def use(x):
    return await sandbox.evaluate("x * 2", {"x": x})

print(anyio.run(use, 1), anyio.run(use, 2), flush=True)
anyio.run(sandbox.aclose)
print(sandbox.worker_pids, flush=True)
"""


def test_pool_used_from_a_second_event_loop() -> None:
    """Not recommended (the first loop's process transports are left behind), but no hang."""
    out = subprocess.run(
        [sys.executable, "-c", SECOND_LOOP], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split("\n")[:2] == ["2 4", "[]"]


async def test_malformed_reply_kills_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        (pid,) = sandbox.worker_pids

        def broken(self: _process.WorkerProcess, line: bytes) -> bytes:
            raise ValueError("not a reply")

        monkeypatch.setattr(_process.WorkerProcess, "account", broken)
        with pytest.raises(SandboxError, match="malformed reply"):
            await sandbox.evaluate("2", {})
        monkeypatch.undo()
        assert not alive(pid)
        assert await sandbox.evaluate("3", {}) == 3


async def test_large_host_does_not_make_workers_look_large() -> None:
    """A host far above max_rss_bytes still keeps its workers (Linux's inherited ru_maxrss)."""
    ballast = b"\x01" * (320 * 1024 * 1024)  # touched pages: the host's RSS grows by 320 MiB
    try:
        async with WorkerSandbox(1, limits=SandboxLimits(spares=0)) as sandbox:
            assert await sandbox.evaluate("1", {}) == 1
            (pid,) = sandbox.worker_pids
            for i in range(5):
                assert await sandbox.evaluate("i + 1", {"i": i}) == i + 1
            assert sandbox.worker_pids == [pid]
    finally:
        del ballast


# -- warm(): a no-op call before an expected one --------------------------------------------


async def _settled(sandbox: WorkerSandbox) -> None:
    """Wait until the no-op calls warm() sent are answered."""
    for _ in range(200):
        if not sandbox._warming:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("warm call still in flight")


async def test_warm_does_nothing_before_the_first_call_or_after_close() -> None:
    sandbox = WorkerSandbox(1)
    sandbox.warm()  # no worker yet: none is started for a hint
    assert sandbox.worker_pids == []
    assert await sandbox.evaluate("2 + 2", {}) == 4
    await sandbox.aclose()
    sandbox.warm()  # closed: nothing, and no error
    assert not sandbox._warming


async def test_warm_sends_one_noop_call_to_the_idle_worker() -> None:
    async with WorkerSandbox(2) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        (lane,) = sandbox._lanes
        calls = lane.worker.calls
        sandbox.warm()
        sandbox.warm()  # within a millisecond of the first: one call for both
        await _settled(sandbox)
        assert lane.worker.calls == calls + 1
        assert len(sandbox._lanes) == 1  # no worker started for it
        # The next call goes to the worker that was warmed, and is unaffected.
        assert await sandbox.evaluate("[x, 2]", {"x": 1}) == [1, 2]
        assert lane.worker.calls == calls + 2


async def test_warm_does_nothing_while_a_call_is_in_flight() -> None:
    async with WorkerSandbox(1) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        (lane,) = sandbox._lanes
        calls = lane.worker.calls
        busy = asyncio.ensure_future(
            sandbox.evaluate("{const t = Date.now(); while (Date.now() - t < 50) {} return 3}", {})
        )
        await asyncio.sleep(0.01)
        sandbox.warm()
        assert not sandbox._warming
        assert await busy == 3
        assert lane.worker.calls == calls + 1


async def test_workers_run_at_a_lower_cpu_priority_than_the_host() -> None:
    host = os.getpriority(os.PRIO_PROCESS, 0)
    async with WorkerSandbox(1, limits=SandboxLimits(spares=1)) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        for pid in sandbox.worker_pids:  # the worker and its spare
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, host + SandboxLimits().nice)
    async with WorkerSandbox(1, limits=SandboxLimits(nice=0, spares=0)) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        (pid,) = sandbox.worker_pids
        assert os.getpriority(os.PRIO_PROCESS, pid) == host
    with pytest.raises(ValueError, match="nice"):
        SandboxLimits(nice=20)


async def test_a_call_right_after_warm_keeps_its_own_deadline() -> None:
    async with WorkerSandbox(1, limits=SandboxLimits(spares=1)) as sandbox:
        assert await sandbox.evaluate("1", {}) == 1
        sandbox.warm()  # the no-op call is in flight or answered when the next call comes
        started = time.monotonic()
        with pytest.raises(StepTimeoutError, match="deadline of 0.2 s"):
            await sandbox.evaluate("while (true) {}", {}, timeout=0.2)
        assert time.monotonic() - started < 1.5
        await _settled(sandbox)
        assert await sandbox.evaluate("[2]", {}) == [2]
