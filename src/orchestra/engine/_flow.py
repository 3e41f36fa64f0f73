"""The state of a running step that lets outputs share round trips: who waits for whom.

:class:`Flow` knows, while a step runs, which processors have ended, which outputs are
under way and which were left to another processor (:class:`Deferred`), so that
:mod:`._outputs` can send an output with the first batch of a processor that waits for it
(:meth:`Flow.next_of`) or leave it to a processor that ends later (:meth:`Flow.defer_to`).
What can be chained at all is decided per processor, ahead of time, by
:func:`~._batching.chain_of`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Protocol

import attrs

from orchestra._json import JSON
from orchestra.engine._batching import Chain, chain_of, plain
from orchestra.model import Processor
from orchestra.sandbox import FragmentCall

__all__ = ["Deferred", "Finished", "Flow"]


class Finished(Protocol):
    """An event set when a processor has ended (``asyncio.Event`` or ``anyio.Event``)."""

    def wait(self) -> Awaitable[object]:
        """Wait until the processor has ended."""
        ...


@attrs.define
class Deferred:
    """An ``output`` left for the processor ``on`` to send with its own (see :class:`Flow`)."""

    processor: Processor
    out: FragmentCall
    bindings: dict[str, JSON]
    on: str
    taken: asyncio.Future[list[JSON] | None]
    """``[output]`` once sent with ``on``'s; ``None``: the processor sends it itself."""

    def release(self, value: list[JSON] | None = None) -> None:
        """Hand the processor its output, or (``None``) leave it to send it itself."""
        if not self.taken.done():
            self.taken.set_result(value)


@attrs.define
class Flow:
    """What chaining needs of a running step: who waits for whom, what is done.

    A processor whose only dependent also waits for a processor still at work leaves its
    ``output`` to that one (:meth:`defer_to`), which sends it with its own output and the
    dependent's first batch: one round trip after the last of the two ends, where there
    were two (the first output, then the second with the dependent's batch).
    """

    outputs: dict[str, JSON]
    dependents: dict[str, list[Processor]]
    finished: Mapping[str, Finished]
    prefetched: dict[str, tuple[list[JSON], list[list[JSON]] | None]] = attrs.Factory(dict)
    sending: set[str] = attrs.Factory(set)
    """Processors whose ``output`` round trip is under way."""
    processors: Mapping[str, Processor] = attrs.Factory(dict)
    deferred: dict[str, Deferred] = attrs.Factory(dict)
    """Outputs left to another processor, by the name of the processor they belong to."""

    def defer_to(self, p: Processor) -> str | None:
        """The processor ``p`` may leave its output to, or ``None``.

        ``p``'s one dependent ``d`` must wait for exactly one other processor ``q``, one
        still at work (its output neither under way nor left to another) that ends with
        an output of its own, and ``d``'s first batch must be one that can be chained.
        """
        deps = self.dependents.get(p.name, ())
        if len(deps) != 1 or not plain(p.name):
            return None
        d = deps[0]
        if d.name in self.outputs or d.script_timeout != p.script_timeout:
            return None
        others = [n for n in d.needs if n != p.name and n not in self.outputs]
        if len(others) != 1:
            return None
        (q,) = others
        other = self.processors.get(q)
        if (
            other is None
            or q in self.sending
            or q in self.deferred
            or other.for_each is not None
            or other.output is None
            or other.script_timeout != p.script_timeout
            or not plain(q)
            or chain_of(d) is None
        ):
            return None
        return q

    def release(self, name: str) -> None:
        """``name`` has ended: outputs left to it and not taken are sent by their owners."""
        if self.deferred:
            for key, deferred in list(self.deferred.items()):
                if deferred.on == name:
                    del self.deferred[key]
                    deferred.release()

    def next_of(self, p: Processor) -> tuple[Processor, Chain, list[str]] | None:
        """A processor whose first round trip can join ``p``'s output, and what to await first.

        It must wait for nothing but ``p`` and outputs already under way (those are
        returned: they end without waiting for anything, and then the chain can go).
        """
        if not plain(p.name):
            return None
        found: tuple[Processor, Chain, list[str]] | None = None
        for d in self.dependents.get(p.name, ()):
            if d.name in self.outputs or d.script_timeout != p.script_timeout:
                continue
            others = [n for n in d.needs if n != p.name and n not in self.outputs]
            left = [n for n in others if self._left_to(n, p)]
            if found is not None and not left:
                continue  # one that takes an output left to ``p`` goes first
            if all(n in self.sending or n in left for n in others):
                chain = chain_of(d)
                if chain is not None:
                    found = d, chain, [n for n in others if n not in left]
                    if left:
                        break
        return found

    def _left_to(self, name: str, p: Processor) -> bool:
        deferred = self.deferred.get(name)
        return deferred is not None and deferred.on == p.name

    def ready(self, p: Processor, d: Processor) -> bool:
        """Whether ``d`` still waits only for ``p`` (and outputs left to ``p``)."""
        return d.name not in self.outputs and all(
            n == p.name or n in self.outputs or self._left_to(n, p) for n in d.needs
        )

    def adopt(self, p: Processor, d: Processor) -> list[Deferred]:
        """Take the outputs left to ``p`` that ``d`` needs (``p`` sends them now)."""
        if not self.deferred:
            return []
        taken = [self.deferred.pop(n) for n in d.needs if self._left_to(n, p)]
        return taken
