import json
from pathlib import Path
from typing import Any

import pytest

import orchestra as o
from orchestra.engine._webhooks import WebhookEndpoint, handle_webhook, sign_webhook
from orchestra.testing import BusinessTest

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parents[2] / "examples" / "po-confirmation-triage"
PROCESS = o.Process.from_json((HERE / "process.json").read_text())
SAMPLE = (HERE / "sample.json").read_bytes()
SECRETS = {"forms_token": "f", "mail_token": "m", "erp_client_secret": "s"}
SIGNED = WebhookEndpoint(event="po.unconfirmed", secret="hush")


def triage() -> BusinessTest:
    return BusinessTest(PROCESS, mocks=HERE / "mocks.json", secrets=SECRETS)


async def test_signed_webhook_starts_a_run() -> None:
    async with triage() as t:
        headers = sign_webhook("hush", SAMPLE, t.executor.now()) | {"X-Orchestra-Event-Id": "d1"}
        status, body = await handle_webhook(t.engine, SIGNED, headers, SAMPLE)
        assert status == 202
        out: Any = body
        (run_id,) = out["started"]
        assert (await t.engine.run(run_id)).status == "waiting"
        status, again = await handle_webhook(t.engine, SIGNED, headers, SAMPLE)
        assert (status, again["duplicate"], again["started"]) == (202, True, [])  # type: ignore[index,call-overload]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing signature headers"),
        (
            {"x-orchestra-timestamp": "soon", "x-orchestra-signature": "sha256=00"},
            "malformed timestamp",
        ),
        (
            sign_webhook("hush", SAMPLE, 1_700_000_000 - 301),
            "timestamp outside the accepted window",
        ),
        (sign_webhook("wrong", SAMPLE, 1_700_000_000), "signature mismatch"),
        (sign_webhook("hush", SAMPLE + b" ", 1_700_000_000), "signature mismatch"),
    ],
)
async def test_bad_signatures_are_refused(headers: dict[str, str], reason: str) -> None:
    async with triage() as t:
        status, body = await handle_webhook(t.engine, SIGNED, headers, SAMPLE)
        assert (status, body) == (401, {"error": reason})
        assert await t.engine.runs() == []


async def test_bad_payloads() -> None:
    async with triage() as t:
        open_endpoint = WebhookEndpoint(event="po.unconfirmed")
        status, body = await handle_webhook(t.engine, open_endpoint, {}, b"{not json")
        assert status == 400
        bad = json.loads(SAMPLE)
        bad["po"]["supplier"]["email"] = 5
        status, body = await handle_webhook(t.engine, open_endpoint, {}, json.dumps(bad).encode())
        assert status == 400
        assert body["path"] == "$.po.supplier.email"  # type: ignore[index,call-overload]
