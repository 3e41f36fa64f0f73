"""An ASGI application serving payload processes by method and path template.

Mount it in any ASGI server or framework::

    app = orchestra.asgi.App(engine, [process])

Webhook endpoints publish events (``webhooks={"/hooks/po": WebhookEndpoint(event=...)}``):
``POST`` only; 202 with the started and resumed run ids, 400 for a payload that does not
match the event's schema (naming the JSON path), 401 for a bad or stale signature.

Payload routes answer: 200 with the payload; 400 when the request body is not JSON; 404 when no
route matches; 405 when the path matches under another method; 413 over the body
limit; 502 when an upstream API failed; 504 when one timed out; 500 for other run
failures. Error bodies are ``{"error": {"type": ..., "message": ..., ...}}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from orchestra._json import JSON
from orchestra.engine import Engine, Request
from orchestra.engine._webhooks import WebhookEndpoint, handle_webhook, sign_webhook
from orchestra.errors import HttpError, OrchestraError, StepError, StepTimeoutError
from orchestra.model import Process, RequestTrigger

__all__ = ["App", "WebhookEndpoint", "sign_webhook"]

log = logging.getLogger("orchestra.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLargeError(Exception):
    pass


def _compile(template: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", template):
        out += f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
    return re.compile(out + "/?$")


class App:
    """Serves every process whose trigger is a :class:`~orchestra.RequestTrigger`.

    ``webhooks`` maps paths to the :class:`WebhookEndpoint` publishing each event.
    ``max_body`` bounds the request body in bytes. ``include_trace`` adds a
    ``Server-Timing`` header with each processor's duration.
    """

    def __init__(
        self,
        engine: Engine,
        processes: Iterable[Process] = (),
        *,
        webhooks: Mapping[str, WebhookEndpoint] | None = None,
        max_body: int = 1024 * 1024,
        include_trace: bool = False,
    ) -> None:
        self.engine = engine
        self.max_body = max_body
        self.include_trace = include_trace
        self.webhooks = dict(webhooks or {})
        self._routes: list[tuple[str, re.Pattern[str], Process]] = []
        for p in processes:
            if isinstance(p.trigger, RequestTrigger):
                self._routes.append((p.trigger.method.upper(), _compile(p.trigger.path), p))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # pragma: no cover - websockets are not served
            return
        path = scope["path"]
        method = scope["method"]
        if path in self.webhooks:
            await self._webhook(scope, receive, send, self.webhooks[path])
            return
        found = None
        allowed = []
        for m, pattern, process in self._routes:
            match = pattern.match(path)
            if match:
                allowed.append(m)
                if m == method or (method == "HEAD" and m == "GET"):
                    found = (process, {k: unquote(v) for k, v in match.groupdict().items()})
                    break
        if found is None:
            if allowed:
                await _reply(
                    send,
                    405,
                    _error("MethodNotAllowed", f"use {', '.join(allowed)}"),
                    [(b"allow", ", ".join(allowed).encode())],
                )
            else:
                await _reply(send, 404, _error("NotFound", f"no process serves {method} {path}"))
            return
        process, params = found
        try:
            raw = await _read_body(receive, self.max_body)
        except _BodyTooLargeError:
            await _reply(
                send, 413, _error("PayloadTooLarge", f"the body is over {self.max_body} bytes")
            )
            return
        body: JSON = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                await _reply(send, 400, _error("BadRequest", f"the body is not JSON: {exc}"))
                return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        request = Request(
            method=method, path=path, params=params, query=query, headers=headers, body=body
        )
        try:
            result = await self.engine.invoke(process, request)
        except OrchestraError as exc:
            status = _status(exc)
            log.warning("process %s failed with %s: %s", process.name, status, exc)
            await _reply(send, status, _error(type(exc).__name__, str(exc), exc))
            return
        extra = []
        if self.include_trace:
            timing = ", ".join(f"{t.processor};dur={t.duration * 1000:.1f}" for t in result.trace)
            extra.append((b"server-timing", timing.encode()))
        await _reply(send, 200, result.payload, extra)

    async def _webhook(
        self, scope: Scope, receive: Receive, send: Send, endpoint: WebhookEndpoint
    ) -> None:
        if scope["method"] != "POST":
            await _reply(send, 405, _error("MethodNotAllowed", "use POST"), [(b"allow", b"POST")])
            return
        try:
            raw = await _read_body(receive, self.max_body)
        except _BodyTooLargeError:
            await _reply(
                send, 413, _error("PayloadTooLarge", f"the body is over {self.max_body} bytes")
            )
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status, body = await handle_webhook(self.engine, endpoint, headers, raw)
        await _reply(send, status, body)


def _status(exc: OrchestraError) -> int:
    if isinstance(exc, StepTimeoutError):
        return 504
    if isinstance(exc, HttpError):
        return 502
    if isinstance(exc, StepError):
        return 500
    return 500


def _error(kind: str, message: str, exc: OrchestraError | None = None) -> JSON:
    err: dict[str, JSON] = {"type": kind, "message": message}
    if isinstance(exc, StepError):
        err.update(process=exc.process, step=exc.step, processor=exc.processor)
    if isinstance(exc, HttpError):
        err["upstream_status"] = exc.status
    return {"error": err}


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _reply(
    send: Send, status: int, payload: JSON, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
