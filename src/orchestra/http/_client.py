"""The HTTP client the engine makes when the host gives none."""

from __future__ import annotations

import httpx

__all__ = ["default_client"]


def default_client() -> httpx.AsyncClient:
    """Return a new ``httpx.AsyncClient`` tuned for many concurrent API calls."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=30)
    return httpx.AsyncClient(limits=limits, follow_redirects=True)
