"""Validation: every problem of a definition at once, each with its exact JSON path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.validation import check, fragments, structural_problems


def http(url: str = "http://api/x", **kw: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, **kw}


def proc(name: str, call: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "call": call or http(), **kw}


def doc(*processors: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "p", "steps": [{"name": "s", "processors": list(processors)}], **kw}


def problems(data: object) -> dict[str, str]:
    """Load ``data`` and return its problems as {path: messages}; it must fail."""
    with pytest.raises(o.DefinitionError) as info:
        o.Process.from_dict(data)
    found = info.value.problems
    assert all(isinstance(p, o.Problem) for p in found)
    result: dict[str, str] = {}
    for p in found:
        result[p.path] = f"{result[p.path]}; {p.message}" if p.path in result else p.message
    return result


class TestAllAtOnce:
    def test_structural_problems_reported_together(self) -> None:
        """Every structural problem of a well-typed document is reported in one error."""
        data = {
            "name": "bad name!",
            "trigger": {"type": "request", "path": "p/{1x}", "method": "FETCH"},
            "events": [{"name": "e"}, {"name": "e"}],
            "steps": [
                {
                    "name": "s",
                    "processors": [
                        proc("a", needs=["nope"]),
                        proc("a"),
                        proc("self", needs=["self"]),
                        proc("x", needs=["y"]),
                        proc("y", needs=["x"]),
                        proc("url", http("not a url")),
                        proc("method", http(method="get")),
                        proc("params", http("http://api/{a b}/x", path="({})")),
                        proc("noparams", http("http://api/{sku}")),
                        proc("zero", http(timeout=0, max_response_bytes=0), concurrency=0),
                        proc("retry", http(retry={"attempts": 0, "backoff": -1})),
                        proc("fb", fallback={"x": 1}),
                        proc("f", {"type": "function", "name": ""}, script_timeout=0),
                    ],
                },
                {"name": "s", "processors": []},
                {
                    "type": "resume",
                    "name": "r",
                    "event": "e",
                    "key": "1",
                    "timeout": "P1M",
                    "on_timeout": "goto",
                    "goto": "nowhere",
                },
                {"type": "resume", "name": "r2", "event": "", "key": "1", "on_timeout": "continue"},
                {
                    "type": "resume",
                    "name": "r3",
                    "event": "e",
                    "key": "1",
                    "timeout": "PT0S",
                    "goto": "s",
                },
                {
                    "type": "resume",
                    "name": "r4",
                    "event": "e",
                    "key": "1",
                    "timeout": "P1D",
                    "on_timeout": "goto",
                },
            ],
        }
        found = problems(data)
        p = "$.steps[0].processors"
        assert set(found) == {
            "$.name",
            "$.trigger.method",
            "$.trigger.path",
            "$.events[1].name",
            f"{p}[0].needs[0]",
            f"{p}[1].name",
            f"{p}[2].needs[0]",
            f"{p}[3].needs",
            f"{p}[5].call.url",
            f"{p}[6].call.method",
            f"{p}[7].call.url",
            f"{p}[8].call.path",
            f"{p}[9].concurrency",
            f"{p}[9].call.timeout",
            f"{p}[9].call.max_response_bytes",
            f"{p}[10].call.retry.attempts",
            f"{p}[10].call.retry",
            f"{p}[11].fallback",
            f"{p}[12].call",
            f"{p}[12].script_timeout",
            "$.steps[1].name",
            "$.steps[1].processors",
            "$.steps[2].timeout",
            "$.steps[2].goto",
            "$.steps[3].event",
            "$.steps[3].on_timeout",
            "$.steps[4].timeout",
            "$.steps[4].goto",
            "$.steps[5].goto",
        }, found
        assert "no processor named 'nope'" in found[f"{p}[0].needs[0]"]
        assert "duplicate processor name 'a'" in found[f"{p}[1].name"]
        assert "cannot need itself" in found[f"{p}[2].needs[0]"]
        assert "cycle" in found[f"{p}[3].needs"]
        assert "x -> y -> x" in found[f"{p}[3].needs"]
        assert "duplicate step name 's'" in found["$.steps[1].name"]
        assert "'nowhere'" in found["$.steps[2].goto"]

    def test_type_problems_reported_together(self) -> None:
        """Unknown keys, wrong types and unknown tags are reported together with their paths."""
        data = doc(
            {"name": "a", "call": http(), "bogus": 1},
            proc("b", http(timeout="soon", retry={"attempts": "3"})),
            proc("c", {"type": "ftp"}),
            proc("d", http(auth={"type": "kerberos"})),
            {"name": 5, "call": http(), "needs": "a", "concurrency": 1.5},
            proc("e", http(extra=True)),
            {"call": http()},
            proc("f", on_error="explode"),
        )
        data["steps"].append({"type": "loop", "name": "z"})
        data["trigger"] = {"type": "cron"}
        found = problems(data)
        p = "$.steps[0].processors"
        assert set(found) == {
            f"{p}[0].bogus",
            f"{p}[1].call.timeout",
            f"{p}[1].call.retry.attempts",
            f"{p}[2].call",
            f"{p}[3].call.auth",
            f"{p}[4].name",
            f"{p}[4].needs",
            f"{p}[4].concurrency",
            f"{p}[5].call.extra",
            f"{p}[6].name",
            f"{p}[7].on_error",
            "$.steps[1]",
            "$.trigger",
        }, found
        assert found[f"{p}[0].bogus"] == "unknown key"
        assert "'ftp'" in found[f"{p}[2].call"]
        assert "'kerberos'" in found[f"{p}[3].call.auth"]
        assert "'loop'" in found["$.steps[1]"]
        assert "'explode'" in found[f"{p}[7].on_error"]
        assert "unknown error" not in " ".join(found.values())


class TestNames:
    @pytest.mark.parametrize("name", ["", "1abc", "a b", "a.b", "ä", "a/b"])
    def test_bad_processor_name(self, name: str) -> None:
        """Names must match [A-Za-z_][A-Za-z0-9_-]*."""
        assert set(problems(doc(proc(name)))) == {"$.steps[0].processors[0].name"}

    @pytest.mark.parametrize("name", ["a", "_x", "A-b_9", "cms"])
    def test_good_names(self, name: str) -> None:
        """Valid names load."""
        o.Process.from_dict(doc(proc(name)))

    def test_duplicate_step_names(self) -> None:
        """The second step with a name is the problem."""
        data = doc(proc("a"))
        data["steps"] += [copy.deepcopy(data["steps"][0]), copy.deepcopy(data["steps"][0])]
        found = problems(data)
        assert set(found) == {"$.steps[1].name", "$.steps[2].name"}

    def test_same_processor_name_in_two_steps_is_fine(self) -> None:
        """Processor names are scoped to their step."""
        data = doc(proc("a"))
        data["steps"].append({"name": "t", "processors": [proc("a")]})
        o.Process.from_dict(data)


class TestNeeds:
    def test_unknown_need(self) -> None:
        """A need naming no processor of the step is reported at its index."""
        found = problems(doc(proc("a"), proc("b", needs=["a", "zz"])))
        assert set(found) == {"$.steps[0].processors[1].needs[1]"}

    def test_need_in_another_step_is_unknown(self) -> None:
        """needs only reach processors of the same step."""
        data = doc(proc("a"))
        data["steps"].append({"name": "t", "processors": [proc("b", needs=["a"])]})
        assert set(problems(data)) == {"$.steps[1].processors[0].needs[0]"}

    def test_self_need(self) -> None:
        """A processor that needs itself is one problem (not also a cycle)."""
        found = problems(doc(proc("a", needs=["a"])))
        assert set(found) == {"$.steps[0].processors[0].needs[0]"}

    def test_long_cycle(self) -> None:
        """A cycle through three processors names all of them."""
        found = problems(
            doc(proc("a", needs=["c"]), proc("b", needs=["a"]), proc("c", needs=["b"]))
        )
        (path,) = found
        assert path.endswith(".needs")
        assert all(n in found[path] for n in "abc")

    def test_dag_with_diamond_is_fine(self) -> None:
        """A diamond of needs is not a cycle."""
        o.Process.from_dict(
            doc(
                proc("d", needs=["b", "c"]),
                proc("b", needs=["a"]),
                proc("c", needs=["a"]),
                proc("a"),
            )
        )


class TestHttpCall:
    @pytest.mark.parametrize(
        "url",
        ["not a url", "ftp://api/x", "/relative/path", "http://", "http://api/{x", "http://api/x}"],
    )
    def test_malformed_url(self, url: str) -> None:
        """Anything but an absolute http(s) URL is a problem at call.url."""
        assert set(problems(doc(proc("a", http(url, path="({})"))))) == {
            "$.steps[0].processors[0].call.url"
        }

    @pytest.mark.parametrize("method", ["get", "FETCH", "", "Post"])
    def test_bad_method(self, method: str) -> None:
        """Methods must be upper-case HTTP methods."""
        assert set(problems(doc(proc("a", http(method=method))))) == {
            "$.steps[0].processors[0].call.method"
        }

    @pytest.mark.parametrize(
        "url", ["http://api/{}", "http://api/{1a}", "http://api/{a-b}", "http://api/{a.b}"]
    )
    def test_bad_path_params(self, url: str) -> None:
        """Path parameters must be identifiers."""
        found = problems(doc(proc("a", http(url, path="({})"))))
        assert set(found) == {"$.steps[0].processors[0].call.url"}
        assert "path parameter" in found["$.steps[0].processors[0].call.url"]

    def test_path_params_need_a_path_fragment(self) -> None:
        """A URL with {parameters} and no path fragment is a problem at call.path."""
        found = problems(doc(proc("a", http("https://api/p/{sku}/{lang}"))))
        assert set(found) == {"$.steps[0].processors[0].call.path"}

    def test_trigger_path(self) -> None:
        """A trigger path must start with '/' and have valid parameters."""
        found = problems(doc(proc("a"), trigger={"type": "request", "path": "x/{1}"}))
        assert set(found) == {"$.trigger.path"}


class TestResumeStep:
    def resume(self, **kw: Any) -> dict[str, Any]:
        data = doc(proc("a"))
        data["steps"].append({"type": "resume", "name": "r", "event": "e", "key": "1", **kw})
        return data

    @pytest.mark.parametrize("timeout", ["5 days", "P", "PT", "P1Y", "P1M", "5", "-P1D"])
    def test_bad_timeout(self, timeout: str) -> None:
        """Timeouts must be ISO 8601 durations without years and months."""
        assert set(problems(self.resume(timeout=timeout))) == {"$.steps[1].timeout"}

    @pytest.mark.parametrize("timeout", ["P5D", "PT30M", "P1DT12H", "PT0.5S", "P2W"])
    def test_good_timeout(self, timeout: str) -> None:
        """Valid durations load."""
        o.Process.from_dict(self.resume(timeout=timeout, on_timeout="continue"))

    def test_zero_timeout(self) -> None:
        """A zero deadline is a problem."""
        assert set(problems(self.resume(timeout="PT0S"))) == {"$.steps[1].timeout"}

    def test_goto_without_target(self) -> None:
        """on_timeout goto needs goto."""
        assert set(problems(self.resume(timeout="P1D", on_timeout="goto"))) == {"$.steps[1].goto"}

    def test_goto_unknown_step(self) -> None:
        """goto must name a step of the process."""
        found = problems(self.resume(timeout="P1D", on_timeout="goto", goto="zz"))
        assert set(found) == {"$.steps[1].goto"}

    def test_goto_known_step(self) -> None:
        """goto naming a step loads."""
        o.Process.from_dict(self.resume(timeout="P1D", on_timeout="goto", goto="s"))

    def test_goto_without_on_timeout_goto(self) -> None:
        """goto is only used with on_timeout goto."""
        assert set(problems(self.resume(timeout="P1D", goto="s"))) == {"$.steps[1].goto"}

    def test_on_timeout_without_timeout(self) -> None:
        """An on_timeout action needs a timeout."""
        assert set(problems(self.resume(on_timeout="continue"))) == {"$.steps[1].on_timeout"}


class TestPythonBuiltProcesses:
    def test_check_raises_for_built_process(self) -> None:
        """validation.check raises the same DefinitionError for processes built in Python."""
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(
                    name="s",
                    processors=(o.Processor(name="a", needs=("a",), call=o.HttpCall(url="x")),),
                ),
            ),
        )
        with pytest.raises(o.DefinitionError) as info:
            check(p, source="built")
        assert {q.path for q in info.value.problems} == {
            "$.steps[0].processors[0].needs[0]",
            "$.steps[0].processors[0].call.url",
        }
        assert info.value.source == "built"

    def test_no_steps(self) -> None:
        """A process needs a step."""
        assert [q.path for q in structural_problems(o.Process(name="p", steps=()))] == ["$.steps"]

    def test_fragments_lists_every_fragment_with_its_path(self) -> None:
        """fragments() yields every fragment with its JSON path and name."""
        p = o.Process.from_dict(
            doc(
                proc(
                    "a",
                    http("http://api/{x}", path="P", headers="H", query="Q", body="B"),
                    when="W",
                    input="I",
                    output="O",
                    for_each="F",
                ),
                output="OUT",
                events=[{"name": "e", "key": "EK"}],
            )
        )
        got = {path: (name, src) for path, name, src in fragments(p)}
        pp = "$.steps[0].processors[0]"
        assert got == {
            "$.output": ("output", "OUT"),
            "$.events[0].key": ("e.key", "EK"),
            f"{pp}.when": ("a.when", "W"),
            f"{pp}.input": ("a.input", "I"),
            f"{pp}.output": ("a.output", "O"),
            f"{pp}.for_each": ("a.for_each", "F"),
            f"{pp}.call.path": ("a.path", "P"),
            f"{pp}.call.headers": ("a.headers", "H"),
            f"{pp}.call.query": ("a.query", "Q"),
            f"{pp}.call.body": ("a.body", "B"),
        }


class TestEngineValidate:
    @pytest.mark.anyio
    async def test_fragment_compile_errors_with_paths(self) -> None:
        """Uncompilable fragments are problems at their JSON paths, with the others."""
        p = o.Process.from_dict(
            doc(
                proc("a", http(query="({a: })")),
                proc("b", output="response.(", when="true"),
                proc("c", {"type": "function", "name": "nope"}, needs=["a"]),
                output="out.a +",
            )
        )
        engine = o.Engine(sandbox=InProcessSandbox(), functions={"known": lambda x: x})
        with pytest.raises(o.DefinitionError) as info:
            await engine.validate(p)
        found = {q.path: q.message for q in info.value.problems}
        assert set(found) == {
            "$.output",
            "$.steps[0].processors[0].call.query",
            "$.steps[0].processors[1].output",
            "$.steps[0].processors[2].call.name",
        }, found
        assert "SyntaxError" in found["$.steps[0].processors[1].output"]
        assert "'nope'" in found["$.steps[0].processors[2].call.name"]

    @pytest.mark.anyio
    async def test_structural_and_fragment_problems_together(self) -> None:
        """Structural problems and compile errors come in the same DefinitionError."""
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(
                    name="s",
                    processors=(
                        o.Processor(name="a", needs=("zz",), call=o.HttpCall(url="http://x")),
                        o.Processor(name="b", call=o.HttpCall(url="http://x"), output="}{"),
                    ),
                ),
            ),
        )
        with pytest.raises(o.DefinitionError) as info:
            await o.Engine(sandbox=InProcessSandbox()).validate(p)
        assert {q.path for q in info.value.problems} == {
            "$.steps[0].processors[0].needs[0]",
            "$.steps[0].processors[1].output",
        }

    @pytest.mark.anyio
    async def test_unregistered_action_kind(self) -> None:
        """An action kind the engine does not know is a problem at call.kind."""
        p = o.Process.from_dict(doc(proc("a", {"type": "action", "kind": "mail"})))
        with pytest.raises(o.DefinitionError) as info:
            await o.Engine(sandbox=InProcessSandbox()).validate(p)
        assert [q.path for q in info.value.problems] == ["$.steps[0].processors[0].call.kind"]

    @pytest.mark.anyio
    async def test_valid_process_passes(self) -> None:
        """A valid process with registered functions validates."""
        p = o.Process.from_dict(
            doc(proc("a", {"type": "function", "name": "f"}, output="response + 1"))
        )
        await o.Engine(sandbox=InProcessSandbox(), functions={"f": lambda x: 1}).validate(p)
