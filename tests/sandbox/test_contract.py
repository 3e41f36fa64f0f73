"""Both sandboxes pass the interface contract."""

from __future__ import annotations

from orchestra.sandbox.contract import SandboxContract


class TestSandboxContract(SandboxContract):
    """Runs the contract against ``InProcessSandbox`` and ``WorkerSandbox``."""
