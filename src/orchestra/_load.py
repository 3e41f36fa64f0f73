"""Loading a process from a file, and checking a file fully (fragments included)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from orchestra.errors import DefinitionError, Problem
from orchestra.model import Process
from orchestra.serialization import process_from_json

if TYPE_CHECKING:
    from orchestra.engine import Engine

__all__ = ["load", "load_validated"]


def load(path: str | os.PathLike[str]) -> Process:
    """Load and validate the process in the JSON file at ``path``.

    Raises :class:`~orchestra.DefinitionError` (naming the file) if it cannot be read or
    is invalid.
    """
    name = os.fspath(path)
    return process_from_json(_read(name), source=name)


async def load_validated(path: str | os.PathLike[str], engine: Engine) -> Process:
    """Load the process at ``path`` and validate it fully with ``engine``.

    One :class:`~orchestra.DefinitionError` (naming the file) lists every problem in
    document order: shape errors, structural problems, and the fragments that do not
    compile in the engine's sandbox (those that could be read, when the document has
    other problems); for a well-formed document, all of :meth:`Engine.validate`'s.
    """
    from orchestra.serialization._reading import parse_json, read_document
    from orchestra.serialization._report import in_document_order
    from orchestra.validation import fragment_problems

    name = os.fspath(path)
    reading = read_document(parse_json(_read(name), source=name), source=name)
    if reading.problems:
        found = await fragment_problems(reading.process, engine.sandbox, skip=reading.unread)
        problems = in_document_order([*reading.problems, *found], reading.data)
        raise DefinitionError(problems, source=name)
    try:
        await engine.validate(reading.process)
    except DefinitionError as exc:
        raise DefinitionError(in_document_order(exc.problems, reading.data), source=name) from None
    return reading.process


def _read(name: str) -> bytes:
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DefinitionError(
            [Problem("$", f"cannot read file: {exc.strerror}")], source=name
        ) from None
