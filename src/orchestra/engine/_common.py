"""What the parts of the business engine share: JSON text, run ids, deliveries of events."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from orchestra._json import JSON
from orchestra._jsonschema import validate as validate_schema
from orchestra.errors import EventError
from orchestra.model import Event, Process
from orchestra.stores import HistoryKind, RunRecord, RunStatus

if TYPE_CHECKING:
    from orchestra.engine._engine import Engine

__all__ = [
    "TERMINAL",
    "Delivery",
    "InboxClaim",
    "Log",
    "canonical",
    "check_payload",
    "revise",
    "start_id",
    "step_name",
    "tokens",
]

TERMINAL: tuple[RunStatus, ...] = ("completed", "failed", "cancelled")
_RUN_IDS = uuid.UUID("6f1c2a52-8f0e-4d0b-9a57-3c1d3f6b9e21")
"""Namespace of the run ids derived from start events (see :func:`start_id`)."""

Log: TypeAlias = tuple[HistoryKind, str | None, JSON]
"""A history entry to write: kind, step, detail."""


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)
_CHECKED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(value: JSON) -> str:
    """Return the canonical JSON text of ``value`` (sorted keys, no spaces).

    Encoded without cycle markers (half the cost of ``json.dumps``: a context is encoded
    at every step); a cyclic value recurses until ``RecursionError`` and is encoded again
    with them, to raise what ``json.dumps`` raises.
    """
    try:
        return _CANONICAL.encode(value)
    except RecursionError:
        return _CHECKED.encode(value)


_SAME: Any = object()


def revise(
    run: RunRecord,
    *,
    status: RunStatus = _SAME,
    context: str = _SAME,
    position: int = _SAME,
    error: str | None = _SAME,
    updated: float = _SAME,
    owner: str | None = _SAME,
    lease_expires: float | None = _SAME,
) -> RunRecord:
    """``attrs.evolve(run, ...)`` at a fifth of its cost (a run changes every step)."""
    return RunRecord(
        id=run.id,
        process=run.process,
        version=run.version,
        status=run.status if status is _SAME else status,
        context=run.context if context is _SAME else context,
        position=run.position if position is _SAME else position,
        error=run.error if error is _SAME else error,
        created=run.created,
        updated=run.updated if updated is _SAME else updated,
        owner=run.owner if owner is _SAME else owner,
        lease_expires=run.lease_expires if lease_expires is _SAME else lease_expires,
    )


def start_id(event_id: str, process: str) -> str:
    """Return the id of the run that event ``event_id`` starts of ``process``.

    Derived, not random: an event delivered twice (a host retrying after a crash) finds
    its run already there instead of starting a second one.
    """
    return uuid.uuid5(_RUN_IDS, f"{event_id}\x00{process}").hex


def step_name(process: Process, position: int) -> str | None:
    """The name of the step at ``position``, ``None`` past the last."""
    return process.steps[position].name if position < len(process.steps) else None


def check_payload(event: Event, payload: JSON, process: str) -> None:
    """Raise :class:`~orchestra.EventError` if ``payload`` breaks the schema."""
    if event.schema is None:
        return
    issues = validate_schema(payload, event.schema)
    if issues:
        first = issues[0]
        where = f" (process {process!r})" if process else ""
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise EventError(f"event {event.name!r}{where}: {first.message}{more}", path=first.path)


def tokens(engine: Engine) -> list[str]:
    """The OAuth2 access tokens the engine holds (credentials too: never stored)."""
    return engine._tokens.access_tokens()


class InboxClaim:
    """An inbox event to mark consumed in the commit of the run that records it.

    ``exclusive``: the run takes the event *from the inbox* (it arrived before the run
    reached its resume step), so if another run consumed it first this run must not have
    it (the commit fails with ``EventTakenError`` and the run looks again). Otherwise the
    event was delivered to runs already waiting for it: each of them gets it, and each
    commit consumes it until one did (a commit that finds it taken records the event
    without consuming it), so it leaves the inbox with the first run that records it.
    """

    def __init__(self, event_id: str, *, exclusive: bool) -> None:
        self.event_id = event_id
        self.exclusive = exclusive
        self.done = False
        """Whether a commit consumed the event (then later commits need not try)."""


@attrs.frozen
class Delivery:
    """An event (or a timeout's default) for a run to consume at resume step ``step``."""

    step: str
    payload: JSON
    event_id: str
    before: tuple[Log, ...] = ()
    """History written with the consumption (the ``timeout`` entry of ``continue``)."""
    claim: InboxClaim | None = None
    """The inbox event to consume in the same commit, if the event came from the inbox."""
