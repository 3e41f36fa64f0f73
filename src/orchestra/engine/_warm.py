"""Warming the sandbox just before an HTTP answer is due.

A worker process that sat idle for a few milliseconds answers its next call several
times slower than a busy one: its CPU caches went cold meanwhile (measured on the
benchmark machine: 0.13-0.15 ms of JavaScript instead of 0.01-0.02 after 5-20 ms of
quiet). On a payload page that cost comes after every level of HTTP calls, when the
answer is shaped. :class:`Warmer` learns how long each HTTP call usually takes and,
shortly (:data:`LEAD`) before its answer is due, calls :meth:`Sandbox.warm
<orchestra.sandbox.Sandbox.warm>`, which lets a worker sandbox run a no-op call then.
It is a hint only: an answer that comes early cancels it, and nothing else changes.
"""

from __future__ import annotations

import asyncio

from orchestra._loops import asyncio_loop
from orchestra.sandbox import Sandbox

__all__ = ["Warmer"]

LEAD = 0.002
"""Seconds before an answer is due that the sandbox is warmed."""
SHORTEST = 0.003
"""Calls usually answered sooner than this are not worth a hint (the sandbox stays warm)."""
BUSY = 16
"""With this many HTTP calls in flight answers keep coming: the sandbox stays warm."""
KEYS = 1024
"""Calls whose typical duration is remembered (the oldest is forgotten first)."""
CREEP = 0.05
"""How fast a call's remembered duration rises toward slower answers (a low estimate:
answers seldom come sooner than the fastest recent one, and a duration measured here
also holds the wait for the event loop, which only adds)."""


class Expected:
    """One HTTP call in flight: when it was sent, and the hint waiting for its answer."""

    __slots__ = ("handle", "key", "loop", "sent")

    def __init__(
        self,
        key: tuple[str, str],
        sent: float,
        handle: asyncio.TimerHandle | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.key, self.sent, self.handle, self.loop = key, sent, handle, loop


_BUSY = Expected(("", ""), 0.0, None, None)
"""Sent while :data:`BUSY` calls were in flight: no hint, and its duration (queueing
included) is not learned."""


class Warmer:
    """Calls ``sandbox.warm()`` shortly before each HTTP answer is expected.

    :meth:`sent` when a call goes out, :meth:`answered` when its answer is in. Durations
    are remembered per method and URL template: the fastest recent one, creeping up
    toward slower answers (see :data:`CREEP`).
    Only under asyncio, and only for sandboxes that override :meth:`Sandbox.warm`;
    ``enabled=False`` (a virtual clock) turns it off.
    """

    def __init__(self, sandbox: Sandbox, *, enabled: bool = True) -> None:
        self.sandbox = sandbox
        own = type(sandbox).warm is not Sandbox.warm
        self._warm = sandbox.warm if own and enabled else None
        self._typical: dict[tuple[str, str], float] = {}
        self._inflight = 0

    def sent(self, method: str, url: str) -> Expected | None:
        """A call to ``url`` (its template) was sent: schedule the hint for its answer."""
        if self._warm is None:
            return None
        if self._inflight >= BUSY:
            self._inflight += 1
            return _BUSY
        loop = asyncio_loop()
        if loop is None:
            return None
        key = (method, url)
        now = loop.time()
        typical = self._typical.get(key)
        handle = None
        if typical is not None and typical >= SHORTEST:
            handle = loop.call_at(now + typical - LEAD, self._warm)
        self._inflight += 1
        return Expected(key, now, handle, loop)

    def answered(self, expected: Expected | None, *, ok: bool) -> None:
        """The call's answer is in (``ok``: a plain answer whose duration is typical)."""
        if expected is None:
            return
        self._inflight -= 1
        if expected.handle is not None:
            expected.handle.cancel()
        loop = expected.loop
        if not ok or loop is None:
            return
        took = loop.time() - expected.sent
        typical = self._typical
        old = typical.get(expected.key)
        if old is None:
            if len(typical) >= KEYS:
                del typical[next(iter(typical))]
            typical[expected.key] = took
        elif took < old:
            typical[expected.key] = took
        else:
            typical[expected.key] = old + CREEP * (took - old)
