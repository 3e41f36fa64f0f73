"""What a run did: one trace entry per processor, and the result of an invocation."""

from __future__ import annotations

from typing import Literal

import attrs

from orchestra._json import JSON

__all__ = ["ProcessorTrace", "Request", "Result", "Status"]

Status = Literal["ok", "skipped", "failed", "fallback"]


@attrs.frozen(kw_only=True)
class ProcessorTrace:
    """One processor's record: when it ran, how it ended, how many attempts, which status."""

    step: str
    processor: str
    status: Status
    started: float
    ended: float
    attempts: int = 0
    http_status: int | None = None
    items: int | None = None
    """Number of ``for_each`` items, when the processor iterated."""
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds between start and end."""
        return self.ended - self.started

    def to_dict(self) -> dict[str, JSON]:
        """Return the entry as JSON data."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Request:
    """An HTTP request as a payload process sees it (``trigger`` in fragments)."""

    method: str = "GET"
    path: str = "/"
    params: dict[str, str] = attrs.field(factory=dict)
    query: dict[str, str] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)
    body: JSON = None

    def to_dict(self) -> dict[str, JSON]:
        """Return the request as the JSON data fragments see."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Result:
    """The outcome of :meth:`~orchestra.Engine.invoke`: the payload, the trace, the context."""

    payload: JSON
    trace: tuple[ProcessorTrace, ...]
    context: dict[str, JSON]
