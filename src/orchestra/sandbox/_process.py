"""One worker process of the pool: start it, frame requests over its pipes, kill it.

The pipes are plain non-blocking file descriptors. Frames are lines: the request is one
line of ASCII JSON; the reply is ``<RSS KiB> <JSON>``. A worker answers requests in
the order it got them, one reply line each, written as soon as it is ready, so several
requests may be in flight on one worker (the pool's pipelining, ``_lane.py``).
:meth:`WorkerProcess.call` is the one-request-at-a-time path, on any anyio backend.

Each worker also shares one small *progress* page with the host (a memfd, mapped by
both): before a request runs the worker writes the clock and how many requests it has
started, after it how many it has finished. Writing it costs no system call and wakes
nobody; the host reads it only when a deadline passes or the worker dies, to know which
of several unanswered requests was running, and since when (see :meth:`progress`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import math
import mmap
import os
import re
import signal
import struct
import sys
from pathlib import Path

import anyio
import anyio.abc

from orchestra.errors import SandboxError, StepTimeoutError
from orchestra.sandbox._limits import SandboxLimits

__all__ = ["WorkerDied", "WorkerProcess"]

_WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
_CHUNK = 1 << 16
_STDERR_TAIL = 2000
_OOM_TEXT = re.compile(r"\boom\b|out of memory", re.IGNORECASE)
# The progress page: requests started, requests finished, clock when the last one started
# (time.monotonic, the same clock in every process), in native byte order (the worker
# writes it through memoryviews, see _worker.py).
_PROGRESS = struct.Struct("=qqd")


class WorkerDied(SandboxError):
    """The worker process exited or broke its pipe during a call."""


def max_reply_bytes(limits: SandboxLimits, fragments: int) -> int:
    """The longest reply line a batch of ``fragments`` may take."""
    # Each result holds at most max_output_chars code units, each escaped to <= 6 bytes.
    return 6 * limits.max_output_chars * max(1, fragments) + (1 << 20)


def _progress_fd() -> int | None:
    """A fresh memfd of ``_PROGRESS.size`` bytes for one worker's progress page, or None.

    Sealed at that size: the worker can write it but not shrink it, so the host can never
    fault reading its mapping, whatever the worker does. Without memfd seals (not Linux)
    there is no page and the worker writes each reply at once instead (see _worker.py).
    """
    if not hasattr(os, "memfd_create") or not hasattr(fcntl, "F_ADD_SEALS"):
        return None  # pragma: no cover - not Linux
    try:
        fd = os.memfd_create("orchestra-progress", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:  # pragma: no cover - a kernel without memfd
        return None
    try:
        os.ftruncate(fd, _PROGRESS.size)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError:  # pragma: no cover - a kernel without seals
        os.close(fd)
        return None
    return fd


def _engine_dir() -> str:
    """Directory of the installed ``pythonmonkey`` package, found without importing it."""
    spec = importlib.util.find_spec("pythonmonkey")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("pythonmonkey is not installed")
    return str(next(iter(spec.submodule_search_locations)))


class WorkerProcess:
    """A started ``_worker.py`` process and the framing of its pipes.

    Not safe for concurrent use: the pool hands each worker to one caller at a time.
    """

    def __init__(
        self,
        process: anyio.abc.Process,
        fds: tuple[int, int, int],
        limits: SandboxLimits,
        page: mmap.mmap | None = None,
    ) -> None:
        self._process = process
        self._to_worker, self._from_worker, self._stderr = fds
        self._page = page
        self._limits = limits
        self._buffer = bytearray()
        self._ready = False
        self.max_line = max_reply_bytes(limits, 1)
        self.calls = 0
        self.rss_bytes = 0
        self.dead = False

    @classmethod
    async def spawn(cls, limits: SandboxLimits) -> WorkerProcess:
        """Start a worker process; it becomes ready in the background."""
        command = [
            sys.executable,
            "-I",
            "-S",
            str(_WORKER_SCRIPT),
            _engine_dir(),
            str(limits.memory_bytes),
            str(limits.max_output_chars),
            str(limits.nice),
        ]
        page_fd = _progress_fd()
        page = None
        if page_fd is not None:
            page = mmap.mmap(page_fd, _PROGRESS.size, access=mmap.ACCESS_READ)
            command.append(str(page_fd))
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            process = await anyio.open_process(
                command,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd="/",
                env={"TZ": "UTC"},
                pass_fds=() if page_fd is None else (page_fd,),
            )
        except OSError as exc:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            if page is not None:
                page.close()
            raise SandboxError(f"cannot start a sandbox worker: {exc}") from exc
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            if page_fd is not None:
                os.close(page_fd)
        for fd in (in_w, out_r, err_r):
            os.set_blocking(fd, False)
        return cls(process, (in_w, out_r, err_r), limits, page)

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    async def wait_ready(self) -> None:
        """Wait until the worker has hardened its engine and can take requests."""
        if self._ready:
            return
        try:
            with anyio.fail_after(self._limits.start_timeout):
                line = await self._read_line()
        except TimeoutError:
            await self.kill()
            raise SandboxError("a sandbox worker did not start in time") from None
        except BaseException:
            await self.kill()
            raise
        if line != b"0 ready":
            await self.kill()
            raise SandboxError(f"a sandbox worker failed to start: {line[:500]!r}")
        self._ready = True

    @property
    def exited(self) -> bool:
        """Whether the process has exited and been reaped."""
        return self._process.returncode is not None

    @property
    def fds(self) -> tuple[int, int]:
        """The pipe to the worker's stdin and the one from its stdout (non-blocking)."""
        return self._to_worker, self._from_worker

    def take_buffer(self) -> bytearray:
        """Hand over what was read past the last line (the pipelined reader takes it)."""
        buffer, self._buffer = self._buffer, bytearray()
        return buffer

    async def call(self, request: str, timeout: float, max_line: int | None = None) -> bytes:
        """Send one request and return the reply JSON; kill the worker on any failure.

        Raises :class:`~orchestra.StepTimeoutError` past ``timeout`` seconds and
        :class:`WorkerDied` when the process dies; in both cases, and when the caller is
        cancelled, the process has been killed when this returns.
        """
        finished = False
        try:
            with anyio.move_on_after(timeout if math.isfinite(timeout) else None) as scope:
                await self._write(request.encode() + b"\n")
                line = await self._read_line(max_line)
                finished = True
        finally:
            if not finished:
                await self.kill()
        if scope.cancelled_caught or not finished:
            raise StepTimeoutError(f"ran past its deadline of {timeout:g} s; the worker was killed")
        return self.account(line)

    def progress(self) -> tuple[int, int, float] | None:
        """What the worker's progress page says: requests started, finished, and since when.

        ``(started, finished, since)``: a request is running when ``started > finished``,
        the ``started``-th one this worker got, since ``since`` (``time.monotonic``).
        ``None`` when the page cannot be trusted: it changed while being read (the worker
        is moving on), or holds nonsense.
        """
        if self._page is None or self._page.closed:
            return None
        first = _PROGRESS.unpack_from(self._page)
        if _PROGRESS.unpack_from(self._page) != first:
            return None
        started, finished, since = first
        if not 0 <= finished <= started or not math.isfinite(since):
            return None
        return started, finished, since

    def account(self, line: bytes) -> bytes:
        """Count one reply line ``<RSS KiB> <JSON>`` and return its JSON."""
        self.calls += 1
        rss, _, reply = line.partition(b" ")
        self.rss_bytes = int(rss) * 1024
        return reply

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._to_worker, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._to_worker)
            except (BrokenPipeError, OSError):
                raise await self._died() from None

    async def _read_line(self, max_line: int | None = None) -> bytes:
        limit = self.max_line if max_line is None else max_line
        buffer = self._buffer
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            start = len(buffer)
            if start > limit:
                await self.kill()
                raise WorkerDied("the sandbox worker sent a reply larger than the output limit")
            try:
                chunk = os.read(self._from_worker, _CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(self._from_worker)
                continue
            except OSError:
                chunk = b""
            if not chunk:
                raise await self._died()
            buffer += chunk

    async def _died(self) -> WorkerDied:
        with anyio.CancelScope(shield=True):
            await self._terminate()
            tail = b""
            with contextlib.suppress(OSError):
                while len(tail) < 1 << 16:
                    chunk = os.read(self._stderr, _CHUNK)
                    if not chunk:
                        break
                    tail += chunk
            await self.kill()
        code = self._process.returncode
        text = tail.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
        cause = "out of memory" if _OOM_TEXT.search(text) else None
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        detail = f" ({cause})" if cause else (f": {text}" if text else "")
        return WorkerDied(f"the sandbox worker died ({how}){detail}")

    def _signal_kill(self) -> None:
        # os.kill, not Popen.kill: Popen polls first, and reaping the process there races
        # with the event loop's child watcher (which then reports exit code 255).
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)

    async def _terminate(self) -> None:
        self._signal_kill()
        await self._process.wait()

    async def kill(self) -> None:
        """Kill the process (if still running), close its pipes and wait until it is gone."""
        self.kill_now()
        await self.reap()

    def kill_now(self) -> None:
        """Send SIGKILL and close the pipes without waiting (see :meth:`reap`)."""
        if self.dead:
            return
        self.dead = True
        self._signal_kill()
        for fd in (self._to_worker, self._from_worker, self._stderr):
            anyio.notify_closing(fd)
            os.close(fd)
        if self._page is not None:
            self._page.close()

    async def reap(self) -> None:
        """Wait until the killed process has exited (shielded from cancellation)."""
        with anyio.CancelScope(shield=True):
            await self._process.wait()

    async def died(self) -> WorkerDied:
        """Kill the worker that stopped answering; describe how it ended (with stderr)."""
        return await self._died()
