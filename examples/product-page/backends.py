"""Four fake composable-commerce APIs (CMS, commerce, search, CDP) on one local port.

Every answer is deterministic (derived from the SKU or customer id), so tests can assert
payloads exactly. The server is a bare asyncio protocol with HTTP/1.1 keep-alive: light
enough to serve a benchmark of many concurrent payloads without being the bottleneck.

Routes (each API under its own path prefix)::

    GET /cms/products/{sku}                  content: title, description, category, ...
    GET /cms/banners?segment=&locale=        a banner for a customer segment
    GET /commerce/prices/{sku}?currency=     price in minor units
    GET /commerce/stock/{sku}                units available
    GET /commerce/promotions?sku=&segment=   promotions for a SKU and segment
    GET /search/related?category=&exclude=&limit=   related products
    GET /cdp/profiles/{customer}             segments of a known customer (404 otherwise)

Run ``python backends.py --port 8080 --latency-ms 20``; it prints ``listening on <port>``.
:func:`rebase` points a process's API hosts (``http://cms.example`` ...) at this server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import zlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

#: The hosts the process definition uses, and the path prefix each has on this server.
APIS = {
    "http://cms.example": "/cms",
    "http://commerce.example": "/commerce",
    "http://search.example": "/search",
    "http://cdp.example": "/cdp",
}

_CATEGORIES = ("running", "trail", "hiking", "court")
_BRANDS = ("Stride", "Northpeak", "Velo", "Koru")
_SEGMENTS = ("runners", "outdoor", "bargain", "default")


def _n(key: str) -> int:
    return zlib.crc32(key.encode())


def respond(method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
    """Return ``(status, json_body)`` for one request: the data of all four fake APIs."""
    if method != "GET":
        return 405, {"error": "method not allowed"}
    parts = [unquote(p) for p in path.strip("/").split("/")]
    match parts:
        case ["cms", "products", sku]:
            n = _n(sku)
            category = _CATEGORIES[n % len(_CATEGORIES)]
            return 200, {
                "sku": sku,
                "title": f"{_BRANDS[n % 4]} {category.title()} Shoe {sku.upper()}",
                "description": f"A {category} shoe with a {('light', 'firm', 'soft')[n % 3]} "
                "sole, made for long days. " * 3,
                "category": category,
                "brand": _BRANDS[n % len(_BRANDS)],
                "images": [f"https://img.example/{sku}/{i}.jpg" for i in range(3)],
            }
        case ["cms", "banners"]:
            segment = query.get("segment", "default")
            return 200, {
                "segment": segment,
                "headline": f"Picked for {segment}",
                "image": f"https://img.example/banners/{segment}.jpg",
                "locale": query.get("locale", "en"),
            }
        case ["commerce", "prices", sku]:
            n = _n(sku)
            amount = 4900 + (n % 100) * 100
            return 200, {
                "sku": sku,
                "currency": query.get("currency", "EUR"),
                "amount": amount,
                "list_amount": amount + (2000 if n % 3 == 0 else 0),
            }
        case ["commerce", "stock", sku]:
            return 200, {"sku": sku, "available": _n(sku + "/stock") % 7, "warehouse": "DE-1"}
        case ["commerce", "promotions"]:
            sku, segment = query.get("sku", ""), query.get("segment", "default")
            return 200, {
                "promotions": [
                    {"id": "free-shipping", "label": "Free shipping", "active": True},
                    {"id": f"{segment}-10", "label": f"10% off for {segment}",
                     "active": segment != "default"},
                    {"id": "bundle", "label": "Buy two, save 15%", "active": _n(sku) % 2 == 0},
                ]
            }  # fmt: skip
        case ["search", "related"]:
            category = query.get("category", "running")
            exclude = query.get("exclude", "")
            limit = int(query.get("limit", "3"))
            hits = [f"{category[:2]}-{i:03d}" for i in range(limit + 1)]
            hits = [h for h in hits if h != exclude][:limit]
            return 200, {
                "total": len(hits),
                "hits": [{"sku": h, "title": f"{category.title()} pick {h}",
                          "score": round(1 - i / 10, 2)} for i, h in enumerate(hits)],
            }  # fmt: skip
        case ["cdp", "profiles", customer]:
            if customer.startswith("anon"):
                return 404, {"error": f"no profile {customer}"}
            n = _n(customer)
            return 200, {
                "id": customer,
                "segments": [_SEGMENTS[n % 3], "default"],
                "tier": ("standard", "gold")[n % 2],
            }
    return 404, {"error": f"no route {path}"}


def encode(status: int, body: Any, *, keep_alive: bool = True) -> bytes:
    """Return the bytes of an HTTP/1.1 JSON response."""
    data = json.dumps(body, separators=(",", ":")).encode()
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Unknown')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + data


class _Protocol(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            try:
                method, target, _ = head[0].split(" ", 2)
                url = urlsplit(target)
                status, body = respond(method, url.path, dict(parse_qsl(url.query)))
            except Exception as exc:
                status, body = 400, {"error": repr(exc)}
            keep = headers.get("connection", "").lower() != "close"
            self._send(encode(status, body, keep_alive=keep), close=not keep)

    def _send(self, data: bytes, *, close: bool) -> None:
        def write() -> None:
            if self.transport is not None:
                self.transport.write(data)
                if close:
                    self.transport.close()

        if self.latency > 0:
            self.loop.call_later(self.latency, write)
        else:
            write()


async def serve(host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> asyncio.Server:
    """Start the fake APIs on ``host:port`` (0: a free port) answering after ``latency`` s."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Protocol(latency), host, port, backlog=1024)


def port_of(server: asyncio.Server) -> int:
    """Return the port a server from :func:`serve` listens on."""
    port: int = server.sockets[0].getsockname()[1]
    return port


def rebase(process: Any, base: str) -> Any:
    """Return ``process`` with its API hosts (:data:`APIS`) pointed at the server at ``base``.

    ``base`` is like ``http://127.0.0.1:8080``. Works on any process whose HTTP calls use
    the example hosts; other URLs are left alone.
    """
    import orchestra as o

    def fix(url: str) -> str:
        for host, prefix in APIS.items():
            if url.startswith(host + "/"):
                return base + prefix + url[len(host) :]
        return url

    steps = []
    for step in process.steps:
        if isinstance(step, o.ProcessStep):
            processors = tuple(
                attrs.evolve(p, call=attrs.evolve(p.call, url=fix(p.call.url)))
                if isinstance(p.call, o.HttpCall)
                else p
                for p in step.processors
            )
            steps.append(attrs.evolve(step, processors=processors))
        else:
            steps.append(step)
    return attrs.evolve(process, steps=tuple(steps))


def main() -> None:
    """Serve the fake APIs until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    async def run() -> None:
        server = await serve(args.host, args.port, latency=args.latency_ms / 1000)
        print(f"listening on {port_of(server)}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
