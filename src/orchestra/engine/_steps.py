"""Running one process step: its processors as a dependency graph, concurrently."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
import attrs
import httpx

from orchestra._json import JSON
from orchestra.engine._trace import ProcessorTrace, Status
from orchestra.errors import (
    ActionError,
    DefinitionError,
    Problem,
    ScriptError,
    StepError,
    StepTimeoutError,
)
from orchestra.executors import Executor
from orchestra.http import RequestParts, TokenCache, perform
from orchestra.model import ActionCall, FunctionCall, HttpCall, Processor, ProcessStep
from orchestra.sandbox import Sandbox

__all__ = ["Action", "ActionContext", "Checkpoint", "StepRunner", "truthy"]

Function = Callable[[JSON], JSON | Awaitable[JSON]]
Checkpoint = Callable[[ProcessorTrace, JSON], Awaitable[None]]


@attrs.frozen(kw_only=True)
class ActionContext:
    """What a host-provided :class:`Action` gets besides its parameters and input."""

    process: str
    step: str
    processor: str
    client: httpx.AsyncClient
    executor: Executor
    secrets: Mapping[str, str]


class Action(Protocol):
    """A kind of action hosts add (``{"type": "action", "kind": ...}``)."""

    async def __call__(self, call: ActionCall, input: JSON, context: ActionContext) -> JSON:
        """Run the action and return its JSON result; raise to fail the processor."""
        ...


def truthy(value: JSON) -> bool:
    """Return whether ``value`` is truthy by JavaScript's rules."""
    if isinstance(value, (list, dict)):
        return True
    return bool(value)


@attrs.define
class _Outcome:
    output: JSON = None
    attempts: int = 0
    http_status: int | None = None


@attrs.define(kw_only=True)
class StepRunner:
    """Runs the processors of one step for one run; shared by every kind of run."""

    process: str
    context: dict[str, JSON]
    sandbox: Sandbox
    executor: Executor
    client: httpx.AsyncClient
    secrets: Mapping[str, str]
    tokens: TokenCache
    functions: Mapping[str, Function]
    actions: Mapping[str, Action]
    run_id: str = "local"

    async def js(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str,
        step: str,
        processor: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        """Evaluate a fragment, naming the step and processor in any error."""
        try:
            return await self.sandbox.evaluate(source, bindings, name=name, timeout=timeout)
        except StepError as exc:
            raise exc.located(process=self.process, step=step, processor=processor) from None

    def bindings(self, step: str) -> dict[str, JSON]:
        """Return the bindings every fragment of ``step`` sees: ``ctx``, ``trigger``, ``out``."""
        steps = self.context["steps"]
        assert isinstance(steps, dict)
        return {"ctx": self.context, "trigger": self.context["trigger"], "out": steps.get(step, {})}

    async def run(
        self,
        step: ProcessStep,
        *,
        done: Mapping[str, JSON] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> list[ProcessorTrace]:
        """Run the step's processors and return their traces in the order they ended.

        ``done`` holds outputs of processors that already ran (from a checkpoint); they are
        not run again. ``checkpoint`` is awaited after each processor, before anything that
        needs it starts. Raises the :class:`StepError` of the first processor that fails.
        """
        steps = self.context["steps"]
        assert isinstance(steps, dict)
        outputs: dict[str, JSON] = dict(done or {})
        steps[step.name] = outputs
        finished = {p.name: anyio.Event() for p in step.processors}
        for name in outputs:
            finished[name].set()
        traces: list[ProcessorTrace] = []
        failure: list[Exception] = []

        async def one(p: Processor) -> None:
            for need in p.needs:
                await finished[need].wait()
            try:
                trace, output = await self._processor(step, p)
            except StepError as exc:
                failure.append(exc.located(process=self.process, step=step.name, processor=p.name))
                tg.cancel_scope.cancel()
                return
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(exc)
                tg.cancel_scope.cancel()
                return
            outputs[p.name] = output
            traces.append(trace)
            if checkpoint is not None:
                await checkpoint(trace, output)
            finished[p.name].set()

        async with anyio.create_task_group() as tg:
            for p in step.processors:
                if p.name not in outputs:
                    tg.start_soon(one, p)
        if failure:
            raise failure[0]
        return traces

    async def _processor(self, step: ProcessStep, p: Processor) -> tuple[ProcessorTrace, JSON]:
        started = self.executor.now()
        b = self.bindings(step.name)
        outcome = _Outcome()
        status: Status = "ok"
        error: str | None = None
        items: int | None = None
        try:
            if p.when is not None and not truthy(
                await self.js(
                    p.when,
                    b,
                    name=f"{p.name}.when",
                    step=step.name,
                    processor=p.name,
                    timeout=p.script_timeout,
                )
            ):
                status = "skipped"
            elif p.for_each is not None:
                outcome, items = await self._for_each(step, p, b)
            else:
                outcome = await self._item(step, p, b)
        except StepError as exc:
            exc.located(process=self.process, step=step.name, processor=p.name)
            if p.on_error != "fallback":
                raise
            status, error, outcome.output = "fallback", str(exc), p.fallback
            outcome.attempts = max(outcome.attempts, exc.attempts)
            outcome.http_status = getattr(exc, "status", outcome.http_status)
        trace = ProcessorTrace(
            step=step.name,
            processor=p.name,
            status=status,
            started=started,
            ended=self.executor.now(),
            attempts=outcome.attempts,
            http_status=outcome.http_status,
            items=items,
            error=error,
        )
        return trace, outcome.output

    async def _for_each(
        self, step: ProcessStep, p: Processor, b: dict[str, JSON]
    ) -> tuple[_Outcome, int]:
        assert p.for_each is not None
        items = await self.js(
            p.for_each,
            b,
            name=f"{p.name}.for_each",
            step=step.name,
            processor=p.name,
            timeout=p.script_timeout,
        )
        if not isinstance(items, list):
            msg = f"for_each must return an array, got {_kind(items)}"
            raise ScriptError(msg, fragment=f"{p.name}.for_each")
        results: list[JSON] = [None] * len(items)
        total = _Outcome()
        limiter = anyio.CapacityLimiter(p.concurrency)
        failure: list[Exception] = []

        async def run(i: int, item: JSON) -> None:
            async with limiter:
                try:
                    o = await self._item(step, p, {**b, "item": item, "index": i})
                except Exception as exc:  # re-raised below, outside the task group
                    failure.append(exc)
                    tg.cancel_scope.cancel()
                    return
            results[i] = o.output
            total.attempts += o.attempts
            total.http_status = o.http_status if total.http_status is None else total.http_status

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(run, i, item)
        if failure:
            raise failure[0]
        total.output = results
        return total, len(items)

    async def _item(self, step: ProcessStep, p: Processor, b: dict[str, JSON]) -> _Outcome:
        kw: dict[str, Any] = {"step": step.name, "processor": p.name, "timeout": p.script_timeout}
        if p.input is not None:
            b = {**b, "input": await self.js(p.input, b, name=f"{p.name}.input", **kw)}
        else:
            b = {**b, "input": b.get("item")}
        outcome = await self._action(step, p, b)
        if p.output is not None:
            shaped = {**b, "response": outcome.output, "status": outcome.http_status}
            outcome.output = await self.js(p.output, shaped, name=f"{p.name}.output", **kw)
        return outcome

    async def _action(self, step: ProcessStep, p: Processor, b: dict[str, JSON]) -> _Outcome:
        call = p.call
        if isinstance(call, HttpCall):
            parts = await self._parts(step, p, call, b)
            result = await perform(
                call,
                parts,
                client=self.client,
                executor=self.executor,
                secrets=self.secrets,
                tokens=self.tokens,
            )
            return _Outcome(result.body, result.attempts, result.status)
        try:
            async with self.executor.fail_after(call.timeout):
                if isinstance(call, FunctionCall):
                    output = await self._function(call, b["input"])
                else:
                    output = await self._custom(step, p, call, b["input"])
        except StepError:
            raise
        except TimeoutError as exc:
            msg = f"{call.type} {_label(call)} timed out after {call.timeout:g} s"
            raise StepTimeoutError(msg) from exc
        return _Outcome(_as_json(output, _label(call)), 1)

    async def _parts(
        self, step: ProcessStep, p: Processor, call: HttpCall, b: dict[str, JSON]
    ) -> RequestParts:
        values: dict[str, JSON] = {}
        for field in ("path", "headers", "query", "body"):
            src = getattr(call, field)
            if src is not None:
                values[field] = await self.js(
                    src,
                    b,
                    name=f"{p.name}.{field}",
                    step=step.name,
                    processor=p.name,
                    timeout=p.script_timeout,
                )
                if (
                    field != "body"
                    and values[field] is not None
                    and not isinstance(values[field], dict)
                ):
                    msg = f"{field} must return an object, got {_kind(values[field])}"
                    raise ScriptError(msg, fragment=f"{p.name}.{field}")
        return RequestParts(
            path=values.get("path"),  # type: ignore[arg-type]
            headers=values.get("headers"),  # type: ignore[arg-type]
            query=values.get("query"),  # type: ignore[arg-type]
            body=values.get("body"),
            has_body="body" in values,
            idempotency_key=f"{self.run_id}:{step.name}:{p.name}:{b.get('index', 0)}",
        )

    async def _function(self, call: FunctionCall, value: JSON) -> Any:
        func = self.functions.get(call.name)
        if func is None:
            raise DefinitionError(
                [Problem("call.name", f"no function {call.name!r} is registered")]
            )
        try:
            if inspect.iscoroutinefunction(func):
                return await func(value)
            result = await self.executor.run_sync(lambda: func(value))
            if inspect.isawaitable(result):
                return await result
        except StepError:
            raise
        except Exception as exc:
            msg = f"function {call.name!r} raised {type(exc).__name__}: {exc}"
            raise ActionError(msg) from exc
        return result

    async def _custom(self, step: ProcessStep, p: Processor, call: ActionCall, value: JSON) -> Any:
        action = self.actions.get(call.kind)
        if action is None:
            raise DefinitionError(
                [Problem("call.kind", f"no action kind {call.kind!r} is registered")]
            )
        ctx = ActionContext(
            process=self.process,
            step=step.name,
            processor=p.name,
            client=self.client,
            executor=self.executor,
            secrets=self.secrets,
        )
        try:
            return await action(call, value, ctx)
        except StepError:
            raise
        except Exception as exc:
            msg = f"action {call.kind!r} raised {type(exc).__name__}: {exc}"
            raise ActionError(msg) from exc


def _label(call: FunctionCall | ActionCall) -> str:
    return repr(call.name) if isinstance(call, FunctionCall) else repr(call.kind)


def _as_json(value: Any, label: str) -> JSON:
    try:
        result: JSON = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        msg = f"{label} returned a value that is not JSON: {exc}"
        raise ActionError(msg) from None
    return result


def _kind(value: JSON) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )
