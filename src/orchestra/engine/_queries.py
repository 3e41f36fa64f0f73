"""Reading runs: where a run is, what it holds, how it got there."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs

from orchestra._json import JSON
from orchestra.stores import HistoryEntry, RunRecord, RunStatus

if TYPE_CHECKING:
    from orchestra.engine._business import Business

__all__ = ["Queries", "RunInfo"]


@attrs.frozen(kw_only=True)
class RunInfo:
    """A run as the host sees it: where it is, what it holds, how it got there."""

    id: str
    process: str
    version: int
    status: RunStatus
    context: dict[str, JSON]
    position: int
    step: str | None
    """The step the run is at (the resume step while waiting), ``None`` once past the end."""
    error: str | None
    created: float
    updated: float
    history: tuple[HistoryEntry, ...] = ()
    owner: str | None = None
    """The worker holding the run's lease while it advances it."""

    @property
    def path(self) -> list[str]:
        """The steps the run went through as ``"step:status"`` strings, from its history.

        Statuses: ``completed``, ``skipped``, ``failed``, ``waiting`` (still waiting),
        ``resumed`` (its event arrived) and ``timed_out``.
        """
        names = {"step_completed": "completed", "step_skipped": "skipped", "step_failed": "failed",
                 "event_consumed": "resumed", "timeout": "timed_out"}  # fmt: skip
        out = [f"{h.step}:{names[h.kind]}" for h in self.history if h.kind in names]
        if self.status == "waiting" and self.step is not None:
            out.append(f"{self.step}:waiting")
        return out


class Queries:
    """Reads the runs of one :class:`Business`."""

    def __init__(self, business: Business) -> None:
        self.b = business

    async def run(self, run_id: str) -> RunInfo:
        """Return the run with its history; raise :class:`~orchestra.RunNotFoundError`."""
        rec = await self.b.store.get_run(run_id)
        return await self._info(rec, tuple(await self.b.store.history(run_id)))

    async def runs(
        self, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunInfo]:
        """Return runs (without history), oldest first."""
        return [
            await self._info(r, ())
            for r in await self.b.store.list_runs(process=process, status=status)
        ]

    async def _info(self, rec: RunRecord, history: tuple[HistoryEntry, ...]) -> RunInfo:
        steps = (await self.b.versions.process(rec.process, rec.version)).steps
        return RunInfo(id=rec.id, process=rec.process, version=rec.version, status=rec.status,
                       context=json.loads(rec.context), position=rec.position,
                       step=steps[rec.position].name if rec.position < len(steps) else None,
                       error=rec.error, created=rec.created, updated=rec.updated,
                       history=history, owner=rec.owner)  # fmt: skip
