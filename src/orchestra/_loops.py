"""Which event loop runs the caller: orchestra's fast paths need asyncio's own.

The engine is anyio code and runs on trio too; a few parts (the sandbox pool's
pipelining, the HTTP short path, group commit, the virtual clock) use asyncio's loop
directly and take a plain path elsewhere. :func:`asyncio_loop` tells them which.
"""

from __future__ import annotations

import asyncio

__all__ = ["asyncio_loop"]


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or ``None`` when the caller runs on another loop (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
