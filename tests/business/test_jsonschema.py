from typing import Any

from orchestra._jsonschema import validate

PO: Any = {
    "type": "object",
    "required": ["po"],
    "additionalProperties": False,
    "properties": {
        "po": {
            "type": "object",
            "required": ["number", "supplier"],
            "properties": {
                "number": {"type": "string", "pattern": "^PO-[0-9]+$"},
                "supplier": {"type": "string", "minLength": 1, "maxLength": 5},
                "qty": {"type": "integer", "minimum": 1, "maximum": 10},
                "lines": {"type": "array", "items": {"type": "number"}},
                "kind": {"enum": ["a", "b"]},
                "v": {"const": 2},
            },
        },
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "id": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
    },
}


def paths(value: Any, schema: Any = PO) -> list[str]:
    return [i.path for i in validate(value, schema)]


def test_valid() -> None:
    assert (
        validate({"po": {"number": "PO-1", "supplier": "acme", "qty": 3, "lines": [1, 2.5]}}, PO)
        == []
    )


def test_paths_name_the_bad_value() -> None:
    assert paths({"po": {"number": 7, "supplier": "acme"}}) == ["$.po.number"]
    assert paths({"po": {"supplier": "acme"}}) == ["$.po.number"]
    assert paths({"po": {"number": "X-1", "supplier": ""}}) == ["$.po.number", "$.po.supplier"]
    assert paths({"po": {"number": "PO-1", "supplier": "a", "lines": [1, "x"]}}) == [
        "$.po.lines[1]"
    ]
    assert paths({"po": {"number": "PO-1", "supplier": "a"}, "zz": 1}) == ["$.zz"]
    assert paths({"po": {"number": "PO-1", "supplier": "a"}, "a b": 1}) == ["$['a b']"]
    assert paths([]) == ["$"]


def test_keywords() -> None:
    ok = {"number": "PO-1", "supplier": "a"}
    assert paths({"po": {**ok, "qty": 0}}) == ["$.po.qty"]
    assert paths({"po": {**ok, "qty": 11}}) == ["$.po.qty"]
    assert paths({"po": {**ok, "qty": 1.5}}) == ["$.po.qty"]
    assert paths({"po": {**ok, "qty": 2.0}}) == []
    assert paths({"po": {**ok, "qty": True}}) == ["$.po.qty"]
    assert paths({"po": {**ok, "supplier": "toolong"}}) == ["$.po.supplier"]
    assert paths({"po": {**ok, "kind": "c"}}) == ["$.po.kind"]
    assert paths({"po": {**ok, "v": 3}}) == ["$.po.v"]
    assert paths({"po": ok, "note": 1}) == ["$.note"]
    assert paths({"po": ok, "note": None}) == []
    assert paths({"po": ok, "id": 1}) == ["$.id"]  # both oneOf branches match
    assert paths({"po": ok, "id": 1.5}) == []
    assert paths(1, {"type": ["string", "null"]}) == ["$"]
    assert paths(True, {"enum": [1]}) == ["$"]
    assert paths(1, {"not": {"type": "integer"}}) == ["$"]
    assert paths({"a": 1}, {"additionalProperties": {"type": "string"}}) == ["$.a"]
    assert paths(5, False) == ["$"]
    assert paths(5, True) == []


def test_message() -> None:
    (issue,) = validate({"po": {"number": 7, "supplier": "a"}}, PO)
    assert str(issue) == "$.po.number: expected string, got integer"
