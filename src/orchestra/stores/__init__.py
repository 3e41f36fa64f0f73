"""Stores: where business processes keep versions, runs, checkpoints, waits, events, history."""

from orchestra.stores._base import (
    CheckpointRecord,
    HistoryEntry,
    HistoryKind,
    InboxEvent,
    RunRecord,
    RunStatus,
    Store,
    Version,
    Wait,
)
from orchestra.stores._memory import InMemoryStore

__all__ = [
    "CheckpointRecord",
    "HistoryEntry",
    "HistoryKind",
    "InMemoryStore",
    "InboxEvent",
    "RunRecord",
    "RunStatus",
    "Store",
    "Version",
    "Wait",
]
