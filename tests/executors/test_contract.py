"""Both executors pass the interface contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestra.executors import Executor, InMemoryExecutor, LocalExecutor
from orchestra.executors.contract import ExecutorContract


class TestLocalExecutorContract(ExecutorContract):
    """Real time: short units keep the suite well under a second or two."""

    unit = 0.02

    @pytest.fixture
    def executor(self) -> Executor:
        return LocalExecutor()


class TestLocalExecutorWithThreadLimitContract(ExecutorContract):
    """A capacity limiter on worker threads changes nothing in the contract."""

    unit = 0.02

    @pytest.fixture
    def executor(self) -> Executor:
        return LocalExecutor(thread_limit=1)


class TestInMemoryExecutorContract(ExecutorContract):
    """Virtual time: an hour per unit costs no wall time."""

    unit = 3600.0

    @pytest.fixture
    def executor(self) -> Executor:
        return InMemoryExecutor()


def test_exported_lazily_from_orchestra_testing() -> None:
    """``orchestra.testing`` exports the suite; importing the package needs no pytest."""
    import orchestra.testing

    assert orchestra.testing.ExecutorContract is ExecutorContract
    code = (
        "import sys, orchestra.testing as t\n"
        "assert 'pytest' not in sys.modules\n"
        "assert t.ExecutorContract.__name__ == 'ExecutorContract'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
