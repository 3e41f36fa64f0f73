"""The JSON Schema of the process format, derived from the model classes."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from orchestra._json import JSON
from orchestra.model import Process
from orchestra.serialization._converter import (
    _DEFAULT_TAG,
    SCHEMA_VERSION,
    TAGGED_UNIONS,
    is_json_type,
)

__all__ = ["json_schema"]

_UNION_OF = {frozenset(classes): kind for kind, classes in TAGGED_UNIONS.items()}
_SCALARS: dict[Any, dict[str, JSON]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def json_schema() -> dict[str, JSON]:
    """Return the JSON Schema (draft 2020-12) of the process JSON format, for editors."""
    defs: dict[str, JSON] = {}
    root = _class_schema(Process, defs)
    assert isinstance(root["properties"], dict)
    root["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://orchestra.invalid/process.schema.json",
        "title": "orchestra process",
        **root,
        "$defs": defs,
    }


def _class_schema(cls: type[Any], defs: dict[str, JSON]) -> dict[str, JSON]:
    fields = attrs.fields(attrs.resolve_types(cls))
    props: dict[str, JSON] = {}
    required: list[JSON] = []
    for f in fields:
        props[f.name] = _type_schema(f.type, defs)
        if f.default is attrs.NOTHING:
            required.append(f.name)
    schema: dict[str, JSON] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = cls.__doc__.strip().split("\n\n")[0]
    if required:
        schema["required"] = required
    return schema


def _ref(cls: type[Any], defs: dict[str, JSON]) -> dict[str, JSON]:
    if cls.__name__ not in defs:
        defs[cls.__name__] = {}
        defs[cls.__name__] = _class_schema(cls, defs)
    return {"$ref": f"#/$defs/{cls.__name__}"}


def _type_schema(t: Any, defs: dict[str, JSON]) -> dict[str, JSON]:
    if is_json_type(t):
        return {}
    if t in _SCALARS:
        return _SCALARS[t]
    if attrs.has(t):
        return _ref(t, defs)
    origin, args = get_origin(t), get_args(t)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
    if origin in (Union, types.UnionType):
        kind = _UNION_OF.get(frozenset(args) - {type(None)})
        if kind is None:
            return {"anyOf": [_type_schema(a, defs) for a in args]}
        # As the loader reads it: only the default member may leave out its "type".
        default = TAGGED_UNIONS[kind][0] if _DEFAULT_TAG[kind] else None
        return {
            "anyOf": [
                {**_type_schema(a, defs), "required": ["type"]}
                if attrs.has(a) and a is not default
                else _type_schema(a, defs)
                for a in args
            ]
        }
    msg = f"no JSON Schema for {t!r}"
    raise TypeError(msg)
