"""Running one process step: its processors as a dependency graph, concurrently."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
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
from orchestra.sandbox import FragmentCall, Sandbox

__all__ = ["Action", "ActionContext", "Checkpoint", "StepRunner", "truthy", "uses"]

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


# Every name the engine binds, in the order bindings are passed.
_BINDINGS = ("ctx", "trigger", "out", "input", "item", "index", "response", "status")
_BINDING_SET = frozenset(_BINDINGS)
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_USES: dict[str, tuple[str, ...] | None] = {}
_CACHE_SIZE = 4096


def uses(source: str) -> tuple[str, ...] | None:
    r"""Return the binding names ``source`` may use, or ``None`` if it may use any.

    A cheap, conservative scan (cached per source): every identifier-like word counts,
    in strings and comments too, so a binding is never withheld from a fragment that
    names it. ``arguments``, ``eval`` or a ``\u`` escape (identifiers can be spelt
    with escapes) make it give up and answer ``None``.
    """
    found = _USES.get(source, False)
    if found is not False:
        return found  # type: ignore[return-value]
    words = set(_IDENTIFIER.findall(source))
    result: tuple[str, ...] | None = None
    if "\\u" not in source and "arguments" not in words and "eval" not in words:
        result = tuple(n for n in _BINDINGS if n in words)
    if len(_USES) >= _CACHE_SIZE:
        _USES.clear()
    _USES[source] = result
    return result


def _union(fragments: Sequence[FragmentCall]) -> tuple[str, ...] | None:
    names: set[str] = set()
    for f in fragments:
        used = uses(f.source)
        if used is None:
            return None
        names.update(used)
    return tuple(n for n in _BINDINGS if n in names)


def _pick(bindings: Mapping[str, JSON], names: tuple[str, ...] | None) -> dict[str, JSON]:
    """The bindings among ``names`` (all of them for ``None``)."""
    if names is None:
        return dict(bindings)
    return {n: bindings[n] for n in names if n in bindings}


_FIELDS = ("path", "headers", "query", "body")


def _native() -> bool:
    """Whether the running event loop is asyncio's (then asyncio's cheaper primitives serve)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Group:
    """Runs coroutines concurrently until all have ended; :meth:`cancel` stops the rest.

    On asyncio these are plain tasks in an ``asyncio.TaskGroup`` (a fifth of the cost of
    an anyio task group per task); on other event loops, an anyio task group.
    """

    __slots__ = ("_native", "_scope", "_tasks")

    def __init__(self, native: bool) -> None:
        self._native = native
        self._tasks: list[asyncio.Task[None]] = []
        self._scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        """Cancel every coroutine of the group but the one calling."""
        if self._scope is not None:
            self._scope.cancel()
            return
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def run(self, coros: list[Coroutine[Any, Any, None]]) -> None:
        """Run ``coros`` and return when all have ended."""
        if not coros:
            return
        if self._native:
            async with asyncio.TaskGroup() as tg:
                self._tasks = [tg.create_task(c) for c in coros]
            return
        async with anyio.create_task_group() as atg:
            self._scope = atg.cancel_scope
            for c in coros:
                atg.start_soon(_wait, c)


async def _wait(coro: Coroutine[Any, Any, None]) -> None:
    await coro


def _limiter(n: int, native: bool) -> asyncio.Semaphore | anyio.CapacityLimiter:
    return asyncio.Semaphore(n) if native else anyio.CapacityLimiter(n)


@attrs.frozen
class _Plan:
    """How one processor's fragments are batched; computed once per processor."""

    head: tuple[FragmentCall, ...]
    """``when`` (a guard) and ``for_each``; for other processors also ``pre``."""
    head_names: tuple[str, ...] | None
    pre: tuple[FragmentCall, ...]
    """``input`` (bound as ``input``) and the fragments that build the HTTP request.

    Empty when they run with ``head`` (a processor without ``for_each``), except when a
    ``when`` that names ``input`` must not see the ``input`` binding they need.
    """
    pre_names: tuple[str, ...] | None
    input_binding: bool
    """Whether ``pre`` needs ``input`` bound to the item (there is no input fragment)."""
    fields: tuple[str, ...]
    """The request part each fragment of ``pre`` after ``input`` builds."""
    output: tuple[FragmentCall, ...]
    """The ``output`` fragment (run with ``evaluate``), or nothing."""


_PLANS: dict[int, tuple[Processor, _Plan]] = {}


def _plan(p: Processor) -> _Plan:
    cached = _PLANS.get(id(p))
    if cached is not None and cached[0] is p:
        return cached[1]
    pre: list[FragmentCall] = []
    if p.input is not None:
        pre.append(FragmentCall(f"{p.name}.input", p.input, bind="input"))
    fields: list[str] = []
    if isinstance(p.call, HttpCall):
        for field in _FIELDS:
            src = getattr(p.call, field)
            if src is not None:
                pre.append(FragmentCall(f"{p.name}.{field}", src))
                fields.append(field)
    # Without an input fragment, the request fragments see ``input`` as the item (or null).
    pre_names = _union(pre)
    input_binding = p.input is None and (pre_names is None or "input" in pre_names)
    head: list[FragmentCall] = []
    if p.when is not None:
        head.append(FragmentCall(f"{p.name}.when", p.when, guard=True))
    if p.for_each is not None:
        head.append(FragmentCall(f"{p.name}.for_each", p.for_each))
    elif not (input_binding and p.when is not None and "input" in (uses(p.when) or ("input",))):
        head.extend(pre)  # when and the request in one round trip
        pre = []
    output = (FragmentCall(f"{p.name}.output", p.output),) if p.output is not None else ()
    plan = _Plan(
        head=tuple(head),
        head_names=_union(head),
        pre=tuple(pre),
        pre_names=_union(pre),
        input_binding=input_binding,
        fields=tuple(fields),
        output=output,
    )
    if len(_PLANS) >= _CACHE_SIZE:
        _PLANS.clear()
    _PLANS[id(p)] = (p, plan)
    return plan


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
    _native: bool = attrs.field(default=True, init=False)

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
        """Evaluate a fragment, naming the step and processor in any error.

        Only the bindings the fragment uses (see :func:`uses`) are sent to the sandbox.
        """
        picked = _pick(bindings, uses(source))
        try:
            return await self.sandbox.evaluate(source, picked, name=name, timeout=timeout)
        except StepError as exc:
            raise exc.located(process=self.process, step=step, processor=processor) from None

    async def js_all(
        self,
        fragments: tuple[FragmentCall, ...],
        names: tuple[str, ...] | None,
        bindings: Mapping[str, JSON],
        *,
        step: str,
        processor: str | None = None,
        timeout: float | None = None,
    ) -> list[JSON]:
        """Evaluate a batch in one sandbox call, sending only the bindings in ``names``."""
        picked = _pick(bindings, names)
        try:
            return await self.sandbox.evaluate_all(fragments, picked, timeout=timeout)
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
        native = self._native = _native()
        event = asyncio.Event if native else anyio.Event
        finished = {p.name: event() for p in step.processors}
        for name in outputs:
            finished[name].set()
        traces: list[ProcessorTrace] = []
        failure: list[Exception] = []
        group = _Group(native)

        async def one(p: Processor) -> None:
            for need in p.needs:
                await finished[need].wait()
            try:
                trace, output = await self._processor(step, p)
            except StepError as exc:
                failure.append(exc.located(process=self.process, step=step.name, processor=p.name))
                group.cancel()
                return
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(exc)
                group.cancel()
                return
            outputs[p.name] = output
            traces.append(trace)
            if checkpoint is not None:
                await checkpoint(trace, output)
            finished[p.name].set()

        await group.run([one(p) for p in step.processors if p.name not in outputs])
        if failure:
            raise failure[0]
        return traces

    async def _processor(self, step: ProcessStep, p: Processor) -> tuple[ProcessorTrace, JSON]:
        started = self.executor.now()
        b = self.bindings(step.name)
        plan = _plan(p)
        outcome = _Outcome()
        status: Status = "ok"
        error: str | None = None
        items: int | None = None
        try:
            results: list[JSON] = []
            if plan.input_binding and p.for_each is None and not plan.pre:
                b["input"] = None  # for the request fragments, in the same batch as when
            if plan.head:
                results = await self.js_all(
                    plan.head,
                    plan.head_names,
                    b,
                    step=step.name,
                    processor=p.name,
                    timeout=p.script_timeout,
                )
            if p.when is not None and not truthy(results[0]):
                status = "skipped"
            elif p.for_each is not None:
                outcome, items = await self._for_each(step, p, plan, b, results[-1])
            else:
                pre = results[1 if p.when else 0 :]
                if plan.pre:
                    b["input"] = None
                    pre = await self.js_all(
                        plan.pre,
                        plan.pre_names,
                        b,
                        step=step.name,
                        processor=p.name,
                        timeout=p.script_timeout,
                    )
                outcome = await self._item(step, p, plan, b, pre)
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
        self, step: ProcessStep, p: Processor, plan: _Plan, b: dict[str, JSON], items: JSON
    ) -> tuple[_Outcome, int]:
        if not isinstance(items, list):
            msg = f"for_each must return an array, got {_kind(items)}"
            raise ScriptError(msg, fragment=f"{p.name}.for_each")
        results: list[JSON] = [None] * len(items)
        total = _Outcome()
        limiter = _limiter(p.concurrency, self._native)
        failure: list[Exception] = []
        group = _Group(self._native)

        async def run(i: int, item: JSON) -> None:
            async with limiter:
                try:
                    ib = dict(b)
                    ib["item"] = item
                    ib["index"] = i
                    if plan.input_binding:
                        ib["input"] = item
                    pre: list[JSON] = []
                    if plan.pre:
                        pre = await self.js_all(
                            plan.pre,
                            plan.pre_names,
                            ib,
                            step=step.name,
                            processor=p.name,
                            timeout=p.script_timeout,
                        )
                    o = await self._item(step, p, plan, ib, pre)
                except Exception as exc:  # re-raised below, outside the task group
                    failure.append(exc)
                    group.cancel()
                    return
            results[i] = o.output
            total.attempts += o.attempts
            total.http_status = o.http_status if total.http_status is None else total.http_status

        await group.run([run(i, item) for i, item in enumerate(items)])
        if failure:
            raise failure[0]
        total.output = results
        return total, len(items)

    async def _item(
        self, step: ProcessStep, p: Processor, plan: _Plan, b: dict[str, JSON], pre: list[JSON]
    ) -> _Outcome:
        """Run the action and ``output`` of one item; ``pre`` holds the results of ``plan.pre``.

        ``b`` may be changed (it is this item's own).
        """
        if p.input is not None:
            b["input"] = pre[0]
            parts = pre[1:]
        else:
            b["input"] = b.get("item")
            parts = pre
        outcome = await self._action(step, p, plan, b, parts)
        if plan.output:
            b["response"] = outcome.output
            b["status"] = outcome.http_status
            # One fragment: ``evaluate`` (what a Sandbox must implement).
            (out,) = plan.output
            outcome.output = await self.js(
                out.source, b, name=out.name, step=step.name, processor=p.name,
                timeout=p.script_timeout,
            )  # fmt: skip
        return outcome

    async def _action(
        self,
        step: ProcessStep,
        p: Processor,
        plan: _Plan,
        b: dict[str, JSON],
        parts: list[JSON],
    ) -> _Outcome:
        call = p.call
        if isinstance(call, HttpCall):
            result = await perform(
                call,
                self._parts(step, p, plan, b, parts),
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

    def _parts(
        self, step: ProcessStep, p: Processor, plan: _Plan, b: dict[str, JSON], parts: list[JSON]
    ) -> RequestParts:
        call = p.call
        assert isinstance(call, HttpCall)
        values: dict[str, JSON] = {}
        for field, value in zip(plan.fields, parts, strict=True):
            if field != "body" and value is not None and not isinstance(value, dict):
                msg = f"{field} must return an object, got {_kind(value)}"
                raise ScriptError(msg, fragment=f"{p.name}.{field}")
            values[field] = value
        key = None
        if call.idempotency_key:
            key = f"{self.run_id}:{step.name}:{p.name}:{b.get('index', 0)}"
        return RequestParts(
            path=values.get("path"),  # type: ignore[arg-type]
            headers=values.get("headers"),  # type: ignore[arg-type]
            query=values.get("query"),  # type: ignore[arg-type]
            body=values.get("body"),
            has_body="body" in values,
            idempotency_key=key,
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
