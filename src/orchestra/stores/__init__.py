"""Stores: where business processes keep versions, runs, checkpoints, waits, events, history."""

from typing import TYPE_CHECKING, Any

from orchestra.stores._base import (
    CheckpointRecord,
    EventTakenError,
    HistoryEntry,
    HistoryKind,
    InboxEvent,
    OwnershipError,
    RunRecord,
    RunStatus,
    Store,
    Subscription,
    Version,
    Wait,
)
from orchestra.stores._batch import Batch
from orchestra.stores._memory import InMemoryStore
from orchestra.stores._open import open_store

if TYPE_CHECKING:
    from orchestra.stores._postgres import PostgresStore
    from orchestra.stores._sqlite import SQLiteStore

__all__ = [
    "Batch",
    "CheckpointRecord",
    "EventTakenError",
    "HistoryEntry",
    "HistoryKind",
    "InMemoryStore",
    "InboxEvent",
    "OwnershipError",
    "PostgresStore",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Store",
    "Subscription",
    "Version",
    "Wait",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # The durable stores load on first use: sqlite3 and asyncpg stay unimported until then.
    if name == "SQLiteStore":
        from orchestra.stores._sqlite import SQLiteStore

        return SQLiteStore
    if name == "PostgresStore":
        from orchestra.stores._postgres import PostgresStore

        return PostgresStore
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
