"""Fixtures of the sandbox tests: one event loop and one small worker pool per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest

from orchestra._json import JSON
from orchestra.sandbox import InProcessSandbox, Sandbox, SandboxLimits, WorkerSandbox

MIB = 1024 * 1024

# Short deadlines and small caps keep the attack suite fast.
ATTACK_LIMITS = SandboxLimits(
    timeout=0.4, memory_bytes=256 * MIB, max_output_chars=1 * MIB, spares=1, start_timeout=30
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def worker_sandbox(anyio_backend: str) -> AsyncIterator[WorkerSandbox]:
    """A shared pool of two workers with attack-suite limits."""
    async with WorkerSandbox(2, limits=ATTACK_LIMITS) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def inprocess_sandbox() -> InProcessSandbox:
    return InProcessSandbox(max_output_chars=1 * MIB)


class EvaluateOnly(Sandbox):
    """A sandbox that implements only the abstract methods: ``evaluate_all`` is the default.

    It passes bindings to an in-process sandbox as they are, so it takes ``RawJSON`` too
    (the base class's batches hand them on to ``evaluate``).
    """

    accepts_raw_json = True

    def __init__(self, inner: Sandbox) -> None:
        self.inner = inner

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        return await self.inner.evaluate(source, bindings, name=name, timeout=timeout)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        await self.inner.check(source, name=name)


@pytest.fixture(params=["inprocess", "worker", "evaluate-only"])
def sandbox(
    request: pytest.FixtureRequest,
    inprocess_sandbox: InProcessSandbox,
    worker_sandbox: WorkerSandbox,
) -> Sandbox:
    """Each implementation of the interface in turn (the contract's parameter).

    ``evaluate-only`` checks the base class's own ``evaluate_all`` (one call per fragment).
    """
    if request.param == "inprocess":
        return inprocess_sandbox
    if request.param == "worker":
        return worker_sandbox
    return EvaluateOnly(inprocess_sandbox)
