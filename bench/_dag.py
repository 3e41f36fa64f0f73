"""The product-page DAG for benchmarks: hand-written versions and the orchestra process.

Ten HTTP calls, critical path three calls deep (``segment -> related -> related_prices``),
the same calls, in the same order of dependencies, as ``examples/product-page/process.json``.
``page(get, sku, customer)`` is the hand-written DAG over any ``get(url, params)``; the
aiohttp, httpx and no-HTTP (sleep) versions differ only in ``get``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "product-page"
sys.path.insert(0, str(EXAMPLE))

import backends  # type: ignore[import-not-found]  # noqa: E402

Get = Callable[[str, dict[str, str] | None], Awaitable[tuple[int, Any]]]


async def page(get: Get, base: str, sku: str, customer: str | None) -> dict[str, Any]:
    """Build the product-page payload by hand: the same ten calls and shaping in Python."""
    cms, commerce, search, cdp = (
        f"{base}/cms",
        f"{base}/commerce",
        f"{base}/search",
        f"{base}/cdp",
    )

    async def ok(url: str, params: dict[str, str] | None = None) -> Any:
        status, body = await get(url, params)
        if status >= 400:
            raise RuntimeError(f"{url} answered {status}")
        return body

    async def content() -> dict[str, Any]:
        r = await ok(f"{cms}/products/{sku}")
        return {"title": r["title"], "summary": r["description"][:80].strip() + "…",
                "category": r["category"], "brand": r["brand"], "image": r["images"][0]}  # fmt: skip

    async def segment() -> dict[str, Any] | None:
        if not customer:
            return None
        try:
            r = await asyncio.wait_for(ok(f"{cdp}/profiles/{customer}"), 0.5)
        except (TimeoutError, RuntimeError, OSError):
            return {"segment": "default", "tier": "standard"}
        return {"segment": r["segments"][0] or "default", "tier": r["tier"]}

    async def price(s: str) -> dict[str, Any]:
        r = await ok(f"{commerce}/prices/{s}", {"currency": "EUR"})
        was = r["list_amount"] / 100 if r["list_amount"] > r["amount"] else None
        return {"amount": r["amount"] / 100, "currency": r["currency"], "was": was}

    async def stock() -> dict[str, Any]:
        r = await ok(f"{commerce}/stock/{sku}")
        n = r["available"]
        return {"in_stock": n > 0, "quantity": n, "ships": "24h" if n > 0 else "backorder"}

    content_t = asyncio.ensure_future(content())
    segment_t = asyncio.ensure_future(segment())
    price_t = asyncio.ensure_future(price(sku))
    stock_t = asyncio.ensure_future(stock())

    def seg_name(s: dict[str, Any] | None) -> str:
        return s["segment"] if s else "default"

    async def related() -> list[dict[str, Any]]:
        c, s = await content_t, await segment_t
        r = await ok(f"{search}/related", {"category": c["category"], "segment": seg_name(s),
                                           "exclude": sku, "limit": "3"})  # fmt: skip
        hits = [{"sku": h["sku"], "title": h["title"]} for h in r["hits"]]
        sem = asyncio.Semaphore(3)

        async def one(h: dict[str, Any]) -> float:
            async with sem:
                p = await price(h["sku"])
            return float(p["amount"])

        prices = await asyncio.gather(*(one(h) for h in hits))
        return [{**h, "price": p} for h, p in zip(hits, prices, strict=True)]

    async def banner() -> dict[str, Any]:
        s = await segment_t
        r = await ok(f"{cms}/banners", {"segment": seg_name(s), "locale": "en"})
        return {"headline": r["headline"], "image": r["image"]}

    async def promotion() -> list[str]:
        p, s = await price_t, await segment_t
        r = await ok(f"{commerce}/promotions", {"sku": sku, "segment": seg_name(s),
                                                 "amount": str(round(p["amount"] * 100))})  # fmt: skip
        return [x["label"] for x in r["promotions"] if x["active"]]

    rel, ban, promo = await asyncio.gather(related(), banner(), promotion())
    c, p, st, s = await content_t, await price_t, await stock_t, await segment_t
    return {"sku": sku, "title": c["title"], "brand": c["brand"], "summary": c["summary"],
            "image": c["image"], "price": {**p, "promotions": promo}, "availability": st,
            "related": rel, "banner": ban,
            "personalised": s is not None and s["segment"] != "default"}  # fmt: skip


def aiohttp_get(session: Any) -> Get:
    """Return ``get`` on an ``aiohttp.ClientSession``."""

    async def get(url: str, params: dict[str, str] | None) -> tuple[int, Any]:
        async with session.get(url, params=params) as r:
            return r.status, await r.json(content_type=None)

    return get


def httpx_get(client: Any) -> Get:
    """Return ``get`` on an ``httpx.AsyncClient``."""

    async def get(url: str, params: dict[str, str] | None) -> tuple[int, Any]:
        r = await client.get(url, params=params)
        return r.status_code, r.json()

    return get


def sleep_get(latency: float) -> Get:
    """Return a ``get`` that sleeps ``latency`` and answers from the fake APIs' data (no HTTP)."""
    from urllib.parse import urlsplit

    async def get(url: str, params: dict[str, str] | None) -> tuple[int, Any]:
        await asyncio.sleep(latency)
        status, body = backends.respond("GET", urlsplit(url).path, dict(params or {}))
        return int(status), body

    return get


class Backend:
    """The fake APIs in a subprocess (so client and server do not share an event loop)."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "backends.py"), "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"backend did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[-1])}"

    def close(self) -> None:
        """Stop the backend."""
        self.proc.terminate()
        self.proc.wait(5)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_process(base: str) -> Any:
    """Return the product-page process pointed at the fake APIs at ``base``."""
    import orchestra as o

    return backends.rebase(o.load(EXAMPLE / "process.json"), base)


def request(sku: str = "tr-042", customer: str | None = "c-17") -> Any:
    """Return the trigger request of one product page."""
    import orchestra as o

    return o.Request(path=f"/products/{sku}", params={"sku": sku},
                     query={"customer": customer} if customer else {},
                     headers={"accept-language": "en-GB"})  # fmt: skip
