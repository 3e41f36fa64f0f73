"""Running coroutines concurrently, on asyncio cheaply and on any anyio event loop.

A step runs its processors, and a ``for_each`` its items, as concurrent coroutines. On
asyncio (the usual loop) plain tasks and semaphores cost a fraction of anyio's task groups
and limiters, and they are on the critical path of every payload; on other event loops
(trio) anyio's are used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import anyio

from orchestra._loops import asyncio_loop

__all__ = ["Group", "limiter", "on_asyncio"]


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (then asyncio's cheaper primitives serve)."""
    return asyncio_loop() is not None


class Group:
    """Runs coroutines concurrently until all have ended; :meth:`cancel` stops the rest.

    On asyncio these are plain tasks in an ``asyncio.TaskGroup`` (a fifth of the cost of
    an anyio task group per task); on other event loops, an anyio task group.
    """

    __slots__ = ("_native", "_scope", "_tasks")

    def __init__(self, native: bool) -> None:
        self._native = native
        self._tasks: list[asyncio.Task[None]] = []
        self._scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        """Cancel every coroutine of the group but the one calling."""
        if self._scope is not None:
            self._scope.cancel()
            return
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def run(self, coros: list[Coroutine[Any, Any, None]]) -> None:
        """Run ``coros`` and return when all have ended."""
        if not coros:
            return
        if self._native:
            async with asyncio.TaskGroup() as tg:
                self._tasks = [tg.create_task(c) for c in coros]
            return
        async with anyio.create_task_group() as atg:
            self._scope = atg.cancel_scope
            for c in coros:
                atg.start_soon(_wait, c)


async def _wait(coro: Coroutine[Any, Any, None]) -> None:
    await coro


def limiter(n: int, native: bool) -> asyncio.Semaphore | anyio.CapacityLimiter:
    """At most ``n`` at once: an ``asyncio.Semaphore`` on asyncio, else an anyio limiter."""
    return asyncio.Semaphore(n) if native else anyio.CapacityLimiter(n)
