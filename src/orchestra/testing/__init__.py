"""Helpers for testing processes in a host's own test suite.

``make_test_engine()`` gives an engine on a virtual clock with mocked HTTP; ``MockHTTP``
serves canned answers through ``httpx.MockTransport``; ``BusinessTest`` runs a whole
business process with a sample payload; the pytest plugin
``orchestra.testing.pytest_plugin`` provides the ``orchestra_engine`` and ``http_mock``
fixtures. ``ExecutorContract``, ``SandboxContract`` and ``StoreContract`` are the contract
test suites an adapter author runs against a new executor, sandbox or store (they need
pytest).
"""

from typing import TYPE_CHECKING, Any

from orchestra.executors import InMemoryExecutor, VirtualClock
from orchestra.testing._business import BusinessTest
from orchestra.testing._engine import TestSecrets, make_test_engine
from orchestra.testing._mocks import MockHTTP, MockRoute

if TYPE_CHECKING:
    from orchestra.executors.contract import ExecutorContract
    from orchestra.sandbox.contract import SandboxContract
    from orchestra.stores.contract import StoreContract

__all__ = [
    "BusinessTest",
    "ExecutorContract",
    "InMemoryExecutor",
    "MockHTTP",
    "MockRoute",
    "SandboxContract",
    "StoreContract",
    "TestSecrets",
    "VirtualClock",
    "make_test_engine",
]

# The contract suites import pytest: load them only when asked for.
_CONTRACTS = {
    "ExecutorContract": "orchestra.executors.contract",
    "SandboxContract": "orchestra.sandbox.contract",
    "StoreContract": "orchestra.stores.contract",
}


def __getattr__(name: str) -> Any:
    """Import the contract suites on first access."""
    if name not in _CONTRACTS:
        msg = f"module 'orchestra.testing' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    return getattr(importlib.import_module(_CONTRACTS[name]), name)
