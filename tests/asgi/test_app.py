"""The ASGI application: routing, status codes, limits; through ASGITransport and uvicorn."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import orchestra as o
from orchestra.asgi import App
from orchestra.testing import MockHTTP, make_test_engine

pytestmark = pytest.mark.anyio


def page_process() -> o.Process:
    return o.Process(
        name="page",
        trigger=o.RequestTrigger(path="/products/{sku}"),
        steps=(
            o.ProcessStep(
                name="main",
                processors=(
                    o.Processor(
                        name="cms",
                        call=o.HttpCall(
                            url="http://cms.test/items/{sku}",
                            path="({sku: trigger.params.sku})",
                            timeout=2,
                            retry=o.Retry(attempts=1),
                        ),
                    ),
                ),
            ),
        ),
        output="({title: out.cms.title, q: trigger.query.lang || null})",
    )


def echo_process() -> o.Process:
    return o.Process(
        name="echo",
        trigger=o.RequestTrigger(method="POST", path="/echo"),
        steps=(
            o.ProcessStep(
                name="main",
                processors=(
                    o.Processor(name="f", call=o.FunctionCall(name="echo"), input="trigger.body"),
                ),
            ),
        ),
        output="out.f",
    )


@pytest.fixture(name="mocks")
def _mocks() -> MockHTTP:
    m = MockHTTP()
    m.add("GET", "http://cms.test/items/{sku}", json={"title": "Shoe"})
    return m


@pytest.fixture(name="client")
async def _client(mocks: MockHTTP) -> httpx.AsyncClient:
    engine = make_test_engine(mocks=mocks, functions={"echo": lambda x: x})
    app = App(engine, [page_process(), echo_process()], max_body=64)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


class TestRouting:
    async def test_payload(self, client: httpx.AsyncClient) -> None:
        """A matching GET answers 200 with the process's payload; query reaches the trigger."""
        r = await client.get("/products/42?lang=de")
        assert r.status_code == 200
        assert r.json() == {"title": "Shoe", "q": "de"}

    async def test_path_parameters_are_decoded(
        self, client: httpx.AsyncClient, mocks: MockHTTP
    ) -> None:
        """Percent-encoded path parameters arrive decoded and are re-encoded upstream."""
        r = await client.get("/products/a%20b")
        assert r.status_code == 200
        assert mocks.requests[-1].url.raw_path == b"/items/a%20b"

    async def test_no_route(self, client: httpx.AsyncClient) -> None:
        """An unknown path answers 404 with a JSON error."""
        r = await client.get("/nothing")
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "NotFound"

    async def test_wrong_method(self, client: httpx.AsyncClient) -> None:
        """A known path under another method answers 405 with Allow."""
        r = await client.get("/echo")
        assert r.status_code == 405
        assert r.headers["allow"] == "POST"

    async def test_post_body(self, client: httpx.AsyncClient) -> None:
        """A JSON body reaches the trigger; integers stay integers."""
        r = await client.post("/echo", json={"n": 9007199254740991})
        assert r.status_code == 200
        assert r.json() == {"n": 9007199254740991}


class TestErrors:
    async def test_bad_json(self, client: httpx.AsyncClient) -> None:
        """A body that is not JSON answers 400."""
        r = await client.post("/echo", content=b"{nope")
        assert r.status_code == 400
        assert "not JSON" in r.json()["error"]["message"]

    async def test_body_limit(self, client: httpx.AsyncClient) -> None:
        """A body over the limit answers 413."""
        r = await client.post("/echo", json={"x": "y" * 100})
        assert r.status_code == 413

    async def test_upstream_failure(self, client: httpx.AsyncClient, mocks: MockHTTP) -> None:
        """An upstream error answers 502 naming the processor and the upstream status."""
        mocks.add("GET", "http://cms.test/items/{sku}", status=503, json={})
        r = await client.get("/products/1")
        assert r.status_code == 502
        err = r.json()["error"]
        assert (err["process"], err["step"], err["processor"], err["upstream_status"]) == (
            "page",
            "main",
            "cms",
            503,
        )

    async def test_upstream_timeout(self, client: httpx.AsyncClient, mocks: MockHTTP) -> None:
        """An upstream that takes longer than the call's timeout answers 504."""
        mocks.add("GET", "http://cms.test/items/{sku}", json={}, delay=30)
        r = await client.get("/products/1")
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "StepTimeoutError"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SERVER = """
import sys, uvicorn
sys.path.insert(0, {tests!r})
from asgi.test_app import page_process
import orchestra as o
from orchestra.asgi import App
from orchestra.sandbox import InProcessSandbox
from orchestra.testing import MockHTTP

backend = MockHTTP()
backend.add("GET", "http://cms.test/items/{{sku}}", json={{"title": "Served"}})
engine = o.Engine(sandbox=InProcessSandbox(), client=backend.client())
uvicorn.run(App(engine, [page_process()]), host="127.0.0.1", port={port}, log_level="warning")
"""


@pytest.fixture(name="server")
def _server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    script = tmp_path / "serve.py"
    script.write_text(_SERVER.format(tests=str(Path(__file__).parent.parent), port=port))
    proc = subprocess.Popen([sys.executable, str(script)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url)
                break
            except httpx.ConnectError:
                assert proc.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_behind_uvicorn(server: str) -> None:
    """The app serves payloads over a real socket behind uvicorn."""
    r = httpx.get(f"{server}/products/7")
    assert r.status_code == 200
    assert json.loads(r.text) == {"title": "Served", "q": None}
    assert httpx.get(f"{server}/missing").status_code == 404


class TestWebhooks:
    @pytest.fixture(name="hooks")
    async def _hooks(self) -> httpx.AsyncClient:
        from orchestra.asgi import WebhookEndpoint

        engine = make_test_engine(functions={"echo": lambda x: x})
        await engine.deploy(
            o.Process(
                name="onboard",
                trigger=o.Event(
                    name="user.created",
                    schema={
                        "type": "object",
                        "required": ["user"],
                        "properties": {
                            "user": {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "integer"}},
                            }
                        },
                    },
                ),
                steps=(
                    o.ProcessStep(
                        name="greet",
                        processors=(
                            o.Processor(
                                name="f", call=o.FunctionCall(name="echo"), input="trigger.user.id"
                            ),
                        ),
                    ),
                ),
            )
        )
        app = App(
            engine,
            webhooks={
                "/hooks/open": WebhookEndpoint(event="user.created"),
                "/hooks/signed": WebhookEndpoint(event="user.created", secret="s3cret"),
            },
        )
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")

    async def test_starts_a_run(self, hooks: httpx.AsyncClient) -> None:
        """A valid webhook answers 202 with the started run id."""
        r = await hooks.post("/hooks/open", json={"user": {"id": 7}})
        assert r.status_code == 202
        assert len(r.json()["started"]) == 1

    async def test_schema_violation(self, hooks: httpx.AsyncClient) -> None:
        """A payload that breaks the event's schema answers 400 naming the JSON path."""
        r = await hooks.post("/hooks/open", json={"user": {"id": "seven"}})
        assert r.status_code == 400
        assert r.json()["path"] == "$.user.id"

    async def test_signature(self, hooks: httpx.AsyncClient) -> None:
        """A signed endpoint refuses unsigned and wrongly signed requests, accepts a good one."""
        from orchestra.asgi import sign_webhook

        body = json.dumps({"user": {"id": 1}}).encode()
        assert (await hooks.post("/hooks/signed", content=body)).status_code == 401
        now = 1_700_000_000.0  # the test engine's virtual clock
        bad = sign_webhook("wrong", body, now)
        assert (await hooks.post("/hooks/signed", content=body, headers=bad)).status_code == 401
        stale = sign_webhook("s3cret", body, now - 3600)
        assert (await hooks.post("/hooks/signed", content=body, headers=stale)).status_code == 401
        good = sign_webhook("s3cret", body, now)
        assert (await hooks.post("/hooks/signed", content=body, headers=good)).status_code == 202

    async def test_post_only(self, hooks: httpx.AsyncClient) -> None:
        """A webhook path answers 405 to other methods."""
        assert (await hooks.get("/hooks/open")).status_code == 405
