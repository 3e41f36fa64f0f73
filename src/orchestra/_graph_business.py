"""Mermaid flowcharts of business processes: the step flow, and one run's progress."""

from __future__ import annotations

import re

from orchestra.engine import RunInfo
from orchestra.model import Event, Process, ProcessStep, ResumeStep

__all__ = ["business_mermaid", "run_mermaid"]

_CLASSES = (
    "  classDef completed fill:#d4edda,stroke:#28a745",
    "  classDef skipped fill:#eeeeee,stroke:#999999,stroke-dasharray: 4 3",
    "  classDef failed fill:#f8d7da,stroke:#dc3545",
    "  classDef waiting fill:#fff3cd,stroke:#ffc107",
    "  classDef resumed fill:#d4edda,stroke:#28a745",
    "  classDef timed_out fill:#ffe5d0,stroke:#fd7e14",
    "  classDef current stroke-width:3px",
)


def _id(name: str) -> str:
    return "s_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def _edge(text: str) -> str:
    return f'|"{_label(text)}"|' if text else ""


def business_mermaid(process: Process) -> str:
    """Return a Mermaid flowchart of ``process``'s steps.

    Process steps are boxes (their condition on the edge into them, a dotted edge past
    them when it is false), resume steps are waits showing event and deadline, and a
    deadline's ``goto`` or ``fail`` is a labelled edge.
    """
    lines = ["flowchart TD"]
    trigger = process.trigger
    start = f"event {trigger.name}" if isinstance(trigger, Event) else process.name
    lines.append(f'  start(["{_label(start)}"])')
    lines.append('  finish(["end"])')
    ids = [_id(s.name) for s in process.steps] + ["finish"]
    prev, via = "start", ""
    for i, step in enumerate(process.steps):
        sid, nxt = ids[i], ids[i + 1]
        if isinstance(step, ResumeStep):
            deadline = f"<br/>deadline {step.timeout}" if step.timeout else ""
            text = f"{step.name}<br/>wait for {step.event}{deadline}"
            lines.append(f'  {sid}{{{{"{_label(text)}"}}}}')
            lines.append(f"  {prev} -->{_edge(via)} {sid}")
            if step.timeout and step.on_timeout == "goto" and step.goto:
                lines.append(f"  {sid} -. timeout .-> {_id(step.goto)}")
            elif step.timeout and step.on_timeout == "continue":
                lines.append(f"  {sid} -. timeout: default .-> {nxt}")
            elif step.timeout:
                lines.append(f"  {sid} -. timeout .-> failed([failed])")
            prev, via = sid, step.event
            continue
        assert isinstance(step, ProcessStep)
        names = ", ".join(p.name for p in step.processors)
        lines.append(f'  {sid}["{_label(step.name)}<br/><small>{_label(names)}</small>"]')
        if step.when:
            cond = f"{via}, when {step.when}" if via else f"when {step.when}"
            lines.append(f"  {prev} -->{_edge(cond)} {sid}")
            lines.append(f"  {prev} -. skipped .-> {nxt}")
        else:
            lines.append(f"  {prev} -->{_edge(via)} {sid}")
        prev, via = sid, ""
    lines.append(f"  {prev} -->{_edge(via)} finish")
    return "\n".join(lines) + "\n"


def run_mermaid(process: Process, run: RunInfo) -> str:
    """Return :func:`business_mermaid` of ``process`` with ``run``'s step statuses as colours."""
    status: dict[str, str] = {}
    for entry in run.path:
        step, _, st = entry.rpartition(":")
        status[step] = st
    lines = [business_mermaid(process).rstrip("\n"), *_CLASSES]
    for step, st in status.items():
        lines.append(f"  class {_id(step)} {st}")
    if run.step is not None and run.status in ("waiting", "running", "failed"):
        lines.append(f"  class {_id(run.step)} current")
    return "\n".join(lines) + "\n"
