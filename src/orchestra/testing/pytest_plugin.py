"""pytest fixtures for host test suites.

Enable with ``pytest_plugins = ["orchestra.testing.pytest_plugin"]`` in ``conftest.py``.
Async tests run under anyio's pytest plugin (``@pytest.mark.anyio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestra.engine import Engine
from orchestra.testing._engine import make_test_engine
from orchestra.testing._mocks import MockHTTP

__all__ = ["http_mock", "orchestra_engine"]


@pytest.fixture(name="http_mock")
def http_mock() -> MockHTTP:
    """An empty :class:`~orchestra.testing.MockHTTP`; add routes in the test."""
    return MockHTTP()


@pytest.fixture(name="orchestra_engine")
async def orchestra_engine(http_mock: MockHTTP) -> AsyncIterator[Engine]:
    """An engine from :func:`~orchestra.testing.make_test_engine` serving ``http_mock``."""
    async with make_test_engine(mocks=http_mock) as engine:
        yield engine
