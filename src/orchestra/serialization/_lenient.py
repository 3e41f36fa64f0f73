"""Best-effort structuring of a document that has shape errors.

:func:`repair` builds a :class:`~orchestra.model.Process` from JSON data the converter
refused, so the structural checks can still run over the well-formed parts. Every value
that cannot be read is replaced by a stand-in (its field's default, ``None``, an empty
tuple, or a string that is never a valid name) and its JSON path is recorded: problems
the structural checks find at or under those paths are not reported.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs

from orchestra.model import Process
from orchestra.serialization._converter import (
    _DEFAULT_TAG,
    TAGGED_UNIONS,
    _is_variadic_tuple,
    _tag_of,
    is_json_type,
)

__all__ = ["repair"]

_UNIONS = {
    frozenset(classes): (
        {_tag_of(cls): cls for cls in classes},
        classes[0] if _DEFAULT_TAG[kind] else None,
    )
    for kind, classes in TAGGED_UNIONS.items()
}


def repair(data: dict[str, Any], converter: cattrs.Converter) -> tuple[Process, set[str]]:
    """Return ``data`` as a process with stand-ins for unreadable parts, and their paths."""
    reader = _Reader(converter)
    process = reader.object(data, Process, "$")
    return process, reader.broken


class _Reader:
    def __init__(self, converter: cattrs.Converter) -> None:
        self.converter = converter
        self.broken: set[str] = set()

    def value(self, v: Any, t: Any, path: str, default: Any = attrs.NOTHING) -> Any:
        with contextlib.suppress(Exception):  # read the parts; the converter reported why
            return self.converter.structure(v, t)
        cls = self._class_of(v, t)
        if cls is not None:
            return self.object(v, cls, path)
        args = get_args(t)
        if get_origin(t) in (Union, types.UnionType) and not is_json_type(t) and v is not None:
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:  # ``X | None`` holding an X that is not well-formed
                return self.value(v, rest[0], path, default)
        if _is_variadic_tuple(t) and isinstance(v, list):
            return tuple(self.value(x, args[0], f"{path}[{i}]") for i, x in enumerate(v))
        self.broken.add(path)
        return self.stand_in(t, path) if default is attrs.NOTHING else default

    def _class_of(self, v: Any, t: Any) -> type[Any] | None:
        if not isinstance(v, dict):
            return None
        if attrs.has(t):
            return t
        found = _UNIONS.get(frozenset(get_args(t)) - {type(None)})
        if found is None:
            return None
        by_tag, default = found
        tag = v.get("type")
        if tag is None:
            return default
        return by_tag.get(tag) if isinstance(tag, str) else None

    def object(self, v: dict[str, Any], cls: type[Any], path: str) -> Any:
        kwargs: dict[str, Any] = {}
        for f in attrs.fields(attrs.resolve_types(cls)):
            where = f"{path}.{f.name}"
            default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default  # type: ignore[arg-type]
            if f.name in v:
                kwargs[f.name] = self.value(v[f.name], f.type, where, default)
            elif default is attrs.NOTHING:
                self.broken.add(where)
                kwargs[f.name] = self.stand_in(f.type, where)
        return cls(**kwargs)

    def stand_in(self, t: Any, path: str) -> Any:
        """Return a value of type ``t`` that the structural checks accept or skip."""
        args = get_args(t)
        if is_json_type(t) or type(None) in args:
            return None
        if t is str:
            return "\x00" + path  # never a valid name, so it neither clashes nor resolves
        if t in (int, float):
            return t(1)
        if t is bool:
            return False
        if get_origin(t) is Literal:
            return args[0]
        if get_origin(t) is tuple:
            return ()
        if get_origin(t) is dict:
            return {}
        cls = t if attrs.has(t) else args[0]
        return self.object({}, cls, path)
