"""The executor interface: the clock, timeouts, threads and randomness a run uses."""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

__all__ = ["Executor"]

T = TypeVar("T")


class Executor(abc.ABC):
    """Where and how a run's work executes.

    The engine never calls ``time``, ``anyio.sleep`` or ``random`` directly: it asks its
    executor, so a test suite can swap in :class:`~orchestra.executors.InMemoryExecutor`
    and make timeouts and backoff cost no wall time.
    """

    @abc.abstractmethod
    def now(self) -> float:
        """Return the current time in seconds since the epoch (real or virtual)."""

    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (real or virtual); zero or less returns at once."""

    @abc.abstractmethod
    def fail_after(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        """Return a context manager that raises ``TimeoutError`` if its body outlives ``seconds``.

        ``None`` means no deadline.
        """

    @abc.abstractmethod
    async def run_sync(self, func: Callable[[], T]) -> T:
        """Run a blocking function without blocking other work, and return its result."""

    @abc.abstractmethod
    def random(self) -> float:
        """Return a random float in [0, 1) (for jitter); deterministic in tests."""
