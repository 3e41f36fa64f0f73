"""The in-memory executor for test suites: deterministic, on a virtual clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import anyio

from orchestra._loops import asyncio_loop
from orchestra.executors._base import Executor

__all__ = ["InMemoryExecutor", "VirtualClock"]

T = TypeVar("T")


class _Sleeper:
    __slots__ = ("deadline", "due", "event", "seq")

    def __init__(self, deadline: float, seq: int) -> None:
        self.deadline = deadline
        self.seq = seq
        self.due = False
        self.event = anyio.Event()

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class VirtualClock:
    """A clock whose time moves only when every task is waiting on it.

    When all tasks on the event loop are blocked and some wait in :meth:`sleep`, the
    clock jumps to the earliest deadline and wakes that sleeper. Time can also be moved
    by hand with :meth:`advance`. Work that waits on real I/O or threads counts as
    blocked, so use it only with in-memory parts (mock HTTP, in-process sandbox).
    Needs the asyncio backend.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._heap: list[_Sleeper] = []
        self._seq = itertools.count()
        self._driving = False

    def now(self) -> float:
        """Return the virtual time in seconds."""
        return self._now

    async def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, waking every sleeper due by then in order."""
        target = self._now + seconds
        while self._heap and self._heap[0].deadline <= target:
            self._wake(heapq.heappop(self._heap))
            await _settle()
        self._now = target

    async def sleep(self, seconds: float) -> None:
        """Wait until the virtual clock has moved ``seconds`` forward."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        me = _Sleeper(self._now + seconds, next(self._seq))
        heapq.heappush(self._heap, me)
        try:
            while not me.due:
                if self._driving:
                    # Woken either because our time came or to take over driving.
                    await me.event.wait()
                    me.event = anyio.Event()
                    continue
                await self._drive(me)
        finally:
            if not me.due and me in self._heap:
                self._heap.remove(me)
                heapq.heapify(self._heap)
            # Whether we were driving or were just handed the driving (and are leaving,
            # perhaps cancelled), someone still asleep must drive on.
            if not self._driving and self._heap:
                self._heap[0].event.set()

    def _wake(self, s: _Sleeper) -> None:
        self._now = max(self._now, s.deadline)
        s.due = True
        s.event.set()

    async def _drive(self, me: _Sleeper) -> None:
        self._driving = True
        try:
            while not me.due:
                await _settle()
                if me.due or not self._heap:  # pragma: no cover - we are in the heap ourselves
                    return
                self._wake(heapq.heappop(self._heap))
        finally:
            self._driving = False


# Tasks inside _settle, per event loop: each keeps one callback in the ready queue while
# it spins, so they must not count each other as work (else two would spin forever).
_settling: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


async def _settle() -> None:
    """Yield until no other callback is ready to run (every other task is blocked)."""
    loop = asyncio_loop()
    if loop is None:
        msg = (
            "InMemoryExecutor's virtual clock needs the asyncio backend (it reads asyncio's "
            "ready queue); on trio, use LocalExecutor"
        )
        raise RuntimeError(msg) from None
    _settling[loop] = _settling.get(loop, 0) + 1
    try:
        await asyncio.sleep(0)
        # Another settling task's own callback is not work; anything beyond those is.
        # Polling the ready queue is the point here, so no event will do (ASYNC110).
        while len(getattr(loop, "_ready", ())) > _settling[loop] - 1:  # noqa: ASYNC110
            await asyncio.sleep(0)
    finally:
        _settling[loop] -= 1


class InMemoryExecutor(Executor):
    """Runs work deterministically on a :class:`VirtualClock`, for test suites.

    Timeouts, backoff and resume deadlines cost no wall time; blocking functions run
    inline (so their order is deterministic); jitter comes from a seeded generator.
    """

    def __init__(self, *, clock: VirtualClock | None = None, seed: int = 0) -> None:
        self.clock = clock or VirtualClock()
        self._random = random.Random(seed)  # noqa: S311 - jitter, not cryptography

    def now(self) -> float:
        """Return the virtual time."""
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the virtual clock."""
        await self.clock.sleep(seconds)

    def fail_after(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        """Return a scope that times out on the virtual clock."""
        return self._fail_after(seconds)

    @asynccontextmanager
    async def _fail_after(self, seconds: float | None) -> AsyncIterator[None]:
        if seconds is None:
            yield
            return
        timed_out = False
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def watch() -> None:
                    nonlocal timed_out
                    await self.clock.sleep(seconds)
                    timed_out = True
                    scope.cancel()

                tg.start_soon(watch)
                try:
                    with scope:
                        yield
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The watcher never raises: whatever the group holds came from the body, which
            # must see its own exception, not a group (as with ``anyio.fail_after``).
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]
        if error is not None:
            try:
                raise error
            finally:
                error = None
        if timed_out:
            raise TimeoutError

    async def run_sync(self, func: Callable[[], T]) -> T:
        """Run ``func`` inline."""
        await anyio.lowlevel.checkpoint()
        return func()

    def random(self) -> float:
        """Return the next number of the seeded generator."""
        return self._random.random()
