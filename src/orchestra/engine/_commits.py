"""Writing a run: every change of a run's state is one batch, fenced by the run's lease.

A commit writes the run's record with this worker as owner and its lease, renewed when a
quarter of it has passed (see :meth:`Leases.renewed`), or with no owner when it gives the
lease back, together with the history entries, wait, checkpoint deletions and inbox
consumption that go with the change: one transaction on every store whose ``batch()``
is atomic. The run's record is written only
if the store still names this worker as its owner (``update_run(..., owner=...)``); if
another worker took the run over meanwhile the batch fails with ``OwnershipError``, which
this module turns into :class:`~orchestra.engine._leases.LeaseLostError` after marking
the lease lost: the work on the run stops and writes nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestra._json import JSON
from orchestra.engine._common import Log, canonical
from orchestra.errors import ContextLimitError
from orchestra.stores import CheckpointRecord, HistoryEntry, HistoryKind, OwnershipError, RunRecord

if TYPE_CHECKING:
    from orchestra.engine._business import Business
    from orchestra.engine._leases import Held
    from orchestra.stores import Wait

__all__ = ["ContextLimitError", "ContextText", "Writer"]


class ContextText:
    """The canonical JSON text of one run's context, each part that cannot change encoded once.

    A context is ``{"trigger", "steps", "events"}`` (and ``"output"`` at the end). The
    trigger, a step's outputs once the step has ended and an event's payload are never
    changed in place: a step run again records a new object. So their texts are kept,
    keyed by the object itself (held here, so that its identity cannot be reused), and
    once a context is large (:attr:`SMALL`) a step's commit encodes only the parts that
    are new, not the whole context again: for a context of 8 KB, 5 us instead of 150.
    The text is exactly :func:`~orchestra.engine._common.canonical`'s.
    """

    __slots__ = ("_last", "_parts")

    SMALL = 1024
    """Below this many characters a context is encoded whole: remembering its parts
    costs more than encoding them again (a dozen small objects encode in microseconds)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], tuple[JSON, str]] = {}
        self._last = 0

    def encode(self, ctx: dict[str, JSON]) -> str:
        """Return ``canonical(ctx)``, reusing the texts of parts seen before."""
        text = canonical(ctx) if self._last < self.SMALL else self._assemble(ctx)
        self._last = len(text)
        return text

    def _assemble(self, ctx: dict[str, JSON]) -> str:
        out = []
        for key in sorted(ctx):
            value = ctx[key]
            if key in ("steps", "events") and isinstance(value, dict):
                out.append(f'"{key}":{self._members(key, value)}')
            else:
                out.append(self._member("", key, value))
        return "{" + ",".join(out) + "}"

    def _members(self, section: str, members: dict[str, JSON]) -> str:
        return "{" + ",".join([self._member(section, n, members[n]) for n in sorted(members)]) + "}"

    def _member(self, section: str, name: str, value: JSON) -> str:
        """``"name":value`` as canonical JSON text, encoded once per value."""
        known = self._parts.get((section, name))
        if known is not None and known[0] is value:
            return known[1]
        if not isinstance(name, str):  # the engine names every part; JSON keys are text
            raise TypeError(f"context keys must be strings, not {type(name).__name__}")
        text = f"{canonical(name)}:{canonical(value)}"
        self._parts[(section, name)] = (value, text)
        return text


class Writer:
    """Builds and commits the writes of one :class:`Business`'s runs."""

    def __init__(self, business: Business) -> None:
        self.b = business

    def fit(
        self, process: str, step: str, ctx: dict[str, JSON], texts: ContextText | None = None
    ) -> str:
        """The context as JSON text; :class:`ContextLimitError` if it is over the limit.

        ``texts`` (one per run being advanced) remembers the text of the context's parts
        that do not change, so that each step encodes only what it added.
        """
        text = canonical(ctx) if texts is None else texts.encode(ctx)
        if len(text) * 4 > self.b.max_context_bytes:  # cheap bound; exact only when it matters
            size = len(text.encode())
            if size > self.b.max_context_bytes:
                limit = self.b.max_context_bytes
                msg = f"the run's context is {size} bytes of JSON, over the limit of {limit}"
                raise ContextLimitError(msg, process=process, step=step)
        return text

    def entry(
        self,
        run_id: str,
        kind: HistoryKind,
        step: str | None,
        detail: JSON,
        *,
        at: float | None = None,
    ) -> HistoryEntry:
        """A history entry (its detail scrubbed), stamped now unless ``at`` is given."""
        text = None if detail is None else self.b.scrub(canonical(detail))
        when = self.b.now() if at is None else at
        return HistoryEntry(run_id=run_id, kind=kind, at=when, step=step, detail=text)

    async def commit(
        self,
        held: Held,
        run: RunRecord,
        *,
        create: bool = False,
        history: Sequence[Log | HistoryEntry] = (),
        wait: Wait | None = None,
        unwait: bool = False,
        drop: Sequence[str | None] = (),
        consume: str | None = None,
        release: bool = False,
    ) -> RunRecord:
        """Write a run's new state with everything that goes with it, in one batch.

        ``history`` entries are appended (a :data:`Log` is stamped now); ``wait`` is put,
        or with ``unwait`` the run's wait deleted; ``drop`` names steps whose checkpoints
        go (``None``: every step's); ``consume`` is an inbox event to mark consumed (the
        batch fails with ``EventTakenError`` if it was). With ``release`` the lease is
        given back. Nothing is written for a run being cancelled.
        """
        b = self.b
        if run.id in b.cancelled:
            return run
        leases = b.leases
        now = b.now()
        if not create and (held.lost or not leases.fresh(held, now)):
            await leases.ensure(held)
            now = b.now()
        scrub = b.scrub.active()
        worker = leases.worker_id
        run = RunRecord(
            id=run.id, process=run.process, version=run.version, status=run.status,
            context=scrub(run.context), position=run.position,
            error=None if run.error is None else scrub(run.error), created=run.created,
            updated=now, owner=None if release else worker,
            lease_expires=None if release else leases.renewed(held, now),
        )  # fmt: skip
        entries = [
            h if isinstance(h, HistoryEntry) else
            HistoryEntry(run_id=run.id, kind=h[0], at=now, step=h[1],
                         detail=None if h[2] is None else scrub(canonical(h[2])))
            for h in history
        ]  # fmt: skip
        try:
            async with b.store.batch() as batch:
                if create:
                    batch.create_run(run)
                else:
                    batch.update_run(run, owner=worker)
                if consume is not None:
                    batch.consume_event(consume)
                if unwait:
                    batch.delete_wait(run.id)
                if wait is not None:
                    batch.put_wait(wait)
                for e in entries:
                    batch.append_history(e)
                for s in drop:
                    batch.delete_checkpoints(run.id, s)
        except OwnershipError as exc:
            raise leases.lost(held, str(exc)) from exc
        leases.wrote(held, run)
        return run

    async def checkpoint(
        self, held: Held, record: CheckpointRecord, *, started: HistoryEntry | None
    ) -> None:
        """Store a processor's output (with the step's ``started`` entry, if first), fenced."""
        b = self.b
        await b.leases.ensure(held)
        try:
            async with b.store.batch() as batch:
                batch.require_owner(record.run_id, b.worker_id)
                if started is not None:
                    batch.append_history(started)
                batch.put_checkpoint(record)
        except OwnershipError as exc:
            raise b.leases.lost(held, str(exc)) from exc
