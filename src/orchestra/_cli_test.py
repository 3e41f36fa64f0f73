"""``orchestra test``: run a business process in memory with a sample payload."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from orchestra._json import JSON
from orchestra.engine import RunInfo
from orchestra.errors import DefinitionError, Problem
from orchestra.model import Process, ProcessStep
from orchestra.testing._business import BusinessTest

__all__ = ["run_test", "step_table"]


def _events(data: JSON, source: str) -> list[dict[str, JSON]]:
    """Check the events file: a list of ``{name, payload, id?}`` or ``{advance}`` entries."""
    if not isinstance(data, list):
        raise DefinitionError([Problem("$", "events must be a JSON array")], source=source)
    problems = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            problems.append(Problem(f"$[{i}]", "an event is an object"))
            continue
        if "advance" in item:
            if not isinstance(item["advance"], (str, int, float)) or len(item) != 1:
                problems.append(Problem(f"$[{i}]", "an advance entry is {'advance': 'P5D'} alone"))
            continue
        if not isinstance(item.get("name"), str):
            problems.append(Problem(f"$[{i}].name", "an event needs a string 'name'"))
        extra = set(item) - {"name", "payload", "id"}
        problems += [Problem(f"$[{i}].{k}", "unknown key") for k in sorted(extra)]
    if problems:
        raise DefinitionError(problems, source=source)
    return data  # type: ignore[return-value]


async def run_test(
    process: Process,
    payload: JSON,
    *,
    events: JSON = None,
    events_source: str = "events",
    mocks: str | None = None,
    out: TextIO | None = None,
) -> RunInfo:
    """Start ``process`` with ``payload``, publish ``events`` in order, print each step.

    Entries ``{"advance": "P5D"}`` in ``events`` move the virtual clock. Returns the run.
    """
    out = out or sys.stdout
    steps = _events(events if events is not None else [], events_source)
    async with BusinessTest(process, mocks=mocks) as t:
        run_id = await t.start(payload)
        for item in steps:
            if "advance" in item:
                advance = item["advance"]
                assert isinstance(advance, (str, int, float))
                await t.advance(advance)
                print(f"advanced the clock by {advance}", file=out)
                continue
            name = item["name"]
            assert isinstance(name, str)
            event_id = item.get("id")
            result = await t.publish(
                name, item.get("payload"), id=event_id if isinstance(event_id, str) else None
            )
            what = "duplicate" if result.duplicate else "kept" if result.kept else "published"
            print(f"event {name}: {what}", file=out)
        run = await t.engine.run(run_id)
    print(step_table(process, run), file=out)
    return run


def step_table(process: Process, run: RunInfo) -> str:
    """Return a table of the run's steps: status, time since the start, output."""
    t0 = run.created
    status: dict[str, tuple[str, float]] = {}
    for label, entry in zip(run.path, _step_entries(run), strict=False):
        name, _, state = label.partition(":")
        status[name] = (state, entry)
    ctx = run.context
    rows = [("step", "status", "at", "output")]
    for step in process.steps:
        state, at = status.get(step.name, ("-", t0))
        source = ctx.get("steps") if isinstance(step, ProcessStep) else ctx.get("events")
        value = source.get(step.name) if isinstance(source, dict) else None
        shown = json.dumps(value, ensure_ascii=False) if step.name in status else ""
        if len(shown) > 60:
            shown = shown[:57] + "..."
        rows.append((step.name, state, f"+{_duration(at - t0)}" if state != "-" else "", shown))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3]]).rstrip()
        for r in rows
    ]
    lines.insert(0, f"run {run.id} {run.status}" + (f": {run.error}" if run.error else ""))
    return "\n".join(lines)


def _step_entries(run: RunInfo) -> list[float]:
    kinds = {"step_completed", "step_skipped", "step_failed", "event_consumed", "timeout"}
    times = [h.at for h in run.history if h.kind in kinds]
    if run.status == "waiting":
        times.append(run.updated)
    return times


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds:.3f}s"
