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
        """Return an ``anyio.fail_after`` scope (or no deadline for ``None``)."""
        return _fail_after(seconds)

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
