"""Structural validation of a process: everything that can be checked without running it.

Fragments are compiled separately, in a sandbox: :func:`fragment_problems` (which
``orchestra validate`` runs on the readable parts of a document that has other problems)
and :meth:`orchestra.Engine.validate`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

import httpx

from orchestra.errors import DefinitionError, Problem, ScriptError
from orchestra.model import HttpCall, Process, Processor, ProcessStep, RequestTrigger, ResumeStep
from orchestra.model._call import HTTP_METHODS
from orchestra.model._duration import parse_duration

if TYPE_CHECKING:
    from orchestra.sandbox import Sandbox

__all__ = ["check", "fragment_problems", "fragments", "structural_problems"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FRAGMENT_FIELDS = ("when", "input", "output", "for_each")
_CALL_FRAGMENTS = ("path", "headers", "query", "body")


def check(process: Process, *, source: str | None = None) -> None:
    """Raise :class:`~orchestra.DefinitionError` if ``process`` has structural problems."""
    problems = structural_problems(process)
    if problems:
        raise DefinitionError(problems, source=source)


def structural_problems(process: Process, *, skip: Collection[str] = ()) -> list[Problem]:
    """Return every structural problem of ``process``, each with its JSON path.

    ``skip`` names JSON paths whose values could not be read (the loader put stand-ins
    there): nothing at or under them is reported, and no rule that reads them is checked.
    """
    unread = _Unread(skip)
    return list(dict.fromkeys(p for p in _process(process, unread) if not unread(p.path)))


class _Unread:
    """Whether a JSON path is at or under one of the paths that could not be read."""

    def __init__(self, paths: Collection[str]) -> None:
        self.paths = frozenset(paths)

    def __call__(self, path: str) -> bool:
        if not self.paths:
            return False
        cuts = (i for i, c in enumerate(path) if c in ".[")
        return path in self.paths or any(path[:i] in self.paths for i in cuts)


def fragments(process: Process) -> Iterator[tuple[str, str, str]]:
    """Yield ``(json_path, name, source)`` for every JavaScript fragment of ``process``."""
    if process.output is not None:
        yield "$.output", "output", process.output
    for i, event in enumerate(process.events):
        if event.key is not None:
            yield f"$.events[{i}].key", f"{event.name}.key", event.key
    for si, step in enumerate(process.steps):
        sp = f"$.steps[{si}]"
        if isinstance(step, ResumeStep):
            yield f"{sp}.key", f"{step.name}.key", step.key
            if step.event_key is not None:
                yield f"{sp}.event_key", f"{step.name}.event_key", step.event_key
            continue
        if step.when is not None:
            yield f"{sp}.when", f"{step.name}.when", step.when
        for pi, proc in enumerate(step.processors):
            pp = f"{sp}.processors[{pi}]"
            for field in _FRAGMENT_FIELDS:
                src = getattr(proc, field)
                if src is not None:
                    yield f"{pp}.{field}", f"{proc.name}.{field}", src
            if isinstance(proc.call, HttpCall):
                for field in _CALL_FRAGMENTS:
                    src = getattr(proc.call, field)
                    if src is not None:
                        yield f"{pp}.call.{field}", f"{proc.name}.{field}", src


async def fragment_problems(
    process: Process, sandbox: Sandbox, *, skip: Collection[str] = ()
) -> list[Problem]:
    """Compile every fragment of ``process`` in ``sandbox``; return one problem per failure.

    Each problem is at the fragment's JSON path, with the compiler's message and the
    line and column in the fragment. ``skip`` names JSON paths that could not be read,
    as for :func:`structural_problems`: fragments at or under them are not compiled.
    """
    unread = _Unread(skip)
    problems = []
    for path, name, source in fragments(process):
        if unread(path):
            continue
        try:
            await sandbox.check(source, name=name)
        except ScriptError as exc:
            problems.append(Problem(path, exc.js_message + _at(exc)))
    return problems


def _at(exc: ScriptError) -> str:
    if exc.line is None:
        return ""
    return f" (line {exc.line}" + (f", column {exc.column})" if exc.column else ")")


def _name(path: str, name: str) -> Iterator[Problem]:
    if not _NAME.match(name):
        yield Problem(path, f"{name!r} is not a valid name (letters, digits, '_' and '-')")


def _process(p: Process, unread: _Unread) -> Iterator[Problem]:
    yield from _name("$.name", p.name)
    if not p.steps:
        yield Problem("$.steps", "a process needs at least one step")
    if isinstance(p.trigger, RequestTrigger):
        if p.trigger.method.upper() not in HTTP_METHODS:
            yield Problem("$.trigger.method", f"unknown HTTP method {p.trigger.method!r}")
        if not p.trigger.path.startswith("/"):
            yield Problem("$.trigger.path", "a path template must start with '/'")
        yield from _placeholders("$.trigger.path", p.trigger.path)
    seen_events: set[str] = set()
    for i, e in enumerate(p.events):
        if e.name in seen_events:
            yield Problem(f"$.events[{i}].name", f"duplicate event {e.name!r}")
        seen_events.add(e.name)
    # A step whose name could not be read may be the one a 'goto' names.
    step_names = (
        None
        if any(unread(f"$.steps[{i}].name") for i in range(len(p.steps)))
        else [s.name for s in p.steps]
    )
    seen: set[str] = set()
    for si, step in enumerate(p.steps):
        sp = f"$.steps[{si}]"
        yield from _name(f"{sp}.name", step.name)
        if step.name in seen:
            yield Problem(f"{sp}.name", f"duplicate step name {step.name!r}")
        seen.add(step.name)
        if isinstance(step, ResumeStep):
            yield from _resume(sp, step, step_names, unread)
        else:
            yield from _step(sp, step, unread)


def _resume(
    sp: str, step: ResumeStep, step_names: list[str] | None, unread: _Unread
) -> Iterator[Problem]:
    if not step.event:
        yield Problem(f"{sp}.event", "an event name is required")
    if step.timeout is not None:
        try:
            if parse_duration(step.timeout) <= 0:
                yield Problem(f"{sp}.timeout", "the deadline must be longer than zero")
        except ValueError as exc:
            yield Problem(f"{sp}.timeout", str(exc))
    if step.on_timeout == "goto":
        if step.goto is None:
            yield Problem(f"{sp}.goto", "on_timeout 'goto' needs the name of a step in 'goto'")
        elif step_names is not None and step.goto not in step_names:
            yield Problem(f"{sp}.goto", f"no step named {step.goto!r}")
    elif step.goto is not None and not unread(f"{sp}.on_timeout"):
        yield Problem(f"{sp}.goto", "'goto' is only used with on_timeout 'goto'")
    if step.on_timeout != "fail" and step.timeout is None and not unread(f"{sp}.timeout"):
        yield Problem(f"{sp}.on_timeout", "an on_timeout action needs a 'timeout'")


def _step(sp: str, step: ProcessStep, unread: _Unread) -> Iterator[Problem]:
    if not step.processors:
        yield Problem(f"{sp}.processors", "a process step needs at least one processor")
    names: dict[str, int] = {}
    for pi, proc in enumerate(step.processors):
        pp = f"{sp}.processors[{pi}]"
        yield from _name(f"{pp}.name", proc.name)
        if proc.name in names:
            yield Problem(f"{pp}.name", f"duplicate processor name {proc.name!r}")
        names.setdefault(proc.name, pi)
        yield from _processor(pp, proc, unread)
    # A processor whose name could not be read may be the one a need names.
    names_read = not any(unread(f"{sp}.processors[{pi}].name") for pi in names.values())
    for pi, proc in enumerate(step.processors):
        for ni, need in enumerate(proc.needs):
            if need not in names:
                if names_read:
                    yield Problem(
                        f"{sp}.processors[{pi}].needs[{ni}]",
                        f"no processor named {need!r} in this step",
                    )
            elif need == proc.name:
                yield Problem(
                    f"{sp}.processors[{pi}].needs[{ni}]", "a processor cannot need itself"
                )
    cycle = _find_cycle(step.processors)
    if cycle:
        pi = names[cycle[0]]
        yield Problem(f"{sp}.processors[{pi}].needs", "dependency cycle: " + " -> ".join(cycle))


def _processor(pp: str, proc: Processor, unread: _Unread) -> Iterator[Problem]:
    if proc.concurrency < 1:
        yield Problem(f"{pp}.concurrency", "must be at least 1")
    if proc.on_error == "fail" and proc.fallback is not None and not unread(f"{pp}.on_error"):
        yield Problem(f"{pp}.fallback", "a fallback is only used with on_error 'fallback'")
    if proc.script_timeout is not None and proc.script_timeout <= 0:
        yield Problem(f"{pp}.script_timeout", "must be longer than zero")
    call = proc.call
    if call.timeout is not None and call.timeout <= 0:
        yield Problem(f"{pp}.call.timeout", "must be longer than zero")
    if isinstance(call, HttpCall):
        yield from _http(f"{pp}.call", call)
    elif not (call.name if call.type == "function" else call.kind):
        yield Problem(f"{pp}.call", "a name of the function or action kind is required")


def _http(cp: str, call: HttpCall) -> Iterator[Problem]:
    if call.method.upper() not in HTTP_METHODS or call.method != call.method.upper():
        yield Problem(
            f"{cp}.method", f"unknown HTTP method {call.method!r} (use upper case, e.g. 'GET')"
        )
    url = _PLACEHOLDER.sub("x", call.url)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        yield Problem(f"{cp}.url", f"malformed URL: {exc}")
    else:
        if parsed.scheme not in ("http", "https") or not parsed.host:
            yield Problem(f"{cp}.url", f"{call.url!r} is not an absolute http(s) URL")
    placeholders = list(_placeholders(f"{cp}.url", call.url))
    yield from placeholders
    if _PLACEHOLDER.search(call.url) and call.path is None and not placeholders:
        yield Problem(f"{cp}.path", "the URL has {parameters} but no 'path' fragment fills them")
    if call.retry.attempts < 1:
        yield Problem(f"{cp}.retry.attempts", "must be at least 1")
    if call.retry.backoff < 0 or call.retry.max_backoff < 0:
        yield Problem(f"{cp}.retry", "backoff must not be negative")
    if call.max_response_bytes < 1:
        yield Problem(f"{cp}.max_response_bytes", "must be at least 1")


def _placeholders(path: str, template: str) -> Iterator[Problem]:
    for m in _PLACEHOLDER.finditer(template):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.group(1)):
            yield Problem(path, f"bad path parameter {m.group(0)!r}")
    stripped = _PLACEHOLDER.sub("", template)
    if "{" in stripped or "}" in stripped:
        yield Problem(path, "unbalanced '{' or '}' in template")


def _find_cycle(processors: tuple[Processor, ...]) -> list[str] | None:
    graph: dict[str, list[str]] = {}
    for p in processors:  # as for needs, a name stands for its first processor
        graph.setdefault(p.name, [n for n in p.needs if n != p.name])
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if m not in graph:
                continue
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for name in graph:
        if name not in state and (found := visit(name)):
            return found
    return None
