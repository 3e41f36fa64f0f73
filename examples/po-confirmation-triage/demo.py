"""Run the PO-triage process durably, on a SQLite file, against local HTTP backends.

    python examples/po-confirmation-triage/demo.py [--db PATH]

The form service, the mail service and the ERP (with its OAuth2 token endpoint) are served
by a small HTTP server on 127.0.0.1, answering as ``mocks.json`` says. The demo deploys
``process.json``, publishes the ``po.unconfirmed`` event from ``sample.json``, shows the
run waiting for the supplier, publishes the supplier's answer from ``events.json`` and
prints the path of the completed run.

It survives ``kill -9``. Run it once with ``--crash-after-start``: it starts the run and
kills itself while the run waits. Or with ``--crash-during-write-back``: it kills itself
while the ERP is answering, in the middle of a step. Run it again without the flag on the
same ``--db``: the engine takes the run back when it opens (same ``worker_id``), and the
run completes, each step recorded once. The events are published with fixed ids, so
publishing them again (as the second invocation does) never starts a second run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

import orchestra as o
from orchestra.sandbox import InProcessSandbox
from orchestra.stores import SQLiteStore
from orchestra.testing import MockRoute

HERE = Path(__file__).resolve().parent
PROCESS = o.Process.from_json((HERE / "process.json").read_text())
SAMPLE: Any = json.loads((HERE / "sample.json").read_text())
EVENT: Any = json.loads((HERE / "events.json").read_text())[0]
START_ID = f"demo:po.unconfirmed:{SAMPLE['po']['number']}"
SECRETS = {  # in a real host: from a secret store, never from the process definition
    "forms_token": os.environ.get("FORMS_TOKEN", "demo-forms-token"),
    "mail_token": os.environ.get("MAIL_TOKEN", "demo-mail-token"),
    "erp_client_secret": os.environ.get("ERP_CLIENT_SECRET", "demo-erp-client-secret"),
}


def say(text: str) -> None:
    print(text, flush=True)


class Backends:
    """The example's HTTP services on one local port, told apart by the ``Host`` header.

    A deliberately small HTTP/1.1 server (one request per connection) so that the demo
    needs nothing beyond orchestra's own dependencies.
    """

    def __init__(self, on_request: Callable[[str, str], None] | None = None) -> None:
        data = json.loads((HERE / "mocks.json").read_text())
        self.routes = [(r, r.pattern()) for r in (MockRoute(**item) for item in data)]
        self.on_request = on_request
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Backends:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
            headers = {k.lower(): v for k, v in headers.items()}
            await reader.readexactly(int(headers.get("content-length", "0")))
            url = f"https://{headers['host']}{target.split('?')[0]}"
            if self.on_request is not None:
                self.on_request(method, url)
            status: int = 404
            body: Any = {"error": f"no backend for {method} {url}"}
            for route, pattern in reversed(self.routes):
                if route.method in ("*", method) and pattern.match(url):
                    status, body = route.status, route.json
                    break
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        finally:
            writer.close()

    def transport(self) -> httpx.AsyncBaseTransport:
        """A transport that sends every request to this server, keeping its ``Host``."""
        return _ToLocal(self.port)


class _ToLocal(httpx.AsyncBaseTransport):
    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def show(run: o.RunInfo) -> None:
    say(f"  run {run.id}: {run.status}")
    say("  path: " + " -> ".join(run.path))


def kill_myself(why: str) -> None:
    say(f"** {why}: kill -9 **")
    os.kill(os.getpid(), signal.SIGKILL)


async def main(db: Path, *, crash_after_start: bool, crash_during_write_back: bool) -> int:
    def served(method: str, url: str) -> None:
        say(f"    backend: {method} {url}")
        if crash_during_write_back and method == "PATCH":
            kill_myself("the ERP is writing the confirmed date")

    store = SQLiteStore(db)
    async with Backends(served) as backends:
        client = httpx.AsyncClient(transport=backends.transport())
        # The example's fragments are our own, trusted: run them in process (fast to start).
        # A host running processes written by others keeps the default, isolated sandbox.
        engine = o.Engine(store=store, client=client, secrets=SECRETS, worker_id="demo",
                          sandbox=InProcessSandbox())  # fmt: skip
        say(f"store: {db} (SQLite); backends on 127.0.0.1:{backends.port}")
        left = [r for r in await store.list_runs() if r.status in ("running", "waiting")]
        if left:
            say(f"{len(left)} unfinished run(s) in the store: the engine takes back those whose "
                "worker died as it opens")  # fmt: skip
        async with engine:  # takes back the runs a killed invocation left behind
            await engine.deploy(PROCESS)
            say("publishing po.unconfirmed ...")
            started = await engine.publish("po.unconfirmed", SAMPLE, id=START_ID)
            if started.duplicate:
                say("  (published before: its run exists already)")
            number = SAMPLE["po"]["number"]
            runs = [
                r for r in await engine.runs(PROCESS.name)
                if r.context["trigger"]["po"]["number"] == number  # type: ignore[call-overload,index]
            ]  # fmt: skip
            run = await engine.run(runs[-1].id)
            show(run)
            if crash_after_start:
                kill_myself("the run is waiting for the supplier")
            if run.status == "waiting":
                say(f"publishing {EVENT['name']} (the supplier's answer) ...")
                await engine.publish(EVENT["name"], EVENT["payload"], id=EVENT["id"])
                run = await engine.run(run.id)
                show(run)
            ends = [h.kind for h in run.history if h.kind in ("step_completed", "step_skipped")]
            say(f"  {len(ends)} step records, {len(run.history)} history entries")
        await client.aclose()
    await store.aclose()
    return 0 if run.status == "completed" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("po-triage-demo.db"))
    parser.add_argument("--crash-after-start", action="store_true")
    parser.add_argument("--crash-during-write-back", action="store_true")
    args = parser.parse_args()
    options = {"crash_after_start": args.crash_after_start,
               "crash_during_write_back": args.crash_during_write_back}  # fmt: skip
    sys.exit(anyio.run(lambda: main(args.db, **options)))
