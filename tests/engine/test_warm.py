"""Warming the sandbox before HTTP answers are due (engine/_warm.py and Sandbox.warm)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import orchestra as o
from orchestra.engine import _warm
from orchestra.engine._warm import Warmer
from orchestra.executors import InMemoryExecutor
from orchestra.sandbox import InProcessSandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recording(InProcessSandbox):
    """An in-process sandbox that records when it was asked to warm up."""

    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[float] = []

    def warm(self) -> None:
        self.warmed.append(asyncio.get_running_loop().time())


async def test_the_hint_comes_a_lead_before_the_usual_duration() -> None:
    sandbox = Recording()
    warmer = Warmer(sandbox)
    first = warmer.sent("GET", "http://api/a")
    assert first is not None and first.handle is None  # nothing known yet: no hint
    await asyncio.sleep(0.02)
    warmer.answered(first, ok=True)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    second = warmer.sent("GET", "http://api/a")
    assert second is not None and second.handle is not None
    await asyncio.sleep(0.03)  # the answer is late: the hint came meanwhile
    assert len(sandbox.warmed) == 1
    lead = sent_at + warmer._typical[("GET", "http://api/a")] - sandbox.warmed[0]
    assert lead <= _warm.LEAD + 0.0005  # not before it was due (the loop may be late)
    warmer.answered(second, ok=True)


async def test_an_early_answer_cancels_the_hint() -> None:
    sandbox = Recording()
    warmer = Warmer(sandbox)
    warmer._typical[("GET", "u")] = 0.03
    expected = warmer.sent("GET", "u")
    await asyncio.sleep(0.005)
    warmer.answered(expected, ok=True)
    await asyncio.sleep(0.04)
    assert sandbox.warmed == []
    assert warmer._typical[("GET", "u")] < 0.03  # a faster answer lowers the estimate at once


async def test_what_is_learned_and_when_no_hint_is_given() -> None:
    sandbox = Recording()
    warmer = Warmer(sandbox)
    key = ("GET", "u")
    warmer._typical[key] = 0.01
    warmer.answered(warmer.sent(*key), ok=False)  # retried or failed: not learned
    assert warmer._typical[key] == 0.01
    slow = warmer.sent(*key)
    assert slow is not None
    slow.sent -= 0.02  # it took 0.02 s
    warmer.answered(slow, ok=True)
    assert warmer._typical[key] == pytest.approx(0.01 + _warm.CREEP * 0.01, rel=0.05)
    warmer._typical[key] = _warm.SHORTEST / 2  # answers that quick: no hint
    quick = warmer.sent(*key)
    assert quick is not None and quick.handle is None
    warmer.answered(quick, ok=False)
    warmer._typical[key] = 0.05
    busy = [warmer.sent(*key) for _ in range(_warm.BUSY)]
    assert all(e is not None and e.handle is not None for e in busy)
    extra = warmer.sent(*key)  # that many calls in flight keep the sandbox busy anyway
    assert extra is not None and extra.handle is None
    warmer.answered(extra, ok=True)  # its duration holds queueing: not learned
    assert warmer._typical[key] == 0.05
    for e in busy:
        warmer.answered(e, ok=False)
    assert warmer._inflight == 0


async def test_the_remembered_calls_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_warm, "KEYS", 3)
    warmer = Warmer(Recording())
    for n in range(5):
        warmer.answered(warmer.sent("GET", f"u{n}"), ok=True)
    assert [url for _, url in warmer._typical] == ["u2", "u3", "u4"]


async def test_no_hints_without_an_override_or_when_disabled() -> None:
    assert Warmer(InProcessSandbox()).sent("GET", "u") is None  # the default warm() is a no-op
    assert Warmer(Recording(), enabled=False).sent("GET", "u") is None
    warmer = Warmer(Recording())
    warmer.answered(None, ok=True)  # nothing was expected: nothing to do
    assert warmer._typical == {}


def _process() -> o.Process:
    return o.Process(
        name="page",
        steps=(
            o.ProcessStep(
                name="main",
                processors=(
                    o.Processor(
                        name="a",
                        call=o.HttpCall(url="http://api.test/a"),
                        output="response.n + 1",
                    ),
                ),
            ),
        ),
    )


async def test_the_engine_warms_its_sandbox_before_answers_on_the_wall_clock() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.015)
        return httpx.Response(200, json={"n": 1})

    sandbox = Recording()
    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    async with client, o.Engine(sandbox=sandbox, client=client) as engine:
        for _ in range(4):
            assert (await engine.invoke(_process())).payload == {"a": 2}
    assert len(sandbox.warmed) >= 2  # every call after the first was expected


async def test_no_warming_on_a_virtual_clock() -> None:
    executor = InMemoryExecutor()

    async def slow(request: httpx.Request) -> httpx.Response:
        await executor.sleep(0.5)
        return httpx.Response(200, json={"n": 1})

    sandbox = Recording()
    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    async with client, o.Engine(sandbox=sandbox, client=client, executor=executor) as engine:
        for _ in range(3):
            assert (await engine.invoke(_process())).payload == {"a": 2}
    assert sandbox.warmed == []
