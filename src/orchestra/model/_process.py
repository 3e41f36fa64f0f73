"""The process, its trigger and the events it declares."""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

from orchestra._json import JSON
from orchestra.model._step import Step

__all__ = ["Event", "Process", "RequestTrigger", "Trigger"]


@attrs.frozen(kw_only=True)
class Event:
    """A named event: starts runs (as a trigger) or resumes them (in a resume step).

    ``schema`` is an optional JSON Schema its payload must satisfy; ``key`` is an
    optional fragment over the payload (binding ``payload``) that reads its
    correlation key.
    """

    name: str
    schema: dict[str, JSON] | None = None
    key: str | None = None
    type: Literal["event"] = "event"


@attrs.frozen(kw_only=True)
class RequestTrigger:
    """Starts a payload process on an HTTP request matching ``method`` and ``path``.

    ``path`` is a template (``/products/{sku}``); its parameters reach the context as
    ``trigger.params``.
    """

    path: str
    method: str = "GET"
    type: Literal["request"] = "request"


Trigger: TypeAlias = RequestTrigger | Event


@attrs.frozen(kw_only=True)
class Process:
    """An orchestration process: a trigger, ordered steps and an output fragment.

    Build one in Python or load it with :meth:`from_json`; both give equal objects.
    """

    name: str
    steps: tuple[Step, ...]
    trigger: Trigger | None = None
    output: str | None = None
    """Builds the run's payload from the context; defaults to the outputs of the last step."""
    events: tuple[Event, ...] = ()
    """Events the process's resume steps wait for (their schemas and keys)."""
    description: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Process:
        """Load a process from JSON text; raise :class:`~orchestra.DefinitionError` if invalid."""
        from orchestra.serialization import process_from_json

        return process_from_json(text, source=source)

    @classmethod
    def from_dict(cls, data: object, *, source: str | None = None) -> Process:
        """Load a process from parsed JSON; raise :class:`~orchestra.DefinitionError` if invalid."""
        from orchestra.serialization import process_from_dict

        return process_from_dict(data, source=source)

    def to_dict(self) -> dict[str, JSON]:
        """Return the JSON form of this process as plain data."""
        from orchestra.serialization import process_to_dict

        return process_to_dict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        """Return the JSON text of this process."""
        from orchestra.serialization import process_to_json

        return process_to_json(self, indent=indent)

    def step(self, name: str) -> Step:
        """Return the step called ``name``; raise ``KeyError`` if there is none."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)
