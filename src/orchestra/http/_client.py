"""The HTTP client the engine makes when the host gives none."""

from __future__ import annotations

import httpx

from orchestra.http._transport import FastTransport, _on_asyncio

__all__ = ["EngineClient", "default_client"]


class EngineClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` on :class:`FastTransport`: the engine's own client.

    It is a full httpx client (actions may use it as one), and HTTP actions take a shorter
    path through it: no httpx request and response objects, no cookie jar (an engine's
    client is shared by every run, so cookies must not carry from one run to the next).
    The short path is taken while the client has no ``auth``, ``params``, ``base_url`` or
    event hooks; set any of them and calls go through httpx as usual.
    """

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 30.0) -> None:
        self.fast_transport = FastTransport(
            max_connections=max_connections, keepalive_expiry=keepalive_expiry
        )
        super().__init__(transport=self.fast_transport, follow_redirects=True)

    def short_path(self) -> FastTransport | None:
        """Return the transport when calls may bypass httpx's client machinery, else ``None``.

        Only on asyncio: the short path runs on asyncio streams, while through httpx the
        transport hands other event loops (trio) to httpx's own transport.
        """
        hooks = self.event_hooks
        if (
            hooks["request"]
            or hooks["response"]
            or self.auth is not None
            or self.params
            or self.base_url.raw_host
            or not _on_asyncio()
        ):
            return None
        return self.fast_transport


def default_client() -> httpx.AsyncClient:
    """Return a new client tuned for many concurrent API calls (:class:`EngineClient`).

    Redirects are followed. Hosts that need proxies, HTTP/2 or another transport pass their
    own ``httpx.AsyncClient`` to the engine instead.
    """
    return EngineClient()
