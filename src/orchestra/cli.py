"""The ``orchestra`` command line: validate, run, test, graph, schema, serve.

Exit codes: 0 success, 1 the run failed, 2 the definition or the usage is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from orchestra._json import JSON
from orchestra._load import load, load_validated
from orchestra.engine import Engine, Request, Result
from orchestra.errors import DefinitionError, OrchestraError, Problem
from orchestra.model import Process, RequestTrigger

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestra", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a process definition, fragments included")
    p.add_argument("file")
    p = sub.add_parser("run", help="run a payload process once and print its payload")
    p.add_argument("file")
    p.add_argument("--input", default="null", help="JSON text, or @path to a JSON file")
    p.add_argument("--mocks", help="a JSON file of HTTP mocks (see orchestra.testing.MockHTTP)")
    p.add_argument("--trace", action="store_true", help="also print a table of processors")
    p = sub.add_parser("test", help="run a business process in memory with a sample payload")
    p.add_argument("file")
    p.add_argument("--payload", required=True, help="the start payload: JSON or @path")
    p.add_argument("--events", help="a JSON file of events to publish in order")
    p.add_argument("--mocks", help="a JSON file of HTTP mocks")
    p = sub.add_parser("graph", help="print a Mermaid flowchart of a process")
    p.add_argument("file")
    p.add_argument("--run", help="colour the steps of this run by status (needs --store)")
    p.add_argument("--store", help="the store holding the run: a path or sqlite:///, postgresql://")
    sub.add_parser("schema", help="print the JSON Schema of the process format")
    p = sub.add_parser("serve", help="serve payload processes over HTTP (needs uvicorn)")
    p.add_argument("files", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` and return the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args))
    except DefinitionError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OrchestraError as exc:
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _engine(mocks: str | None = None) -> Engine:
    if mocks is None:
        return Engine()
    from orchestra.testing import MockHTTP

    return Engine(client=MockHTTP.from_file(mocks).client())


def _validate(args: argparse.Namespace) -> int:
    async def go() -> Process:
        async with _engine() as engine:
            return await load_validated(args.file, engine)

    process = anyio.run(go)
    print(f"ok: {args.file} ({process.name}, {len(process.steps)} steps)")
    return EXIT_OK


def _read_input(text: str) -> JSON:
    source = "--input"
    if text.startswith("@"):
        source = text[1:]
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise DefinitionError(
                [Problem("$", f"cannot read input: {exc.strerror}")], source=source
            ) from None
    try:
        value: JSON = json.loads(text)
    except ValueError as exc:
        raise DefinitionError([Problem("$", f"input is not JSON: {exc}")], source=source) from None
    return value


def _request(process: Process, value: JSON) -> Request | JSON:
    fields = {"method", "path", "params", "query", "headers", "body"}
    if (
        isinstance(process.trigger, RequestTrigger)
        and isinstance(value, dict)
        and set(value) <= fields
    ):
        data: dict[str, Any] = dict(value)
        data.setdefault("method", process.trigger.method)
        return Request(**data)
    return value


def _run(args: argparse.Namespace) -> int:
    process = load(args.file)
    value = _read_input(args.input)

    async def go() -> Result:
        async with _engine(args.mocks) as engine:
            return await engine.invoke(process, _request(process, value))

    result = anyio.run(go)
    print(json.dumps(result.payload, indent=2, ensure_ascii=False))
    if args.trace:
        print(trace_table(result), file=sys.stderr)
    return EXIT_OK


def trace_table(result: Result) -> str:
    """Return a text table of a result's trace: processor, status, start, duration, attempts."""
    rows = [("step", "processor", "status", "start ms", "ms", "attempts", "http")]
    t0 = min((t.started for t in result.trace), default=0.0)
    rows.extend(
        (
            t.step,
            t.processor,
            t.status,
            f"{(t.started - t0) * 1000:.1f}",
            f"{t.duration * 1000:.1f}",
            str(t.attempts),
            str(t.http_status or ""),
        )
        for t in result.trace
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _test(args: argparse.Namespace) -> int:
    from orchestra._cli_test import run_test

    process = load(args.file)
    payload = _read_input(args.payload)
    events = _read_input("@" + args.events) if args.events else None
    run = anyio.run(
        lambda: run_test(
            process, payload, events=events, events_source=args.events or "", mocks=args.mocks
        )
    )
    return EXIT_FAILED if run.status == "failed" else EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from orchestra.graph import draw, run_mermaid

    process = load(args.file)
    if args.run is None:
        print(draw(process), end="")
        return EXIT_OK
    if args.store is None:
        raise DefinitionError([Problem("--store", "--run needs the store that holds the run")])

    async def go() -> str:
        from orchestra.stores import open_store

        async with await open_store(args.store) as store:
            run = await Engine(store=store).run(args.run)
        return run_mermaid(process, run)

    print(anyio.run(go), end="")
    return EXIT_OK


def _schema(_: argparse.Namespace) -> int:
    from orchestra.serialization import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("serve needs uvicorn: pip install 'orchestra[server]'", file=sys.stderr)
        return EXIT_INVALID
    from orchestra.asgi import App

    processes = [load(f) for f in args.files]
    uvicorn.run(App(Engine(), processes), host=args.host, port=args.port)
    return EXIT_OK


_COMMANDS = {
    "validate": _validate,
    "run": _run,
    "test": _test,
    "graph": _graph,
    "schema": _schema,
    "serve": _serve,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
