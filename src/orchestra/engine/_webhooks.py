"""Webhooks: an HTTP request that publishes an event, optionally signed with HMAC-SHA256.

The ASGI application mounts :func:`handle_webhook` per :class:`WebhookEndpoint`. A signed
endpoint expects two headers: ``X-Orchestra-Timestamp`` (seconds since the epoch) and
``X-Orchestra-Signature: sha256=<hex>``, the HMAC-SHA256 with the endpoint's secret of
``<timestamp>.<body>``. A request whose timestamp is further than ``tolerance`` seconds
from the engine's clock is refused, so a captured request cannot be replayed later; the
``X-Orchestra-Event-Id`` header (or the ``id_header`` chosen) deduplicates deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

import attrs

from orchestra._json import JSON
from orchestra.engine._engine import Engine
from orchestra.engine._versions import NotDeployedError
from orchestra.errors import EventError

__all__ = ["WebhookEndpoint", "handle_webhook", "sign_webhook"]

TIMESTAMP_HEADER = "x-orchestra-timestamp"
SIGNATURE_HEADER = "x-orchestra-signature"


@attrs.frozen(kw_only=True)
class WebhookEndpoint:
    """One webhook: the event it publishes and how requests are authenticated.

    ``secret`` (the key itself, not a secret name) turns on signature checks;
    ``tolerance`` is the accepted clock skew in seconds. With ``wait=False`` the 202
    answers as soon as the event and the runs it starts are stored, and the runs go on in
    the engine's background tasks (the engine must be open); by default it answers once
    they went as far as they can.
    """

    event: str
    secret: str | None = None
    tolerance: float = 300.0
    id_header: str = "x-orchestra-event-id"
    wait: bool = True


def sign_webhook(secret: str, body: bytes, timestamp: float) -> dict[str, str]:
    """Return the headers that sign ``body`` at ``timestamp`` (for senders and tests)."""
    ts = str(int(timestamp))
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"sha256={mac}"}


def _refusal(
    endpoint: WebhookEndpoint, headers: Mapping[str, str], body: bytes, now: float
) -> str | None:
    if endpoint.secret is None:
        return None
    ts, sig = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if ts is None or sig is None:
        return "missing signature headers"
    try:
        stamp = float(ts)
    except ValueError:
        return "malformed timestamp"
    if abs(now - stamp) > endpoint.tolerance:
        return "timestamp outside the accepted window"
    expected = sign_webhook(endpoint.secret, body, stamp)[SIGNATURE_HEADER]
    if ts != str(int(stamp)) or not hmac.compare_digest(expected.encode(), sig.encode()):
        return "signature mismatch"
    return None


async def handle_webhook(
    engine: Engine, endpoint: WebhookEndpoint, headers: Mapping[str, str], body: bytes
) -> tuple[int, JSON]:
    """Check, parse and publish one webhook request; return ``(status, JSON body)``.

    401 for a bad or stale signature, 400 for a body that is not JSON or does not match
    the event's schema (naming the JSON path), 404 when no deployed process uses the
    event, 202 with the started and resumed run ids otherwise (``duplicate`` true for a
    delivery already seen).
    """
    headers = {k.lower(): v for k, v in headers.items()}
    refusal = _refusal(endpoint, headers, body, engine.executor.now())
    if refusal is not None:
        return 401, {"error": refusal}
    try:
        payload: JSON = json.loads(body) if body else None
    except ValueError as exc:
        return 400, {"error": f"the body is not JSON: {exc}", "path": "$"}
    try:
        result = await engine.publish(
            endpoint.event,
            payload,
            id=headers.get(endpoint.id_header.lower()),
            wait=endpoint.wait,
        )
    except EventError as exc:
        return 400, {"error": str(exc), "path": exc.path}
    except NotDeployedError as exc:
        return 404, {"error": str(exc)}
    return 202, {
        "event_id": result.event_id,
        "started": list(result.started),
        "resumed": list(result.resumed),
        "duplicate": result.duplicate,
        "background": result.background,
    }
