"""Executors: where and how a run's work executes, and on which clock."""

from orchestra.executors._base import Executor
from orchestra.executors._inmemory import InMemoryExecutor, VirtualClock
from orchestra.executors._local import LocalExecutor

__all__ = ["Executor", "InMemoryExecutor", "LocalExecutor", "VirtualClock"]
