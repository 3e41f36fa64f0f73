import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import orchestra as o
from orchestra.actions import ChatAgent
from orchestra.sandbox import InProcessSandbox

pytestmark = pytest.mark.anyio

SCHEMA: Any = {
    "type": "object",
    "required": ["intent"],
    "properties": {"intent": {"enum": ["confirm", "reject"]}},
}


class FakeLLM:
    """A tiny OpenAI-compatible server on a real 127.0.0.1 socket, answering scripted replies."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers["content-length"]))
        self.requests.append(json.loads(body))
        self.auth.append(headers.get("authorization", ""))
        reply = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": self.replies.pop(0)}}]}
        )
        writer.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(reply)}\r\n"
            f"connection: close\r\n\r\n{reply}".encode()
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM([])
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    async with server:
        yield fake


def process() -> o.Process:
    return o.Process(
        name="classify",
        steps=(o.ProcessStep(name="s", processors=(
            o.Processor(name="agent", input="trigger", call=o.ActionCall(kind="agent", params={
                "instructions": "Classify the supplier's reply.", "schema": SCHEMA})),
        )),),
        output="out.agent",
    )  # fmt: skip


async def invoke(llm: FakeLLM) -> o.Result:
    agent = ChatAgent(base_url=llm.url, api_key="llm", model="tiny")
    async with (
        httpx.AsyncClient() as client,
        o.Engine(
            sandbox=InProcessSandbox(),
            client=client,
            actions={"agent": agent},
            secrets={"llm": "k-1"},
        ) as engine,
    ):
        return await engine.invoke(process(), "We confirm the date.")


async def test_valid_reply(llm: FakeLLM) -> None:
    llm.replies = ['{"intent": "confirm"}']
    result = await invoke(llm)
    assert result.payload == {"intent": "confirm"}
    (req,) = llm.requests
    assert req["model"] == "tiny"
    assert req["response_format"] == {"type": "json_object"}
    assert req["messages"][1] == {"role": "user", "content": "We confirm the date."}
    assert '"enum"' in req["messages"][0]["content"]
    assert llm.auth == ["Bearer k-1"]


async def test_invalid_reply_is_retried_once(llm: FakeLLM) -> None:
    llm.replies = ['{"intent": "maybe"}', '{"intent": "reject"}']
    result = await invoke(llm)
    assert result.payload == {"intent": "reject"}
    second = llm.requests[1]["messages"]
    assert second[2] == {"role": "assistant", "content": '{"intent": "maybe"}'}
    assert "$.intent" in second[3]["content"]


async def test_still_invalid_fails(llm: FakeLLM) -> None:
    llm.replies = ["not json", '{"nope": 1}']
    with pytest.raises(o.ActionError) as info:
        await invoke(llm)
    assert "$.intent: is required" in str(info.value)
    assert info.value.processor == "agent"
    assert len(llm.requests) == 2
