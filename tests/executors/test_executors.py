"""Executors: what each executor does beyond the contract, and the virtual clock's own behaviour.

The contract both keep is ``ExecutorContract``, run in ``test_contract.py``.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from orchestra.executors import InMemoryExecutor, LocalExecutor, VirtualClock

pytestmark = pytest.mark.anyio


class TestLocalExecutor:
    async def test_run_sync_uses_a_worker_thread(self) -> None:
        """Blocking work runs off the event loop's thread."""
        main = threading.get_ident()
        assert await LocalExecutor().run_sync(threading.get_ident) != main

    async def test_now_is_wall_time(self) -> None:
        """now() is time.time()."""
        assert abs(LocalExecutor().now() - time.time()) < 1


class TestInMemoryExecutor:
    async def test_five_day_sleep_takes_no_wall_time(self) -> None:
        """Sleeping five virtual days returns at once and moves the clock five days."""
        ex = InMemoryExecutor()
        start, wall = ex.now(), time.monotonic()
        await ex.sleep(5 * 86400)
        assert ex.now() - start == 5 * 86400
        assert time.monotonic() - wall < 1

    async def test_fail_after_on_virtual_clock(self) -> None:
        """A virtual timeout fires at exactly its virtual deadline, with no wall time."""
        ex = InMemoryExecutor()
        start, wall = ex.now(), time.monotonic()
        with pytest.raises(TimeoutError):
            async with ex.fail_after(3600):
                await ex.sleep(86400)
        assert ex.now() - start == 3600
        assert time.monotonic() - wall < 1

    async def test_same_seed_same_randoms(self) -> None:
        """Jitter is deterministic per seed."""
        a, b, c = InMemoryExecutor(seed=1), InMemoryExecutor(seed=1), InMemoryExecutor(seed=2)
        xs = [a.random() for _ in range(5)]
        assert xs == [b.random() for _ in range(5)]
        assert xs != [c.random() for _ in range(5)]

    async def test_run_sync_runs_inline(self) -> None:
        """Blocking work runs inline on the loop's thread (deterministic order)."""
        assert await InMemoryExecutor().run_sync(threading.get_ident) == threading.get_ident()

    async def test_shared_clock(self) -> None:
        """Executors given one clock share its time."""
        clock = VirtualClock(start=100.0)
        a, b = InMemoryExecutor(clock=clock), InMemoryExecutor(clock=clock)
        await a.sleep(10)
        assert b.now() == 110.0


class TestVirtualClock:
    async def test_starts_where_told(self) -> None:
        """The clock starts at the given time."""
        assert VirtualClock(start=5.0).now() == 5.0

    async def test_concurrent_sleepers_wake_in_deadline_order(self) -> None:
        """Many sleepers wake in deadline order, each at its own deadline."""
        clock = VirtualClock(start=0.0)
        woke: list[tuple[float, float]] = []

        async def nap(d: float) -> None:
            await clock.sleep(d)
            woke.append((d, clock.now()))

        async with anyio.create_task_group() as tg:
            for d in (50, 10, 40, 20, 30, 10.5, 1e6):
                tg.start_soon(nap, d)
        assert woke == sorted((d, float(d)) for d in (50, 10, 40, 20, 30, 10.5, 1e6))

    async def test_equal_deadlines_wake_in_start_order(self) -> None:
        """Sleepers with one deadline wake first come, first served."""
        clock = VirtualClock(start=0.0)
        woke: list[int] = []

        async def nap(i: int) -> None:
            await clock.sleep(5)
            woke.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(nap, i)
        assert woke == list(range(5))

    async def test_advance_wakes_due_sleepers_only(self) -> None:
        """advance() moves time by hand and wakes exactly the sleepers due by then."""
        clock = VirtualClock(start=0.0)
        woke: list[float] = []
        release = anyio.Event()

        async def nap(d: float) -> None:
            await clock.sleep(d)
            woke.append(clock.now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(nap, 10)
            tg.start_soon(nap, 20)
            await anyio.lowlevel.checkpoint()
            await clock.advance(5)
            assert clock.now() == 5 and woke == []
            await clock.advance(10)
            assert woke == [10.0]
            assert clock.now() == 15
            await clock.advance(5)
            assert woke == [10.0, 20.0]
            release.set()

    async def test_time_does_not_move_while_someone_works(self) -> None:
        """The clock stays put while another task is runnable."""
        clock = VirtualClock(start=0.0)
        seen: list[float] = []

        async def busy() -> None:
            for _ in range(50):
                seen.append(clock.now())
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.sleep, 100)
            tg.start_soon(busy)
        assert seen == [0.0] * 50
        assert clock.now() == 100

    async def test_cancelled_sleeper_does_not_wedge_others(self) -> None:
        """Cancelling a sleeper (even the one driving the clock) lets the others wake."""
        clock = VirtualClock(start=0.0)
        woke: list[str] = []
        scopes: list[anyio.CancelScope] = []

        async def victim() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await clock.sleep(1)
                woke.append("victim")

        async def nap(name: str, d: float) -> None:
            await clock.sleep(d)
            woke.append(name)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                tg.start_soon(nap, "b", 10)
                tg.start_soon(nap, "c", 20)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                scopes[0].cancel()
        assert woke == ["b", "c"]
        assert clock.now() == 20

    async def test_cancelled_later_sleeper_does_not_wedge_others(self) -> None:
        """Cancelling a sleeper that is not driving leaves the rest on time."""
        clock = VirtualClock(start=0.0)
        woke: list[str] = []

        async def nap(name: str, d: float) -> None:
            await clock.sleep(d)
            woke.append(name)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(nap, "a", 10)
                async with anyio.create_task_group() as inner:
                    inner.start_soon(nap, "x", 15)
                    await anyio.lowlevel.checkpoint()
                    inner.cancel_scope.cancel()
                tg.start_soon(nap, "b", 20)
        assert woke == ["a", "b"]
        assert clock.now() == 20

    async def test_finished_timeout_watchers_do_not_wedge_the_clock(self) -> None:
        """Many fail_after scopes whose bodies finish early leave other sleepers waking."""
        ex = InMemoryExecutor()
        start = ex.now()
        woke: list[float] = []

        async def quick(i: int) -> None:
            async with ex.fail_after(10):
                for _ in range(i):
                    await anyio.lowlevel.checkpoint()

        async def slow() -> None:
            async with ex.fail_after(60):
                await ex.sleep(30)
            woke.append(ex.now() - start)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(quick, i)
                tg.start_soon(slow)
        assert woke == [30]
