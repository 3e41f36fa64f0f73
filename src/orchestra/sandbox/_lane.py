"""One worker of the pipelined pool, on an asyncio loop: its calls in flight and deadlines.

A :class:`_Lane` owns the pipes of one ready worker for the worker's whole life. Calls
are sent to it in batches (the pool's dispatcher, ``_pool.py``) and answered in order,
one reply line each; the worker writes its replies in bursts (when it has answered all
it has read, or every 0.5 ms), so the replies read tell which calls are done, not which
one runs. The worker's progress page (``_process.py``) tells that: which request runs,
and since when. It is read only when a deadline passes or the worker dies.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import time
from typing import TYPE_CHECKING

from orchestra.sandbox._process import WorkerProcess

if TYPE_CHECKING:
    from orchestra.sandbox._pool import WorkerSandbox

__all__: list[str] = []

# A worker that runs none of its unanswered calls is between two requests (writing its
# replies, reading the next request): it gets this long (seconds) past the deadline to
# move on before its oldest unanswered call is blamed.
_GRACE = 0.05


class _Fault:
    """Why a pipelined call got no reply: it must be retried, it timed out, or the worker died."""

    __slots__ = ("kind", "worker")

    def __init__(self, kind: str, worker: WorkerProcess | None = None) -> None:
        self.kind = kind  # "retry", "closed", "timeout", "died", "too large", "malformed", ...
        self.worker = worker


_RETRY = _Fault("retry")
_CLOSED = _Fault("closed")


class _Task:
    """One pipelined call: its request line and the future its caller awaits."""

    __slots__ = ("data", "fut", "lane", "max_line", "timeout")

    def __init__(self, data: bytes, timeout: float, max_line: int) -> None:
        self.data = data
        self.timeout = timeout
        self.max_line = max_line
        self.fut: asyncio.Future[bytes | _Fault] | None = None
        self.lane: _Lane | None = None


class _Lane:
    """A ready worker on an asyncio loop, with the calls in flight on it, oldest first.

    Its pipe is watched for the worker's whole life (``loop.add_reader``), so a reply
    costs one read and no registration. Each call's deadline counts from when the worker
    starts running it. One lazy timer per lane fires at the soonest time a deadline may
    have passed (from the last reply read, or from sending); it first reads what is
    waiting, then asks the worker's progress page which call runs and since when. If that
    call is past its deadline the worker is killed: that call fails
    (:class:`~orchestra.StepTimeoutError`) and the other calls in flight run again on
    another worker; otherwise the timer waits for that call's deadline. A worker that dies
    fails the call it was running in the same way.
    """

    def __init__(self, pool: WorkerSandbox, worker: WorkerProcess) -> None:
        self.pool = pool
        self.worker = worker
        self.loop = asyncio.get_running_loop()
        self.inflight: collections.deque[_Task] = collections.deque()
        self.buffer = worker.take_buffer()
        self.pending = bytearray()  # request bytes not yet written
        self.started = 0.0  # loop time of the last reply read (or of sending)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.retiring = False
        self.closed = False
        self.to_worker, self.from_worker = worker.fds
        self.loop.add_reader(self.from_worker, self._on_readable)

    # -- sending -------------------------------------------------------------------------

    def send(self, batch: list[_Task]) -> None:
        """Write ``batch`` to the worker (usually with nothing in flight; see the pool)."""
        if not self.inflight:
            self.started = self.loop.time()
        for task in batch:
            task.lane = self
            self.inflight.append(task)
        self._arm(self._deadline())
        data = batch[0].data if len(batch) == 1 else b"".join(t.data for t in batch)
        if self.pending:
            self.pending += data
            return
        try:
            n = os.write(self.to_worker, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the worker is gone; the reader sees its end
            return
        if n < len(data):
            self.pending += data[n:]
            self.loop.add_writer(self.to_worker, self._on_writable)

    def _on_writable(self) -> None:
        try:
            n = os.write(self.to_worker, self.pending)
        except BlockingIOError:
            return
        except OSError:
            n = len(self.pending)
        del self.pending[:n]
        if not self.pending:
            self.loop.remove_writer(self.to_worker)

    # -- receiving -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.from_worker, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost()
            return
        buffer = self.buffer
        buffer += chunk
        inflight = self.inflight
        end = buffer.rfind(b"\n")
        if end >= 0:
            lines = bytes(buffer[:end]).split(b"\n")
            del buffer[: end + 1]
            account = self.worker.account
            for line in lines:
                if not inflight:  # a reply nobody asked for: the worker is broken
                    self._close(requeue=True)
                    return
                try:
                    reply = account(line)
                except ValueError:  # not "<rss> <json>": the worker is broken
                    self._fail(0, _Fault("malformed", self.worker))
                    return
                fut = inflight.popleft().fut
                assert fut is not None
                if not fut.done():
                    fut.set_result(reply)
                if reply[:5] == b'{"e":' and b'"k":"oom"' in reply[:80]:
                    self._close(requeue=True)  # the engine may be left in a poor state
                    return
            self.started = self.loop.time()
            self.pool._alone = len(lines) == 1
        if inflight:
            if len(buffer) > inflight[0].max_line:
                self._fail(0, _Fault("too large", self.worker))
            elif end >= 0:
                self._arm(self._deadline())
        elif buffer:  # a reply nobody asked for: the worker is broken
            self._close(requeue=True)
        else:
            self.pool._lane_idle(self)

    def drained(self) -> bool:
        """Whether the lane has nothing in flight."""
        return not self.inflight

    def running(self) -> tuple[int, float] | None:
        """Which call in flight the worker runs (its index) and since when (loop time).

        ``None`` when it runs none of them (it is between two requests) or its progress
        page cannot tell right now.
        """
        progress = self.worker.progress()
        if progress is None:
            return None
        started, finished, since = progress
        index = started - self.worker.calls - 1  # inflight[0] is request calls + 1
        if started <= finished or not 0 <= index < len(self.inflight):
            return None
        return index, since - time.monotonic() + self.loop.time()

    # -- deadlines -----------------------------------------------------------------------

    def _deadline(self) -> float:
        """The soonest a deadline in flight may pass: from the last reply read (or sending).

        Every call in flight started at that time or later, except one that was already
        running when its predecessors' replies were read: for that one this is late by
        no more than the time the host took to read them.
        """
        return self.started + min(t.timeout for t in self.inflight)

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            if self.timer_at <= at:
                return
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        self._on_readable()  # replies that came in while the loop was busy count
        if self.closed or not self.inflight:
            return
        now = self.loop.time()
        running = self.running()
        if running is None:
            # Running none of the calls (or its page is changing under us): the worker is
            # between two requests and writes its replies before it waits. One that has
            # not answered for a whole deadline and then some is stuck.
            at = self._deadline() + _GRACE
            if now < at:
                self._arm(at)
            else:
                self._fail(0, _Fault("timeout", self.worker))
            return
        index, since = running
        # The calls before it finished, each within its own deadline: it cannot have
        # started later than that (a worker that says otherwise is not believed).
        latest = self.started + sum(t.timeout for t in itertools.islice(self.inflight, index))
        deadline = min(since, latest) + self.inflight[index].timeout
        if now < deadline:
            self._arm(deadline)
        else:
            self._fail(index, _Fault("timeout", self.worker))

    # -- ending --------------------------------------------------------------------------

    def _fail(self, index: int, fault: _Fault) -> None:
        """The call at ``index`` failed with ``fault``: kill the worker, run the rest again.

        The calls before it finished but their replies are lost with the worker; those
        after it never ran. Fragments have no effects, so all of them run again.
        """
        task = self.inflight[index]
        del self.inflight[index]
        assert task.fut is not None
        reported = not task.fut.done()
        if reported:
            task.fut.set_result(fault)
        self._close(requeue=True, keep_pipes=reported and fault.kind == "died")

    def _lost(self) -> None:
        """The worker closed its end: it died. The call it was running gets the news.

        Which one that was comes from its progress page; if it was running none, the
        oldest unanswered call is blamed (a worker does not die between requests).
        """
        if self.inflight:
            running = self.running()
            self._fail(0 if running is None else running[0], _Fault("died", self.worker))
        else:
            self._close(requeue=True)

    def _close(self, *, requeue: bool, keep_pipes: bool = False) -> None:
        """Stop using the worker; kill it unless ``keep_pipes`` (its caller reads stderr)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.from_worker)
        if self.pending:
            self.loop.remove_writer(self.to_worker)
            self.pending.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in self.inflight:
            assert task.fut is not None
            if not task.fut.done():
                task.fut.set_result(_RETRY if requeue else _CLOSED)
        self.inflight.clear()
        self.pool._lane_closed(self, keep_pipes=keep_pipes)
