"""The JSON format: lossless round trips, loading files, schema versions and the JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings

import orchestra as o
from orchestra.serialization import SCHEMA_VERSION, json_schema
from orchestra.serialization._converter import TAGGED_UNIONS
from orchestra.validation import structural_problems

from .strategies import processes

EXAMPLE = o.Process(
    name="page",
    description="A product page.",
    trigger=o.RequestTrigger(path="/p/{sku}"),
    steps=(
        o.ProcessStep(
            name="main",
            processors=(
                o.Processor(
                    name="cms",
                    call=o.HttpCall(
                        url="http://api/cms/{sku}",
                        path="({sku: trigger.params.sku})",
                        auth=o.BearerAuth(token="cms"),
                    ),
                ),
                o.Processor(
                    name="price",
                    needs=("cms",),
                    call=o.HttpCall(
                        url="http://api/price",
                        query="({sku: out.cms.sku})",
                        retry=o.Retry(attempts=5, jitter=False, methods=("GET", "POST")),
                        auth=o.OAuth2ClientCredentials(
                            token_url="https://auth/token", client_id="me", client_secret="oauth"
                        ),
                    ),
                    output="response.price",
                ),
                o.Processor(
                    name="related",
                    needs=("cms",),
                    for_each="out.cms.related",
                    concurrency=2,
                    call=o.FunctionCall(name="lookup", timeout=2.5),
                ),
                o.Processor(
                    name="audit",
                    call=o.ActionCall(kind="log", params={"level": "info", "n": [1, 2.5, None]}),
                    on_error="fallback",
                    fallback={"x": 1},
                ),
            ),
        ),
        o.ResumeStep(
            name="wait",
            event="approved",
            key="trigger.params.sku",
            timeout="P5D",
            on_timeout="goto",
            goto="main",
        ),
    ),
    events=(o.Event(name="approved", schema={"type": "object"}, key="payload.sku"),),
    output="({title: out.cms.title})",
)


class TestRoundTrip:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(processes())
    def test_json_round_trip_is_lossless(self, process: o.Process) -> None:
        """Every valid process survives to_json/from_json unchanged."""
        assert structural_problems(process) == []
        assert o.Process.from_json(process.to_json()) == process

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(processes())
    def test_dict_round_trip_is_lossless_and_plain_json(self, process: o.Process) -> None:
        """to_dict gives plain JSON data and from_dict reads it back unchanged."""
        data = process.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert o.Process.from_dict(data) == process

    @settings(max_examples=10, deadline=None)
    @given(processes())
    def test_compact_json_reads_back_from_bytes(self, process: o.Process) -> None:
        """Compact JSON given as UTF-8 bytes round-trips too."""
        text = process.to_json(indent=None)
        assert "\n" not in text
        assert o.Process.from_json(text.encode()) == process

    def test_example_round_trips(self) -> None:
        """The hand-written example with every kind round-trips."""
        assert o.Process.from_json(EXAMPLE.to_json()) == EXAMPLE

    def test_defaults_are_omitted_and_type_tags_written(self) -> None:
        """Defaults are left out of the JSON; every tagged object carries its type."""
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(
                    name="s", processors=(o.Processor(name="a", call=o.HttpCall(url="http://x")),)
                ),
            ),
        )
        assert p.to_dict() == {
            "schema_version": SCHEMA_VERSION,
            "name": "p",
            "steps": [
                {
                    "name": "s",
                    "processors": [{"name": "a", "call": {"url": "http://x", "type": "http"}}],
                    "type": "process",
                }
            ],
        }

    def test_process_step_type_may_be_left_out(self) -> None:
        """A step without 'type' is a process step."""
        p = o.Process.from_dict(
            {
                "name": "p",
                "steps": [
                    {
                        "name": "s",
                        "processors": [{"name": "a", "call": {"type": "function", "name": "f"}}],
                    }
                ],
            }
        )
        assert isinstance(p.steps[0], o.ProcessStep)

    def test_integers_stay_integers(self) -> None:
        """Large integers in JSON data are kept exactly."""
        data = EXAMPLE.to_dict()
        data["steps"][0]["processors"][3]["fallback"] = {"big": 2**63 + 1}  # type: ignore[index,call-overload]
        p = o.Process.from_dict(data)
        assert p.steps[0].processors[3].fallback == {"big": 2**63 + 1}  # type: ignore[union-attr]

    def test_unicode_is_written_unescaped(self) -> None:
        """Non-ASCII text is written as is."""
        p = attrs.evolve(EXAMPLE, description="Schuh – grün")
        assert "Schuh – grün" in p.to_json()


class TestSchemaVersion:
    def test_written_on_every_dump(self) -> None:
        """to_dict and to_json carry the schema version."""
        assert EXAMPLE.to_dict()["schema_version"] == SCHEMA_VERSION
        assert json.loads(EXAMPLE.to_json())["schema_version"] == SCHEMA_VERSION

    def test_missing_version_means_current(self) -> None:
        """A document without schema_version is read as the current version."""
        data = EXAMPLE.to_dict()
        del data["schema_version"]
        assert o.Process.from_dict(data) == EXAMPLE

    @pytest.mark.parametrize("version", [0, 2, 99, "1", None, True, 1.5])
    def test_other_versions_are_refused(self, version: object) -> None:
        """Any other schema_version (or a non-integer) is a problem at $.schema_version."""
        data = EXAMPLE.to_dict()
        data["schema_version"] = version  # type: ignore[assignment]
        with pytest.raises(o.DefinitionError) as info:
            o.Process.from_dict(data)
        assert [p.path for p in info.value.problems] == ["$.schema_version"]

    def test_input_dict_is_not_mutated(self) -> None:
        """Loading does not change the caller's data."""
        data = EXAMPLE.to_dict()
        copy = json.loads(json.dumps(data))
        o.Process.from_dict(data)
        assert data == copy


class TestLoad:
    def test_loads_a_file(self, tmp_path: Path) -> None:
        """orchestra.load reads a process from a JSON file (str or Path)."""
        f = tmp_path / "page.json"
        f.write_text(EXAMPLE.to_json(), encoding="utf-8")
        assert o.load(f) == EXAMPLE
        assert o.load(str(f)) == EXAMPLE

    def test_missing_file_names_the_file(self, tmp_path: Path) -> None:
        """A missing file is a DefinitionError naming the file."""
        f = tmp_path / "nope.json"
        with pytest.raises(o.DefinitionError) as info:
            o.load(f)
        assert info.value.source == str(f)
        assert str(f) in str(info.value)
        assert [p.path for p in info.value.problems] == ["$"]
        assert "cannot read" in info.value.problems[0].message

    def test_directory_is_a_definition_error(self, tmp_path: Path) -> None:
        """A directory is not readable as a process file."""
        with pytest.raises(o.DefinitionError) as info:
            o.load(tmp_path)
        assert info.value.source == str(tmp_path)

    def test_invalid_json_names_file_and_position(self, tmp_path: Path) -> None:
        """Invalid JSON gives line and column and names the file."""
        f = tmp_path / "bad.json"
        f.write_text('{\n  "name": "p",\n  "steps": [,]\n}', encoding="utf-8")
        with pytest.raises(o.DefinitionError) as info:
            o.load(f)
        err = info.value
        assert err.source == str(f)
        assert str(f) in str(err)
        (problem,) = err.problems
        assert problem.path == "$"
        assert "line 3" in problem.message

    def test_invalid_utf8_is_a_definition_error(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are reported, not raised as UnicodeDecodeError."""
        f = tmp_path / "latin1.json"
        f.write_bytes(b'{"name": "\xe9"}')
        with pytest.raises(o.DefinitionError) as info:
            o.load(f)
        assert info.value.source == str(f)

    def test_invalid_process_names_file(self, tmp_path: Path) -> None:
        """A JSON file with model problems lists them all, in document order, naming the file."""
        f = tmp_path / "p.json"
        f.write_text(json.dumps({"name": "p", "steps": [], "bogus": 1}), encoding="utf-8")
        with pytest.raises(o.DefinitionError) as info:
            o.load(f)
        assert info.value.source == str(f)
        assert [p.path for p in info.value.problems] == ["$.steps", "$.bogus"]

    @pytest.mark.parametrize("text", ["[]", "42", '"p"', "null"])
    def test_top_level_must_be_an_object(self, text: str) -> None:
        """A JSON document that is not an object is one problem at $."""
        with pytest.raises(o.DefinitionError) as info:
            o.Process.from_json(text)
        assert [p.path for p in info.value.problems] == ["$"]


# A small JSON Schema checker (the subset json_schema() uses), so the example can be
# checked against the schema without a jsonschema library.
def _schema_errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$"
) -> list[str]:
    errors: list[str] = []
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        errors += _schema_errors(value, root["$defs"][name], root, path)
        schema = {k: v for k, v in schema.items() if k != "$ref"}
    if "anyOf" in schema:
        if all(_schema_errors(value, s, root, path) for s in schema["anyOf"]):
            errors.append(f"{path}: matches no alternative")
        return errors
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of {schema['enum']}")
    kinds: dict[str, Any] = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    t = schema.get("type")
    if t is not None:
        ok = isinstance(value, kinds[t]) and not (
            t in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            return [f"{path}: not {t}"]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, v in value.items():
            if key in props:
                errors += _schema_errors(v, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _schema_errors(v, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _schema_errors(v, schema["items"], root, f"{path}[{i}]")
    return errors


def _model_classes() -> set[type[Any]]:
    found: set[type[Any]] = set()
    todo: list[type[Any]] = [o.Process]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.add(cls)
        for f in attrs.fields(attrs.resolve_types(cls)):
            todo += [t for t in _types_in(f.type) if attrs.has(t)]
    return found


def _types_in(t: Any) -> list[Any]:
    args = getattr(t, "__args__", ())
    return [t, *[x for a in args for x in _types_in(a)]]


class TestJsonSchema:
    def test_is_json_and_draft_2020_12(self) -> None:
        """json_schema() is JSON data naming draft 2020-12, with an object at the root."""
        schema = json_schema()
        assert json.loads(json.dumps(schema)) == schema
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == {"name", "steps"}  # type: ignore[arg-type]
        assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}  # type: ignore[index,call-overload]

    def test_every_ref_resolves(self) -> None:
        """Every $ref points into $defs."""
        schema = json_schema()
        text = json.dumps(schema)
        refs = set(re.findall(r'"\$ref": "#/\$defs/(\w+)"', text))
        assert refs
        assert refs <= set(schema["$defs"])  # type: ignore[arg-type]

    def test_every_model_field_appears(self) -> None:
        """Every model class is in $defs with exactly its fields as properties."""
        schema = json_schema()
        defs = schema["$defs"]
        assert isinstance(defs, dict)
        classes = _model_classes()
        assert o.Retry in classes and o.OAuth2ClientCredentials in classes
        for cls in classes - {o.Process}:
            assert cls.__name__ in defs, cls
            fields: Any = defs[cls.__name__]
            assert set(fields["properties"]) == {f.name for f in attrs.fields(cls)}, cls
        props = schema["properties"]
        assert isinstance(props, dict)
        assert set(props) == {f.name for f in attrs.fields(o.Process)} | {"schema_version"}

    def test_example_passes(self) -> None:
        """The example's JSON is valid against the schema."""
        schema = json_schema()
        assert _schema_errors(EXAMPLE.to_dict(), schema, schema) == []

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(processes())
    def test_generated_processes_pass(self, process: o.Process) -> None:
        """Every valid process's JSON is valid against the schema."""
        schema = json_schema()
        assert _schema_errors(process.to_dict(), schema, schema) == []

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda d: d.update(bogus=1),
            lambda d: d["steps"][0]["processors"][0]["call"].pop("type"),
            lambda d: d["steps"][0]["processors"][0]["call"].update(type="ftp"),
            lambda d: d["steps"][0]["processors"][0].pop("name"),
            lambda d: d["steps"][0]["processors"][0].update(on_error="explode"),
            lambda d: d["steps"][0]["processors"][0].update(concurrency="8"),
            lambda d: d.update(schema_version=2),
        ],
    )
    def test_schema_rejects_what_the_loader_rejects(self, mutate: Any) -> None:
        """Documents the loader refuses are refused by the schema too."""
        schema = json_schema()
        data = EXAMPLE.to_dict()
        mutate(data)
        with pytest.raises(o.DefinitionError):
            o.Process.from_dict(data)
        assert _schema_errors(data, schema, schema) != []

    def test_tagged_unions_cover_all_classes(self) -> None:
        """Every class of a tagged union appears in $defs with its 'type' tag as an enum."""
        defs = json_schema()["$defs"]
        assert isinstance(defs, dict)
        for classes in TAGGED_UNIONS.values():
            for cls in classes:
                tag = attrs.fields_dict(cls)["type"].default
                assert defs[cls.__name__]["properties"]["type"] == {"enum": [tag]}  # type: ignore[index,call-overload]
