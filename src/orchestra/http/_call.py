"""Perform one :class:`~orchestra.model.HttpCall`: auth, timeout, retries, size limit."""

from __future__ import annotations

import codecs
import email.utils
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs
import httpx

from orchestra._json import JSON
from orchestra.errors import HttpError, StepTimeoutError
from orchestra.executors import Executor, LocalExecutor
from orchestra.http._auth import TokenCache, auth_headers
from orchestra.http._client import EngineClient
from orchestra.http._fetch import fetch
from orchestra.http._transport import FastTransport
from orchestra.model import HttpCall, OAuth2ClientCredentials
from orchestra.sandbox._base import RawJSON

__all__ = ["HttpResult", "RequestParts", "perform"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
"""Text that percent-encoding leaves as it is (RFC 3986 unreserved characters)."""
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@attrs.frozen
class RequestParts:
    """The parts of a request that fragments computed."""

    path: Mapping[str, JSON] | None = None
    headers: Mapping[str, JSON] | None = None
    query: Mapping[str, JSON] | None = None
    body: JSON = None
    has_body: bool = False
    idempotency_key: str | None = None


@attrs.frozen
class HttpResult:
    """What came back: the decoded body (JSON, or text when not JSON), status and attempts."""

    status: int
    body: JSON
    headers: Mapping[str, str]
    attempts: int
    raw: RawJSON | None = None
    """With ``perform(raw_json=True)``: the JSON body left undecoded (``body`` is then ``None``)."""


def build_url(template: str, params: Mapping[str, JSON] | None) -> str:
    """Fill ``{name}`` placeholders of ``template`` from ``params``, percent-encoded."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if params is None or name not in params or params[name] is None:
            msg = f"path parameter {name!r} has no value"
            raise HttpError(msg, url=template)
        value = params[name]
        text = value if isinstance(value, str) else json.dumps(value)
        return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")

    return _PLACEHOLDER.sub(fill, template)


async def perform(
    call: HttpCall,
    parts: RequestParts,
    *,
    client: httpx.AsyncClient,
    executor: Executor,
    secrets: Mapping[str, str],
    tokens: TokenCache,
    raw_json: bool = False,
) -> HttpResult:
    """Send the request, retrying as ``call.retry`` allows; raise :class:`~orchestra.HttpError`.

    A final status of 400 or more is an error; :class:`~orchestra.StepTimeoutError` when the
    last attempt timed out. With ``raw_json``, a successful UTF-8 JSON body is not decoded:
    it comes as :attr:`HttpResult.raw`, for a sandbox that takes :class:`RawJSON`.
    """
    url = build_url(call.url, parts.path)
    headers = {k: _header(v) for k, v in (parts.headers or {}).items()}
    if call.auth is not None and not isinstance(call.auth, OAuth2ClientCredentials):
        headers.update(auth_headers(call.auth, secrets))
    if call.idempotency_key and parts.idempotency_key:
        headers[call.idempotency_key] = parts.idempotency_key
    query = {k: _query(v) for k, v in (parts.query or {}).items() if v is not None}
    content = None
    if parts.has_body:
        content = json.dumps(parts.body, ensure_ascii=False).encode()
        headers.setdefault("Content-Type", "application/json")
    retryable_method = call.retry.allows(call.method)
    short = client.short_path() if isinstance(client, EngineClient) else None
    # A real-time executor's deadline bounds the whole call, so the transport needs no
    # deadline of its own per read (each costs a timer); a virtual clock's does not.
    read_timeout = None if type(executor) is LocalExecutor else call.timeout
    stale: str | None = None
    refreshed = False
    attempt = 0
    while True:
        attempt += 1
        if isinstance(call.auth, OAuth2ClientCredentials):
            token = await tokens.token(
                call.auth, client=client, secrets=secrets, executor=executor, stale=stale
            )
            headers["Authorization"] = f"Bearer {token}"
        delay: float | None = None
        try:
            async with executor.fail_after(call.timeout):
                if short is not None:
                    status, resp_headers, body = await _send_short(
                        client, short, call, url, query=query, headers=headers,
                        content=content, timeout=read_timeout, raw_json=raw_json,
                    )  # fmt: skip
                else:
                    request = client.build_request(
                        call.method,
                        url,
                        headers=headers,
                        params=query,
                        content=content,
                        timeout=call.timeout,
                    )
                    status, resp_headers, body = await _send(
                        client, request, call.max_response_bytes
                    )
        except (TimeoutError, httpx.TimeoutException) as exc:
            if attempt < call.retry.attempts and retryable_method:
                await executor.sleep(_backoff(call, attempt, executor))
                continue
            msg = f"{call.method} {url} timed out after {call.timeout:g} s (attempt {attempt})"
            raise StepTimeoutError(msg, attempts=attempt) from exc
        except httpx.TransportError as exc:
            if attempt < call.retry.attempts and (
                retryable_method or isinstance(exc, httpx.ConnectError)
            ):
                await executor.sleep(_backoff(call, attempt, executor))
                continue
            msg = f"{call.method} {url} failed: {type(exc).__name__}: {exc}"
            raise HttpError(msg, url=url, retryable=True, attempts=attempt) from exc
        if status == 401 and isinstance(call.auth, OAuth2ClientCredentials) and not refreshed:
            refreshed, stale = True, headers["Authorization"].removeprefix("Bearer ")
            attempt -= 1
            continue
        if status in _RETRY_STATUS and retryable_method and attempt < call.retry.attempts:
            delay = _retry_after(resp_headers.get("retry-after"), executor)
            await executor.sleep(delay if delay is not None else _backoff(call, attempt, executor))
            continue
        if isinstance(body, RawJSON):
            if status < 400:
                return HttpResult(status, None, resp_headers, attempt, body)
            body = body.value
        if status >= 400:
            detail = body if isinstance(body, str) else json.dumps(body)[:200]
            msg = f"{call.method} {url} answered {status}: {detail[:200]}"
            raise HttpError(
                msg, status=status, url=url, retryable=status in _RETRY_STATUS, attempts=attempt
            )
        return HttpResult(status=status, body=body, headers=resp_headers, attempts=attempt)


async def _send_short(
    client: httpx.AsyncClient,
    transport: FastTransport,
    call: HttpCall,
    url: str,
    *,
    query: Mapping[str, Any],
    headers: Mapping[str, str],
    content: bytes | None,
    timeout: float | None,
    raw_json: bool = False,
) -> tuple[int, dict[str, str], JSON | RawJSON]:
    """Send on the engine's own client without httpx request and response objects.

    With ``raw_json``, a UTF-8 JSON body comes back undecoded, as :class:`RawJSON`.
    """
    limit = call.max_response_bytes
    try:
        status, resp_headers, raw = await fetch(
            transport, call.method, url, query=query, headers=headers, body=content,
            timeout=timeout, limit=limit, follow_redirects=client.follow_redirects,
            max_redirects=client.max_redirects,
        )  # fmt: skip
    except ValueError as exc:  # over the size limit
        raise HttpError(str(exc), url=url) from None
    content_type = resp_headers.get("content-type", "")
    if raw_json and raw:
        text = _utf8_json(raw, content_type)
        if text is not None:
            return status, resp_headers, RawJSON(text)
    return status, resp_headers, _decode(raw, content_type)


def _utf8_json(raw: bytes, content_type: str) -> str | None:
    """The text of a body that :func:`_decode` would read as JSON in UTF-8, else ``None``.

    Whether it is JSON is left to whoever reads it (:class:`RawJSON`: else the text).
    """
    if "json" in content_type:
        if ";" in content_type and _charset(content_type).lower().replace("_", "-") not in (
            "utf-8",
            "utf8",
        ):
            return None
    elif content_type or raw[:1] not in (b"{", b"["):
        return None
    try:
        return raw.decode("utf-8")  # strict: what errors="replace" would change is excluded
    except UnicodeDecodeError:
        return None


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, limit: int
) -> tuple[int, dict[str, str], JSON]:
    resp = await client.send(request, stream=True)
    try:
        declared = resp.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            msg = f"response of {declared} bytes is over the limit of {limit}"
            raise HttpError(msg, status=resp.status_code, url=str(request.url))
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                msg = f"response is over the limit of {limit} bytes"
                raise HttpError(msg, status=resp.status_code, url=str(request.url))
            chunks.append(chunk)
    finally:
        await resp.aclose()
    raw = b"".join(chunks)
    return resp.status_code, dict(resp.headers), _decode(raw, resp.headers.get("content-type", ""))


def _decode(raw: bytes, content_type: str) -> JSON:
    if not raw:
        return None
    text = raw.decode(_charset(content_type), errors="replace")
    if "json" in content_type or (not content_type and text[:1] in "{["):
        try:
            value: JSON = json.loads(text)
        except ValueError:
            return text
        return value
    return text


def _charset(content_type: str) -> str:
    """Return the charset named in a Content-Type header, UTF-8 when absent or unknown."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            name = value.strip('"').strip()
            try:
                codecs.lookup(name)
            except LookupError:
                return "utf-8"
            return name
    return "utf-8"


def _header(v: JSON) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _query(v: JSON) -> Any:
    if isinstance(v, list):
        return [_header(x) for x in v]
    if isinstance(v, bool):
        return "true" if v else "false"
    return _header(v)


def _backoff(call: HttpCall, attempt: int, executor: Executor) -> float:
    base = min(call.retry.max_backoff, call.retry.backoff * 2.0 ** (attempt - 1))
    return base * executor.random() if call.retry.jitter else base


def _retry_after(value: str | None, executor: Executor) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - executor.now())
