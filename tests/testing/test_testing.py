"""orchestra.testing: mocks, the test engine and the pytest plugin."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

import orchestra as o
from orchestra.testing import MockHTTP, make_test_engine

pytest_plugins = ["orchestra.testing.pytest_plugin"]
pytestmark = pytest.mark.anyio


class TestMockHTTP:
    async def test_templates_and_prefix(self) -> None:
        """``{x}`` matches one segment, a trailing ``*`` any rest; the query is ignored."""
        m = MockHTTP()
        m.add("GET", "http://a.test/items/{id}", json={"one": True})
        m.add("*", "http://b.test/*", text="hello")
        async with m.client() as c:
            assert (await c.get("http://a.test/items/3?x=1")).json() == {"one": True}
            assert (await c.get("http://a.test/items/3/more")).status_code == 404
            assert (await c.post("http://b.test/any/thing")).text == "hello"
        assert len(m.requests) == 3
        assert len(m.unmatched) == 1
        assert [str(r.url) for r in m.calls("POST")] == ["http://b.test/any/thing"]

    async def test_later_routes_win(self) -> None:
        """A route added later overrides an earlier one."""
        m = MockHTTP()
        m.add("GET", "http://a.test/x", json=1)
        m.add("GET", "http://a.test/x", status=503, json=2)
        async with m.client() as c:
            r = await c.get("http://a.test/x")
        assert (r.status_code, r.json()) == (503, 2)

    async def test_from_file(self, tmp_path: Path) -> None:
        """Routes load from a JSON file."""
        f = tmp_path / "m.json"
        f.write_text(json.dumps([{"url": "http://a.test/x", "status": 201, "json": {"k": 1}}]))
        m = MockHTTP.from_file(f)
        r = await m.handle(httpx.Request("GET", "http://a.test/x"))
        assert (r.status_code, r.json()) == (201, {"k": 1})

    def test_bad_file(self, tmp_path: Path) -> None:
        """A malformed mocks file is a DefinitionError with paths."""
        f = tmp_path / "m.json"
        f.write_text(json.dumps([{"url": "http://a.test/x", "bogus": 1}, 5]))
        with pytest.raises(o.DefinitionError) as info:
            MockHTTP.from_file(f)
        assert [p.path for p in info.value.problems] == ["$[0].bogus", "$[1]"]

    async def test_virtual_delay(self) -> None:
        """A route's delay runs on the engine's virtual clock: a day costs no wall time."""
        engine = make_test_engine()
        engine.mocks.add("GET", "http://slow.test/", json=1, delay=86400)  # type: ignore[attr-defined]
        p = o.Process(
            name="p",
            steps=(
                o.ProcessStep(
                    name="s",
                    processors=(
                        o.Processor(
                            name="a", call=o.HttpCall(url="http://slow.test/", timeout=100000)
                        ),
                    ),
                ),
            ),
        )
        t0 = time.perf_counter()
        async with engine:
            r = await engine.invoke(p)
        assert r.payload == {"a": 1}
        assert r.trace[0].duration == 86400
        assert time.perf_counter() - t0 < 5


async def test_fixtures(orchestra_engine: o.Engine, http_mock: MockHTTP) -> None:
    """The plugin's fixtures give an engine wired to the mock."""
    http_mock.add("GET", "http://api.test/user", json={"name": "Ada"})
    p = o.Process(
        name="p",
        steps=(
            o.ProcessStep(
                name="s",
                processors=(
                    o.Processor(
                        name="user",
                        call=o.HttpCall(url="http://api.test/user"),
                        output="response.name",
                    ),
                ),
            ),
        ),
    )
    result = await orchestra_engine.invoke(p)
    assert result.payload == {"user": "Ada"}
    assert isinstance(orchestra_engine.client, httpx.AsyncClient)
