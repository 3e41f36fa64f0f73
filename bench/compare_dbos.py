"""DBOS Transact on SQLite running a 10-step workflow of trivial steps (for bench_durable).

    python bench/compare_dbos.py [--runs 30]

DBOS keeps one global instance per process, so :func:`measure` runs this file in a
subprocess. DBOS's SQLite system database uses SQLite's defaults (rollback journal,
``synchronous=FULL``): every step's commit waits for the disk, where orchestra's
SQLiteStore runs WAL with ``synchronous=NORMAL``. ``wal=True`` (``--wal``) patches those
two settings into DBOS's connections (a SQLAlchemy ``connect`` hook), the comparison the
issue's "DBOS with WAL" figure makes.
"""

# mypy: disable-error-code="untyped-decorator"
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import dbos  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def measure(runs: int, steps: int = 10, *, wal: bool = False) -> tuple[float, str]:
    """Return (ms per step, note), or raise RuntimeError when DBOS is missing or fails."""
    if not available():
        raise RuntimeError("skipped: dbos not installed (pip install dbos)")
    cmd = [sys.executable, __file__, "--runs", str(runs), "--steps", str(steps)]
    cmd += ["--wal"] if wal else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    settings = "WAL, synchronous=NORMAL patched in" if wal else "SQLite defaults"
    return result["ms_per_step"], f"dbos {result['version']}, {settings}"


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--wal", action="store_true", help="WAL and synchronous=NORMAL")
    args = parser.parse_args()

    import logging
    from importlib.metadata import version

    from dbos import DBOS, DBOSConfig  # type: ignore[import-not-found, unused-ignore]

    logging.disable(logging.INFO)
    if args.wal:
        _patch_wal()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dbos.sqlite"
        config: DBOSConfig = {
            "name": "orchestra-bench",
            "system_database_url": f"sqlite:///{path}",
        }
        DBOS(config=config)

        @DBOS.step()
        def step(i: int) -> int:
            return i

        @DBOS.workflow()
        def workflow() -> int:
            return sum(step(i) for i in range(args.steps))

        DBOS.launch()
        try:
            for _ in range(3):
                workflow()
            t = time.perf_counter()
            for _ in range(args.runs):
                workflow()
            elapsed = time.perf_counter() - t
        finally:
            DBOS.destroy()
    ms = elapsed / (args.runs * args.steps) * 1000
    print(json.dumps({"ms_per_step": ms, "version": version("dbos")}))


def _patch_wal() -> None:
    """Give every SQLite connection SQLAlchemy opens WAL and ``synchronous=NORMAL``."""
    from sqlalchemy import event  # type: ignore[import-not-found, unused-ignore]
    from sqlalchemy.engine import Engine  # type: ignore[import-not-found, unused-ignore]

    def pragmas(dbapi_conn: Any, _record: Any) -> None:
        if type(dbapi_conn).__module__.startswith("sqlite3"):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    event.listen(Engine, "connect", pragmas)


if __name__ == "__main__":
    _main()
