"""The resume deadlines one worker fires: an in-memory heap and one task that sleeps on it.

A waiting run costs a heap entry here, no task. The heap holds the waits this worker
parked and the stored waits whose deadline falls within the *horizon*: opening an engine
over 100,000 waiting runs loads only the deadlines of the next few minutes
(``Store.due_waits(now + horizon)``, an index range), and the timer task loads the next
stretch each time the clock reaches the end of what it loaded. Deadlines of other
workers' runs are found by the recovery's poll (``Store.due_waits``) if their worker
died. An entry is stale once its run was resumed (:meth:`Timers.forget`) or waits with
another deadline; stale entries are skipped when they come up, and whoever fires a
deadline checks the run in the store anyway.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable

import anyio

from orchestra.executors import Executor, VirtualClock
from orchestra.executors._inmemory import _Sleeper
from orchestra.stores import Wait

__all__ = ["HORIZON", "Timers"]

HORIZON = 300.0
"""Seconds of stored deadlines the heap holds ahead of the clock."""


class Timers:
    """Deadlines by time, on the executor's clock."""

    def __init__(self, executor: Executor, *, horizon: float = HORIZON) -> None:
        self.executor = executor
        self.horizon = horizon
        self.loaded_until: float | None = None
        """Every stored deadline up to this time is in the heap (``None``: nothing loaded)."""
        self._heap: list[tuple[float, int, Wait]] = []
        self._deadline: dict[str, float] = {}
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until = float("inf")

    def schedule(self, wait: Wait) -> None:
        """Fire ``wait`` when its deadline comes (nothing if it has none)."""
        if wait.deadline is None or self._deadline.get(wait.run_id) == wait.deadline:
            return
        self._deadline[wait.run_id] = wait.deadline
        heapq.heappush(self._heap, (wait.deadline, next(self._seq), wait))
        if self._wake is not None:
            self._wake.set()
        if self._sleep is not None and wait.deadline < self._sleep_until:
            self._sleep.cancel()

    async def load(self, due_waits: Callable[[float], Awaitable[list[Wait]]]) -> None:
        """Schedule the stored waits due within the horizon (``due_waits(until)``)."""
        until = self.executor.now() + self.horizon
        for wait in await due_waits(until):
            self.schedule(wait)
        self.loaded_until = until

    def forget(self, run_id: str) -> None:
        """The run no longer waits on the deadline scheduled for it."""
        self._deadline.pop(run_id, None)

    def due(self) -> list[Wait]:
        """Take the waits whose deadline has passed out of the heap, earliest first."""
        now = self.executor.now()
        due: list[Wait] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, wait = heapq.heappop(self._heap)
            if self._deadline.get(wait.run_id) != deadline:
                continue  # stale entry: the run was resumed or waits elsewhere now
            del self._deadline[wait.run_id]
            due.append(wait)
        return due

    async def wait_due(self) -> bool:
        """Return when the earliest deadline has come (True) or the loaded stretch ends.

        Returns False when the clock reaches :attr:`loaded_until` first: time to
        :meth:`load` the next stretch. Sleeps while there is nothing to wait for.
        """
        while True:
            end = float("inf") if self.loaded_until is None else self.loaded_until
            first = self._heap[0][0] if self._heap else float("inf")
            now = self.executor.now()
            if first <= now:
                return True
            if end <= now:
                return False
            if first == end == float("inf"):
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            until = min(first, end)
            with anyio.CancelScope() as scope:
                self._sleep, self._sleep_until = scope, until
                await _sleep(self.executor, until - now)
            self._sleep, self._sleep_until = None, float("inf")


async def _sleep(executor: Executor, seconds: float) -> None:
    """Sleep on the executor's clock; on a virtual clock, wait for time to be moved.

    A resume deadline days away must not make a virtual clock jump by itself whenever the
    loop is idle: it fires when a test advances the clock (or another sleeper drives it).
    """
    clock = getattr(executor, "clock", None)
    if not isinstance(clock, VirtualClock):
        await executor.sleep(seconds)
        return
    me = _Sleeper(clock.now() + seconds, next(clock._seq))
    heapq.heappush(clock._heap, me)
    try:
        await me.event.wait()
    finally:
        if me in clock._heap:
            clock._heap.remove(me)
            heapq.heapify(clock._heap)
