"""A sandbox worker process: serves fragment requests over stdin/stdout.

Run by :class:`~orchestra.sandbox.WorkerSandbox` as::

    python -I -S _worker.py PYTHONMONKEY_DIR MEMORY_BYTES MAX_OUTPUT_CHARS NICE [PROGRESS_FD]

It imports nothing but the standard library and PythonMonkey's extension module itself
(loaded by path, so none of PythonMonkey's Python layer, ``require``, timers or
XMLHttpRequest is ever defined). It applies resource limits, hardens the engine
(``_lockdown.js``), writes ``ready`` and then answers one line per request line, in
order: ``<resident memory in KiB> <reply JSON>``. Replies are written together once every
request read so far is answered, or when the oldest unsent one is 0.5 ms old.
Fragments cannot reach anything but plain ECMAScript; the parent enforces deadlines by
killing this process. ``NICE`` is added to the process's nice value first (see
``SandboxLimits.nice``). ``PROGRESS_FD`` is the progress page shared with the parent
(``_process.py``): requests started, finished, and the clock when the last one started,
so that the parent knows which request runs although replies wait to be written.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import mmap
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

_PROMISE = "Promise jobs cannot run: fragments are synchronous (no then/await)"


def _error(message: str, kind: str, index: int) -> str:
    # Compact, like the runner's replies: the host spots '"k":"oom"' without parsing.
    reply = {"e": message, "k": kind, "l": 0, "c": 0, "i": index}
    return json.dumps(reply, separators=(",", ":"))


def _load_engine(package_dir: str) -> ModuleType:
    """Load ``pythonmonkey.so`` by path, skipping the package's ``__init__``."""
    path = next(Path(package_dir).glob("pythonmonkey*.so"), None) or Path(
        package_dir, "pythonmonkey.so"
    )
    loader = importlib.machinery.ExtensionFileLoader("pythonmonkey", str(path))
    spec = importlib.util.spec_from_file_location("pythonmonkey", str(path), loader=loader)
    if spec is None:  # pragma: no cover - only with a broken installation
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl
            os._exit(1)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _limit(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))


# Replies wait to be written together until the requests read so far are all answered,
# or until the oldest waiting one is this old (seconds), or this large (bytes).
_FLUSH_AFTER = 0.0005
_FLUSH_BYTES = 1 << 20
# Resident memory is read (a system call) at most this often (seconds), at the start of
# a burst of replies: the host recycles a worker that grew too large (max_rss_bytes) at
# worst this much later, and a worker answering one call at a time saves a system call
# per call. The hard cap, RLIMIT_DATA, is the kernel's and is unaffected.
_RSS_EVERY = 0.001


def _rss_reader() -> Callable[[], int]:
    """Return a function giving this process's current resident memory in KiB.

    Not ``ru_maxrss``: Linux carries the parent's peak across fork and exec into it, so a
    worker started by a host of 300 MiB would look 300 MiB large from its first call.
    """
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:  # no /proc: the peak is the best there is
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    pread = os.pread
    return lambda: int(pread(fd, 128, 0).split()[1]) * page_kib


def _progress(fd: int | None) -> tuple[memoryview[int], memoryview[float]]:
    """The progress page (see ``_process.py``) as views of its counts and of its clock.

    ``counts[0]``: requests started, ``counts[1]``: requests finished, ``clock[2]``: when
    the last one started. Without a page (``fd`` is None) the views are of private memory.
    """
    page: mmap.mmap | bytearray = bytearray(24) if fd is None else mmap.mmap(fd, 24)
    if fd is not None:
        os.close(fd)
    view = memoryview(page)
    return view.cast("q"), view.cast("d")


def _serve(
    run: Callable[[str], str],
    progress: tuple[memoryview[int], memoryview[float]],
    flush_after: float,
) -> None:
    current_rss = _rss_reader()
    clock = time.monotonic
    counts, started_at = progress
    served = 0
    rss_at = -_RSS_EVERY
    _write(b"0 ready\n")
    buffer = bytearray()
    start = 0
    pending: list[bytes] = []
    size = 0
    since = 0.0
    rss = 0
    while True:
        end = buffer.find(b"\n", start)
        if end < 0:
            if pending:  # everything read so far is answered: send it before waiting
                _write(b"".join(pending))
                pending.clear()
                size = 0
            start = len(buffer)
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            continue
        line = buffer[:end].decode("utf-8")
        del buffer[: end + 1]
        start = 0
        served += 1
        # The clock first, then the count that points at it: whatever the parent reads
        # in between, it never pairs a request with a later start than its own.
        started_at[2] = clock()
        counts[0] = served
        try:
            reply = str(run(line))
        except RuntimeError:  # PythonMonkey wanted an event loop for a Promise job
            reply = _error(_PROMISE, "script", _index(run))
        except MemoryError:
            reply = _error("out of memory", "oom", _index(run))
        except Exception as exc:
            text = str(exc)[:2000].encode("utf-8", "replace").decode("utf-8")
            if "out of memory" in text:
                reply = _error("out of memory", "oom", _index(run))
            else:
                reply = _error("sandbox: " + text, "script", _index(run))
        counts[1] = served
        done = clock()
        if not pending:
            since = done
            if done - rss_at >= _RSS_EVERY:
                rss_at = done
                rss = current_rss()
        pending.append(b"%d %s\n" % (rss, reply.encode("utf-8", "replace")))
        size += len(pending[-1])
        if size >= _FLUSH_BYTES or done - since >= flush_after:
            _write(b"".join(pending))
            pending.clear()
            size = 0


def _index(run: Callable[[str], str]) -> int:
    """The fragment of the batch that was running when the runner raised (0 if unknown)."""
    try:
        return int(str(run("?")))
    except Exception:
        return 0


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main(argv: list[str]) -> None:
    """Start the engine, harden it, and serve requests until stdin closes."""
    _die_with_parent()
    package_dir, memory_bytes, max_output = argv[1], int(argv[2]), int(argv[3])
    nice = int(argv[4])
    page = int(argv[5]) if len(argv) > 5 else None
    if nice:
        os.nice(nice)  # lowering one's own priority needs no privilege
    progress = _progress(page)
    # Without a progress page the parent knows which request runs only if each reply is
    # written as soon as it is ready.
    flush_after = _FLUSH_AFTER if page is not None else 0.0
    pm = _load_engine(package_dir)
    here = Path(__file__).parent
    runner = pm.eval((here / "_runner.js").read_text("utf-8"))(float(max_output))
    lockdown = pm.eval((here / "_lockdown.js").read_text("utf-8"))
    lockdown()
    _limit(memory_bytes)
    _serve(runner, progress, flush_after)


if __name__ == "__main__":
    main(sys.argv)
