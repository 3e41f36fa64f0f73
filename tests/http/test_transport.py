"""FastTransport against a real HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.executors import LocalExecutor
from orchestra.http import RequestParts, TokenCache, default_client, perform
from orchestra.http._client import EngineClient
from orchestra.http._transport import FastTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[str, str, dict[str, str], bytes], bytes | None]


class Server:
    """A tiny HTTP/1.1 server: ``handler(method, target, headers, body)`` returns raw bytes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.close_after_reply = False

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, ssl=ssl_ctx)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in lines[1:] if line)}  # fmt: skip
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, target, headers, body))
                out = self.handler(method, target, headers, body)
                if out is None:  # hang up without answering
                    return
                if out == b"SLOW":
                    await asyncio.sleep(5)
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after_reply or b"Connection: close" in out.split(b"\r\n\r\n")[0]:
                    return
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def reply(status: int = 200, body: bytes = b'{"ok": true}', headers: str = "",
          ctype: str = "application/json") -> bytes:  # fmt: skip
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body  # fmt: skip


def chunked(body: bytes, size: int = 3) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    return head + b"\r\n" + b"".join(parts) + b"0\r\n\r\n"


def routes(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes | None:
    path = target.split("?", maxsplit=1)[0]
    if path == "/json":
        return reply(body=json.dumps({"target": target, "body": body.decode()}).encode())
    if path == "/chunked":
        return chunked(b'{"items": [1, 2, 3], "name": "chunked"}')
    if path == "/close":
        head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
        return head + b'\r\n{"until": "close"}'
    if path == "/empty":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    if path == "/gzip":
        data = gzip.compress(b'{"zipped": true}')
        return reply(body=data, headers="Content-Encoding: gzip\r\n")
    if path == "/redirect":
        return reply(302, b"", headers="Location: /json?from=redirect\r\n")
    if path == "/slow":
        return b"SLOW"
    if path == "/hangup":
        return None
    if path == "/big":
        return reply(body=b'"' + b"x" * 5000 + b'"')
    return reply(404, b'{"error": "nope"}')


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    s = Server(routes)
    base = await s.start()
    yield s, base
    await s.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = default_client()
    async with c:
        yield c


async def test_default_client_uses_fast_transport(client: httpx.AsyncClient) -> None:
    assert isinstance(client, EngineClient)
    assert isinstance(client.fast_transport, FastTransport)


async def test_content_length_and_keep_alive(
    server: tuple[Server, str], client: httpx.AsyncClient
) -> None:
    s, base = server
    for i in range(5):
        r = await client.post(f"{base}/json", params={"i": i}, content=b"hello")
        assert r.status_code == 200
        assert r.json() == {"target": f"/json?i={i}", "body": "hello"}
    assert s.connections == 1


async def test_chunked(server: tuple[Server, str], client: httpx.AsyncClient) -> None:
    s, base = server
    r = await client.get(f"{base}/chunked")
    assert r.json() == {"items": [1, 2, 3], "name": "chunked"}
    r = await client.get(f"{base}/chunked")  # the connection is reused after a chunked body
    assert s.connections == 1


async def test_body_until_close_and_no_body(
    server: tuple[Server, str], client: httpx.AsyncClient
) -> None:
    s, base = server
    assert (await client.get(f"{base}/close")).json() == {"until": "close"}
    r = await client.get(f"{base}/empty")
    assert (r.status_code, r.content) == (204, b"")
    assert s.connections == 2  # the first closed after its body


async def test_gzip_and_redirect_through_httpx(
    server: tuple[Server, str], client: httpx.AsyncClient
) -> None:
    _, base = server
    assert (await client.get(f"{base}/gzip")).json() == {"zipped": True}
    r = await client.get(f"{base}/redirect")
    assert r.json()["target"] == "/json?from=redirect"


async def test_concurrent_requests_bounded_pool(server: tuple[Server, str]) -> None:
    s, base = server
    async with httpx.AsyncClient(transport=FastTransport(max_connections=4)) as c:
        results = await asyncio.gather(*(c.get(f"{base}/json", params={"n": i}) for i in range(40)))
    assert [r.json()["target"] for r in results] == [f"/json?n={i}" for i in range(40)]
    assert s.connections <= 4


async def test_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with httpx.AsyncClient(transport=FastTransport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_read_timeout(server: tuple[Server, str]) -> None:
    _, base = server
    async with httpx.AsyncClient(transport=FastTransport(), timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(f"{base}/slow")


async def test_hang_up_is_a_protocol_error(
    server: tuple[Server, str], client: httpx.AsyncClient
) -> None:
    _, base = server
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"{base}/hangup")


async def test_stale_keep_alive_connection_is_replaced(client: httpx.AsyncClient) -> None:
    s = Server(routes)
    s.close_after_reply = True  # closes every connection without saying so
    base = await s.start()
    for _ in range(3):
        assert (await client.get(f"{base}/json")).status_code == 200
        await asyncio.sleep(0.01)
    assert s.connections == 3
    await s.close()


async def test_aclose_closes_idle_connections(server: tuple[Server, str]) -> None:
    _, base = server
    t = FastTransport()
    c = httpx.AsyncClient(transport=t)
    await c.get(f"{base}/json")
    pool = next(iter(t._pools.values()))
    conn = pool.idle[0]
    await c.aclose()
    assert conn.writer.is_closing()
    with pytest.raises(RuntimeError):
        await c.get(f"{base}/json")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(  # noqa: ASYNC221 - a one-off certificate, before the loop matters
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    s = Server(routes)
    base = await s.start(server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(transport=FastTransport(verify=client_ctx)) as c:
        assert (await c.get(f"{base}/json")).json()["target"] == "/json"
        assert (await c.get(f"{base}/chunked")).json()["name"] == "chunked"
    async with httpx.AsyncClient(transport=FastTransport()) as c:  # untrusted certificate
        with pytest.raises(httpx.ConnectError):
            await c.get(f"{base}/json")
    await s.close()


# perform() on the engine's client takes the short path: same behaviour as through httpx.


async def _perform(
    client: httpx.AsyncClient, call: o.HttpCall, parts: RequestParts | None = None
) -> Any:
    return await perform(call, parts or RequestParts(), client=client, executor=LocalExecutor(),
                         secrets={"tok": "s3cret"}, tokens=TokenCache())  # fmt: skip


@pytest.mark.parametrize("engine_client", [True, False])
async def test_perform_short_path_matches_httpx(
    server: tuple[Server, str], engine_client: bool
) -> None:
    s, base = server
    c = default_client() if engine_client else httpx.AsyncClient(follow_redirects=True)
    async with c:
        call = o.HttpCall(url=f"{base}/json", method="POST", auth=o.BearerAuth(token="tok"))
        parts = RequestParts(query={"q": "a b", "n": 3, "flag": True, "xs": ["1", "2"]},
                             headers={"X-Trace": "t1"}, body={"k": "ü"}, has_body=True)  # fmt: skip
        result = await _perform(c, call, parts)
        assert result.status == 200
        assert result.body["target"] == "/json?q=a+b&n=3&flag=true&xs=1&xs=2"
        assert json.loads(result.body["body"]) == {"k": "ü"}
        _, _, headers, _ = s.requests[-1]
        assert headers["authorization"] == "Bearer s3cret"
        assert headers["x-trace"] == "t1"
        assert headers["content-type"] == "application/json"
        assert result.headers["content-type"] == "application/json"
        redirected = await _perform(c, o.HttpCall(url=f"{base}/redirect"))
        assert redirected.body["target"] == "/json?from=redirect"
        assert (await _perform(c, o.HttpCall(url=f"{base}/chunked"))).body["name"] == "chunked"
        assert (await _perform(c, o.HttpCall(url=f"{base}/gzip"))).body == {"zipped": True}
        with pytest.raises(o.HttpError, match="answered 404"):
            await _perform(c, o.HttpCall(url=f"{base}/missing"))
        with pytest.raises(o.HttpError, match="over the limit"):
            await _perform(c, o.HttpCall(url=f"{base}/big", max_response_bytes=1000))
        with pytest.raises(o.StepTimeoutError):
            await _perform(
                c, o.HttpCall(url=f"{base}/slow", timeout=0.2, retry=o.Retry(attempts=1))
            )


def bodies(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes | None:
    path, _, query = target.partition("?")
    ctype = query.replace("%2F", "/").replace("%3B", ";").replace("%3D", "=").replace("+", " ")
    text = {"/ok": b'{"a": [1, "\xc3\xa9"]}', "/bad": b"{nope", "/latin": b'{"a": "\xe9"}',
            "/text": b"[1]", "/err": b'{"error": "gone"}'}[path]  # fmt: skip
    return reply(410 if path == "/err" else 200, text, ctype=ctype.removeprefix("t="))


async def test_perform_raw_json_leaves_json_bodies_undecoded() -> None:
    s = Server(bodies)
    base = await s.start()
    try:
        async with default_client() as c:

            async def get(path: str, ctype: str) -> Any:
                call = o.HttpCall(url=f"{base}{path}")
                parts = RequestParts(query={"t": ctype})
                return await perform(call, parts, client=c, executor=LocalExecutor(), secrets={},
                                     tokens=TokenCache(), raw_json=True)  # fmt: skip

            ok = await get("/ok", "application/json")
            assert ok.body is None and ok.raw is not None
            assert ok.raw.text == '{"a": [1, "é"]}' and ok.raw.value == {"a": [1, "é"]}
            utf8 = await get("/ok", "application/json; charset=UTF-8")
            assert utf8.raw is not None and utf8.raw.value == {"a": [1, "é"]}
            bad = await get("/bad", "application/json")  # not JSON: the reader gets the text
            assert bad.raw is not None and bad.raw.value == "{nope"
            latin = await get("/latin", "application/json; charset=latin-1")  # decoded as before
            assert latin.raw is None and latin.body == {"a": "é"}
            invalid = await get("/latin", "application/json")  # not UTF-8: decoded as before
            assert invalid.raw is None and invalid.body == {"a": "\ufffd"}
            text = await get("/text", "text/plain")
            assert text.raw is None and text.body == "[1]"
            with pytest.raises(o.HttpError, match='answered 410: {"error": "gone"}'):
                await get("/err", "application/json")
    finally:
        await s.close()


async def test_fetch_query_on_remembered_urls(server: tuple[Server, str]) -> None:
    s, base = server
    async with default_client() as c:
        cases: list[tuple[str, dict[str, Any], str]] = [
            (f"{base}/json", {"a": "1"}, "/json?a=1"),
            (f"{base}/json", {"a": "2"}, "/json?a=2"),
            (f"{base}/json?x=1", {"a": "3"}, "/json?x=1&a=3"),
            (f"{base}/json", {"a": []}, "/json"),
            (f"{base}/json", {}, "/json"),
        ]
        for url, query, target in cases:
            call = o.HttpCall(url=url)
            result = await _perform(c, call, RequestParts(query=query))
            assert result.body["target"] == target
        assert [r[1] for r in s.requests][-1] == "/json"
