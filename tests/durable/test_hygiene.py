"""Secrets stay out of the store and the logs; contexts have a size limit; old runs go."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

import orchestra as o
from orchestra.engine import ContextLimitError
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import InMemoryStore, SQLiteStore
from orchestra.testing import MockHTTP

pytestmark = pytest.mark.anyio

GO = o.Event(name="go")
SECRETS = {
    "api_token": "sk-live-5f0c9e1d7a3b4e2f",
    "client_secret": "cs-9a8b7c6d5e4f3a2b1c0d",
    "other": 'quote"and\\backslash-secret',
}
ACCESS_TOKEN = "oauth-access-token-0f1e2d3c4b5a"


def leaky_backend() -> MockHTTP:
    """APIs that echo credentials back, in answers and in error messages."""
    mocks = MockHTTP()

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"seen": request.headers["authorization"],
                                         "also": SECRETS["other"]})  # fmt: skip

    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=f"bad credentials: {request.headers['authorization']}")

    mocks.add("POST", "http://api/echo", handler=echo)
    mocks.add("POST", "http://api/fail", handler=fail)
    mocks.add("POST", "http://auth/token", json={"access_token": ACCESS_TOKEN, "expires_in": 600})
    return mocks


def leaky(name: str, url: str) -> o.Process:
    oauth = o.OAuth2ClientCredentials(token_url="http://auth/token", client_id="orchestra",
                                      client_secret="client_secret")  # fmt: skip
    return o.Process(name=name, trigger=GO, steps=(
        o.ProcessStep(name="call", processors=(
            o.Processor(name="bearer", call=o.HttpCall(
                url="http://api/echo", method="POST", auth=o.BearerAuth(token="api_token"))),
            o.Processor(name="oauth", call=o.HttpCall(url=url, method="POST", auth=oauth)),
        )),
    ))  # fmt: skip


async def test_secrets_never_reach_the_sqlite_file_or_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "runs.db"
    mocks = leaky_backend()
    async with (
        SQLiteStore(db) as store,
        o.Engine(store=store, sandbox=InProcessSandbox(), client=mocks.client(),
                 secrets=SECRETS, worker_id="w") as eng,
    ):  # fmt: skip
        await eng.deploy(leaky("ok", "http://api/echo"))
        await eng.deploy(leaky("bad", "http://api/fail"))
        ok = await eng.run(await eng.start("ok", {}))
        bad = await eng.run(await eng.start("bad", {}))
        await eng.publish("go", {"note": "published"})
    assert ok.status == "completed"
    ctx: Any = ok.context
    assert ctx["steps"]["call"]["bearer"] == {"seen": "Bearer ***", "also": "***"}
    assert ctx["steps"]["call"]["oauth"]["seen"] == "Bearer ***"
    assert bad.status == "failed"
    assert bad.error is not None
    assert "answered 500: bad credentials: Bearer ***" in bad.error
    assert any(h.detail and "Bearer ***" in h.detail for h in bad.history)
    # The credentials did go out on the wire: the scan below would find them otherwise.
    assert any(SECRETS["api_token"] in r.headers["authorization"] for r in mocks.requests)
    stored = b"".join(
        (tmp_path / name).read_bytes()
        for name in ("runs.db", "runs.db-wal", "runs.db-shm")
        if (tmp_path / name).exists()  # noqa: ASYNC240
    )
    assert len(stored) > 0
    needles = [*SECRETS.values(), ACCESS_TOKEN, json.dumps(SECRETS["other"])[1:-1]]
    for secret in needles:
        assert secret.encode() not in stored, f"{secret!r} is in the SQLite file"
        assert secret not in caplog.text, f"{secret!r} is in the logs"


async def test_a_context_over_the_limit_fails_the_run_and_keeps_the_last_good_state(
    tmp_path: Path,
) -> None:
    process = o.Process(name="grow", trigger=GO, steps=(
        o.ProcessStep(name="small", processors=(
            o.Processor(name="a", call=o.FunctionCall(name="small")),
        )),
        o.ProcessStep(name="huge", processors=(
            o.Processor(name="b", call=o.FunctionCall(name="huge")),
        )),
    ))  # fmt: skip
    fns = {"small": lambda _: "ok", "huge": lambda _: "x" * 5000}
    async with (
        SQLiteStore(tmp_path / "runs.db") as store,
        o.Engine(store=store, sandbox=InProcessSandbox(), functions=fns,
                 max_context_bytes=2000, worker_id="w") as eng,
    ):  # fmt: skip
        await eng.deploy(process)
        run = await eng.run(await eng.start("grow", {}))
        with pytest.raises(ContextLimitError, match="over the limit of 2000"):
            await eng.start("grow", {"pad": "y" * 3000})
        stored = await store.get_run(run.id)
        assert len(await store.list_runs()) == 1  # the refused start stored nothing
    assert run.status == "failed"
    assert run.error is not None
    assert "grow/huge" in run.error
    assert "over the limit of 2000" in run.error
    assert run.context["steps"] == {"small": {"a": "ok"}}  # as of the last step that fit
    assert len(stored.context) < 2000
    assert run.path == ["small:completed", "huge:failed"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_retention_deletes_runs_that_ended_long_enough_ago(kind: str, tmp_path: Path) -> None:
    """``Engine(retention=...)`` works on every store: ended runs go, with their history."""
    store = InMemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "runs.db")
    wait = o.ResumeStep(name="w", event="never", key="'k'")
    process = o.Process(name="p", trigger=GO, steps=(
        o.ProcessStep(name="s", processors=(
            o.Processor(name="a", call=o.FunctionCall(name="f")),
        )),
    ))  # fmt: skip
    waiting = attrs.evolve(process, name="q", steps=(wait,))
    engine = o.Engine(store=store, sandbox=InProcessSandbox(), functions={"f": lambda _: 1},
                      retention=0.3, lease_seconds=0.4, worker_id="w")  # fmt: skip
    async with store, engine as eng:
        await eng.deploy(process)
        await eng.deploy(waiting)
        done = [await eng.start("p", {}) for _ in range(3)]
        parked = await eng.start("q", {})
        started = time.monotonic()
        assert len(await store.list_runs(status="completed")) == 3  # not at once
        with anyio.fail_after(3):
            while await store.list_runs(status="completed"):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        gone_after = time.monotonic() - started
        assert [r.id for r in await store.list_runs()] == [parked]
        assert [await store.history(r) for r in done] == [[], [], []]
        assert (await eng.run(parked)).status == "waiting"
    assert gone_after < 2.5


async def test_retention_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="retention"):
        o.Engine(store=InMemoryStore(), retention=-1)
