"""The cattrs converter that maps the process model to and from JSON data."""

from __future__ import annotations

import json
import math
import types
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import IterableValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from orchestra._json import JSON
from orchestra.errors import DefinitionError
from orchestra.model import (
    ActionCall,
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    Event,
    FunctionCall,
    HttpCall,
    OAuth2ClientCredentials,
    Process,
    Processor,
    ProcessStep,
    RequestTrigger,
    ResumeStep,
    Retry,
)

__all__ = [
    "SCHEMA_VERSION",
    "TAGGED_UNIONS",
    "converter",
    "is_json_type",
    "process_from_dict",
    "process_from_json",
    "process_to_dict",
    "process_to_json",
]

SCHEMA_VERSION = 1
"""Version of the JSON format written by :func:`process_to_dict`."""

# Each union is told apart by its "type" key; the first class is the default when absent.
TAGGED_UNIONS: dict[str, tuple[type[Any], ...]] = {
    "step": (ProcessStep, ResumeStep),
    "call": (HttpCall, FunctionCall, ActionCall),
    "auth": (BearerAuth, BasicAuth, ApiKeyAuth, OAuth2ClientCredentials),
    "trigger": (RequestTrigger, Event),
}
_DEFAULT_TAG = {"step": True, "call": False, "auth": False, "trigger": False}

_MODEL_CLASSES = (
    Process, Processor, ProcessStep, ResumeStep, HttpCall, FunctionCall, ActionCall,
    BearerAuth, BasicAuth, ApiKeyAuth, OAuth2ClientCredentials, Event, RequestTrigger,
)  # fmt: skip


def _tag_of(cls: type[Any]) -> str:
    default = attrs.fields_dict(cls)["type"].default
    assert isinstance(default, str)
    return default


def is_json_type(t: Any) -> bool:
    """Return whether ``t`` is the :data:`~orchestra._json.JSON` alias (also once resolved)."""
    if t == JSON:
        return True
    args = get_args(t)
    is_union = get_origin(t) in (Union, types.UnionType)
    return is_union and all(x in args for x in (type(None), bool, int, float, str))


def _check_json(value: Any, path: str = "") -> JSON:
    """Return ``value`` if it is JSON data, else raise ``ValueError``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{value} is not a JSON number"
            raise ValueError(msg)
        return value
    if isinstance(value, list):
        return [_check_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            msg = "object keys must be strings"
            raise ValueError(msg)
        return {k: _check_json(v) for k, v in value.items()}
    msg = f"{type(value).__name__} is not a JSON value"
    raise ValueError(msg)


def _is_variadic_tuple(t: Any) -> bool:
    origin: Any = get_origin(t)
    return origin is tuple and get_args(t)[1:] == (Ellipsis,)


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook_func(is_json_type, lambda v, _: _check_json(v))
    c.register_unstructure_hook_func(is_json_type, lambda v: v)

    def structure_str(v: Any, _: Any) -> str:
        if not isinstance(v, str):
            msg = f"expected a string, got {type(v).__name__}"
            raise TypeError(msg)
        return v

    def structure_number(v: Any, t: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            msg = f"expected a number, got {type(v).__name__}"
            raise TypeError(msg)
        if t is int and not isinstance(v, int):
            msg = f"expected an integer, got {v!r}"
            raise TypeError(msg)
        return t(v)

    def structure_bool(v: Any, _: Any) -> bool:
        if not isinstance(v, bool):
            msg = f"expected true or false, got {type(v).__name__}"
            raise TypeError(msg)
        return v

    c.register_structure_hook(str, structure_str)
    c.register_structure_hook(int, structure_number)
    c.register_structure_hook(float, structure_number)
    c.register_structure_hook(bool, structure_bool)

    def structure_literal(v: Any, t: Any) -> Any:
        # ``type(x) is type(v)``: JSON true is not 1, nor 1 true.
        if not any(v == x and type(x) is type(v) for x in get_args(t)):
            choices = ", ".join(repr(x) for x in get_args(t))
            msg = f"must be one of {choices}, got {v!r}"
            raise ValueError(msg)
        return v

    def is_literal(t: Any) -> bool:
        origin: Any = get_origin(t)
        return origin is Literal

    c.register_structure_hook_func(is_literal, structure_literal)

    def structure_tuple(v: Any, t: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            msg = f"expected an array, got {type(v).__name__}"
            raise TypeError(msg)
        (item,) = get_args(t)[:1]
        errors, out = [], []
        for i, x in enumerate(v):
            try:
                out.append(c.structure(x, item))
            except Exception as exc:
                note = IterableValidationNote(f"Structuring index {i}", i, item)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("While structuring an array", errors, t)
        return tuple(out)

    c.register_structure_hook_func(_is_variadic_tuple, structure_tuple)

    for kind, classes in TAGGED_UNIONS.items():
        by_tag = {_tag_of(cls): cls for cls in classes}
        default = classes[0] if _DEFAULT_TAG[kind] else None
        c.register_structure_hook_func(_is_union_of(classes), _tagged(c, kind, by_tag, default))
        c.register_unstructure_hook_func(_is_union_of(classes), lambda v: c.unstructure(v, type(v)))
    for cls in _MODEL_CLASSES:
        resolved = attrs.resolve_types(cls)
        overrides = {
            f.name: override(omit_if_default=f.name != "type") for f in attrs.fields(resolved)
        }
        c.register_unstructure_hook(
            cls,
            make_dict_unstructure_fn(cls, c, _cattrs_omit_if_default=True, **overrides),  # type: ignore[arg-type]
        )
    # Retry first: the hook of HttpCall looks up the one of its ``retry`` field when made.
    for model in (Retry, *_MODEL_CLASSES):
        c.register_structure_hook(
            model, _object(make_dict_structure_fn(model, c, _cattrs_forbid_extra_keys=True))
        )
    return c


def _object(structure: Any) -> Any:
    def checked(v: Any, t: Any) -> Any:
        if not isinstance(v, dict):
            msg = f"expected an object, got {type(v).__name__}"
            raise TypeError(msg)
        return structure(v, t)

    return checked


def _is_union_of(classes: tuple[type[Any], ...]) -> Any:
    def predicate(t: Any) -> bool:
        args = set(get_args(t)) - {type(None)}
        return get_origin(t) in (Union, types.UnionType) and args == set(classes)

    return predicate


def _tagged(
    c: cattrs.Converter, kind: str, by_tag: dict[str, type[Any]], default: type[Any] | None
) -> Any:
    def structure(v: Any, t: Any) -> Any:
        if v is None and type(None) in get_args(t):
            return None
        if not isinstance(v, dict):
            msg = f"expected an object ({kind}), got {type(v).__name__}"
            raise TypeError(msg)
        tag = v.get("type")
        if tag is None and default is not None:
            cls = default
        elif isinstance(tag, str) and tag in by_tag:
            cls = by_tag[tag]
        else:
            choices = ", ".join(repr(t) for t in by_tag)
            article = "an" if kind[0] in "aeiou" else "a"
            msg = f"'type' of {article} {kind} must be one of {choices}, got {tag!r}"
            raise ValueError(msg)
        return c.structure(v, cls)

    return structure


converter = _make_converter()
"""The converter for the process model: JSON data in, model objects out, and back."""


def process_from_dict(data: object, *, source: str | None = None) -> Process:
    """Build a :class:`Process` from parsed JSON and validate it.

    Raises :class:`~orchestra.DefinitionError` listing every problem with its JSON path,
    in document order: shape errors (unknown keys, wrong types, missing keys) together
    with the structural problems of the parts that are well-formed.
    """
    from orchestra.serialization._reading import read_document

    reading = read_document(data, source=source)
    if reading.problems:
        raise DefinitionError(reading.problems, source=source)
    return reading.process


def process_from_json(text: str | bytes, *, source: str | None = None) -> Process:
    """Parse JSON text into a validated :class:`Process`; see :func:`process_from_dict`."""
    from orchestra.serialization._reading import parse_json

    return process_from_dict(parse_json(text, source=source), source=source)


def process_to_dict(process: Process) -> dict[str, JSON]:
    """Return the JSON data of ``process``, defaults omitted, with ``schema_version``."""
    data: dict[str, JSON] = {"schema_version": SCHEMA_VERSION}
    data.update(converter.unstructure(process, Process))
    return data


def process_to_json(process: Process, *, indent: int | None = 2) -> str:
    """Return the JSON text of ``process``."""
    return json.dumps(process_to_dict(process), indent=indent, ensure_ascii=False)
