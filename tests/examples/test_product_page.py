"""The product-page example: the demo runs, and the process gives the expected payload."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.sandbox import InProcessSandbox

HERE = Path(__file__).resolve().parents[2] / "examples" / "product-page"
sys.path.insert(0, str(HERE))

import backends  # type: ignore[import-not-found]  # noqa: E402


def test_demo_runs() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "demo.py"), "--latency-ms", "5"],
        check=False, capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 15
    payload = json.loads(proc.stdout[: proc.stdout.index("\n}\n") + 2])
    assert payload["sku"] == "tr-042"
    assert payload["personalised"] is True
    assert "related_prices" in proc.stdout  # the trace table
    assert "8 processors" in proc.stdout


def _handler(calls: list[httpx.Request]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        prefix = backends.APIS[f"{request.url.scheme}://{request.url.host}"]
        status, body = backends.respond(
            request.method, prefix + request.url.path, dict(request.url.params)
        )
        return httpx.Response(status, json=body)

    return handle


async def _invoke(request: o.Request) -> tuple[o.Result, list[httpx.Request]]:
    calls: list[httpx.Request] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(_handler(calls)))
    process = o.load(HERE / "process.json")
    async with client, o.Engine(sandbox=InProcessSandbox(), client=client) as engine:
        return await engine.invoke(process, request), calls


def _request(**query: str) -> o.Request:
    return o.Request(path="/products/tr-042", params={"sku": "tr-042"}, query=query,
                     headers={"accept-language": "de-DE"})  # fmt: skip


@pytest.mark.anyio
async def test_payload_for_a_known_customer() -> None:
    result, calls = await _invoke(_request(customer="c-17"))
    assert result.payload == {
        "sku": "tr-042",
        "title": "Koru Court Shoe TR-042",
        "brand": "Koru",
        "summary": "A court shoe with a light sole, made for long days. "
        "A court shoe with a light so…",
        "image": "https://img.example/tr-042/0.jpg",
        "price": {"amount": 76, "currency": "EUR", "was": 96,
                  "promotions": ["Free shipping", "10% off for outdoor"]},
        "availability": {"in_stock": True, "quantity": 5, "ships": "24h"},
        "related": [
            {"sku": "co-000", "title": "Court pick co-000", "price": 112},
            {"sku": "co-001", "title": "Court pick co-001", "price": 146},
            {"sku": "co-002", "title": "Court pick co-002", "price": 140},
        ],
        "banner": {"headline": "Picked for outdoor", "image": "https://img.example/banners/outdoor.jpg"},
        "personalised": True,
    }  # fmt: skip
    assert len(calls) == 10
    banner = next(c for c in calls if c.url.path == "/banners")
    assert dict(banner.url.params) == {"segment": "outdoor", "locale": "de"}
    by_name = {t.processor: t for t in result.trace}
    assert by_name["related_prices"].items == 3
    assert all(t.status == "ok" for t in result.trace)
    # The dependency graph: related starts after content and segment have ended.
    assert by_name["related"].started >= max(by_name["content"].ended, by_name["segment"].ended)


@pytest.mark.anyio
async def test_anonymous_visitor_skips_the_profile() -> None:
    result, calls = await _invoke(_request())
    assert len(calls) == 9
    assert {t.processor: t.status for t in result.trace}["segment"] == "skipped"
    payload: Any = result.payload
    assert payload["personalised"] is False
    assert payload["price"]["promotions"] == ["Free shipping"]


@pytest.mark.anyio
async def test_unknown_customer_falls_back() -> None:
    result, _ = await _invoke(_request(customer="anon-9", currency="usd"))
    segment = next(t for t in result.trace if t.processor == "segment")
    assert (segment.status, segment.http_status) == ("fallback", 404)
    payload: Any = result.payload
    assert payload["personalised"] is False
    assert payload["price"]["currency"] == "USD"
    assert payload["banner"]["headline"] == "Picked for default"


@pytest.mark.anyio
async def test_mocks_file_serves_the_process() -> None:
    from orchestra.testing import MockHTTP

    mocks = MockHTTP.from_file(HERE / "mocks.json")
    process = o.load(HERE / "process.json")
    async with o.Engine(sandbox=InProcessSandbox(), client=mocks.client()) as engine:
        result = await engine.invoke(process, _request(customer="c-17"))
    assert not mocks.unmatched
    assert isinstance(result.payload, dict)
    assert result.payload["title"] == "Koru Court Shoe TR-042"
