"""Fixtures of the sandbox tests: one event loop and one small worker pool per session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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


@pytest.fixture(params=["inprocess", "worker"])
def sandbox(
    request: pytest.FixtureRequest,
    inprocess_sandbox: InProcessSandbox,
    worker_sandbox: WorkerSandbox,
) -> Sandbox:
    """Each implementation of the interface in turn (the contract's parameter)."""
    return inprocess_sandbox if request.param == "inprocess" else worker_sandbox
