"""The orchestra command line: validate, run, graph, schema, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra import Engine
from orchestra import load as orchestra_load
from orchestra.cli import main

PROCESS = {
    "name": "page",
    "trigger": {"type": "request", "path": "/products/{sku}"},
    "steps": [
        {
            "name": "main",
            "processors": [
                {
                    "name": "cms",
                    "call": {
                        "type": "http",
                        "url": "http://cms.test/items/{sku}",
                        "path": "({sku: trigger.params.sku})",
                    },
                    "output": "({title: response.title})",
                },
                {
                    "name": "price",
                    "needs": ["cms"],
                    "call": {
                        "type": "http",
                        "url": "http://shop.test/prices/{sku}",
                        "path": "({sku: trigger.params.sku})",
                    },
                },
            ],
        }
    ],
    "output": "({title: out.cms.title, price: out.price.amount})",
}
MOCKS = [
    {"method": "GET", "url": "http://cms.test/items/{sku}", "json": {"title": "Shoe"}},
    {"method": "GET", "url": "http://shop.test/prices/*", "json": {"amount": 1999}},
]


class _AnySyntaxError(str):
    """Equal to any compiler message of a syntax error (their wording is the engine's)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("SyntaxError: ")

    __hash__ = str.__hash__


ANY_SYNTAX_ERROR = _AnySyntaxError("SyntaxError: ...")


@pytest.fixture(name="files")
def _files(tmp_path: Path) -> Path:
    (tmp_path / "process.json").write_text(json.dumps(PROCESS))
    (tmp_path / "mocks.json").write_text(json.dumps(MOCKS))
    (tmp_path / "input.json").write_text(json.dumps({"params": {"sku": "42"}}))
    bad = dict(
        PROCESS,
        steps=[
            {
                "name": "main",
                "processors": [
                    {"name": "x", "call": {"type": "http", "url": "nope"}, "needs": ["y"]}
                ],
            }
        ],
    )
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    broken_js = json.loads(json.dumps(PROCESS))
    broken_js["steps"][0]["processors"][0]["output"] = "({title: response.title"
    (tmp_path / "broken.json").write_text(json.dumps(broken_js))
    return tmp_path


class TestValidate:
    def test_ok(self, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A valid file exits 0."""
        assert main(["validate", str(files / "process.json")]) == 0
        assert "ok" in capsys.readouterr().out

    def test_invalid(self, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An invalid file exits 2 and lists every problem with its path, no traceback."""
        assert main(["validate", str(files / "bad.json")]) == 2
        err = capsys.readouterr().err
        assert "$.steps[0].processors[0].call.url" in err
        assert "$.steps[0].processors[0].needs[0]" in err
        assert "Traceback" not in err

    def test_shape_and_structural_problems_together(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Unknown keys, wrong types and a cycle are listed in one go, in document order."""
        data = json.loads(json.dumps(PROCESS))
        cms, price = data["steps"][0]["processors"]
        cms["call"]["timout"] = 5
        cms["needs"] = ["price"]
        price["call"]["retry"] = {"attempts": "3"}
        (tmp_path / "mixed.json").write_text(json.dumps(data))
        assert main(["validate", str(tmp_path / "mixed.json")]) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [
            f"invalid: 3 problems in {tmp_path / 'mixed.json'}:",
            "  $.steps[0].processors[0].call.timout: unknown key",
            "  $.steps[0].processors[0].needs: dependency cycle: cms -> price -> cms",
            "  $.steps[0].processors[1].call.retry.attempts: expected a number, got str",
        ]

    def test_fragment_syntax(self, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A fragment that does not compile is reported with its path."""
        assert main(["validate", str(files / "broken.json")]) == 2
        assert "$.steps[0].processors[0].output" in capsys.readouterr().err

    def test_shape_problems_and_fragment_syntax_together(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A document with shape errors still gets its readable fragments compiled: one
        report, in document order."""
        data = json.loads(json.dumps(PROCESS))
        cms, price = data["steps"][0]["processors"]
        cms["call"]["timout"] = 5
        cms["output"] = "return {"
        price["call"]["retry"] = {"attempts": "3"}
        data["output"] = "({title: out.cms.title"
        (tmp_path / "mixed.json").write_text(json.dumps(data))
        assert main(["validate", str(tmp_path / "mixed.json")]) == 2
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert lines[0] == f"invalid: 4 problems in {tmp_path / 'mixed.json'}:"
        assert [line.split(": ", 1) for line in lines[1:]] == [
            ["  $.steps[0].processors[0].call.timout", "unknown key"],
            ["  $.steps[0].processors[0].output", ANY_SYNTAX_ERROR],
            ["  $.steps[0].processors[1].call.retry.attempts", "expected a number, got str"],
            ["  $.output", ANY_SYNTAX_ERROR],
        ]

    def test_structural_problems_and_fragment_syntax_together(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A well-formed document with structural problems gets its fragments compiled."""
        data = json.loads(json.dumps(PROCESS))
        cms, price = data["steps"][0]["processors"]
        cms["needs"] = ["price"]
        price["output"] = "response.amount +"
        (tmp_path / "cycle.json").write_text(json.dumps(data))
        assert main(["validate", str(tmp_path / "cycle.json")]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines[0] == f"invalid: 2 problems in {tmp_path / 'cycle.json'}:"
        assert lines[1] == "  $.steps[0].processors[0].needs: dependency cycle: cms -> price -> cms"
        assert lines[2].split(": ", 1) == ["  $.steps[0].processors[1].output", ANY_SYNTAX_ERROR]

    def test_unreadable_values_are_not_compiled(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A fragment that is not a string, or a missing one, is a shape error only."""
        data = json.loads(json.dumps(PROCESS))
        data["steps"][0]["processors"][0]["output"] = 5
        data["steps"].append({"type": "resume", "name": "wait", "event": "e"})
        (tmp_path / "odd.json").write_text(json.dumps(data))
        assert main(["validate", str(tmp_path / "odd.json")]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[1:] == [
            "  $.steps[0].processors[0].output: expected a string, got int",
            "  $.steps[1].key: required key missing",
        ]

    def test_missing_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing file exits 2 naming it."""
        assert main(["validate", str(tmp_path / "nope.json")]) == 2
        assert "nope.json" in capsys.readouterr().err


class TestRun:
    def test_payload_and_trace(self, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Run prints the payload; --trace adds a table with every processor."""
        code = main(
            [
                "run",
                str(files / "process.json"),
                "--input",
                "@" + str(files / "input.json"),
                "--mocks",
                str(files / "mocks.json"),
                "--trace",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0
        assert json.loads(out) == {"title": "Shoe", "price": 1999}
        assert "cms" in err and "price" in err and "attempts" in err

    def test_run_failure(
        self, files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failing upstream exits 1 naming the processor."""
        (tmp_path / "m2.json").write_text(
            json.dumps([{"url": "http://cms.test/*", "status": 400, "json": {}}])
        )
        code = main(
            [
                "run",
                str(files / "process.json"),
                "--input",
                '{"params": {"sku": "1"}}',
                "--mocks",
                str(tmp_path / "m2.json"),
            ]
        )
        assert code == 1
        assert "page/main/cms" in capsys.readouterr().err

    def test_bad_input(self, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Input that is not JSON exits 2."""
        assert main(["run", str(files / "process.json"), "--input", "{nope"]) == 2
        assert "not JSON" in capsys.readouterr().err


def test_graph(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Graph prints a Mermaid flowchart with the dependency edge."""
    assert main(["graph", str(files / "process.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD")
    assert "p_main_cms --> p_main_price" in out


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """Schema prints a JSON Schema document."""
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "Processor" in schema["$defs"]


def test_usage_error() -> None:
    """Bad usage exits 2 through the installed entry point."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestra", "frobnicate"], capture_output=True, check=False
    )
    assert proc.returncode == 2


PO = Path(__file__).parents[2] / "examples" / "po-confirmation-triage"


class TestBusinessCommands:
    def test_test_happy_path(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`test` runs the PO example with its sample payload and events, printing each step."""
        code = main(
            [
                "test",
                str(PO / "process.json"),
                "--payload",
                "@" + str(PO / "sample.json"),
                "--events",
                str(PO / "events.json"),
                "--mocks",
                str(PO / "mocks.json"),
            ]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "completed" in out.splitlines()[1]
        rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[3:]}
        assert rows == {
            "send_form": "completed",
            "wait_for_supplier": "resumed",
            "write_back": "completed",
            "escalate": "skipped",
        }

    def test_test_timeout_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An advance entry moves the virtual clock past the deadline: the escalation runs."""
        (tmp_path / "ev.json").write_text(json.dumps([{"advance": "P6D"}]))
        code = main(
            [
                "test",
                str(PO / "process.json"),
                "--payload",
                "@" + str(PO / "sample.json"),
                "--events",
                str(tmp_path / "ev.json"),
                "--mocks",
                str(PO / "mocks.json"),
            ]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "timed_out" in out and "+5.0d" in out

    def test_test_bad_events(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed events file exits 2 with paths."""
        (tmp_path / "ev.json").write_text(json.dumps([{"payload": 1, "extra": 2}]))
        code = main(
            [
                "test",
                str(PO / "process.json"),
                "--payload",
                "@" + str(PO / "sample.json"),
                "--events",
                str(tmp_path / "ev.json"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2
        assert "$[0].name" in err and "$[0].extra" in err

    def test_graph_business(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A business process is drawn with its wait, deadline and timeout edge."""
        assert main(["graph", str(PO / "process.json")]) == 0
        out = capsys.readouterr().out
        assert "wait for supplier.form_submitted" in out
        assert "deadline P5D" in out
        assert "-. timeout .-> s_escalate" in out


def test_graph_of_a_stored_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`graph --run --store` colours the steps of a run kept in a SQLite file."""
    import anyio

    from orchestra.sandbox import InProcessSandbox
    from orchestra.stores import SQLiteStore
    from orchestra.testing import MockHTTP, TestSecrets

    db = tmp_path / "runs.db"
    process = orchestra_load(PO / "process.json")

    async def park() -> str:
        async with SQLiteStore(str(db)) as store:
            engine = Engine(
                store=store,
                sandbox=InProcessSandbox(),
                secrets=TestSecrets(),
                client=MockHTTP.from_file(PO / "mocks.json").client(),
            )
            async with engine:
                await engine.deploy(process)
                return await engine.start(
                    process.name, json.loads((PO / "sample.json").read_text())
                )

    run_id = anyio.run(park)
    assert main(["graph", str(PO / "process.json"), "--run", run_id, "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "class s_send_form completed" in out
    assert "class s_wait_for_supplier waiting" in out
    assert main(["graph", str(PO / "process.json"), "--run", run_id]) == 2
