"""kill -9 a worker at 29 points of the PO-triage process; a restarted worker finishes it.

Each point is one worker process (``_worker.py``) that deploys the example on its own
SQLite file, publishes the start event and the supplier's event, and SIGKILLs itself
just before or after its Nth write to the store. Then a fresh worker process recovers
every file (half of them as the same worker restarted, half as another worker that must
wait for the dead one's lease to expire), publishes both events again, as a host does
when it got no answer, and reports what the store holds.

The writes of one undisturbed run, in order (``_worker.py crash x.db`` prints them; a
lease renewal slips in where a step takes longer than half a lease, as the first step of
a cold process does)::

     1 purge_events                          8 park's second look found nothing: give
     2 put_version                             the lease back
     3 add_event (start)                     9 add_event (supplier)
     4 create run + run_started             10 claim the lease
     5 step_started + checkpoint form       11 event_consumed + the event consumed in
       (email, the last to end, goes           the inbox + the wait deleted + the run
       with the step's end)                    moved on: one transaction
     6 commit send_form                     12 commit write_back (one processor: its
     7 park: run + wait + waiting              step_started goes with it)
                                            13 escalate skipped + run_completed

The "early" points publish the supplier's event *first*: it waits in the inbox, and the
run takes it when it reaches its resume step (write 8 of 10 in that order: ``event_consumed``
and ``consume_event`` in one transaction). A worker killed just before that write (the
run had found the event but not recorded it) must not lose the event; one killed just
after must not leave it in the inbox. Every point ends by starting a second run for the
same PO, which must *wait* for a supplier event: the first one is consumed, not reused.

The points "before:@put_checkpoint:form" (and the step ends carrying email's and erp's
outputs) kill a worker whose HTTP call was answered but not yet recorded: the call is
made again (at least once) with the same idempotency key. The "RECORDED" points kill it
just after: the call is not made again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ._worker import EVENT, IDEMPOTENCY_HEADER, file_name

WORKER = Path(__file__).with_name("_worker.py")
SEND_FORM_END = "@h.step_completed+delete_checkpoints"  # the end of send_form: email's output
WRITE_BACK_END = "@h.step_started+h.step_completed"  # the end of write_back: erp's output
IN_FLIGHT = {
    "before:@put_checkpoint:form": "send_form:form",
    f"before:{SEND_FORM_END}": "send_form:email",
    f"before:{WRITE_BACK_END}": "write_back:erp",
}
RECORDED = [  # a crash right after the output of each HTTP call was stored
    "after:@put_checkpoint:form",
    f"after:{SEND_FORM_END}",
    f"after:{WRITE_BACK_END}",
]
EVENT_WINDOWS = [  # the inbox event and the run's commit that records it
    "before:@consume_event",  # resumed by the publisher: about to record the event
    "early/before:@consume_event",  # found the event in the inbox, about to record it
]
EARLY = [f"early/after:{n}" for n in range(3, 11)]  # 1-2 are the same in either order
POINTS = [f"after:{n}" for n in range(1, 14)] + list(IN_FLIGHT) + RECORDED + EVENT_WINDOWS + EARLY
HAPPY_PATH = ["send_form:completed", "wait_for_supplier:resumed", "write_back:completed",
              "escalate:skipped"]  # fmt: skip
HTTP_PROCESSORS = {"send_form:form", "send_form:email", "write_back:erp"}


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
    # Two recovering processes, each with half of the files, to halve the lease waits.
    halves = [POINTS[0::2], POINTS[1::2]]
    procs = []
    for k, half in enumerate(halves):
        args = [str(d / f"{file_name(p)}.sqlite") for p in half]
        for i, p in enumerate(half):
            args += ["--worker-id", "w1" if (i + k) % 2 else "w2"]
            args += ["--early", "1" if p.startswith("early/") else "0"]
        procs.append(subprocess.Popen(  # noqa: S603 - our own worker script
            [sys.executable, "-X", "faulthandler", str(WORKER), "recover", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    return {
        p: {
            "code": codes[p],
            "report": json.loads((d / f"{file_name(p)}.json").read_text()),
            "log": (d / f"{file_name(p)}.http").read_text().splitlines(),
        }
        for p in POINTS
    }


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_killed_worker_s_run_completes_once(point: str, crashed: dict[str, Any]) -> None:
    outcome = crashed[point]
    assert outcome["code"] == -9, f"the worker was not killed at {point} (exit {outcome['code']})"
    assert f"KILL {point.removeprefix('early/')} " in "\n".join(outcome["log"])
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
@pytest.mark.parametrize("point", POINTS)
def test_the_event_is_consumed_once_and_never_reused(point: str, crashed: dict[str, Any]) -> None:
    """The supplier's event left the inbox with the run that recorded it; nobody takes it again."""
    report = crashed[point]["report"]
    assert report["inbox"][EVENT["id"]] == 1, "the recorded event is still in the inbox"
    second = report["second"]  # a later run on the same PO (the same correlation key)
    assert second["status"] == "waiting", second
    assert second["events"] == {}
    assert second["path"] == ["send_form:completed", "wait_for_supplier:waiting"]


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
