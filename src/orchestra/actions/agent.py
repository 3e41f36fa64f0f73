"""An AI-agent action: one chat completion on an OpenAI-compatible API, answered as JSON.

Register it under a kind and call it from a processor::

    engine = Engine(actions={"agent": ChatAgent(base_url="https://api.openai.com",
                                                api_key="openai")}, secrets={"openai": ...})
    {"type": "action", "kind": "agent",
     "params": {"instructions": "Classify the supplier's reply...",
                "schema": {"type": "object", "required": ["intent"], ...}}}

The processor's input becomes the user message (JSON text unless it is a string). The
reply must be a JSON object matching ``params.schema``; a reply that is not is sent back
to the model with the problems found, once, before the action fails.
"""

from __future__ import annotations

import json

import attrs
import httpx

from orchestra._json import JSON
from orchestra._jsonschema import validate
from orchestra.engine import ActionContext
from orchestra.errors import ActionError, HttpError
from orchestra.model import ActionCall

__all__ = ["ChatAgent"]


@attrs.frozen(kw_only=True)
class ChatAgent:
    """Calls ``{base_url}/v1/chat/completions`` with ``response_format`` JSON.

    ``api_key`` names a secret of the engine sent as a bearer token. ``params`` of the
    call: ``instructions`` (the system message), ``schema`` (the JSON Schema the reply
    must match), and optionally ``model`` and ``temperature``.
    """

    base_url: str
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    retries: int = 1
    """How many times an invalid reply is sent back for a correction."""

    async def __call__(self, call: ActionCall, input: JSON, context: ActionContext) -> JSON:
        """Ask the model and return its validated JSON reply."""
        params = call.params
        schema = params.get("schema")
        system = str(params.get("instructions") or "You are a careful assistant.")
        if schema is not None:
            system += "\nAnswer with one JSON object matching this JSON Schema:\n" + json.dumps(
                schema
            )
        user = input if isinstance(input, str) else json.dumps(input, ensure_ascii=False)
        messages: list[JSON] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        problems = ""
        for _ in range(self.retries + 1):
            content = await self._complete(params, messages, context)
            try:
                value: JSON = json.loads(content)
            except ValueError as exc:
                problems = f"the reply is not JSON ({exc})"
            else:
                issues = validate(value, schema) if schema is not None else []
                if not issues:
                    return value
                problems = "; ".join(str(i) for i in issues)
            messages += [
                {"role": "assistant", "content": content},
                {"role": "user", "content": f"Your reply was invalid: {problems}. Answer again "
                                            "with only the corrected JSON object."},
            ]  # fmt: skip
        msg = f"the model's reply stayed invalid after {self.retries + 1} attempts: {problems}"
        raise ActionError(msg)

    async def _complete(
        self, params: dict[str, JSON], messages: list[JSON], context: ActionContext
    ) -> str:
        url = self.base_url.rstrip("/") + "/v1/chat/completions"
        body: dict[str, JSON] = {
            "model": params.get("model") or self.model,
            "messages": messages,
            "response_format": {"type": "json_object"},
        }
        if "temperature" in params:
            body["temperature"] = params["temperature"]
        headers = {}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {context.secrets[self.api_key]}"
        try:
            resp = await context.client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HttpError(
                f"chat completion request failed: {exc!r}", url=url, retryable=True
            ) from exc
        if resp.status_code >= 400:
            msg = f"chat completion answered {resp.status_code}: {resp.text[:200]}"
            raise HttpError(msg, status=resp.status_code, url=url)
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            msg = f"chat completion response has no choices[0].message.content ({exc!r})"
            raise ActionError(msg) from None
        return str(content)
