"""What a processor does: an HTTP call, a registered Python function, or a host action."""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

from orchestra._json import JSON

__all__ = [
    "ActionCall",
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "Call",
    "FunctionCall",
    "HttpCall",
    "OAuth2ClientCredentials",
    "Retry",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
HTTP_METHODS = IDEMPOTENT_METHODS | {"POST", "PATCH"}


@attrs.frozen(kw_only=True)
class BearerAuth:
    """``Authorization: Bearer <token>``; ``token`` names a secret given to the engine."""

    token: str
    type: Literal["bearer"] = "bearer"


@attrs.frozen(kw_only=True)
class BasicAuth:
    """HTTP basic auth; ``password`` names a secret given to the engine."""

    username: str
    password: str
    type: Literal["basic"] = "basic"


@attrs.frozen(kw_only=True)
class ApiKeyAuth:
    """An API key sent in a header; ``key`` names a secret given to the engine."""

    key: str
    header: str = "X-API-Key"
    type: Literal["api_key"] = "api_key"


@attrs.frozen(kw_only=True)
class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant; ``client_secret`` names a secret.

    The token is fetched once per client, cached until it expires and fetched again
    once when the API answers 401.
    """

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"


Auth: TypeAlias = BearerAuth | BasicAuth | ApiKeyAuth | OAuth2ClientCredentials


@attrs.frozen(kw_only=True)
class Retry:
    """When and how often a failed call is tried again.

    Retries happen on connect errors, timeouts, 429 (honouring ``Retry-After``) and 5xx,
    with exponential backoff and full jitter. By default only idempotent methods retry;
    set ``methods`` to change that.
    """

    attempts: int = 3
    """Total attempts, the first included."""
    backoff: float = 0.1
    """First delay in seconds; doubled on every further attempt."""
    max_backoff: float = 10.0
    jitter: bool = True
    methods: tuple[str, ...] | None = None
    """Methods that may be retried; ``None`` means the idempotent ones."""

    def allows(self, method: str) -> bool:
        """Return whether a call with ``method`` may be retried."""
        allowed = IDEMPOTENT_METHODS if self.methods is None else set(self.methods)
        return method.upper() in allowed


@attrs.frozen(kw_only=True)
class HttpCall:
    """One HTTP request, its parts built from the context by JavaScript fragments.

    ``url`` may hold path parameters (``https://api/products/{sku}``) filled from the
    object the ``path`` fragment returns. ``headers``, ``query`` and ``body`` are
    fragments returning an object (a body may return any JSON value).
    """

    url: str
    method: str = "GET"
    path: str | None = None
    headers: str | None = None
    query: str | None = None
    body: str | None = None
    auth: Auth | None = None
    timeout: float = 10.0
    retry: Retry = Retry()
    max_response_bytes: int = 10 * 1024 * 1024
    idempotency_key: str | None = None
    """Header name under which a stable key per run and processor is sent, if set."""
    type: Literal["http"] = "http"


@attrs.frozen(kw_only=True)
class FunctionCall:
    """Call a Python function registered with the engine under ``name``.

    The function receives the processor's input; async functions are awaited, sync
    ones run in a worker thread.
    """

    name: str
    timeout: float | None = None
    type: Literal["function"] = "function"


@attrs.frozen(kw_only=True)
class ActionCall:
    """Run an action of a kind the host registered with the engine (``kind``).

    ``params`` is passed to the action as is.
    """

    kind: str
    params: dict[str, JSON] = attrs.field(factory=dict)
    timeout: float | None = None
    type: Literal["action"] = "action"


Call: TypeAlias = HttpCall | FunctionCall | ActionCall
