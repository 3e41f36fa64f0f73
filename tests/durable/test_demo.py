"""The PO-triage demo: durable on SQLite by default, and it survives kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "po-confirmation-triage" / "demo.py"
COMPLETED = ("path: send_form:completed -> wait_for_supplier:resumed -> write_back:completed"
             " -> escalate:skipped")  # fmt: skip


def demo(db: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), "--db", str(db), *flags],
        capture_output=True, text=True, timeout=60, check=False, cwd=db.parent,
    )  # fmt: skip


def stored(db: Path) -> tuple[list[str], Counter[tuple[str, str | None]], list[str]]:
    """The statuses of the runs in ``db``, their history records, the remaining waits."""
    with sqlite3.connect(db) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM orchestra_runs")]
        history = Counter(conn.execute("SELECT kind, step FROM orchestra_history").fetchall())
        waits = [r[0] for r in conn.execute("SELECT run_id FROM orchestra_waits")]
    return statuses, history, waits


def assert_completed_once(db: Path) -> None:
    statuses, history, waits = stored(db)
    assert statuses == ["completed"]
    assert waits == []
    for record in [("step_completed", "send_form"), ("event_consumed", "wait_for_supplier"),
                   ("step_completed", "write_back"), ("step_skipped", "escalate"),
                   ("run_completed", None), ("run_started", None)]:  # fmt: skip
        assert history[record] == 1, record


@pytest.mark.slow
def test_the_demo_runs_the_process_to_completion(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    out = demo(db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "path: send_form:completed -> wait_for_supplier:waiting" in out.stdout
    assert COMPLETED in out.stdout
    assert "backend: PATCH https://erp.example.com/api/purchase-orders/4500012345" in out.stdout
    assert_completed_once(db)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--crash-after-start", "--crash-during-write-back"])
def test_the_demo_survives_kill_9(tmp_path: Path, flag: str) -> None:
    db = tmp_path / "demo.db"
    first = demo(db, flag)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert "kill -9" in first.stdout
    statuses, _, _ = stored(db)
    assert statuses == (["waiting"] if flag == "--crash-after-start" else ["running"])
    second = demo(db)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 unfinished run(s) in the store" in second.stdout
    assert "(published before: its run exists already)" in second.stdout
    assert COMPLETED in second.stdout
    assert_completed_once(db)
    if flag == "--crash-during-write-back":
        # The ERP call in flight when the worker died is made again on recovery.
        patches = [ln for ln in first.stdout.splitlines() + second.stdout.splitlines()
                   if "backend: PATCH" in ln]  # fmt: skip
        assert len(patches) == 2
