"""Authentication of HTTP calls: static credentials and cached OAuth2 tokens."""

from __future__ import annotations

import base64
from collections.abc import Mapping

import anyio
import httpx

from orchestra.errors import HttpError
from orchestra.executors import Executor
from orchestra.model import ApiKeyAuth, Auth, BasicAuth, BearerAuth, OAuth2ClientCredentials

__all__ = ["TokenCache", "auth_headers", "secret"]


def secret(secrets: Mapping[str, str], name: str) -> str:
    """Return the secret called ``name``; raise :class:`~orchestra.HttpError` if absent."""
    try:
        return secrets[name]
    except KeyError:
        msg = f"secret {name!r} was not given to the engine (Engine(secrets=...))"
        raise HttpError(msg) from None


class TokenCache:
    """OAuth2 client-credentials tokens, fetched once per client and kept until they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str | None], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str, str | None], anyio.Lock] = {}

    def access_tokens(self) -> list[str]:
        """The access tokens held now (for scrubbing them from whatever gets written)."""
        return [token for token, _ in self._tokens.values()]

    async def token(
        self,
        auth: OAuth2ClientCredentials,
        *,
        client: httpx.AsyncClient,
        secrets: Mapping[str, str],
        executor: Executor,
        stale: str | None = None,
    ) -> str:
        """Return a valid token; ``stale`` is a token the API just refused (fetch a new one)."""
        key = (auth.token_url, auth.client_id, auth.scope)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached and cached[0] != stale and cached[1] > executor.now():
                return cached[0]
            token, expires_in = await _fetch(auth, client=client, secrets=secrets)
            # Refresh a little early so a token never expires in flight.
            self._tokens[key] = (token, executor.now() + max(expires_in - 30.0, expires_in / 2))
            return token


async def _fetch(
    auth: OAuth2ClientCredentials, *, client: httpx.AsyncClient, secrets: Mapping[str, str]
) -> tuple[str, float]:
    form = {"grant_type": "client_credentials"}
    if auth.scope:
        form["scope"] = auth.scope
    basic = base64.b64encode(
        f"{auth.client_id}:{secret(secrets, auth.client_secret)}".encode()
    ).decode()
    try:
        resp = await client.post(
            auth.token_url, data=form, headers={"Authorization": f"Basic {basic}"}
        )
    except httpx.HTTPError as exc:
        msg = f"OAuth2 token request to {auth.token_url} failed: {exc!r}"
        raise HttpError(msg, url=auth.token_url, retryable=True) from exc
    if resp.status_code != 200:
        msg = f"OAuth2 token request to {auth.token_url} answered {resp.status_code}"
        raise HttpError(msg, status=resp.status_code, url=auth.token_url)
    try:
        body = resp.json()
        token = str(body["access_token"])
        expires_in = float(body.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        msg = f"OAuth2 token response from {auth.token_url} has no access_token"
        raise HttpError(msg, status=resp.status_code, url=auth.token_url) from None
    return token, expires_in


def auth_headers(auth: Auth, secrets: Mapping[str, str]) -> dict[str, str]:
    """Return the headers for a static credential (not OAuth2)."""
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {secret(secrets, auth.token)}"}
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{secret(secrets, auth.password)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if isinstance(auth, ApiKeyAuth):
        return {auth.header: secret(secrets, auth.key)}
    return {}
