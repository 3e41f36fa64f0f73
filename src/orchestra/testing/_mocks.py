"""HTTP mocks on ``httpx.MockTransport``: routes in Python or in a JSON file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import httpx

from orchestra._json import JSON
from orchestra.errors import DefinitionError, Problem
from orchestra.executors import Executor

__all__ = ["MockHTTP", "MockRoute"]

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


@attrs.frozen(kw_only=True)
class MockRoute:
    """One mocked endpoint.

    ``url`` matches the request URL without its query: ``{name}`` matches one path
    segment, a trailing ``*`` matches any rest. ``method`` ``"*"`` matches any method.
    The answer is ``json`` (or ``text``) with ``status`` and ``headers``, after ``delay``
    seconds on the executor's clock; or whatever ``handler`` returns.
    """

    url: str
    method: str = "*"
    status: int = 200
    json: JSON = None
    text: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    delay: float = 0.0
    handler: Handler | None = attrs.field(default=None, eq=False)

    def pattern(self) -> re.Pattern[str]:
        """Return the compiled regular expression of :attr:`url`."""
        out, rest = "", self.url
        star = rest.endswith("*")
        rest = rest.removesuffix("*")
        for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", rest):
            out += "[^/?#]+" if part.startswith("{") and part.endswith("}") else re.escape(part)
        return re.compile(out + (".*" if star else "") + "$")


class MockHTTP:
    """A set of mocked endpoints serving an ``httpx.AsyncClient`` through ``MockTransport``.

    Every request is recorded in :attr:`requests`; one that matches no route is answered
    with 404 and recorded in :attr:`unmatched` too. Later routes win over earlier ones, so
    a test can override a route loaded from a file.
    """

    def __init__(
        self, routes: Iterable[MockRoute] = (), *, executor: Executor | None = None
    ) -> None:
        self._routes: list[tuple[MockRoute, re.Pattern[str]]] = []
        self.executor = executor
        self.requests: list[httpx.Request] = []
        self.unmatched: list[httpx.Request] = []
        for r in routes:
            self._routes.append((r, r.pattern()))

    def add(self, method: str, url: str, **kw: Any) -> MockRoute:
        """Add a route (see :class:`MockRoute` for the keywords) and return it."""
        route = MockRoute(method=method.upper(), url=url, **kw)
        self._routes.append((route, route.pattern()))
        return route

    @classmethod
    def from_data(cls, data: object, *, source: str = "mocks") -> MockHTTP:
        """Build mocks from parsed JSON: a list of route objects (``url``, ``method``, ...)."""
        if not isinstance(data, list):
            raise DefinitionError(
                [Problem("$", "mocks must be a JSON array of routes")], source=source
            )
        problems, routes = [], []
        allowed = {"url", "method", "status", "json", "text", "headers", "delay"}
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                problems.append(Problem(f"$[{i}]", "a route is an object with a string 'url'"))
                continue
            problems += [Problem(f"$[{i}].{k}", "unknown key") for k in item if k not in allowed]
            try:
                routes.append(MockRoute(**{k: v for k, v in item.items() if k in allowed}))
            except TypeError as exc:
                problems.append(Problem(f"$[{i}]", str(exc)))
        if problems:
            raise DefinitionError(problems, source=source)
        return cls(routes)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MockHTTP:
        """Load mocks from a JSON file; see :meth:`from_data`."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise DefinitionError(
                [Problem("$", f"cannot read mocks: {exc}")], source=name
            ) from None
        return cls.from_data(data, source=name)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the routes (the ``MockTransport`` handler)."""
        self.requests.append(request)
        url = str(request.url.copy_with(query=None, fragment=None))
        for route, pattern in reversed(self._routes):
            if route.method not in ("*", request.method) or not pattern.match(url):
                continue
            if route.delay and self.executor is not None:
                await self.executor.sleep(route.delay)
            if route.handler is not None:
                result = route.handler(request)
                return result if isinstance(result, httpx.Response) else await result
            if route.text is not None:
                return httpx.Response(route.status, text=route.text, headers=route.headers)
            return httpx.Response(route.status, json=route.json, headers=route.headers)
        self.unmatched.append(request)
        return httpx.Response(404, json={"error": f"no mock for {request.method} {url}"})

    def transport(self) -> httpx.MockTransport:
        """Return an ``httpx.MockTransport`` serving these routes."""
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        """Return an ``httpx.AsyncClient`` on :meth:`transport`."""
        return httpx.AsyncClient(transport=self.transport())

    def calls(self, method: str | None = None, url_prefix: str = "") -> list[httpx.Request]:
        """Return the recorded requests with ``method`` whose URL starts with ``url_prefix``."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and str(r.url).startswith(url_prefix)
        ]
