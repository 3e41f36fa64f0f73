from collections.abc import AsyncIterator
from typing import Any

import pytest

import orchestra as o
from orchestra.engine import ContextLimitError, NotDeployedError
from orchestra.executors import InMemoryExecutor
from orchestra.testing import MockHTTP, make_test_engine

pytestmark = pytest.mark.anyio

ORDER = o.Event(
    name="order.created",
    schema={"type": "object", "required": ["order"], "properties": {"order": {"type": "string"}}},
)
PAID = o.Event(name="order.paid", key="payload.order")


def process(*, timeout: str | None = "P1D", on_timeout: Any = "fail", **kw: Any) -> o.Process:
    return o.Process(
        name="orders",
        trigger=ORDER,
        events=(PAID,),
        steps=(
            o.ProcessStep(name="notify", processors=(
                o.Processor(name="post", call=o.HttpCall(url="http://api/notify", method="POST",
                                                         body="({order: trigger.order})")),
            )),
            o.ProcessStep(name="maybe", when="trigger.vip === true", processors=(
                o.Processor(name="vip", call=o.FunctionCall(name="vip")),
            )),
            o.ResumeStep(name="paid", event="order.paid", key="ctx.trigger.order",
                         timeout=timeout, on_timeout=on_timeout, **kw),
            o.ProcessStep(name="ship", processors=(
                o.Processor(name="ship", call=o.FunctionCall(name="ship"), input="ctx.events.paid"),
            )),
            o.ProcessStep(name="escalate", when="!ctx.events.paid", processors=(
                o.Processor(name="esc", call=o.FunctionCall(name="ship"), input="'late'"),
            )),
        ),
    )  # fmt: skip


@pytest.fixture
async def engine() -> AsyncIterator[o.Engine]:
    mocks = MockHTTP()
    mocks.add("POST", "http://api/notify", json={"ok": True})
    shipped: list[Any] = []
    eng = make_test_engine(mocks=mocks, functions={"vip": lambda x: "vip", "ship": shipped.append})
    eng.shipped = shipped  # type: ignore[attr-defined]
    async with eng:
        yield eng


def ctx(run: Any) -> Any:
    return run.context


def clock(engine: o.Engine) -> Any:
    assert isinstance(engine.executor, InMemoryExecutor)
    return engine.executor.clock


async def test_happy_path(engine: o.Engine) -> None:
    v = await engine.deploy(process())
    assert v.seq == 1
    started = await engine.publish("order.created", {"order": "A1"})
    (run_id,) = started.started
    run = await engine.run(run_id)
    assert run.status == "waiting"
    assert run.step == "paid"
    assert run.path == ["notify:completed", "maybe:skipped", "paid:waiting"]
    assert ctx(run)["steps"]["notify"] == {"post": {"ok": True}}
    res = await engine.publish("order.paid", {"order": "A1", "amount": 5})
    assert res.resumed == (run_id,)
    run = await engine.run(run_id)
    assert run.status == "completed"
    assert ctx(run)["events"]["paid"] == {"order": "A1", "amount": 5}
    assert run.path == ["notify:completed", "maybe:skipped", "paid:resumed", "ship:completed",
                        "escalate:skipped"]  # fmt: skip
    assert engine.shipped == [{"order": "A1", "amount": 5}]  # type: ignore[attr-defined]
    kinds = [h.kind for h in run.history]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "run_completed"


async def test_schema_error_names_path(engine: o.Engine) -> None:
    await engine.deploy(process())
    with pytest.raises(o.EventError) as info:
        await engine.publish("order.created", {"order": 5})
    assert info.value.path == "$.order"
    assert "orders" in str(info.value)
    assert await engine.runs() == []


async def test_early_duplicate_and_other_key(engine: o.Engine) -> None:
    await engine.deploy(process())
    # Nothing waits yet: the event is kept.
    early = await engine.publish("order.paid", {"order": "A1"}, id="evt-1")
    assert early.kept
    assert early.resumed == ()
    dup = await engine.publish("order.paid", {"order": "A1"}, id="evt-1")
    assert dup.duplicate
    other = (await engine.publish("order.created", {"order": "B2"})).started[0]
    run_id = (await engine.publish("order.created", {"order": "A1"})).started[0]
    assert (await engine.run(run_id)).status == "completed"
    assert (await engine.run(other)).status == "waiting"
    assert engine.shipped == [{"order": "A1"}]  # type: ignore[attr-defined]


async def test_one_event_resumes_every_match(engine: o.Engine) -> None:
    await engine.deploy(process())
    a = (await engine.publish("order.created", {"order": "A"})).started[0]
    b = await engine.start("orders", {"order": "A"})
    res = await engine.publish("order.paid", {"order": "A"})
    assert sorted(res.resumed) == sorted([a, b])
    again = await engine.publish("order.paid", {"order": "A"})
    assert again.resumed == ()


@pytest.mark.parametrize(
    ("on_timeout", "kw", "status", "tail"),
    [
        ("fail", {}, "failed", ["paid:timed_out"]),
        ("continue", {"default": {"order": "?"}}, "completed",
         ["paid:timed_out", "paid:resumed", "ship:completed", "escalate:skipped"]),
        ("goto", {"goto": "escalate"}, "completed", ["paid:timed_out", "escalate:completed"]),
    ],
)  # fmt: skip
async def test_timeouts(
    engine: o.Engine, on_timeout: str, kw: Any, status: str, tail: list[str]
) -> None:
    await engine.deploy(process(on_timeout=on_timeout, **kw))
    run_id = await engine.start("orders", {"order": "A"})
    await clock(engine).advance(3600)
    assert (await engine.run(run_id)).status == "waiting"
    await clock(engine).advance(86400)
    run = await engine.run(run_id)
    assert run.status == status
    assert run.path[2:] == tail
    if status == "failed":
        assert run.error is not None
        assert "paid" in run.error
    # The event after the deadline resumes nothing.
    assert (await engine.publish("order.paid", {"order": "A"})).resumed == ()


async def test_versions_and_undeploy(engine: o.Engine) -> None:
    p1 = process()
    v1 = await engine.deploy(p1)
    assert (await engine.deploy(p1)).seq == 1
    old = await engine.start("orders", {"order": "A"})
    p2 = process(timeout="P2D")
    v2 = await engine.deploy(p2)
    assert (v1.seq, v2.seq) == (1, 2)
    assert v1.digest != v2.digest
    new = await engine.start("orders", {"order": "B"})
    assert (await engine.run(old)).version == 1
    assert (await engine.run(new)).version == 2
    assert [v.seq for v in await engine.versions("orders")] == [1, 2]
    await clock(engine).advance(86400 * 1.5)
    assert (await engine.run(old)).status == "failed"
    assert (await engine.run(new)).status == "waiting"
    assert await engine.undeploy("orders")
    with pytest.raises(NotDeployedError):
        await engine.start("orders", {"order": "C"})
    assert (await engine.publish("order.created", {"order": "C"})).started == ()
    # Waiting runs still resume.
    assert (await engine.publish("order.paid", {"order": "B"})).resumed == (new,)
    assert not await engine.undeploy("nope")


async def test_cancel(engine: o.Engine) -> None:
    await engine.deploy(process())
    run_id = await engine.start("orders", {"order": "A"})
    assert await engine.cancel(run_id)
    assert not await engine.cancel(run_id)
    assert (await engine.publish("order.paid", {"order": "A"})).resumed == ()
    run = await engine.run(run_id)
    assert run.status == "cancelled"
    assert [r.id for r in await engine.runs(status="cancelled")] == [run_id]
    await clock(engine).advance(86400 * 2)
    assert (await engine.run(run_id)).status == "cancelled"


async def test_step_failure_fails_run(engine: o.Engine) -> None:
    engine.mocks.add("POST", "http://api/notify", status=400, json={})  # type: ignore[attr-defined]
    await engine.deploy(process())
    run = await engine.run(await engine.start("orders", {"order": "A"}))
    assert run.status == "failed"
    assert run.error is not None
    assert "orders/notify/post" in run.error
    assert run.path == ["notify:failed"]


async def test_context_limit() -> None:
    mocks = MockHTTP()
    mocks.add("POST", "http://api/notify", json={"big": "x" * 500})
    async with make_test_engine(mocks=mocks, functions={"vip": str, "ship": str},
                                max_context_bytes=300) as eng:  # fmt: skip
        await eng.deploy(process())
        run = await eng.run(await eng.start("orders", {"order": "A"}))
        assert run.status == "failed"
        assert run.error is not None
        assert "limit of 300" in run.error
        assert "notify" in run.error
        with pytest.raises(ContextLimitError):
            await eng.start("orders", {"order": "A" * 400})


async def test_deadlines_without_context_manager() -> None:
    eng = make_test_engine(mocks=MockHTTP(), functions={"vip": str, "ship": str})
    eng.mocks.add("POST", "http://api/notify", json={})  # type: ignore[attr-defined]
    await eng.deploy(process())
    run_id = await eng.start("orders", {"order": "A"})
    assert await eng.fire_due() == []
    assert isinstance(eng.executor, InMemoryExecutor)
    eng.executor.clock._now += 2 * 86400
    assert await eng.fire_due() == [run_id]
    assert (await eng.run(run_id)).status == "failed"
    await eng.aclose()
