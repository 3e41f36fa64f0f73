"""The behaviour every :class:`~orchestra.executors.Executor` must have, as a test suite.

Adapter authors: subclass :class:`ExecutorContract` in a pytest module and give it an
``executor`` fixture (and an ``anyio_backend`` fixture; a virtual clock may need
``"asyncio"``)::

    class TestMyExecutor(ExecutorContract):
        unit = 0.02                 # real time: keep the suite's sleeps short

        @pytest.fixture
        def executor(self):
            return MyExecutor()

Every duration the suite uses is a multiple of :attr:`ExecutorContract.unit`, on the
executor's own clock, so a real-time and a virtual-clock executor pass the same tests. No
test asserts that something happens *soon* in wall time: a deadline that should fire is
given a body that sleeps a thousand units (the test only takes that long when the
executor is broken), and a deadline that should not fire is a thousand units away from
a body that sleeps one. So the suite does not flake on a loaded machine.

What the engine relies on, and so what the suite checks:

- ``now()`` is seconds since the epoch as a float: wall-clock dates (``Retry-After``,
  webhook timestamps, lease expiries other workers read) are compared with it. A virtual
  clock must start at a realistic date. It never goes back.
- ``sleep(seconds)`` moves ``now()`` forward by at least ``seconds``; zero or less returns
  at once; concurrent sleepers wake in deadline order; a sleep is an anyio cancellation
  point (the timer task cancels its sleep when an earlier deadline arrives) and a
  cancelled sleeper holds up no one else.
- ``fail_after(seconds)`` raises ``TimeoutError`` (or a subclass), never wrapped in an
  exception group, out of the ``async with`` when its body outlives ``seconds`` on the
  executor's clock, after cancelling the body (whose ``finally`` blocks run); it leaves a
  body that finishes in time alone and leaves no deadline behind once exited. ``None``
  means no deadline; zero or less has already passed. Exceptions from the body pass
  through as themselves. Deadlines nest: an outer deadline, or any other anyio
  cancellation from outside, cancels the body and is *not* reported as the inner scope's
  ``TimeoutError`` (the HTTP retry loop would take it for its own timeout and retry).
  Scopes in concurrent tasks are independent.
- ``run_sync(func)`` calls ``func`` exactly once and returns its value or raises its
  exception unchanged, also inside a ``fail_after`` scope. *Where* it runs is up to the
  executor: :class:`~orchestra.executors.LocalExecutor` uses a worker thread (so blocking
  work does not stall the event loop), :class:`~orchestra.executors.InMemoryExecutor`
  runs it inline for a deterministic order. The suite checks neither.
- ``random()`` returns floats in [0, 1) spread over the interval (retry jitter).
  Whether it is seeded or deterministic is the executor's choice.

Importing this module needs pytest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
import pytest

from orchestra.executors._base import Executor

__all__ = ["ExecutorContract"]

_THOUSAND = 1000


class ExecutorContract:
    """Contract tests; subclasses provide the ``executor`` fixture (a fresh executor)."""

    pytestmark = pytest.mark.anyio

    unit: float = 0.02
    """Seconds on the executor's clock of the suite's shortest sleep.

    Tests sleep a few units when the executor works (about 0.5 s in all at 0.02 s on a
    real clock). A virtual clock can use a large unit (hours) at no cost.
    """

    resolution: float = 1e-3
    """Seconds by which ``now()`` may fall short of a sleep or deadline it has passed.

    Covers clock granularity, float rounding of large timestamps and a wall clock read
    against the event loop's monotonic one.
    """

    wall_limit: float = 60.0
    """Wall-clock seconds after which a test that should have finished fails as hung."""

    @contextlib.contextmanager
    def _hang_guard(self) -> Iterator[None]:
        """Fail the test if its body hangs (a wedged virtual clock, say) for ``wall_limit``."""
        with anyio.move_on_after(self.wall_limit) as scope:
            yield
        if scope.cancel_called:  # even if the executor took the cancellation for a timeout
            pytest.fail(f"hung for {self.wall_limit:g} s of wall time")

    # -- now ---------------------------------------------------------------------------

    def test_now_is_seconds_since_the_epoch(self, executor: Executor) -> None:
        """``now()`` is a float between 2001 and 2286 (seconds since 1970, not ms or 0)."""
        now = executor.now()
        assert isinstance(now, float)
        assert 1e9 < now < 1e10

    async def test_now_never_goes_back(self, executor: Executor) -> None:
        """Successive readings of ``now()``, across sleeps, never decrease."""
        readings = [executor.now()]
        for seconds in (0.0, self.unit, 0.0, self.unit / 2):
            await executor.sleep(seconds)
            readings.extend(executor.now() for _ in range(3))
        assert readings == sorted(readings)

    # -- sleep -------------------------------------------------------------------------

    async def test_sleep_moves_now_by_at_least_the_time_slept(self, executor: Executor) -> None:
        """After ``sleep(s)``, ``now()`` has moved forward by at least ``s``."""
        for seconds in (self.unit, 3 * self.unit):
            before = executor.now()
            await executor.sleep(seconds)
            assert executor.now() - before >= seconds - self.resolution

    async def test_zero_and_negative_sleeps_return(self, executor: Executor) -> None:
        """``sleep(0)`` and a negative sleep return (at once: time does not wait on them)."""
        before = executor.now()
        with self._hang_guard():
            await executor.sleep(0)
            await executor.sleep(-self.unit)
            await executor.sleep(-1e9)
        assert executor.now() - before < _THOUSAND * self.unit

    async def test_sleepers_wake_in_deadline_order(self, executor: Executor) -> None:
        """Concurrent sleeps end in the order of their deadlines, not of their start."""
        order: list[int] = []

        async def nap(units: int) -> None:
            await executor.sleep(units * self.unit)
            order.append(units)

        with self._hang_guard():
            async with anyio.create_task_group() as tg:
                for units in (6, 2, 4):
                    tg.start_soon(nap, units)
        assert order == [2, 4, 6]

    async def test_sleep_is_cancellable(self, executor: Executor) -> None:
        """An anyio cancel scope interrupts a sleep, whether cancelled before or during it."""
        before = executor.now()
        with self._hang_guard():
            with anyio.CancelScope() as early:
                early.cancel()
                await executor.sleep(_THOUSAND * self.unit)
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def cancel_soon() -> None:
                    await executor.sleep(self.unit)
                    scope.cancel()

                tg.start_soon(cancel_soon)
                with scope:
                    await executor.sleep(_THOUSAND * self.unit)
        assert early.cancelled_caught
        assert scope.cancelled_caught
        assert executor.now() - before < _THOUSAND * self.unit

    async def test_a_cancelled_sleeper_holds_up_no_one(self, executor: Executor) -> None:
        """Sleepers wake on time after an earlier or a later sleeper was cancelled."""
        woke: list[str] = []

        async def nap(name: str, units: int) -> None:
            await executor.sleep(units * self.unit)
            woke.append(name)

        with self._hang_guard():
            async with anyio.create_task_group() as tg:
                tg.start_soon(nap, "b", 4)
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(nap, "early", 2)
                    doomed.start_soon(nap, "late", _THOUSAND)
                    await executor.sleep(self.unit)
                    doomed.cancel_scope.cancel()
                tg.start_soon(nap, "c", 5)  # from about 1 unit: due at 6
        assert woke == ["b", "c"]

    # -- fail_after --------------------------------------------------------------------

    async def test_fail_after_raises_timeout_error(self, executor: Executor) -> None:
        """A body that sleeps past its deadline is cut short with ``TimeoutError``."""
        reached: list[str] = []
        before = executor.now()
        with self._hang_guard(), pytest.raises(TimeoutError) as info:
            async with executor.fail_after(self.unit):
                await executor.sleep(_THOUSAND * self.unit)
                reached.append("after the sleep")
        assert isinstance(info.value, TimeoutError)
        assert not isinstance(info.value, BaseExceptionGroup)
        assert reached == []
        elapsed = executor.now() - before
        assert self.unit - self.resolution <= elapsed < _THOUSAND * self.unit

    @pytest.mark.parametrize("factor", [0, -1])
    async def test_a_past_deadline_fires(self, executor: Executor, factor: int) -> None:
        """A deadline of zero or less seconds has passed: a body that sleeps times out."""
        with self._hang_guard(), pytest.raises(TimeoutError):
            async with executor.fail_after(factor * self.unit):
                await executor.sleep(_THOUSAND * self.unit)

    async def test_fail_after_lets_a_body_in_time_finish(self, executor: Executor) -> None:
        """A body that finishes before its deadline completes normally."""
        done: list[str] = []
        async with executor.fail_after(_THOUSAND * self.unit):
            await executor.sleep(self.unit)
            done.append("body")
        async with executor.fail_after(_THOUSAND * self.unit):
            done.append("no await")
        assert done == ["body", "no await"]

    async def test_fail_after_none_has_no_deadline(self, executor: Executor) -> None:
        """``fail_after(None)`` lets its body sleep as long as it likes."""
        before = executor.now()
        async with executor.fail_after(None):
            await executor.sleep(3 * self.unit)
        assert executor.now() - before >= 3 * self.unit - self.resolution

    async def test_an_exited_scope_leaves_no_deadline_behind(self, executor: Executor) -> None:
        """Sleeping past the deadline of a scope already left (in time or not) is fine."""
        async with executor.fail_after(2 * self.unit):
            await executor.sleep(0)
        with pytest.raises(TimeoutError):
            async with executor.fail_after(self.unit):
                await executor.sleep(_THOUSAND * self.unit)
        await executor.sleep(4 * self.unit)  # past both deadlines: nothing fires
        async with executor.fail_after(_THOUSAND * self.unit):
            await executor.sleep(self.unit)

    async def test_body_errors_pass_through_unchanged(self, executor: Executor) -> None:
        """An exception from the body arrives as itself, not wrapped in an exception group."""
        cause = ValueError("inner")
        for pause in (None, 0.0, self.unit):
            error = KeyError("boom")
            with pytest.raises(KeyError) as info:
                async with executor.fail_after(_THOUSAND * self.unit):
                    if pause is not None:
                        await executor.sleep(pause)
                    raise error from cause
            assert info.value is error
            assert info.value.__cause__ is cause

    async def test_a_timed_out_body_is_cancelled_cleanly(self, executor: Executor) -> None:
        """The body's ``finally`` runs on timeout, and the executor works afterwards."""
        cleaned: list[str] = []
        with self._hang_guard():
            with pytest.raises(TimeoutError):
                async with executor.fail_after(self.unit):
                    try:
                        await executor.sleep(_THOUSAND * self.unit)
                    finally:
                        cleaned.append("finally")
            assert cleaned == ["finally"]
            before = executor.now()
            await executor.sleep(self.unit)
            assert executor.now() - before >= self.unit - self.resolution
            async with executor.fail_after(_THOUSAND * self.unit):
                await executor.sleep(self.unit)

    async def test_inner_deadline_fires_and_outer_scope_goes_on(self, executor: Executor) -> None:
        """A shorter inner deadline raises in the outer scope, which continues normally."""
        reached: list[str] = []
        with self._hang_guard():
            async with executor.fail_after(_THOUSAND * self.unit):
                with pytest.raises(TimeoutError):
                    async with executor.fail_after(self.unit):
                        await executor.sleep(_THOUSAND * self.unit)
                await executor.sleep(self.unit)
                reached.append("outer goes on")
        assert reached == ["outer goes on"]

    async def test_outer_deadline_is_not_the_inner_scopes_timeout(self, executor: Executor) -> None:
        """When the outer deadline fires, the inner scope lets it through, not as its own."""
        seen: list[str] = []
        before = executor.now()
        with self._hang_guard(), pytest.raises(TimeoutError):
            async with executor.fail_after(self.unit):
                try:
                    async with executor.fail_after(_THOUSAND * self.unit):
                        await executor.sleep(_THOUSAND * self.unit)
                except TimeoutError:
                    seen.append("inner raised TimeoutError")
                seen.append("after the inner scope")
        assert seen == []
        assert executor.now() - before < _THOUSAND * self.unit

    async def test_outside_cancellation_is_not_a_timeout(self, executor: Executor) -> None:
        """A cancel scope around ``fail_after`` cancels the body; no ``TimeoutError`` appears."""
        seen: list[str] = []
        with self._hang_guard():
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def cancel_soon() -> None:
                    await executor.sleep(self.unit)
                    scope.cancel()

                tg.start_soon(cancel_soon)
                with scope:
                    try:
                        async with executor.fail_after(_THOUSAND * self.unit):
                            await executor.sleep(_THOUSAND * self.unit)
                    except TimeoutError:
                        seen.append("TimeoutError")
                    seen.append("after the scope")
        assert scope.cancelled_caught
        assert seen == []

    async def test_concurrent_scopes_are_independent(self, executor: Executor) -> None:
        """In concurrent tasks, each scope times out (or not) on its own deadline only."""
        outcome: dict[str, str] = {}

        async def run(name: str, deadline: float | None, sleep: float) -> None:
            try:
                async with executor.fail_after(deadline):
                    await executor.sleep(sleep)
            except TimeoutError:
                outcome[name] = "timed out"
            else:
                outcome[name] = "done"

        u = self.unit
        with self._hang_guard():
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "short deadline", u, _THOUSAND * u)
                tg.start_soon(run, "long deadline", _THOUSAND * u, 3 * u)
                tg.start_soon(run, "no deadline", None, 2 * u)
                tg.start_soon(run, "another short", 2 * u, _THOUSAND * u)
        assert outcome == {
            "short deadline": "timed out",
            "long deadline": "done",
            "no deadline": "done",
            "another short": "timed out",
        }

    # -- run_sync ----------------------------------------------------------------------

    async def test_run_sync_returns_the_value(self, executor: Executor) -> None:
        """``run_sync`` returns the function's very return value."""
        value = object()
        assert await executor.run_sync(lambda: value) is value

    async def test_run_sync_calls_the_function_once(self, executor: Executor) -> None:
        """The function runs exactly once, and has run when ``run_sync`` returns."""
        calls: list[str] = []

        def work() -> str:
            calls.append("called")
            return "done"

        assert await executor.run_sync(work) == "done"
        assert calls == ["called"]

    async def test_run_sync_raises_the_functions_error_unchanged(self, executor: Executor) -> None:
        """What the function raises comes out of ``run_sync`` as itself."""
        cause = ValueError("inner")
        error = ZeroDivisionError("boom")

        def boom() -> None:
            raise error from cause

        with pytest.raises(ZeroDivisionError) as info:
            await executor.run_sync(boom)
        assert info.value is error
        assert info.value.__cause__ is cause

    async def test_run_sync_under_a_deadline(self, executor: Executor) -> None:
        """``run_sync`` inside a ``fail_after`` scope (as the engine calls functions) works."""
        async with executor.fail_after(_THOUSAND * self.unit):
            assert await executor.run_sync(lambda: 6 * 7) == 42
        with pytest.raises(KeyError):
            async with executor.fail_after(_THOUSAND * self.unit):
                await executor.run_sync(lambda: dict[str, int]()["missing"])

    # -- random ------------------------------------------------------------------------

    def test_random_is_in_the_unit_interval(self, executor: Executor) -> None:
        """``random()`` returns floats in [0, 1) that vary and spread over the interval."""
        values = [executor.random() for _ in range(_THOUSAND)]
        assert all(isinstance(v, float) and 0.0 <= v < 1.0 for v in values)
        assert len(set(values)) > 10
        assert min(values) < 0.25
        assert max(values) > 0.75
