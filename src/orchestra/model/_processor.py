"""The processor: one unit of work inside a step."""

from __future__ import annotations

from typing import Literal

import attrs

from orchestra._json import JSON
from orchestra.model._call import Call

__all__ = ["Processor"]


@attrs.frozen(kw_only=True)
class Processor:
    """One unit of work: an action with JavaScript fragments around it.

    Fragments see the bindings ``ctx`` (the whole context), ``trigger`` (the request or
    start event), ``out`` (outputs of the processors of the current step, by name),
    ``input`` (this processor's input) and, inside ``for_each``, ``item`` and ``index``.
    The ``output`` fragment also sees ``response`` (the action's result) and ``status``.
    """

    name: str
    call: Call
    needs: tuple[str, ...] = ()
    """Processors of the same step whose outputs this one uses; it starts when they end."""
    when: str | None = None
    """A condition; when false, the processor is skipped and its output is ``null``."""
    input: str | None = None
    """Builds the processor's input (``input``); defaults to ``null``."""
    output: str | None = None
    """Shapes the action's result (``response``) into the processor's output."""
    for_each: str | None = None
    """Returns a list; the action runs once per item, results kept in input order."""
    concurrency: int = 8
    """At most this many ``for_each`` items run at once."""
    on_error: Literal["fail", "fallback"] = "fail"
    fallback: JSON = None
    """The output recorded when the action fails and ``on_error`` is ``"fallback"``."""
    script_timeout: float | None = None
    """Deadline of each fragment of this processor in seconds (the sandbox's default if unset)."""
