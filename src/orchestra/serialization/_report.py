"""Turning structuring errors into problems, and listing problems in document order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import cattrs
from cattrs.errors import IterableValidationNote

from orchestra.errors import Problem

__all__ = ["in_document_order", "shape_problems"]

_INDEX = re.compile(r"\[(\d+)\]")


def shape_problems(exc: BaseException, path: str = "$", type_: Any = None) -> list[Problem]:
    """Return the problems of a failed ``converter.structure``, each at its JSON path."""
    if not isinstance(exc, (cattrs.ClassValidationError, cattrs.IterableValidationError)):
        if isinstance(exc, cattrs.ForbiddenExtraKeysError):
            return [
                Problem(f"{path}.{key}", "unknown key")
                for key in sorted(map(str, exc.extra_fields))
            ]
        return [Problem(path, _message(exc, type_))]
    problems: list[Problem] = []
    with_notes, without = exc.group_exceptions()
    for sub, note in with_notes:
        if isinstance(note, IterableValidationNote):
            problems += shape_problems(sub, f"{path}[{note.index!r}]", note.type)
        else:
            problems += shape_problems(sub, f"{path}.{note.name}", note.type)
    for sub in without:
        problems += shape_problems(sub, path)
    return problems


def _message(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def in_document_order(problems: Iterable[Problem], data: object) -> list[Problem]:
    """Return ``problems`` without repeats, in the order their places appear in ``data``.

    Places are ordered by the position of their keys in the JSON objects of ``data`` and
    by array index; a missing key sorts at the start of its object. Problems at the same
    place keep their order.
    """
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: _position(p.path, data))


def _position(path: str, data: object) -> list[int]:
    rest = path.removeprefix("$")
    node, position = data, []
    while rest:
        step = _step(rest, node)
        if step is None:
            position.append(-1)
            break
        index, node, rest = step
        position.append(index)
    return position


def _step(rest: str, node: object) -> tuple[int, object, str] | None:
    if isinstance(node, dict) and rest.startswith("."):
        # The longest key that matches: unknown keys may hold '.' or '[' themselves.
        best: tuple[int, str] | None = None
        for i, key in enumerate(node):
            if (
                isinstance(key, str)
                and rest.startswith(key, 1)
                and (best is None or len(key) > len(best[1]))
            ):
                after = rest[len(key) + 1 : len(key) + 2]
                if after in ("", ".", "["):
                    best = (i, key)
        if best is not None:
            return best[0], node[best[1]], rest[len(best[1]) + 1 :]
    if isinstance(node, list) and (m := _INDEX.match(rest)) and int(m.group(1)) < len(node):
        i = int(m.group(1))
        return i, node[i], rest[m.end() :]
    return None
