"""The canonical JSON text the engine stores: what ``json.dumps`` gives, errors included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestra.engine._commits import ContextText
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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
names = st.text(min_size=1, max_size=6)


@given(
    trigger=json_values,
    steps=st.lists(st.tuples(names, json_values), max_size=6),
    events=st.dictionaries(names, json_values, max_size=3),
    output=st.none() | json_values,
)
@settings(max_examples=150, deadline=None)
def test_a_context_encoded_part_by_part_is_its_canonical_text(
    trigger: Any, steps: list[tuple[str, Any]], events: dict[str, Any], output: Any
) -> None:
    """As a run advances (steps added, one run again, events, an output), the text a
    ``ContextText`` builds from its remembered parts is always ``canonical``'s."""
    texts = _PartByPart()
    ctx: dict[str, Any] = {"trigger": trigger, "steps": {}, "events": {}}
    assert texts.encode(ctx) == canonical(ctx)
    for name, value in steps:
        ctx["steps"][name] = value  # a name seen before: a step run again, a new object
        assert texts.encode(ctx) == canonical(ctx)
    for name, value in events.items():
        ctx["events"][name] = value
        assert texts.encode(ctx) == canonical(ctx)
    if steps:  # a step's outputs replaced by an equal-looking new object
        name = steps[0][0]
        ctx["steps"][name] = json.loads(json.dumps(ctx["steps"][name]))
        assert texts.encode(ctx) == canonical(ctx)
    if output is not None:
        ctx["output"] = output
        assert texts.encode(ctx) == canonical(ctx)


class _PartByPart(ContextText):
    SMALL = 0  # every context assembled from its parts, however small


def test_a_large_context_is_assembled_from_its_parts() -> None:
    """Past ``SMALL`` characters, parts seen before are not encoded again."""
    big = {"items": [{"id": i, "name": f"item {i}"} for i in range(100)]}
    ctx: dict[str, Any] = {"trigger": big, "steps": {"a": {"p": big}}, "events": {}}
    texts = ContextText()
    assert texts.encode(ctx) == canonical(ctx)  # large: the next one goes part by part
    assert texts.encode(ctx) == canonical(ctx)  # its parts remembered
    ctx["steps"]["b"] = {"p": [1, 2]}
    encoded: list[Any] = []
    import orchestra.engine._commits as commits

    real = commits.canonical  # type: ignore[attr-defined]

    def spy(value: Any) -> str:
        encoded.append(value)
        return real(value)

    commits.canonical = spy  # type: ignore[attr-defined]
    try:
        assert texts.encode(ctx) == canonical(ctx)
    finally:
        commits.canonical = real  # type: ignore[attr-defined]
    assert big not in encoded and ctx["steps"]["a"] not in encoded
    assert ctx["steps"]["b"] in encoded


def test_a_context_with_a_key_that_is_not_text_is_refused() -> None:
    with pytest.raises(TypeError, match="context keys must be strings"):
        _PartByPart().encode({"trigger": None, "steps": {1: {}}})  # type: ignore[dict-item]
