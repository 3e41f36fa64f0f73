"""Loading a process from a file."""

from __future__ import annotations

import os

from orchestra.errors import DefinitionError, Problem
from orchestra.model import Process
from orchestra.serialization import process_from_json

__all__ = ["load"]


def load(path: str | os.PathLike[str]) -> Process:
    """Load and validate the process in the JSON file at ``path``.

    Raises :class:`~orchestra.DefinitionError` (naming the file) if it cannot be read or
    is invalid.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise DefinitionError(
            [Problem("$", f"cannot read file: {exc.strerror}")], source=name
        ) from None
    return process_from_json(text, source=name)
