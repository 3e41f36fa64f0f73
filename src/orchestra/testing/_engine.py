"""An engine wired for tests: in-memory executor, in-process sandbox, mocked HTTP."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from orchestra.engine import Engine
from orchestra.executors import InMemoryExecutor
from orchestra.sandbox import InProcessSandbox, Sandbox
from orchestra.testing._mocks import MockHTTP

__all__ = ["TestSecrets", "make_test_engine"]


class TestSecrets(Mapping[str, str]):
    """Secrets for tests: the given ones, and ``"test-<name>"`` for any other name.

    Mocked APIs do not check credentials, so a test needs no real secret; the
    placeholder still shows up in the requests a test can assert on.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, given: Mapping[str, str] | None = None) -> None:
        self._given = dict(given or {})

    def __getitem__(self, name: str) -> str:
        return self._given.get(name, f"test-{name}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._given)

    def __len__(self) -> int:
        return len(self._given)


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
    :class:`MockHTTP` if none is given, reachable as ``engine.mocks``). Secrets not given
    read as ``"test-<name>"`` (see :class:`TestSecrets`). Other keywords go to
    :class:`~orchestra.Engine`.
    """
    executor = executor or InMemoryExecutor()
    mocks = mocks or MockHTTP()
    mocks.executor = mocks.executor or executor
    engine = Engine(
        sandbox=sandbox or InProcessSandbox(),
        executor=executor,
        client=mocks.client(),
        secrets=TestSecrets(secrets),
        **kw,
    )
    engine.mocks = mocks  # type: ignore[attr-defined]
    return engine
