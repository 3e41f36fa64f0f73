"""Shape errors and structural problems are reported together, in document order."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestra as o
from orchestra.serialization._converter import TAGGED_UNIONS

from .strategies import json_values, processes

CYCLE = "$.steps[0].processors[1].needs"


def http(url: str = "http://api/x", **kw: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, **kw}


def proc(name: str, call: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "call": call or http(), **kw}


def doc(*processors: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "p", "steps": [{"name": "s", "processors": list(processors)}], **kw}


def cyclic(**extra: Any) -> dict[str, Any]:
    """Processors a (with ``extra`` keys), b and c, where b and c need each other."""
    return doc(proc("a", **extra), proc("b", needs=["c"]), proc("c", needs=["b"]))


def problems(data: object) -> list[o.Problem]:
    with pytest.raises(o.DefinitionError) as info:
        o.Process.from_dict(data)
    return list(info.value.problems)


def paths(data: object) -> list[str]:
    return [p.path for p in problems(data)]


def test_one_shape_error_and_one_cycle_are_reported_together() -> None:
    """An unknown key does not hide a dependency cycle elsewhere in the step."""
    found = problems(cyclic(bogus=1))
    assert [str(p) for p in found] == [
        "$.steps[0].processors[0].bogus: unknown key",
        f"{CYCLE}: dependency cycle: b -> c -> b",
    ]


def test_broken_processor_still_takes_part_in_the_graph() -> None:
    """A processor with a shape error keeps its readable name and needs for the checks."""
    data = doc(
        proc("a", http(timeout="soon"), needs=["b"]),
        proc("b", needs=["a"]),
        proc("a", concurrency="many"),
    )
    assert paths(data) == [
        "$.steps[0].processors[0].call.timeout",
        "$.steps[0].processors[0].needs",
        "$.steps[0].processors[2].name",
        "$.steps[0].processors[2].concurrency",
    ]


# (document, the problem paths in order); each mixes shape errors and structural problems.
MIXED: list[tuple[dict[str, Any], list[str]]] = [
    (
        {**cyclic(), "bogus": 1, "name": "bad name"},
        ["$.name", CYCLE, "$.bogus"],
    ),
    (
        {**cyclic(), "trigger": {"type": "cron"}},
        [CYCLE, "$.trigger"],
    ),
    (
        cyclic(call={"type": "ftp"}),
        ["$.steps[0].processors[0].call", CYCLE],
    ),
    (
        {**cyclic(), "steps": [*cyclic()["steps"], {"type": "loop", "name": "s"}, 7]},
        [CYCLE, "$.steps[1]", "$.steps[2]"],
    ),
    (
        {**cyclic(), "steps": [*cyclic()["steps"], {"name": "s", "processors": "x"}]},
        [CYCLE, "$.steps[1].name", "$.steps[1].processors"],
    ),
    (
        doc(proc("a", http("nope", method=5)), proc("a", needs=["zz", 3])),
        [
            "$.steps[0].processors[0].call.url",
            "$.steps[0].processors[0].call.method",
            "$.steps[0].processors[1].name",
            "$.steps[0].processors[1].needs[0]",
            "$.steps[0].processors[1].needs[1]",
        ],
    ),
    (
        doc(proc("a", on_error="explode", fallback=1), proc("b", on_error="fail", fallback=1)),
        ["$.steps[0].processors[0].on_error", "$.steps[0].processors[1].fallback"],
    ),
    (
        {
            **doc(proc("a")),
            "events": [{"name": "e", "schema": 3}, {"name": "e"}, {"name": 1}, {"name": "e"}],
        },
        ["$.events[0].schema", "$.events[1].name", "$.events[2].name", "$.events[3].name"],
    ),
]


@pytest.mark.parametrize(("data", "expected"), MIXED)
def test_mixed_problems(data: dict[str, Any], expected: list[str]) -> None:
    """Shape errors and structural problems come in one error, in document order."""
    assert paths(data) == expected


RESUME = {"type": "resume", "name": "r", "event": "e", "key": "k"}


@pytest.mark.parametrize(
    ("resume", "expected"),
    [
        # The timeout cannot be read: "on_timeout needs a timeout" would be a guess.
        ({"timeout": 5, "on_timeout": "continue"}, ["$.steps[1].timeout"]),
        # on_timeout cannot be read: whether goto is used is unknown.
        ({"timeout": "P1D", "on_timeout": "later", "goto": "s"}, ["$.steps[1].on_timeout"]),
        # Readable parts are still checked.
        (
            {"timeout": "P1M", "on_timeout": "goto", "goto": "nowhere", "bogus": 1},
            ["$.steps[1].timeout", "$.steps[1].goto", "$.steps[1].bogus"],
        ),
    ],
)
def test_resume_rules_skip_unreadable_fields(resume: dict[str, Any], expected: list[str]) -> None:
    """A rule that reads a field with a shape error is not checked."""
    data = doc(proc("a"))
    data["steps"].append({**RESUME, **resume})
    assert paths(data) == expected


def test_goto_is_not_checked_against_an_unreadable_step_name() -> None:
    """goto may name the step whose name could not be read."""
    data = doc(proc("a"))
    data["steps"] += [
        {**RESUME, "timeout": "P1D", "on_timeout": "goto", "goto": "t"},
        {"name": ["t"], "processors": [proc("b")]},
    ]
    assert paths(data) == ["$.steps[2].name"]


def test_needs_are_not_checked_against_an_unreadable_name() -> None:
    """A need may name the processor whose name is missing; cycles are still found."""
    data = doc({"call": http()}, proc("b", needs=["x", "c"]), proc("c", needs=["b"]))
    assert paths(data) == ["$.steps[0].processors[0].name", CYCLE]


def test_document_order_follows_keys_and_indexes() -> None:
    """Problems follow the order of keys in the document; indexes sort as numbers."""
    procs = [proc(f"p{i}") for i in range(12)]
    procs[2]["bogus"] = 1
    procs[10]["call"]["url"] = "nope"
    data = {"steps": [{"processors": procs, "name": "s"}], "bogus": 1, "name": "bad name"}
    assert paths(data) == [
        "$.steps[0].processors[2].bogus",
        "$.steps[0].processors[10].call.url",
        "$.bogus",
        "$.name",
    ]


def test_missing_keys_sort_first_in_their_object() -> None:
    """A missing key is reported where its object starts."""
    assert paths({"steps": [{"processors": [{"bogus": 1}]}]}) == [
        "$.name",
        "$.steps[0].name",
        "$.steps[0].processors[0].name",
        "$.steps[0].processors[0].call",
        "$.steps[0].processors[0].bogus",
    ]


def test_unknown_keys_with_dots_and_brackets() -> None:
    """Odd unknown keys are reported at their place, once each."""
    data = doc(proc("a"))
    data["a.b[0]"] = 1
    data["steps"][0]["processors"][0]["x.y"] = 2
    assert paths(data) == ["$.steps[0].processors[0].x.y", "$.a.b[0]"]


def test_nesting_too_deep_is_a_problem() -> None:
    """Deeply nested JSON data is a problem, not a RecursionError."""
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert paths(doc(proc("a", fallback=deep, on_error="fallback"))) == [
        "$.steps[0].processors[0].fallback"
    ]


INT_KEY: dict[Any, Any] = {1: 1}  # from_dict may be given keys JSON cannot have


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            doc(proc("a", http(retry=None))),
            "$.steps[0].processors[0].call.retry: expected an object, got NoneType",
        ),
        (
            doc(proc("a"), trigger={"type": ["request"]}),
            "$.trigger: 'type' of a trigger must be one of 'request', 'event', got ['request']",
        ),
        ({**doc(proc("a")), "a,b": 1}, "$.a,b: unknown key"),
        ({**doc(proc("a")), **INT_KEY}, "$.1: unknown key"),
        (
            doc(proc("a", {"type": "action", "kind": "k", "params": {"x @ y": float("inf")}})),
            "$.steps[0].processors[0].call.params['x @ y']: inf is not a JSON number",
        ),
    ],
)
def test_odd_values_give_clear_messages(data: dict[Any, Any], expected: str) -> None:
    """Odd values and keys are reported with a plain message at their exact path."""
    assert [str(p) for p in problems(data)] == [expected]


# -- properties ---------------------------------------------------------------------------


def _places(data: Any, path: str = "$") -> list[tuple[Any, Any, str]]:
    """Return (container, key, JSON path) for every value inside ``data``."""
    found: list[tuple[Any, Any, str]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        where = f"{path}.{key}" if isinstance(data, dict) else f"{path}[{key}]"
        found.append((data, key, where))
        if isinstance(value, (dict, list)):
            found += _places(value, where)
    return found


def _wrong_type(value: Any) -> Any:
    """Return a value of another JSON type than ``value``."""
    if isinstance(value, str):
        return 12345
    if isinstance(value, dict):
        return "x"
    if value is None:
        return {"bogus": []}
    return "x" if not isinstance(value, list) else {"x": 1}


def _parent(path: str) -> str:
    return re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)


def _assert_well_reported(found: list[o.Problem]) -> None:
    assert found
    assert len(set(found)) == len(found)
    assert all(p.path.startswith("$") and p.message for p in found)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(processes(), st.data())
def test_one_wrong_type_causes_no_problem_elsewhere(
    process: o.Process, data: st.DataObject
) -> None:
    """A value of the wrong type anywhere in a valid process gives problems only around it."""
    raw = process.to_dict()
    container, key, where = data.draw(st.sampled_from(_places(raw)))
    container[key] = _wrong_type(container[key])
    try:
        o.Process.from_dict(raw)
    except o.DefinitionError as exc:
        found = list(exc.problems)
    else:
        return  # inside a JSON value (a fallback, a schema): still valid
    _assert_well_reported(found)
    near = _parent(where)
    assert all(p.path == near or p.path.startswith((near + ".", near + "[")) for p in found), (
        where,
        found,
    )


BREAKAGES = [
    lambda s: s["processors"].append(copy.deepcopy(s["processors"][0])),  # duplicate name
    lambda s: s["processors"][0].update(needs=[s["processors"][0]["name"]]),
    lambda s: s["processors"][-1].update(needs=["nobody"]),
    lambda s: s["processors"][0]["call"].update(type="http", url="nope", method="get"),
    lambda s: s["processors"][0].update(concurrency=0),
    lambda s: s.update(name="bad name"),
    lambda s: s.update(processors=[]),
]


_JSON_VALUES = re.compile(r"\.(fallback|default|params|schema)\b")


def _objects(data: Any) -> dict[str, dict[str, Any]]:
    """Return the JSON objects of the model in ``data`` (not those inside JSON values)."""
    found = {"$": data}
    for c, k, where in _places(data):
        if isinstance(c[k], dict) and not _JSON_VALUES.search(where):
            found[where] = c[k]
    return found


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(processes(), st.data())
def test_unknown_keys_hide_no_structural_problem(process: o.Process, data: st.DataObject) -> None:
    """Unknown keys added anywhere are reported next to the very same structural problems."""
    raw = process.to_dict()
    steps = [s for s in raw["steps"] if s.get("type", "process") == "process"]  # type: ignore[union-attr]
    for breakage in data.draw(st.lists(st.sampled_from(BREAKAGES), max_size=3)):
        if steps:
            step = data.draw(st.sampled_from(steps))
            if step["processors"]:
                breakage(step)
    try:
        o.Process.from_dict(raw)
    except o.DefinitionError as exc:
        before = set(exc.problems)
    else:
        before = set()
    objects = _objects(raw)
    targets = data.draw(st.sets(st.sampled_from(sorted(objects)), min_size=1, max_size=3))
    for target in targets:
        objects[target]["zz_unknown"] = 1
    found = problems(raw)
    _assert_well_reported(found)
    added = {p for p in found if p.path.endswith(".zz_unknown")}
    assert {p.path for p in added} == {f"{t}.zz_unknown" for t in targets}
    assert set(found) - added == before


_CLASSES = [o.Process, o.Processor, o.Retry, *(c for cs in TAGGED_UNIONS.values() for c in cs)]
_FIELDS = sorted({f.name for c in _CLASSES for f in attrs.fields(c)})
_TAGS = sorted(
    {str(attrs.fields_dict(c)["type"].default) for cs in TAGGED_UNIONS.values() for c in cs}
)
_junk: st.SearchStrategy[Any] = st.recursive(
    json_values | st.sampled_from(_TAGS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_FIELDS), _junk, max_size=6))
def test_any_input_gives_a_definition_error_or_a_process(data: dict[str, Any]) -> None:
    """Whatever the data, loading returns a process or raises DefinitionError, nothing else."""
    try:
        o.Process.from_dict(data)
    except o.DefinitionError as exc:
        _assert_well_reported(list(exc.problems))
        json.dumps([str(p) for p in exc.problems])
