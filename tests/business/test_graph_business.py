from pathlib import Path

import pytest

import orchestra as o
from orchestra._graph_business import business_mermaid, run_mermaid
from orchestra.testing import BusinessTest

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parents[2] / "examples" / "po-confirmation-triage"
PROCESS = o.Process.from_json((HERE / "process.json").read_text())


def test_business_flowchart() -> None:
    text = business_mermaid(PROCESS)
    assert text.startswith("flowchart TD\n")
    assert 'start(["event po.unconfirmed"])' in text
    assert "s_wait_for_supplier{{" in text
    assert "deadline P5D" in text
    assert "s_wait_for_supplier -. timeout .-> s_escalate" in text
    assert (
        's_wait_for_supplier -->|"supplier.form_submitted, '
        'when ctx.events.wait_for_supplier != null"| s_write_back' in text
    )
    assert "s_write_back -. skipped .-> s_escalate" not in text  # skip edges start before the step
    assert "s_wait_for_supplier -. skipped .-> s_escalate" in text
    assert text.rstrip().endswith("s_escalate --> finish")


async def test_run_flowchart_colours_steps() -> None:
    secrets = {"forms_token": "f", "mail_token": "m", "erp_client_secret": "s"}
    async with BusinessTest(PROCESS, mocks=HERE / "mocks.json", secrets=secrets) as t:
        await t.start(__import__("json").loads((HERE / "sample.json").read_text()))
        waiting = run_mermaid(PROCESS, await t.run())
        assert "class s_send_form completed" in waiting
        assert "class s_wait_for_supplier waiting" in waiting
        assert "class s_wait_for_supplier current" in waiting
        await t.advance("P5D")
        done = run_mermaid(PROCESS, await t.run())
        assert "class s_wait_for_supplier timed_out" in done
        assert "class s_escalate completed" in done
        assert "current" not in done.split("classDef current")[1]
        assert "classDef failed" in done
