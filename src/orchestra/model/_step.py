"""Steps: process steps that run processors, and resume steps that wait for an event."""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

from orchestra._json import JSON
from orchestra.model._processor import Processor

__all__ = ["ProcessStep", "ResumeStep", "Step"]


@attrs.frozen(kw_only=True)
class ProcessStep:
    """Runs its processors (a dependency graph) when ``when`` holds, else is skipped."""

    name: str
    processors: tuple[Processor, ...]
    when: str | None = None
    type: Literal["process"] = "process"


@attrs.frozen(kw_only=True)
class ResumeStep:
    """Pauses the run until an event named ``event`` with a matching correlation key arrives.

    ``key`` is a fragment over the context giving this run's key; the event's key is read
    from its payload by ``event_key`` (or by the declared :class:`~orchestra.Event`'s own
    ``key``). ``timeout`` is an ISO 8601 duration (``P5D``); when it passes, ``on_timeout``
    decides: ``"fail"`` the run, ``"continue"`` with ``default`` as the event payload, or
    ``"goto"`` the step named ``goto``.
    """

    name: str
    event: str
    key: str
    event_key: str | None = None
    timeout: str | None = None
    on_timeout: Literal["fail", "continue", "goto"] = "fail"
    default: JSON = None
    goto: str | None = None
    type: Literal["resume"] = "resume"


Step: TypeAlias = ProcessStep | ResumeStep
