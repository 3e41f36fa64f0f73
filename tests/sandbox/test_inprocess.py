"""``InProcessSandbox``'s own settings (its behaviour is the contract's)."""

from __future__ import annotations

import pytest

from orchestra.errors import SandboxError
from orchestra.sandbox import InProcessSandbox

pytestmark = pytest.mark.anyio


async def test_max_output_chars_is_the_limit_it_enforces() -> None:
    sandbox = InProcessSandbox(max_output_chars=20)
    assert sandbox.max_output_chars == 20
    assert await sandbox.evaluate("'x'.repeat(10)", {}) == "x" * 10
    with pytest.raises(SandboxError, match="output limit"):
        await sandbox.evaluate("'x'.repeat(30)", {})
