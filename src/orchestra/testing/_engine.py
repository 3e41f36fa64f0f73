"""An engine wired for tests: in-memory executor, in-process sandbox, mocked HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestra.engine import Engine
from orchestra.executors import InMemoryExecutor
from orchestra.sandbox import InProcessSandbox, Sandbox
from orchestra.testing._mocks import MockHTTP

__all__ = ["make_test_engine"]


def make_test_engine(
    *,
    mocks: MockHTTP | None = None,
    sandbox: Sandbox | None = None,
    executor: InMemoryExecutor | None = None,
    secrets: Mapping[str, str] | None = None,
    **kw: Any,
) -> Engine:
    """Return an :class:`~orchestra.Engine` for a test suite.

    It runs on an :class:`~orchestra.executors.InMemoryExecutor` (virtual clock,
    deterministic order), the :class:`~orchestra.sandbox.InProcessSandbox` (fast; no
    isolation, fine for your own processes) and ``mocks`` for HTTP (an empty
    :class:`MockHTTP` if none is given, reachable as ``engine.mocks``). Other keywords go
    to :class:`~orchestra.Engine`.
    """
    executor = executor or InMemoryExecutor()
    mocks = mocks or MockHTTP()
    mocks.executor = mocks.executor or executor
    engine = Engine(
        sandbox=sandbox or InProcessSandbox(),
        executor=executor,
        client=mocks.client(),
        secrets={"test": "test", **(secrets or {})},
        **kw,
    )
    engine.mocks = mocks  # type: ignore[attr-defined]
    return engine
