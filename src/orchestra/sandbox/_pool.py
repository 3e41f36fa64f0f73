"""The default sandbox: a pool of hardened PythonMonkey worker processes.

On asyncio (the usual case) calls are *pipelined*: each call is one request line, queued
in FIFO order; a worker with nothing in flight takes every queued request (up to a cap)
in one write, and answers them in order, one reply line each, as each is done. Under
load this turns many small round trips into a few large ones, which is what costs: on
a busy machine each wake-up of another process costs far more than running a fragment.
Deadlines, deaths and cancellation stay per call (see ``_lane.py``). When calls come
one at a time (nothing in flight, nothing queued, and the last replies read came one at
a time) a call is written at once instead of at the end of the loop's turn: there is
nothing to batch it with, and waiting would put one more turn of the event loop on its
critical path. On other anyio backends each call takes a worker for itself (one request
in flight per worker).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import anyio

from orchestra._json import JSON
from orchestra._loops import asyncio_loop
from orchestra.errors import SandboxError, StepTimeoutError
from orchestra.sandbox._base import EachCall, FragmentCall, Sandbox
from orchestra.sandbox._codec import (
    batch_request,
    check_request,
    decode_batch,
    decode_each,
    decode_reply,
    each_request,
    single,
)
from orchestra.sandbox._lane import _CLOSED, _RETRY, _Fault, _Lane, _Task
from orchestra.sandbox._limits import SandboxLimits
from orchestra.sandbox._process import WorkerDied, WorkerProcess, max_reply_bytes

__all__ = ["WorkerSandbox"]

# At most this many requests, and about this many bytes, go to a worker in one write.
_MAX_BATCH = 32
_MAX_BATCH_BYTES = 1 << 20


_running_loop = asyncio_loop
_WARM = single("warm", "0")
_WARM_REQUEST = batch_request(_WARM, {})
_WARM_EVERY = 0.001
"""Seconds between two no-op calls of :meth:`WorkerSandbox.warm` (one per burst of hints)."""


def _label(fragments: Sequence[FragmentCall]) -> str:
    if len(fragments) == 1:
        return f"fragment {fragments[0].name!r}"
    return "batch of fragments " + ", ".join(repr(f.name) for f in fragments)


class WorkerSandbox(Sandbox):
    """Runs fragments in a pool of isolated worker processes (the default sandbox).

    Each worker is a separate ``python -I -S`` process that loads only PythonMonkey's
    engine, removes everything that is not plain ECMAScript, freezes the intrinsics and
    then serves requests in order over JSON text pipes. The host never runs fragment
    code, so the event loop is never blocked. See ``docs/explanation/sandbox.md`` for the
    threat model.

    Args:
        size: the most workers running calls at once (default ``os.cpu_count()``).
            Workers start lazily, on demand; calls beyond what they can take wait in
            FIFO order. On asyncio, a worker with nothing to do takes all waiting calls
            (up to 32) in one round trip and answers each as soon as it is done.
        limits: deadlines, memory and size caps, recycling (:class:`SandboxLimits`).

    Faults stay local to their call: a deadline kills the worker
    (:class:`~orchestra.StepTimeoutError`); a worker that dies, runs out of memory or
    returns too much gives :class:`~orchestra.SandboxError`; other calls that were
    queued on that worker run again on another one; the pool replaces the worker from a
    warm spare. Bind one instance to one event loop; use one pool per tenant or trust
    domain. Call :meth:`aclose` (or use ``async with``) to stop it.

    """

    accepts_raw_json = True

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
        # Pipelined mode (asyncio): None until the first call decides.
        self._pipelined: bool | None = None
        self._queue: collections.deque[_Task] = collections.deque()
        self._lanes: list[_Lane] = []
        self._starting = 0
        self._dispatching = False
        # Whether the last replies read came one at a time: if so, and nothing is in
        # flight, a call is sent at once (under load replies come in bursts, and calls
        # made in one turn of the loop are sent together at its end).
        self._alone = True
        self._eager: _Lane | None = None  # took a call at once in this turn of the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_line: dict[int, int] = {}  # longest reply, by fragments in the batch
        self._killed: set[WorkerProcess] = set()  # killed, not yet reaped
        self._warmed = -_WARM_EVERY  # loop time of the last warm() call sent
        self._warming: set[asyncio.Task[None]] = set()

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        """Run ``source`` in a worker; see :meth:`Sandbox.evaluate`."""
        fragments = single(name, source)
        request = batch_request(fragments, bindings)
        reply = await self._call(request, fragments, timeout)
        return decode_batch(reply, fragments)[0]

    async def evaluate_all(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        *,
        timeout: float | None = None,
    ) -> list[JSON]:
        """Run a batch in one worker call; see :meth:`Sandbox.evaluate_all`.

        ``timeout`` bounds the whole batch. A batch counts as one call towards
        ``max_calls_per_worker``.
        """
        if not fragments:
            return []
        request = batch_request(fragments, bindings)
        reply = await self._call(request, fragments, timeout)
        return decode_batch(reply, fragments)

    async def evaluate_each(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        each: EachCall | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[list[JSON], list[list[JSON]] | None]:
        """Run a batch and its ``each`` part in one worker call; see :meth:`Sandbox.evaluate_each`.

        ``timeout`` bounds the whole call, which counts as one towards
        ``max_calls_per_worker``.
        """
        if not fragments:
            return [], None
        request = each_request(fragments, bindings, each)
        every = tuple(fragments)
        results = len(every)
        if each is not None:
            every += each.fragments
            results += len(each.fragments) * max(0, each.limit)
        reply = await self._call(request, every, timeout, results)
        return decode_each(reply, fragments, each)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source`` in a worker; see :meth:`Sandbox.check`."""
        reply = await self._call(check_request(source), (FragmentCall(name, source),), None)
        decode_reply(reply, name)

    async def aclose(self) -> None:
        """Kill every worker, busy or not; later calls raise :class:`~orchestra.SandboxError`."""
        self._closed = True
        for lane in list(self._lanes):
            lane._close(requeue=False)
        for task in self._queue:
            if task.fut is not None and not task.fut.done():
                task.fut.set_result(_CLOSED)
        self._queue.clear()
        workers = list(self._all | self._killed)
        self._all.clear()
        self._killed.clear()
        self._idle.clear()
        self._spares.clear()
        if self._loop is not None and self._loop is not _running_loop():
            for worker in workers:  # started on an event loop that is gone: cannot wait
                worker.kill_now()
            return
        with anyio.CancelScope(shield=True):
            for worker in workers:
                await worker.kill()

    def warm(self) -> None:
        """Send a no-op call to the worker the next call will go to, if all are idle.

        After a few milliseconds of quiet a worker's first call costs several times a
        warm one (its CPU caches went cold); the engine calls this just before an HTTP
        answer is due, so that the call shaping the answer finds the worker ready. It
        does nothing when a call is in flight (the workers are busy, hence warm), when
        it was done less than a millisecond ago, before the first call, or off asyncio.
        The no-op call counts toward ``max_calls_per_worker``.
        """
        loop = self._loop
        if self._closed or not self._pipelined or loop is None or _running_loop() is not loop:
            return
        now = loop.time()
        if now - self._warmed < _WARM_EVERY or self._queue or self._quiet_lane() is None:
            return
        self._warmed = now
        task = loop.create_task(self._warm_call())
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm_call(self) -> None:
        with contextlib.suppress(Exception):  # a hint: whatever happens, the next call copes
            await self._call(_WARM_REQUEST, _WARM, 1.0)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers, spares included (for monitoring and tests)."""
        return sorted(w.pid for w in self._all if not w.dead)

    async def _call(
        self,
        request: str,
        fragments: Sequence[FragmentCall],
        timeout: float | None,
        results: int | None = None,
    ) -> bytes:
        deadline = self.limits.timeout if timeout is None else timeout
        n = len(fragments) if results is None else results
        max_line = self._max_line.get(n)
        if max_line is None:
            max_line = self._max_line[n] = max_reply_bytes(self.limits, n)
        if self._pipelined is None:
            self._pipelined = hasattr(asyncio_loop(), "add_reader")
        if not self._pipelined:
            return await self._single_call(request, fragments, deadline, max_line)
        # -- pipelined mode (asyncio), inline: this runs for every call --
        task = _Task(request.encode() + b"\n", deadline, max_line)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._rebind(loop)
        retry = False
        while True:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            fut: asyncio.Future[bytes | _Fault] = loop.create_future()
            task.fut, task.lane = fut, None
            lane = None
            if self._alone and not self._queue and not self._dispatching:
                lane = self._quiet_lane()
            if lane is not None:  # calls come one at a time: nothing to batch it with
                lane.send([task])
                # If more calls come in this turn after all, they are shared out at its
                # end with this lane too, as if they had come together.
                self._eager = lane
                self._soon()
            else:
                if retry:  # it has waited its turn already
                    self._queue.appendleft(task)
                else:
                    self._queue.append(task)
                self._soon()
                if len(self._lanes) + self._starting < self.size and not self._has_idle_lane():
                    try:
                        await self._add_lane()
                    except Exception:
                        if task.lane is None:  # nobody took it: the failure is its answer
                            with contextlib.suppress(ValueError):
                                self._queue.remove(task)
                            fut.cancel()
                            raise
                    except BaseException:
                        await self._settle(task)
                        raise
            try:
                result = await fut
            except asyncio.CancelledError:
                await self._settle(task)
                raise
            if isinstance(result, bytes):
                if self._killed:
                    self._sweep()
                return result
            if result.kind == "retry":
                retry = True
                continue
            if result.kind == "closed":
                raise SandboxError("the sandbox is closed")
            worker = result.worker
            assert worker is not None
            if result.kind == "timeout":
                await worker.reap()
                self._killed.discard(worker)
                msg = f"ran past its deadline of {task.timeout:g} s; the worker was killed"
                raise StepTimeoutError(f"{_label(fragments)} {msg}")
            if result.kind in ("too large", "malformed"):
                await worker.reap()
                self._killed.discard(worker)
                msg = (
                    "the sandbox worker sent a reply larger than the output limit"
                    if result.kind == "too large"
                    else "the sandbox worker sent a malformed reply; it was killed"
                )
                raise SandboxError(f"{_label(fragments)}: {msg}")
            exc = await worker.died()  # "died": read its stderr, then kill it
            self._all.discard(worker)
            raise SandboxError(f"{_label(fragments)}: {exc}") from None

    async def _settle(self, task: _Task) -> None:
        """The caller of ``task`` is leaving early (cancelled): take the task back.

        Queued: dropped. Running on a worker: the worker is killed (the other calls on it
        run again elsewhere). Sent but not started, or done with its reply not yet read:
        left alone, its reply ignored.
        """
        lane = task.lane
        fut = task.fut
        assert fut is not None
        if fut.done() and not fut.cancelled():
            fault = fut.result()
            if isinstance(fault, _Fault) and fault.worker is not None:
                await fault.worker.kill()  # it failed this call; nobody else will end it
                self._all.discard(fault.worker)
                self._killed.discard(fault.worker)
            return
        if lane is None:
            with contextlib.suppress(ValueError):
                self._queue.remove(task)
            return
        if lane.closed or task not in lane.inflight:
            return
        running = lane.running()
        index = lane.inflight.index(task)
        if index != (0 if running is None else running[0]):
            return
        if not fut.done():
            fut.cancel()
        worker = lane.worker
        lane._fail(index, _Fault("cancelled", worker))
        await worker.reap()
        self._killed.discard(worker)

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """First call, or a call from another event loop: drop workers bound to the old one.

        A lane's pipe is watched by the loop it started on; after ``asyncio.run`` ends,
        that loop is gone, so its workers are killed and new ones start on this loop.
        """
        old = self._loop
        self._loop = loop
        if old is None:
            return
        for lane in list(self._lanes):
            with contextlib.suppress(Exception):  # the old loop may be closed
                lane.loop.remove_reader(lane.from_worker)
                if lane.pending:
                    lane.loop.remove_writer(lane.to_worker)
            lane.closed = True
            lane.worker.kill_now()
            self._all.discard(lane.worker)
        self._lanes.clear()
        self._queue.clear()
        self._killed.clear()
        for worker in self._spares:
            worker.kill_now()
            self._all.discard(worker)
        self._spares.clear()
        self._dispatching = False
        self._eager = None

    def _soon(self) -> None:
        """Dispatch at the end of this turn of the event loop, with all calls made in it."""
        if not self._dispatching:
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Hand queued calls to workers with nothing in flight, shared out evenly.

        A lane that took a call at once in this turn (``_eager``) counts as having
        nothing in flight: the calls are shared out as if they had all come together.
        """
        self._dispatching = False
        eager, self._eager = self._eager, None
        queue = self._queue
        if not queue:
            return
        idle = [
            lane
            for lane in self._lanes
            if (not lane.inflight or lane is eager) and not lane.retiring and not lane.closed
        ]
        for n, lane in enumerate(idle):
            share = -(-len(queue) // (len(idle) - n))  # ceil: later lanes take the rest
            left = self.limits.max_calls_per_worker - lane.worker.calls - len(lane.inflight)
            room = min(share, _MAX_BATCH - len(lane.inflight), left)
            batch: list[_Task] = []
            size = 0
            while queue and len(batch) < room and size < _MAX_BATCH_BYTES:
                task = queue[0]
                assert task.fut is not None
                if task.fut.done():  # its caller left
                    queue.popleft()
                    continue
                queue.popleft()
                batch.append(task)
                size += len(task.data)
            if batch:
                lane.send(batch)
            if not queue:
                return

    def _wake_spawner(self) -> None:
        """Calls wait with no worker left to take them: send one back to start a worker.

        Only callers start workers (the pool has no task of its own), and a caller whose
        call is queued just waits; so the first one is told to try again.
        """
        if self._closed or self._starting or self._has_idle_lane():
            return
        if len(self._lanes) >= self.size:
            return
        queue = self._queue
        while queue:
            task = queue.popleft()
            assert task.fut is not None
            if not task.fut.done():
                task.fut.set_result(_RETRY)
                return

    def _quiet_lane(self) -> _Lane | None:
        """A lane to send a call to at once: one, if no lane has anything in flight."""
        found = None
        for lane in self._lanes:
            if lane.inflight:
                return None
            if found is None and not lane.retiring:
                found = lane
        return found

    def _has_idle_lane(self) -> bool:
        """Whether a lane will take queued calls at the end of this turn of the loop.

        The lane that took a call at once in this turn counts (see :meth:`_dispatch`):
        it takes the calls that follow, with no need for one more worker.
        """
        if self._eager is not None:
            return True
        return any(not lane.inflight and not lane.retiring for lane in self._lanes)

    def _lane_idle(self, lane: _Lane) -> None:
        worker = lane.worker
        limits = self.limits
        if (
            self._closed
            or worker.calls >= limits.max_calls_per_worker
            or worker.rss_bytes > limits.max_rss_bytes
        ):
            lane.retiring = True
            lane._close(requeue=True)
            return
        self._dispatch()

    def _lane_closed(self, lane: _Lane, *, keep_pipes: bool) -> None:
        with contextlib.suppress(ValueError):
            self._lanes.remove(lane)
        if self._eager is lane:  # it will take nothing more
            self._eager = None
        self._wake_spawner()
        worker = lane.worker
        if keep_pipes:  # the caller that gets the news kills it
            return
        self._all.discard(worker)
        worker.kill_now()
        self._killed.add(worker)

    def _sweep(self) -> None:
        """Forget killed workers that have exited (the event loop reaped them)."""
        for worker in list(self._killed):
            if worker.exited:
                self._killed.discard(worker)

    async def _add_lane(self) -> None:
        self._starting += 1
        try:
            worker = await self._checkout_new()
        finally:
            self._starting -= 1
        if self._closed:
            self._all.discard(worker)
            await worker.kill()
            raise SandboxError("the sandbox is closed")
        self._lanes.append(_Lane(self, worker))
        self._dispatch()

    # -- one call per worker (any anyio backend) -----------------------------------------

    async def _single_call(
        self, request: str, fragments: Sequence[FragmentCall], deadline: float, max_line: int
    ) -> bytes:
        async with self._worker() as worker:
            try:
                reply = await worker.call(request, deadline, max_line)
            except StepTimeoutError as exc:
                raise StepTimeoutError(f"{_label(fragments)} {exc}") from None
            except WorkerDied as exc:
                raise SandboxError(f"{_label(fragments)}: {exc}") from None
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
        return await self._checkout_new()

    async def _checkout_new(self) -> WorkerProcess:
        """A ready worker: a warm spare if there is one, else a new one."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
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
