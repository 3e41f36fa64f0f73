"""Mermaid flowcharts of processes, and of one run of a business process.

:func:`mermaid` draws the processors of a payload process and their dependencies;
:func:`business_mermaid` draws the steps of a business process (conditions, waits,
deadlines); :func:`run_mermaid` colours one run's steps by status; :func:`draw` picks
the drawing that fits the process.
"""

from __future__ import annotations

import re

from orchestra._graph_business import business_mermaid, run_mermaid
from orchestra.model import Event, Process, ProcessStep, ResumeStep

__all__ = ["business_mermaid", "draw", "mermaid", "run_mermaid"]


def draw(process: Process) -> str:
    """Return :func:`business_mermaid` for a business process, else :func:`mermaid`."""
    business = isinstance(process.trigger, Event) or any(
        isinstance(s, ResumeStep) for s in process.steps
    )
    return business_mermaid(process) if business else mermaid(process)


def _id(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts)


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def mermaid(process: Process) -> str:
    """Return a Mermaid flowchart of ``process``: steps as subgraphs, processors and their needs.

    Processors with a ``when`` are drawn as decisions, ``for_each`` ones as stacked
    shapes; resume steps as waits with their event and deadline.
    """
    lines = ["flowchart TD", f'  start(["{_label(process.name)}"])']
    previous = ["start"]
    for step in process.steps:
        sid = _id("s", step.name)
        if isinstance(step, ResumeStep):
            deadline = f"<br/>deadline {step.timeout}" if step.timeout else ""
            lines.append(f'  {sid}{{{{"wait for {_label(step.event)}{deadline}"}}}}')
            lines += [f"  {p} --> {sid}" for p in previous]
            previous = [sid]
            continue
        assert isinstance(step, ProcessStep)
        title = step.name + (f" (when {step.when})" if step.when else "")
        lines.append(f'  subgraph {sid}["{_label(title)}"]')
        for p in step.processors:
            pid = _id("p", step.name, p.name)
            text = _label(
                p.name
                + (
                    f"<br/>{p.call.method} {p.call.url}"
                    if p.call.type == "http"
                    else f"<br/>{p.call.type}"
                )
            )
            if p.when:
                lines.append(f'    {pid}{{"{text}"}}')
            elif p.for_each:
                lines.append(f'    {pid}[["{text}<br/>for each"]]')
            else:
                lines.append(f'    {pid}["{text}"]')
        for p in step.processors:
            for need in p.needs:
                lines.append(f"    {_id('p', step.name, need)} --> {_id('p', step.name, p.name)}")
        lines.append("  end")
        lines += [f"  {prev} --> {sid}" for prev in previous]
        previous = [sid]
    lines.append('  done(["output"])')
    lines += [f"  {p} --> done" for p in previous]
    return "\n".join(lines) + "\n"
