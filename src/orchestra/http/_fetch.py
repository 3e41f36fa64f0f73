"""The engine's short path for an API call: :func:`fetch` on a :class:`FastTransport`.

It builds the request line and headers itself (URL parts remembered per URL, the query
string encoded cheaply when it is plain), follows redirects, reads the body whole and
decodes gzip and deflate, with no httpx request or response objects on the way.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpx

from orchestra.http._transport import FastTransport

__all__ = ["fetch"]


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = b"orchestra"


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")
"""Text ``urlencode`` leaves as it is."""


def _query_string(query: Mapping[str, Any]) -> str:
    """``urlencode(query, doseq=True)``, without its cost for plain names and values."""
    pairs: list[str] = []
    for key, value in query.items():
        values = value if isinstance(value, list | tuple) else (value,)
        for v in values:
            if not (isinstance(key, str) and isinstance(v, str)):
                return urlencode(query, doseq=True)
            if not (_PLAIN.fullmatch(key) and _PLAIN.fullmatch(v)):
                return urlencode(query, doseq=True)
            pairs.append(f"{key}={v}")
    return "&".join(pairs)


@functools.lru_cache(maxsize=256)
def _host_bytes(hostname: str) -> bytes:
    """The host name as the request line wants it (IDNA), remembered per name."""
    return hostname.encode("idna")


_TargetParts = tuple[bytes, bytes, int | None, bytes, bytes]
_TARGETS: dict[str, _TargetParts] = {}
_TARGETS_CACHE = 1024


def _target(url: str) -> _TargetParts:
    """``(scheme, host, port, netloc, target)`` of ``url``, remembered per URL.

    Parsing a URL costs more than the rest of building a request; an API call's URL
    (before its query string is added) repeats from run to run.
    """
    found = _TARGETS.get(url)
    if found is not None:
        return found
    parts = urlsplit(url)
    scheme, host = parts.scheme.encode("ascii"), _host_bytes(parts.hostname or "")
    if not host:
        raise httpx.UnsupportedProtocol(f"no host in URL {url!r}")
    port = parts.port
    netloc = host if port is None else b"%s:%d" % (host, port)
    target = (parts.path or "/").encode("ascii", "strict") if parts.path.isascii() else \
        quote(parts.path or "/", safe="/%:@!$&'()*+,;=~").encode("ascii")  # fmt: skip
    if parts.query:
        target += b"?" + parts.query.encode("ascii", "ignore")
    found = (scheme, host, port, netloc, target)
    if len(_TARGETS) >= _TARGETS_CACHE:
        _TARGETS.clear()
    _TARGETS[url] = found
    return found


def _with_query(url: str, qs: str) -> tuple[str, _TargetParts]:
    """``url`` with the query string ``qs`` added, and its parts (``url``'s own remembered)."""
    if "?" in url or "#" in url or not qs:  # rare: parse it whole, as sent
        full = f"{url}{'&' if '?' in url else '?'}{qs}"
        return full, _target(full)
    scheme, host, port, netloc, target = _target(url)
    return f"{url}?{qs}", (scheme, host, port, netloc, target + b"?" + qs.encode("ascii", "ignore"))


async def fetch(
    transport: FastTransport,
    method: str,
    url: str,
    *,
    query: Mapping[str, Any],
    headers: Mapping[str, str],
    body: bytes | None,
    timeout: float | None,
    limit: int,
    follow_redirects: bool = True,
    max_redirects: int = 20,
) -> tuple[int, dict[str, str], bytes]:
    """Perform one API call on ``transport`` without building httpx requests and responses.

    The engine's hot path for its own default client: ``query`` values are strings or
    lists of strings; the body is read whole, at most ``limit`` bytes (``ValueError``
    beyond it); gzip and deflate bodies are decoded. Returns status, headers (lower-case
    names, repeated ones joined by ``", "``) and the body.
    """
    parts = _with_query(url, _query_string(query)) if query else None
    timeouts: dict[str, float | None] = {
        "connect": timeout, "read": timeout, "write": timeout, "pool": timeout,
    }  # fmt: skip
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if body is not None:
        extra.append((b"Content-Length", b"%d" % len(body)))
    redirects = 0
    while True:
        if parts is not None:
            url, (scheme, host, port, netloc, target) = parts
            parts = None
        else:
            scheme, host, port, netloc, target = _target(url)
        head = [(b"Host", netloc), (b"User-Agent", _USER_AGENT), (b"Accept", b"*/*"), *extra]
        raw = await transport.request(
            method.encode("ascii"), (scheme, host, port), target,
            headers=head, body=body or b"", timeouts=timeouts,
        )  # fmt: skip
        location = _header(raw.headers, b"location")
        if follow_redirects and raw.status in _REDIRECTS and location is not None:
            await raw.read(limit)
            redirects += 1
            if redirects > max_redirects:
                raise httpx.TooManyRedirects(f"more than {max_redirects} redirects")
            new = urljoin(url, location.decode("latin-1"))
            if urlsplit(new)[:2] != urlsplit(url)[:2]:
                extra = [kv for kv in extra if kv[0].lower() != b"authorization"]
            if raw.status == 303 or (raw.status in (301, 302) and method == "POST"):
                method, body = ("GET" if method != "HEAD" else "HEAD"), None
                extra = [kv for kv in extra if kv[0].lower() not in _BODY_HEADERS]
            url = new
            continue
        for_length = _header(raw.headers, b"content-length")
        if for_length is not None and for_length.isdigit() and int(for_length) > limit:
            await raw.aclose()
            msg = f"response of {for_length.decode()} bytes is over the limit of {limit}"
            raise ValueError(msg)
        data = await raw.read(limit)
        out: dict[str, str] = {}
        for k, v in raw.headers:
            name, value = k.decode("latin-1").lower(), v.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        encoding = out.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        return raw.status, out, data


_BODY_HEADERS = frozenset({b"content-length", b"content-type", b"transfer-encoding"})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None
