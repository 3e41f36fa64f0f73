"""Helpers for testing processes in a host's own test suite.

``make_test_engine()`` gives an engine on a virtual clock with mocked HTTP; ``MockHTTP``
serves canned answers through ``httpx.MockTransport``; the pytest plugin
``orchestra.testing.pytest_plugin`` provides the ``orchestra_engine`` and ``http_mock``
fixtures.
"""

from orchestra.executors import InMemoryExecutor, VirtualClock
from orchestra.testing._business import BusinessTest
from orchestra.testing._engine import make_test_engine
from orchestra.testing._mocks import MockHTTP, MockRoute

__all__ = [
    "BusinessTest",
    "InMemoryExecutor",
    "MockHTTP",
    "MockRoute",
    "VirtualClock",
    "make_test_engine",
]
