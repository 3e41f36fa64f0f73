"""The keep-alive connection pool and :class:`FastTransport`, the engine's HTTP/1.1 transport.

httpx's stock transport (httpcore) scans every pooled connection on every request and does
much work per request besides; with many concurrent API calls it spent most of the CPU.
:class:`FastTransport` keeps httpx's API (it is an ``httpx.AsyncBaseTransport``) and does
only what an API call needs: one idle-connection stack per origin, a plain parser, a read
deadline per read. HTTP/2, proxies and trio are not its business: under an event loop
other than asyncio it hands requests to httpx's stock transport. Its lean interface,
:meth:`FastTransport.request` and :class:`RawResponse`, serves the engine's short path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from orchestra._loops import asyncio_loop

__all__ = ["FastTransport", "RawResponse"]


_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class RawResponse:
    """A response head and a body to read once: the transport's lean interface."""

    __slots__ = ("_conn", "_left", "_mode", "_pool", "_read_timeout", "headers", "keep_alive",
                 "reason", "status")  # fmt: skip

    def __init__(  # noqa: PLR0917 - internal, built in one place
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], conn: _Conn,
        pool: _Pool, mode: int, left: int, keep_alive: bool, read_timeout: float | None,
    ) -> None:  # fmt: skip
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self._conn: _Conn | None = conn
        self._pool = pool
        self._mode = mode  # 0: no body, 1: content-length, 2: chunked, 3: until close
        self._left = left
        self._read_timeout = read_timeout

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole body (at most ``limit`` bytes, else ``ValueError``) and release."""
        conn = self._conn
        if self._mode == 1 and conn is not None and self._left <= _CHUNK:
            if limit is not None and self._left > limit:
                await self.aclose()
                raise ValueError(f"response is over the limit of {limit} bytes")
            try:  # the usual small body with a length: one read, no generator
                data: bytes = await _read(conn.reader.readexactly(self._left), self._read_timeout)
            except BaseException:
                self._close()
                raise
            self._left = 0
            self._release()
            return data
        parts = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                await self.aclose()
                msg = f"response is over the limit of {limit} bytes"
                raise ValueError(msg)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks; the connection returns to the pool after the last one."""
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._mode == 1:
                while self._left > 0:
                    n = min(self._left, _CHUNK)
                    data = await _read(reader.readexactly(n), self._read_timeout)
                    self._left -= n
                    yield data
            elif self._mode == 2:
                while True:
                    line = await _read(reader.readuntil(b"\r\n"), self._read_timeout)
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        # Trailers (ignored) end with an empty line.
                        while await _read(reader.readuntil(b"\r\n"), self._read_timeout) != b"\r\n":
                            pass
                        break
                    data = await _read(reader.readexactly(size + 2), self._read_timeout)
                    yield data[:-2]
            elif self._mode == 3:
                while True:
                    data = await _read(reader.read(_CHUNK), self._read_timeout)
                    if not data:
                        break
                    yield data
        except BaseException:
            self._close()
            raise
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, reuse=self.keep_alive and self._mode != 3)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, reuse=False)

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read, else closed."""
        if self._conn is not None:
            if self._mode == 0:
                self._release()
            else:
                self._close()


class _Conn:
    __slots__ = ("pool", "reader", "used", "writer")

    def __init__(
        self, pool: _Pool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.pool = pool
        self.reader = reader
        self.writer = writer
        self.used = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Pool:
    """Connections to one origin: an idle stack and a bound on how many are open."""

    __slots__ = ("active", "host", "idle", "limit", "port", "server_hostname", "ssl", "waiters")

    def __init__(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None, limit: int) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_ctx
        self.server_hostname = host if ssl_ctx is not None else None
        self.limit = limit
        self.idle: list[_Conn] = []
        self.active = 0  # open connections, idle ones included
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeouts: dict[str, float | None], expiry: float) -> tuple[_Conn, bool]:
        """Return ``(connection, reused)``: an idle live one, or a new one within the limit."""
        while True:
            now = time.monotonic()
            while self.idle:
                conn = self.idle.pop()
                if conn.reader.at_eof() or conn.writer.is_closing() or now - conn.used > expiry:
                    conn.close()
                    self.active -= 1
                    continue
                return conn, True
            if self.active < self.limit:
                break
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await fut
            except TimeoutError:
                raise httpx.PoolTimeout("no connection available in time") from None
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
        self.active += 1
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname,
                    limit=_MAX_HEAD,
                )  # fmt: skip
        except BaseException as exc:
            self.active -= 1
            self._wake()
            where = f"{self.host}:{self.port}"
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"connecting to {where} timed out") from exc
            if isinstance(exc, OSError):  # ssl.SSLError included
                raise httpx.ConnectError(f"cannot connect to {where}: {exc}") from exc
            raise
        return _Conn(self, reader, writer), False

    def release(self, conn: _Conn, *, reuse: bool) -> None:
        if reuse and not conn.writer.is_closing():
            conn.used = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
            self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.active -= len(self.idle)
        self.idle.clear()


async def _read(aw: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await aw
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise httpx.ReadTimeout(f"no data from the server within {timeout:g} s") from None


class _Stream(httpx.AsyncByteStream):
    def __init__(self, raw: RawResponse) -> None:
        self._raw = raw

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._raw.iter_chunks():
            yield chunk

    async def aclose(self) -> None:
        await self._raw.aclose()


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive on asyncio streams: the engine's default transport.

    ``max_connections`` bounds open connections per origin (requests beyond it wait, up
    to the pool timeout); idle connections are dropped after ``keepalive_expiry`` seconds.
    ``verify`` is ``True`` (system and certifi roots), ``False``, or an ``ssl.SSLContext``.
    Errors are httpx's: ``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``,
    ``WriteError``, ``ReadError``, ``RemoteProtocolError``, ``PoolTimeout``.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self._limit = max_connections
        self._expiry = keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._pools: dict[tuple[bytes, bytes, int], _Pool] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self._verify:
                try:
                    import certifi

                    ctx = ssl.create_default_context(cafile=certifi.where())
                except ImportError:  # pragma: no cover - certifi comes with httpx
                    ctx = ssl.create_default_context()
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx
        return self._ssl

    def _pool(self, scheme: bytes, host: bytes, port: int | None) -> _Pool:
        key = (scheme, host, port or 0)
        pool = self._pools.get(key)
        if pool is None:
            if self._closed:
                raise RuntimeError("the transport is closed")
            if scheme == b"https":
                ctx: ssl.SSLContext | None = self._ssl_context()
                default = 443
            elif scheme == b"http":
                ctx, default = None, 80
            else:
                raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme.decode()!r}")
            name = host.decode("ascii").strip("[]")
            pool = self._pools[key] = _Pool(name, port or default, ctx, self._limit)
        return pool

    async def request(
        self,
        method: bytes,
        origin: tuple[bytes, bytes, int | None],
        target: bytes,
        *,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> RawResponse:
        """Send one request and return its head; read the body from the :class:`RawResponse`.

        ``origin`` is ``(scheme, host, port)``, ``target`` the path and query. ``headers``
        must hold ``Host`` and, for a body, ``Content-Length``.
        """
        pool = self._pool(*origin)
        head = b"".join(
            [method, b" ", target, b" HTTP/1.1\r\n"]
            + [b"%s: %s\r\n" % kv for kv in headers]
            + [b"\r\n"]
        )
        data = head + body if len(body) < _CHUNK else None
        while True:
            conn, reused = await pool.acquire(timeouts, self._expiry)
            try:
                return await self._exchange(conn, method, head, body, data, timeouts)
            except _StaleConnection:
                pool.release(conn, reuse=False)
                # A reused connection the server had closed: try once more on a fresh one.
                if not reused or method not in _IDEMPOTENT:
                    msg = "server disconnected without a response"
                    raise httpx.RemoteProtocolError(msg) from None
            except BaseException:
                pool.release(conn, reuse=False)
                raise

    async def _exchange(  # noqa: PLR0917 - internal
        self, conn: _Conn, method: bytes, head: bytes, body: bytes,
        data: bytes | None, timeouts: dict[str, float | None],
    ) -> RawResponse:  # fmt: skip
        writer, reader = conn.writer, conn.reader
        try:
            if data is not None:
                writer.write(data)
            else:
                writer.write(head)
                writer.write(body)
                async with asyncio.timeout(timeouts.get("write")):
                    await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request timed out") from None
        except OSError as exc:
            raise httpx.WriteError(str(exc)) from exc
        read_timeout = timeouts.get("read")
        while True:
            try:
                raw = await _read(reader.readuntil(b"\r\n\r\n"), read_timeout)
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection from None
                raise httpx.RemoteProtocolError("server disconnected mid-response") from None
            except asyncio.LimitOverrunError:
                raise httpx.RemoteProtocolError("response head too large") from None
            except OSError as exc:
                raise _StaleConnection from exc
            lines = raw[:-4].split(b"\r\n")
            try:
                version, status_text, *rest = lines[0].split(b" ", 2)
                status = int(status_text)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}") from None
            if 100 <= status < 200 and status != 101:
                continue  # an interim response (100 Continue): the real one follows
            break
        headers = []
        length = -1
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            low = name.lower()
            if low == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise httpx.RemoteProtocolError("bad Content-Length") from None
            elif low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"connection":
                connection = value.lower()
        keep_alive = (
            b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
        )
        if method == b"HEAD" or status in _NO_BODY_STATUS or status < 200:
            mode, length = 0, 0
        elif chunked:
            mode = 2
        elif length >= 0:
            mode = 1 if length else 0
        else:
            mode = 3
        return RawResponse(status, rest[0] if rest else b"", headers, conn, conn.pool, mode,
                           length, keep_alive, read_timeout)  # fmt: skip

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` (httpx's transport interface)."""
        if not _on_asyncio():
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport(verify=self._verify)
            return await self._fallback.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        headers = request.headers.raw
        if isinstance(request.stream, httpx.ByteStream):
            body = b"".join([c async for c in request.stream])
        else:
            body = await _encode_stream(request)
            if request.headers.get("transfer-encoding", "").lower() == "chunked":
                headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
                headers.append((b"Content-Length", str(len(body)).encode()))
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        raw = await self.request(request.method.encode("ascii"), origin, url.raw_path,
                                 headers=headers, body=body, timeouts=timeouts)  # fmt: skip
        return httpx.Response(
            raw.status, headers=raw.headers, stream=_Stream(raw),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": raw.reason},
        )  # fmt: skip

    async def aclose(self) -> None:
        """Close every pooled connection; connections in use close when released."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


class _StaleConnection(Exception):
    pass


async def _encode_stream(request: httpx.Request) -> bytes:
    stream = request.stream
    if isinstance(stream, httpx.AsyncByteStream):
        return b"".join([c async for c in stream])
    return b"".join(list(stream))


def _on_asyncio() -> bool:
    return asyncio_loop() is not None  # trio, say: httpx's own transport serves it
