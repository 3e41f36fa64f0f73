"""The default sandbox: a pool of hardened PythonMonkey worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio

from orchestra._json import JSON
from orchestra.errors import SandboxError, StepTimeoutError
from orchestra.sandbox._base import Sandbox
from orchestra.sandbox._codec import check_request, decode_reply, run_request
from orchestra.sandbox._limits import SandboxLimits
from orchestra.sandbox._process import WorkerDied, WorkerProcess

__all__ = ["WorkerSandbox"]


class WorkerSandbox(Sandbox):
    """Runs fragments in a pool of isolated worker processes (the default sandbox).

    Each worker is a separate ``python -I -S`` process that loads only PythonMonkey's
    engine, removes everything that is not plain ECMAScript, freezes the intrinsics and
    then serves one request at a time over JSON text pipes. The host never runs
    fragment code, so the event loop is never blocked. See
    ``docs/explanation/sandbox.md`` for the threat model.

    Args:
        size: the most workers running calls at once (default ``os.cpu_count()``).
            Workers start lazily, on demand; callers beyond ``size`` wait in FIFO order.
        limits: deadlines, memory and size caps, recycling (:class:`SandboxLimits`).

    Faults stay local to their call: a deadline kills the worker
    (:class:`~orchestra.StepTimeoutError`); a worker that dies, runs out of memory or
    returns too much gives :class:`~orchestra.SandboxError`; the pool replaces the
    worker from a warm spare. Bind one instance to one event loop; use one pool per
    tenant or trust domain. Call :meth:`aclose` (or use ``async with``) to stop it.

    """

    def __init__(self, size: int | None = None, *, limits: SandboxLimits | None = None) -> None:
        size = size if size is not None else (os.cpu_count() or 1)
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self.limits = limits if limits is not None else SandboxLimits()
        self._slots: anyio.Semaphore | None = None
        self._idle: list[WorkerProcess] = []
        self._spares: list[WorkerProcess] = []
        self._all: set[WorkerProcess] = set()
        self._pending_spares = 0
        self._closed = False

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        """Run ``source`` in a worker; see :meth:`Sandbox.evaluate`."""
        request = run_request(source, bindings, name)
        reply = await self._call(request, name, timeout)
        return decode_reply(reply, name)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source`` in a worker; see :meth:`Sandbox.check`."""
        reply = await self._call(check_request(source), name, None)
        decode_reply(reply, name)

    async def aclose(self) -> None:
        """Kill every worker, busy or not; later calls raise :class:`~orchestra.SandboxError`."""
        self._closed = True
        workers = list(self._all)
        self._all.clear()
        self._idle.clear()
        self._spares.clear()
        with anyio.CancelScope(shield=True):
            for worker in workers:
                await worker.kill()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers, spares included (for monitoring and tests)."""
        return sorted(w.pid for w in self._all if not w.dead)

    async def _call(self, request: str, name: str, timeout: float | None) -> bytes:
        deadline = self.limits.timeout if timeout is None else timeout
        async with self._worker() as worker:
            try:
                reply = await worker.call(request, deadline)
            except StepTimeoutError as exc:
                raise StepTimeoutError(f"fragment {name!r} {exc}") from None
            except WorkerDied as exc:
                raise SandboxError(f"fragment {name!r}: {exc}") from None
            if b'"k":"oom"' in reply[:64]:
                await worker.kill()  # the engine may be left in a poor state
            return reply

    @asynccontextmanager
    async def _worker(self) -> AsyncIterator[WorkerProcess]:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self._slots is None:
            self._slots = anyio.Semaphore(self.size, fast_acquire=True)
        async with self._slots:
            worker = await self._checkout()
            try:
                yield worker
            finally:
                with anyio.CancelScope(shield=True):
                    await self._checkin(worker)

    async def _checkout(self) -> WorkerProcess:
        while self._idle:
            worker = self._idle.pop()
            if not worker.dead:
                return worker
            self._all.discard(worker)
        worker = self._spares.pop(0) if self._spares else await self._spawn()
        try:
            await self._top_up_spares()
            await worker.wait_ready()
        except BaseException:
            self._all.discard(worker)
            with anyio.CancelScope(shield=True):
                await worker.kill()
            raise
        return worker

    async def _checkin(self, worker: WorkerProcess) -> None:
        limits = self.limits
        if (
            worker.dead
            or self._closed
            or worker.calls >= limits.max_calls_per_worker
            or worker.rss_bytes > limits.max_rss_bytes
        ):
            self._all.discard(worker)
            await worker.kill()
            return
        self._idle.append(worker)

    async def _spawn(self) -> WorkerProcess:
        worker = await WorkerProcess.spawn(self.limits)
        self._all.add(worker)
        if self._closed:  # closed while spawning
            await worker.kill()
            raise SandboxError("the sandbox is closed")
        return worker

    async def _top_up_spares(self) -> None:
        while len(self._spares) + self._pending_spares < self.limits.spares and not self._closed:
            self._pending_spares += 1
            try:
                worker = await self._spawn()
            finally:
                self._pending_spares -= 1
            self._spares.append(worker)
