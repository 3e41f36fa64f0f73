"""kill -9 a worker at 27 points of the PO-triage process; a restarted worker finishes it.

Each point is one worker process (``_worker.py``) that deploys the example on its own
SQLite file, publishes the start event and the supplier's event, and SIGKILLs itself
just before or after its Nth write to the store. Then a fresh worker process recovers
every file (half of them as the same worker restarted, half as another worker that must
wait for the dead one's lease to expire), publishes both events again, as a host does
when it got no answer, and reports what the store holds.

The writes of one undisturbed run, in order (``_worker.py crash x.db`` prints them; a
lease renewal slips in where a step takes longer than half a lease)::

     1 purge_events                          11 give the lease back
     2 put_version                           12 add_event (supplier)
     3 add_event (start)                     13 claim the lease
     4 create run + run_started              14 delete the wait
     5 step_started + checkpoint form        15 commit event_consumed
     6 checkpoint email                      16 take_event (marks it consumed)
     7 commit send_form                      17 step_started + checkpoint erp
     8 take_event (inbox)                    18 commit write_back
     9 park: run + wait + waiting            19 commit escalate (skipped)
    10 take_event (one more look)            20 commit run_completed

The points "before:@put_checkpoint:form" (and email, erp) kill a worker whose HTTP call
was answered but not yet checkpointed: the call is made again (at least once) with the
same idempotency key. The points "after:@put_checkpoint:..." kill it just after: the call
is not made again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ._worker import EVENT, IDEMPOTENCY_HEADER

WORKER = Path(__file__).with_name("_worker.py")
IN_FLIGHT = {
    "before:@put_checkpoint:form": "send_form:form",
    "before:@put_checkpoint:email": "send_form:email",
    "before:@put_checkpoint:erp": "write_back:erp",
}
RECORDED = [  # a crash right after the output of each HTTP call was stored
    "after:@put_checkpoint:form",
    "after:@put_checkpoint:email",
    "after:@batch:update_run+h.step_completed",
    "after:@put_checkpoint:erp",
]
POINTS = [f"after:{n}" for n in range(1, 21)] + list(IN_FLIGHT) + RECORDED
HAPPY_PATH = ["send_form:completed", "wait_for_supplier:resumed", "write_back:completed",
              "escalate:skipped"]  # fmt: skip
HTTP_PROCESSORS = {"send_form:form", "send_form:email", "write_back:erp"}


def _file(point: str) -> str:
    return point.replace(":", "-").replace("@", "")


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Crash a worker at every point, recover every file; return the outcomes by point."""
    d = tmp_path_factory.mktemp("crash")
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(WORKER), "crash-many", str(d),
         "--points", ",".join(POINTS)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    codes: dict[str, int] = json.loads(out.stdout)
    dbs = [str(d / f"{_file(p)}.sqlite") for p in POINTS]
    ids = [arg for i in range(len(POINTS)) for arg in ("--worker-id", "w1" if i % 2 else "w2")]
    recovered = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(WORKER), "recover", *dbs, *ids],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    return {
        p: {
            "code": codes[p],
            "report": json.loads((d / f"{_file(p)}.json").read_text()),
            "log": (d / f"{_file(p)}.http").read_text().splitlines(),
        }
        for p in POINTS
    }


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_killed_worker_s_run_completes_once(point: str, crashed: dict[str, Any]) -> None:
    outcome = crashed[point]
    assert outcome["code"] == -9, f"the worker was not killed at {point} (exit {outcome['code']})"
    assert f"KILL {point} " in "\n".join(outcome["log"])
    report = outcome["report"]
    (run,) = report["runs"]  # one start event, delivered twice: one run
    assert run["status"] == "completed", run["error"]
    assert run["path"] == HAPPY_PATH
    # Exactly one record of each step, whatever was written before the crash.
    ends = Counter(
        (kind, step) for kind, step in run["history"]
        if kind in ("run_started", "step_completed", "step_skipped", "event_consumed",
                    "run_completed", "step_failed", "run_failed", "timeout")
    )  # fmt: skip
    assert ends == Counter({
        ("run_started", None): 1, ("step_completed", "send_form"): 1,
        ("event_consumed", "wait_for_supplier"): 1, ("step_completed", "write_back"): 1,
        ("step_skipped", "escalate"): 1, ("run_completed", None): 1,
    })  # fmt: skip
    # No lost event: the supplier's answer is the one in the context, written to the ERP.
    assert run["context"]["events"]["wait_for_supplier"] == EVENT["payload"]
    assert run["context"]["steps"]["write_back"]["erp"] == {"status": "updated"}
    assert report["waits"] == 0
    assert run["owner"] is None


@pytest.mark.slow
@pytest.mark.parametrize("point", list(IN_FLIGHT))
def test_a_call_in_flight_is_made_again_with_the_same_key(
    point: str, crashed: dict[str, Any]
) -> None:
    """At least once: the answered but unrecorded call is repeated, idempotency key and all."""
    outcome = crashed[point]
    (run,) = outcome["report"]["runs"]
    keys: dict[str, list[str]] = {}
    for line in outcome["log"]:
        if line.startswith("HTTP ") and not line.endswith(" -"):
            key = line.rsplit(" ", 1)[1]
            run_id, step, processor, item = key.split(":")
            assert (run_id, item) == (run["id"], "0")
            keys.setdefault(f"{step}:{processor}", []).append(key)
    assert set(keys) == HTTP_PROCESSORS
    assert len(keys[IN_FLIGHT[point]]) == 2
    assert all(len(set(k)) == 1 for k in keys.values())
    assert IDEMPOTENCY_HEADER


@pytest.mark.slow
def test_calls_after_their_checkpoint_are_not_made_again(crashed: dict[str, Any]) -> None:
    """A crash after a checkpoint: that processor is not called again on recovery."""
    for point in RECORDED:
        lines = [ln for ln in crashed[point]["log"] if ln.startswith("HTTP ") and "token" not in ln]
        assert len(lines) == len(HTTP_PROCESSORS), (point, lines)
