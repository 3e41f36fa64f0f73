import json
from pathlib import Path
from typing import Any

import pytest

import orchestra as o
from orchestra.testing import BusinessTest

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parents[2] / "examples" / "po-confirmation-triage"
PROCESS = o.Process.from_json((HERE / "process.json").read_text())
SAMPLE: Any = json.loads((HERE / "sample.json").read_text())
EVENTS: Any = json.loads((HERE / "events.json").read_text())
SECRETS = {"forms_token": "f", "mail_token": "m", "erp_client_secret": "s3cret"}
PO = SAMPLE["po"]["number"]


def triage() -> BusinessTest:
    return BusinessTest(PROCESS, mocks=HERE / "mocks.json", secrets=SECRETS)


def submitted(po: str = PO, date: str = "2025-07-03") -> dict[str, Any]:
    return {"po_number": po, "confirmed_delivery_date": date}


async def test_happy_path() -> None:
    async with triage() as t:
        await t.start(SAMPLE)
        await t.assert_path(["send_form:completed", "wait_for_supplier:waiting"])
        (email,) = t.requests("POST", "https://mail.example.com")
        assert "https://forms.example.com/f/frm_81" in json.loads(email.content)["text"]
        await t.advance("P2D")
        event = EVENTS[0]
        res = await t.publish(event["name"], event["payload"], id=event["id"])
        assert res.resumed == (t.run_id,)
        await t.assert_status("completed")
        await t.assert_path(["send_form:completed", "wait_for_supplier:resumed",
                             "write_back:completed", "escalate:skipped"])  # fmt: skip
        (patch,) = t.requests("PATCH")
        assert str(patch.url) == f"https://erp.example.com/api/purchase-orders/{PO}"
        assert patch.headers["authorization"] == "Bearer erp-token"
        assert json.loads(patch.content)["confirmed_delivery_date"] == "2025-07-03"
        await t.assert_context({"events.wait_for_supplier.po_number": PO,
                                "steps.write_back.erp.status": "updated"})  # fmt: skip


async def test_timeout_escalates_to_buyer() -> None:
    async with triage() as t:
        await t.start(SAMPLE)
        await t.advance("P4DT23H")
        await t.assert_status("waiting")
        await t.advance("PT1H")
        await t.assert_status("completed")
        await t.assert_path(
            ["send_form:completed", "wait_for_supplier:timed_out", "escalate:completed"]
        )
        mails = t.requests("POST", "https://mail.example.com")
        assert json.loads(mails[-1].content)["to"] == "buyer.jane@example.com"
        assert t.requests("PATCH") == []
        # A late submission resumes nothing.
        assert (await t.publish("supplier.form_submitted", submitted())).resumed == ()


async def test_early_event_is_kept_and_consumed() -> None:
    async with triage() as t:
        early = await t.publish("supplier.form_submitted", submitted(), id="early-1")
        assert early.kept
        await t.start(SAMPLE)
        await t.assert_status("completed")
        await t.assert_path(["send_form:completed", "wait_for_supplier:resumed",
                             "write_back:completed", "escalate:skipped"])  # fmt: skip


async def test_duplicate_event_is_ignored() -> None:
    async with triage() as t:
        await t.start(SAMPLE)
        first = await t.publish("supplier.form_submitted", submitted(), id="sub-1")
        assert first.resumed == (t.run_id,)
        second_run = await t.engine.start(PROCESS.name, SAMPLE)
        dup = await t.publish("supplier.form_submitted", submitted(date="2030-01-01"), id="sub-1")
        assert dup.duplicate
        assert dup.resumed == ()
        await t.assert_status("waiting", run_id=second_run)
        assert len(t.requests("PATCH")) == 1


async def test_event_for_another_po_does_not_resume() -> None:
    async with triage() as t:
        await t.start(SAMPLE)
        other = await t.publish("supplier.form_submitted", submitted(po="4500099999"))
        assert other.resumed == ()
        await t.assert_status("waiting")
        await t.publish("supplier.form_submitted", submitted())
        await t.assert_status("completed")


async def test_bad_payloads_name_the_json_path() -> None:
    async with triage() as t:
        bad = json.loads(json.dumps(SAMPLE))
        bad["po"]["number"] = "PO-1"
        with pytest.raises(o.EventError) as info:
            await t.publish("po.unconfirmed", bad)
        assert info.value.path == "$.po.number"
        with pytest.raises(o.EventError) as info:
            await t.publish("supplier.form_submitted", submitted(date="soon"))
        assert info.value.path == "$.confirmed_delivery_date"


async def test_webhook_start_event_starts_a_run() -> None:
    async with triage() as t:
        res = await t.publish("po.unconfirmed", SAMPLE)
        (run_id,) = res.started
        await t.assert_status("waiting", run_id=run_id)
