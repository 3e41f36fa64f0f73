"""The canonical JSON text the engine stores: what ``json.dumps`` gives, errors included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestra.engine._common import canonical


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "value",
    [None, True, 1, 1.5, "é\n\"", [], {}, {"b": [1, {"z": None, "a": "x"}], "a": {"c": []}},
     [[[[]]]], {"ü": "ß", "A": 1, "a": 2}],
)  # fmt: skip
def test_canonical_text_is_json_dumps_with_sorted_keys(value: Any) -> None:
    assert canonical(value) == dumps(value)


def test_a_cyclic_value_raises_what_json_dumps_raises() -> None:
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="Circular reference"):
        canonical(cyclic)
    looped: list[Any] = []
    looped.append({"x": looped})
    with pytest.raises(ValueError, match="Circular reference"):
        canonical(looped)


def test_too_deep_a_value_raises_recursion_error_and_other_values_type_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        canonical(deep)
    with pytest.raises(TypeError):
        canonical({"x": {1, 2}})  # type: ignore[dict-item]
