"""How commits renew a run's lease: only once a quarter of it has passed."""

from __future__ import annotations

import pytest

import orchestra as o
from orchestra.executors import InMemoryExecutor, VirtualClock
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import InMemoryStore, RunRecord
from orchestra.stores._batch import Op

LEASE = 30.0
STEP = 4.0  # virtual seconds each step takes


class RecordingStore(InMemoryStore):
    """Notes, for each run update committed, the clock and the record written."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.updates: list[tuple[float, RunRecord]] = []

    async def _commit_batch(self, ops: list[Op]) -> None:
        await super()._commit_batch(ops)
        for name, args in ops:
            if name == "update_run":
                run = args[0]
                assert isinstance(run, RunRecord)
                self.updates.append((self.clock.now(), run))


@pytest.mark.anyio
async def test_a_commit_renews_the_lease_once_a_quarter_of_it_passed() -> None:
    clock = VirtualClock()
    store = RecordingStore(clock)

    async def tick(value: o.JSON = None) -> o.JSON:
        await clock.advance(STEP)
        return {"ok": True}

    tick_processor = o.Processor(name="p", call=o.FunctionCall(name="tick"))
    steps = tuple(o.ProcessStep(name=f"s{i}", processors=(tick_processor,)) for i in range(12))
    process = o.Process(name="ticks", trigger=o.Event(name="go"), steps=steps)
    async with o.Engine(
        store=store, functions={"tick": tick}, sandbox=InProcessSandbox(),
        executor=InMemoryExecutor(clock=clock), lease_seconds=LEASE, worker_id="w",
    ) as engine:  # fmt: skip
        await engine.deploy(process)
        run_id = await engine.start("ticks", {})
        assert (await engine.run(run_id)).status == "completed"
    held = [(now, run) for now, run in store.updates if run.owner is not None]
    assert len(held) == 11  # every step but the last (which ends the run and gives the lease back)
    expiries: list[float] = []
    for now, run in held:
        assert run.owner == "w"
        assert run.lease_expires is not None
        assert run.lease_expires - now > LEASE * 0.75 - 1e-9  # three quarters left, at least
        expiries.append(run.lease_expires)
    # Renewed every second step (8 s > a quarter of 30 s), not at each commit.
    assert len(set(expiries)) == 6
    assert expiries == sorted(expiries)
    renewals = [now for now, run in held if run.lease_expires == now + LEASE]
    assert len(renewals) == 5
