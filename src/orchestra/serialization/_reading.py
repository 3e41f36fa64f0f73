"""Reading a process document: every problem it has, and what of it could be read.

:func:`read_document` turns JSON data into a :class:`Reading`: the process (with
stand-ins where values could not be read), its shape errors and structural problems in
document order, and the paths of the values left unread. :func:`process_from_dict`
raises on any problem; a caller that can check more (compiling the fragments of the
readable parts in a sandbox) keeps reading and reports everything in one go.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from orchestra.errors import DefinitionError, Problem
from orchestra.model import Process
from orchestra.serialization._converter import SCHEMA_VERSION, converter
from orchestra.serialization._lenient import repair
from orchestra.serialization._report import in_document_order, shape_problems
from orchestra.validation import structural_problems

__all__ = ["Reading", "parse_json", "read_document"]


@attrs.frozen
class Reading:
    """What a process document gave; see :func:`read_document`."""

    data: dict[str, Any]
    """The document's JSON object, without ``schema_version``."""
    process: Process
    """The process; where a value could not be read, a stand-in (see ``unread``)."""
    problems: tuple[Problem, ...]
    """Shape errors and structural problems, in document order; none if it is valid."""
    unread: frozenset[str]
    """JSON paths whose values could not be read: nothing at or under them is checked."""


def read_document(data: object, *, source: str | None = None) -> Reading:
    """Read the JSON data of a process, collecting every shape and structural problem.

    Raises :class:`~orchestra.DefinitionError` at once only when ``data`` is not a JSON
    object or its ``schema_version`` is not one this orchestra reads.
    """
    if not isinstance(data, dict):
        raise DefinitionError([Problem("$", "a process must be a JSON object")], source=source)
    data = dict(data)
    version = data.pop("schema_version", SCHEMA_VERSION)
    # JSON ``true`` and ``1.0`` equal 1 in Python, but they are not versions.
    if type(version) is not int or version != SCHEMA_VERSION:
        problem = Problem(
            "$.schema_version",
            f"unsupported version {version!r}; this orchestra reads {SCHEMA_VERSION}",
        )
        raise DefinitionError([problem], source=source)
    try:
        process = converter.structure(data, Process)
    except Exception as exc:  # every shape error; then check what is readable
        problems = shape_problems(exc)
        partial, broken = repair(data, converter)
        skip = broken | {p.path for p in problems}
        problems += structural_problems(partial, skip=skip)
        ordered = tuple(in_document_order(problems, data))
        return Reading(data=data, process=partial, problems=ordered, unread=frozenset(skip))
    found = structural_problems(process)
    ordered = tuple(in_document_order(found, data)) if found else ()
    return Reading(data=data, process=process, problems=ordered, unread=frozenset())


def parse_json(text: str | bytes, *, source: str | None = None) -> object:
    """Parse the JSON text of a document; :class:`~orchestra.DefinitionError` if it is not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DefinitionError(
            [Problem("$", f"not JSON ({where}): {exc.msg}")], source=source
        ) from None
    except UnicodeDecodeError as exc:
        problem = Problem("$", f"not UTF-8 text (byte {exc.start}): {exc.reason}")
        raise DefinitionError([problem], source=source) from None
    except RecursionError:
        problem = Problem("$", "the JSON is nested too deeply")
        raise DefinitionError([problem], source=source) from None
