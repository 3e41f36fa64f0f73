"""Batches: writes collected by ``async with store.batch() as b:`` and committed together.

A :class:`Batch` only records operations; the store that made it decides how to commit
them. SQLite and PostgreSQL commit a batch in one transaction (all or nothing; batches
of several tasks may share a transaction, each still all or nothing: group commit), the
in-memory store checks every condition before it changes anything (all or nothing too),
and a store that keeps :meth:`Store.batch`'s default applies the writes one by one
through its own methods, which is **not** atomic (see :func:`apply_one_by_one`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Self, TypeAlias

if TYPE_CHECKING:
    from types import TracebackType

    from orchestra.stores._base import CheckpointRecord, HistoryEntry, RunRecord, Store, Wait

__all__ = ["Batch", "Op", "apply_one_by_one"]

Op: TypeAlias = tuple[str, tuple[object, ...]]
"""One write of a batch: the :class:`Batch` method's name and its arguments."""

Commit: TypeAlias = Callable[[list[Op]], Awaitable[None]]


class Batch:
    """Writes collected by ``async with store.batch() as b:`` and committed together.

    Each method records a write with the meaning of the store method of the same name
    (:meth:`require_owner` has none: it is a condition). Nothing is written until the
    ``async with`` block ends without an exception; then the store commits the writes in
    order: in one transaction for SQLite and PostgreSQL, atomically in memory, one by one
    for a store that keeps the default. If a write or a condition fails, the batch raises
    its error (``RunNotFoundError``, or a :class:`~orchestra.ConflictError` subclass) and
    an atomic store has written nothing. Reads inside the block do not see the batch.
    """

    def __init__(self, commit: Commit) -> None:
        self.ops: list[Op] = []
        """The writes recorded so far, in order."""
        self._commit = commit

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self.ops:
            await self._commit(self.ops)

    def create_run(self, run: RunRecord) -> None:
        """Insert a new run (the batch fails with ``ConflictError`` if its id exists)."""
        self.ops.append(("create_run", (run,)))

    def update_run(self, run: RunRecord, *, owner: str | None = None) -> None:
        """Replace the stored run; with ``owner``, only while ``owner`` holds it.

        The batch fails with ``RunNotFoundError`` without the run, and with
        :class:`~orchestra.stores.OwnershipError` when ``owner`` is given and the stored
        run's owner is another (or none).
        """
        self.ops.append(("update_run", (run, owner)))

    def require_owner(self, run_id: str, owner: str) -> None:
        """Fail the batch with ``OwnershipError`` unless ``owner`` holds the run.

        A condition, not a write: it fences the batch's other writes (checkpoints, say)
        against a worker that lost the run's lease.
        """
        self.ops.append(("require_owner", (run_id, owner)))

    def put_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Store a processor's output."""
        self.ops.append(("put_checkpoint", (checkpoint,)))

    def delete_checkpoints(self, run_id: str, step: str | None = None) -> None:
        """Delete the run's checkpoints of ``step`` (of every step if ``None``)."""
        self.ops.append(("delete_checkpoints", (run_id, step)))

    def put_wait(self, wait: Wait) -> None:
        """Record that a run waits (replacing its previous wait)."""
        self.ops.append(("put_wait", (wait,)))

    def delete_wait(self, run_id: str) -> None:
        """Remove the run's wait, if it has one."""
        self.ops.append(("delete_wait", (run_id,)))

    def append_history(self, entry: HistoryEntry) -> None:
        """Append ``entry`` to its run's history (its ``seq`` is set by the store)."""
        self.ops.append(("append_history", (entry,)))

    def consume_event(self, event_id: str) -> None:
        """Mark inbox event ``event_id`` consumed.

        The batch fails with :class:`~orchestra.stores.EventTakenError` if the event was
        consumed already (or is gone): recording an event in a run and taking it out of
        the inbox are then one commit, and two runs never both take it.
        """
        self.ops.append(("consume_event", (event_id,)))


async def apply_one_by_one(store: Store, ops: list[Op]) -> None:
    """Apply ``ops`` through ``store``'s own methods, in order: the default, **not atomic**.

    A failing write raises its error, and the writes before it stay written. Stores that
    can do better override :meth:`Store.batch`.
    """
    from orchestra.stores._base import OwnershipError

    for name, args in ops:
        if name == "update_run":
            run, owner = args
            await store.update_run(run, owner=owner)  # type: ignore[arg-type]
        elif name == "require_owner":
            run_id, owner = args
            held = (await store.get_run(run_id)).owner  # type: ignore[arg-type]
            if held != owner:
                msg = f"run {run_id!r} is held by {held!r}, not {owner!r}"
                raise OwnershipError(msg)
        elif name == "delete_wait":
            await store.delete_wait(*args)  # type: ignore[arg-type]
        else:
            await getattr(store, name)(*args)
