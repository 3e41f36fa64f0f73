"""A sandbox that runs fragments in the host's own PythonMonkey: fast, trusted code only."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchestra._json import JSON
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

__all__ = ["InProcessSandbox"]

_RUNNER = Path(__file__).with_name("_runner.js")
_DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024


class InProcessSandbox(Sandbox):
    """Runs fragments in this process's PythonMonkey.

    Same interface, compile rules and data conversion as :class:`WorkerSandbox` (JSON
    text in and out, converted inside JavaScript, so no engine object reaches host code),
    but **no isolation and no deadline**: a fragment can reach the host, change shared
    intrinsics for later fragments, and ``while (true) {}`` hangs the host; Promise jobs
    a fragment schedules run later on the host's event loop. Use it for trusted
    processes and fast unit tests only.

    Args:
        max_output_chars: largest JSON text a fragment may return (UTF-16 code units).

    """

    accepts_raw_json = True

    def __init__(self, *, max_output_chars: int = _DEFAULT_MAX_OUTPUT) -> None:
        self._max_output = max_output_chars
        self._runner: Callable[[str], str] | None = None

    @property
    def max_output_chars(self) -> int:
        """The largest JSON text a fragment may return (UTF-16 code units)."""
        return self._max_output

    def _js(self) -> Callable[[str], str]:
        if self._runner is None:
            import pythonmonkey as pm

            factory = pm.eval(_RUNNER.read_text("utf-8"))
            self._runner = factory(float(self._max_output))
        return self._runner

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        """Run ``source`` in process; see :meth:`Sandbox.evaluate`. ``timeout`` is ignored."""
        fragments = single(name, source)
        return decode_batch(self._js()(batch_request(fragments, bindings)), fragments)[0]

    async def evaluate_all(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        *,
        timeout: float | None = None,
    ) -> list[JSON]:
        """Run a batch in one call into the engine; see :meth:`Sandbox.evaluate_all`.

        ``timeout`` is ignored.
        """
        if not fragments:
            return []
        return decode_batch(self._js()(batch_request(fragments, bindings)), fragments)

    async def evaluate_each(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        each: EachCall | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[list[JSON], list[list[JSON]] | None]:
        """Run a batch and its ``each`` part in one call; see :meth:`Sandbox.evaluate_each`.

        ``timeout`` is ignored.
        """
        if not fragments:
            return [], None
        return decode_each(self._js()(each_request(fragments, bindings, each)), fragments, each)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source``; see :meth:`Sandbox.check`."""
        decode_reply(self._js()(check_request(source)), name)
