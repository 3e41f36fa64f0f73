"""The local executor: real time, anyio, blocking work in worker threads."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import anyio
import anyio.to_thread

from orchestra.executors._base import Executor

__all__ = ["LocalExecutor"]

T = TypeVar("T")


class LocalExecutor(Executor):
    """Runs work on the current anyio event loop in real time (the default)."""

    def __init__(self, *, thread_limit: int | None = None) -> None:
        self._limiter = anyio.CapacityLimiter(thread_limit) if thread_limit else None
        self._random = random.SystemRandom()

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real (zero or less only yields)."""
        await anyio.sleep(max(0.0, seconds))

    def fail_after(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        """Return a scope that raises ``TimeoutError`` after ``seconds`` (none for ``None``).

        On asyncio it is ``asyncio.timeout`` (a third of the cost of an anyio cancel scope
        in a generator, on every HTTP call); on other event loops ``anyio.fail_after``.
        """
        import asyncio  # imported here: only this method changed for speed
        import contextlib

        if seconds is None:
            return contextlib.nullcontext()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _fail_after(seconds)
        return asyncio.timeout(seconds)  # type: ignore[return-value]

    async def run_sync(self, func: Callable[[], T]) -> T:
        """Run ``func`` in a worker thread."""
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)

    def random(self) -> float:
        """Return a random float in [0, 1)."""
        return self._random.random()


@asynccontextmanager
async def _fail_after(seconds: float | None) -> AsyncIterator[None]:
    if seconds is None:
        yield
        return
    with anyio.fail_after(seconds):
        yield
