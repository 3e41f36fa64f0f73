"""Test a business process with a sample payload: in memory, on a virtual clock, no server."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from orchestra._json import JSON
from orchestra.engine import Engine, PublishResult, RunInfo
from orchestra.executors import InMemoryExecutor
from orchestra.model import Process
from orchestra.model._duration import parse_duration
from orchestra.testing._engine import make_test_engine
from orchestra.testing._mocks import MockHTTP, MockRoute

__all__ = ["BusinessTest"]


class BusinessTest:
    """Runs one business process end to end in memory, for a test suite.

    ``mocks`` is a :class:`MockHTTP`, a list of routes, or the path of a ``mocks.json``;
    other keywords (``functions``, ``actions``, ``secrets``...) go to the engine. The
    process is deployed on entry; :meth:`start` starts the run under test, which
    :meth:`publish` (events), :meth:`advance` (the virtual clock) and the assertions act
    on::

        async with BusinessTest(process, mocks="mocks.json") as t:
            await t.start({"po": {"number": "4500001"}})
            await t.advance("P5D")
            await t.assert_path(["send_form:completed", "wait_form:timed_out", ...])
    """

    def __init__(
        self,
        process: Process,
        *,
        mocks: MockHTTP | Iterable[MockRoute] | str | os.PathLike[str] | None = None,
        **engine_options: Any,
    ) -> None:
        self.process = process
        if isinstance(mocks, (str, os.PathLike)):
            self.mocks = MockHTTP.from_file(mocks)
        elif isinstance(mocks, MockHTTP):
            self.mocks = mocks
        else:
            self.mocks = MockHTTP(mocks or ())
        self.executor = InMemoryExecutor()
        self.engine: Engine = make_test_engine(
            mocks=self.mocks, executor=self.executor, **engine_options
        )
        self.run_id: str | None = None

    async def __aenter__(self) -> BusinessTest:
        await self.engine.__aenter__()
        await self.engine.deploy(self.process)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.engine.__aexit__(exc_type, exc, tb)

    async def start(self, payload: JSON = None) -> str:
        """Start the run under test with ``payload`` and return its id.

        A process triggered by an event is started by publishing it, so the payload is
        checked against the event's schema.
        """
        self.run_id = await self.engine.start(self.process.name, payload)
        return self.run_id

    async def publish(
        self, name: str, payload: JSON = None, *, id: str | None = None
    ) -> PublishResult:
        """Publish an event to the engine (resuming or starting runs)."""
        return await self.engine.publish(name, payload, id=id)

    async def advance(self, duration: str | float) -> None:
        """Move the virtual clock by an ISO 8601 duration (``"P5D"``) or seconds; fire deadlines."""
        seconds = parse_duration(duration) if isinstance(duration, str) else float(duration)
        await self.executor.clock.advance(seconds)

    async def run(self, run_id: str | None = None) -> RunInfo:
        """Return the run under test (or ``run_id``)."""
        rid = run_id or self.run_id
        if rid is None:
            msg = "no run was started yet: call start() first"
            raise AssertionError(msg)
        return await self.engine.run(rid)

    async def assert_path(self, expected: list[str], *, run_id: str | None = None) -> None:
        """Assert the run's path (``"step:status"`` strings, see :attr:`RunInfo.path`).

        An entry without ``:status`` matches the step with any status.
        """
        path = (await self.run(run_id)).path
        got = [p if ":" in e else p.split(":")[0] for p, e in zip(path, expected, strict=False)]
        if len(path) != len(expected) or got != expected:
            msg = f"path was {path}, expected {expected}"
            raise AssertionError(msg)

    async def assert_status(self, status: str, *, run_id: str | None = None) -> None:
        """Assert the run's status (``running``, ``waiting``, ``completed``, ...)."""
        run = await self.run(run_id)
        if run.status != status:
            msg = f"run status is {run.status!r}, expected {status!r}" + (
                f" (error: {run.error})" if run.error else ""
            )
            raise AssertionError(msg)

    async def assert_context(
        self, expected: Mapping[str, JSON], *, run_id: str | None = None
    ) -> None:
        """Assert that the context holds ``expected``: dotted paths (``"steps.a.b"``) to values."""
        ctx: JSON = (await self.run(run_id)).context
        for dotted, want in expected.items():
            value = ctx
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != want:
                msg = f"context {dotted} is {value!r}, expected {want!r}"
                raise AssertionError(msg)

    def requests(self, method: str | None = None, url_prefix: str = "") -> list[Any]:
        """Return the HTTP requests the run made (``httpx.Request`` objects)."""
        return self.mocks.calls(method, url_prefix)
