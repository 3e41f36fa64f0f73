"""A small JSON Schema validator for the common subset, with JSON paths in its errors.

Supported keywords: ``type`` (a name or a list), ``properties``, ``required``,
``additionalProperties`` (boolean or schema), ``items`` (one schema), ``enum``, ``const``,
``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``minLength``,
``maxLength``, ``minItems``, ``maxItems``, ``pattern``, ``anyOf``, ``oneOf``, ``allOf``
and ``not``. Other keywords (``$schema``, ``title``, ``description``, ``format``...) are
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import attrs

from orchestra._json import JSON

__all__ = ["SchemaIssue", "validate"]


@attrs.frozen
class SchemaIssue:
    """One way a value fails its schema: where (a JSON path) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def validate(value: JSON, schema: JSON, path: str = "$") -> list[SchemaIssue]:
    """Return every issue of ``value`` against ``schema`` (empty when it is valid)."""
    return list(_check(value, schema, path))


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _IDENT.match(key) else f"{path}[{key!r}]"


def _type_of(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_type(value: JSON, name: str) -> bool:
    actual = _type_of(value)
    return actual == name or (name == "number" and actual == "integer")


def _equal(a: JSON, b: JSON) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _check(value: JSON, schema: JSON, path: str) -> Iterator[SchemaIssue]:
    if schema is True or schema == {}:
        return
    if schema is False:
        yield SchemaIssue(path, "no value is allowed here")
        return
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(isinstance(n, str) and _is_type(value, n) for n in names):
            want = " or ".join(str(n) for n in names)
            yield SchemaIssue(path, f"expected {want}, got {_type_of(value)}")
            return
    if "const" in schema and not _equal(value, schema["const"]):
        yield SchemaIssue(path, f"must be {schema['const']!r}")
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_equal(value, e) for e in enum):
        yield SchemaIssue(path, f"must be one of {enum!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield from _number(value, schema, path)
    elif isinstance(value, str):
        yield from _string(value, schema, path)
    elif isinstance(value, list):
        yield from _array(value, schema, path)
    elif isinstance(value, dict):
        yield from _object(value, schema, path)
    yield from _combinators(value, schema, path)


def _number(value: float, schema: dict[str, JSON], path: str) -> Iterator[SchemaIssue]:
    checks: tuple[tuple[str, Callable[[float], bool], str], ...] = (
        ("minimum", lambda b: value >= b, "at least"),
        ("maximum", lambda b: value <= b, "at most"),
        ("exclusiveMinimum", lambda b: value > b, "more than"),
        ("exclusiveMaximum", lambda b: value < b, "less than"),
    )
    for keyword, ok, words in checks:
        bound = schema.get(keyword)
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and not ok(bound):
            yield SchemaIssue(path, f"must be {words} {bound}")


def _string(value: str, schema: dict[str, JSON], path: str) -> Iterator[SchemaIssue]:
    lo, hi, pattern = schema.get("minLength"), schema.get("maxLength"), schema.get("pattern")
    if isinstance(lo, int) and len(value) < lo:
        yield SchemaIssue(path, f"must be at least {lo} characters long")
    if isinstance(hi, int) and len(value) > hi:
        yield SchemaIssue(path, f"must be at most {hi} characters long")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        yield SchemaIssue(path, f"must match the pattern {pattern!r}")


def _array(value: list[JSON], schema: dict[str, JSON], path: str) -> Iterator[SchemaIssue]:
    lo, hi = schema.get("minItems"), schema.get("maxItems")
    if isinstance(lo, int) and len(value) < lo:
        yield SchemaIssue(path, f"must have at least {lo} items")
    if isinstance(hi, int) and len(value) > hi:
        yield SchemaIssue(path, f"must have at most {hi} items")
    items = schema.get("items")
    if items is not None:
        for i, item in enumerate(value):
            yield from _check(item, items, _child(path, i))


def _object(value: dict[str, JSON], schema: dict[str, JSON], path: str) -> Iterator[SchemaIssue]:
    required = schema.get("required")
    if isinstance(required, list):
        for name in required:
            if isinstance(name, str) and name not in value:
                yield SchemaIssue(_child(path, name), "is required")
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            yield from _check(item, props[name], _child(path, name))
        elif extra is False:
            yield SchemaIssue(_child(path, name), "is not an allowed property")
        elif isinstance(extra, dict):
            yield from _check(item, extra, _child(path, name))


def _combinators(value: JSON, schema: dict[str, JSON], path: str) -> Iterator[SchemaIssue]:
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        for sub in all_of:
            yield from _check(value, sub, path)
    any_of = schema.get("anyOf")
    if isinstance(any_of, list):
        results = [validate(value, sub, path) for sub in any_of]
        if results and all(results):
            best = min(results, key=len)
            detail = "; ".join(str(i) for i in best)
            yield SchemaIssue(path, f"matches none of the anyOf schemas (closest: {detail})")
    one_of = schema.get("oneOf")
    if isinstance(one_of, list):
        matches = sum(1 for sub in one_of if not validate(value, sub, path))
        if matches != 1:
            yield SchemaIssue(
                path, f"must match exactly one of the oneOf schemas, matched {matches}"
            )
    if "not" in schema and not validate(value, schema["not"], path):
        yield SchemaIssue(path, "must not match the 'not' schema")
