"""Running one process step: its processors as a dependency graph, concurrently."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

import anyio
import attrs
import httpx

from orchestra._json import JSON
from orchestra.engine._batching import (
    Chain,
    Flow,
    Plan,
    joined,
    pick,
    plan_of,
    uses,
)
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
from orchestra.sandbox import EachCall, FragmentCall, RawJSON, Sandbox

__all__ = ["Action", "ActionContext", "Checkpoint", "StepRunner", "truthy", "uses"]

Function = Callable[[JSON], JSON | Awaitable[JSON]]
Checkpoint = Callable[[ProcessorTrace, JSON], Awaitable[None]]


@attrs.frozen(kw_only=True)
class ActionContext:
    """What a host-provided :class:`Action` gets besides its parameters and input.

    ``run_id`` is the id of the run (``"local"`` for :meth:`~orchestra.Engine.invoke`).
    """

    process: str
    step: str
    processor: str
    client: httpx.AsyncClient
    executor: Executor
    secrets: Mapping[str, str]
    run_id: str = "local"


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


@attrs.define
class _Outcome:
    output: JSON = None
    attempts: int = 0
    http_status: int | None = None
    raw: RawJSON | None = None
    """The body left undecoded for ``output`` (``output`` is then ``None``)."""


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
        picked = pick(bindings, uses(source))
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
        picked = pick(bindings, names)
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
        todo = [p for p in step.processors if p.name not in outputs]
        if len(todo) == 1 and all(n in outputs for n in todo[0].needs):  # no group, no events
            return [await self._one(step, todo[0], outputs, checkpoint, None)]
        event = asyncio.Event if native else anyio.Event
        finished = {p.name: event() for p in step.processors}
        for name in outputs:
            finished[name].set()
        flow: Flow | None = None
        if checkpoint is None and self._chains():
            dependents: dict[str, list[Processor]] = {}
            for p in todo:
                for need in p.needs:
                    dependents.setdefault(need, []).append(p)
            flow = Flow(outputs, dependents, finished)
        traces: list[ProcessorTrace] = []
        failure: list[Exception] = []
        group = _Group(native)

        async def one(p: Processor) -> None:
            for need in p.needs:
                await finished[need].wait()
            try:  # ``_one`` inlined: one coroutine less to resume per await
                try:
                    trace, output = await self._processor(step, p, flow)
                except StepError as exc:
                    exc.located(process=self.process, step=step.name, processor=p.name)
                    raise
                outputs[p.name] = output
                if checkpoint is not None:
                    await checkpoint(trace, output)
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(exc)
                group.cancel()
                return
            traces.append(trace)
            finished[p.name].set()

        await group.run([one(p) for p in todo])
        if failure:
            raise failure[0]
        return traces

    def _chains(self) -> bool:
        """Whether the sandbox runs :meth:`~Sandbox.evaluate_each` in one round trip."""
        native = getattr(type(self.sandbox), "evaluate_each", Sandbox.evaluate_each)
        return native is not Sandbox.evaluate_each

    async def _one(
        self,
        step: ProcessStep,
        p: Processor,
        outputs: dict[str, JSON],
        checkpoint: Checkpoint | None,
        flow: Flow | None,
    ) -> ProcessorTrace:
        """Run ``p``, record its output and checkpoint it."""
        try:
            trace, output = await self._processor(step, p, flow)
        except StepError as exc:
            exc.located(process=self.process, step=step.name, processor=p.name)
            raise
        outputs[p.name] = output
        if checkpoint is not None:
            await checkpoint(trace, output)
        return trace

    async def _processor(
        self, step: ProcessStep, p: Processor, flow: Flow | None = None
    ) -> tuple[ProcessorTrace, JSON]:
        started = self.executor.now()
        b = self.bindings(step.name)
        plan = plan_of(p)
        outcome = _Outcome()
        status: Status = "ok"
        error: str | None = None
        items: int | None = None
        try:
            results: list[JSON] = []
            per: list[list[JSON]] | None = None
            if plan.input_binding and p.for_each is None and not plan.pre:
                b["input"] = None  # for the request fragments, in the same batch as when
            ready = flow.prefetched.pop(p.name, None) if flow is not None else None
            if ready is not None:  # run with the output of what it waited for
                results, per = ready
            elif p.for_each is not None and plan.pre and self._chains():
                results, per = await self._each(
                    plan.head, plan.each_names, b, plan.each, step=step.name, processor=p.name,
                    timeout=p.script_timeout,
                )  # fmt: skip
            elif plan.head:
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
                outcome, items = await self._for_each(step, p, plan, b, results[-1], ready=per)
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
                outcome = await self._item(step, p, plan, b, pre, flow=flow)
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

    async def _each(
        self,
        fragments: tuple[FragmentCall, ...],
        names: tuple[str, ...] | None,
        bindings: Mapping[str, JSON],
        each: EachCall | None,
        *,
        step: str,
        processor: str | None = None,
        timeout: float | None = None,
    ) -> tuple[list[JSON], list[list[JSON]] | None]:
        """Evaluate a batch and its ``each`` part in one sandbox call (``evaluate_each``).

        ``names`` (precomputed per processor) holds neither ``item`` nor ``index``: those
        are bound per element by the sandbox.
        """
        picked = pick(bindings, names)
        try:
            return await self.sandbox.evaluate_each(fragments, picked, each, timeout=timeout)
        except StepError as exc:
            raise exc.located(process=self.process, step=step, processor=processor) from None

    async def _for_each(
        self,
        step: ProcessStep,
        p: Processor,
        plan: Plan,
        b: dict[str, JSON],
        items: JSON,
        *,
        ready: list[list[JSON]] | None = None,
    ) -> tuple[_Outcome, int]:
        if not isinstance(items, list):
            msg = f"for_each must return an array, got {_kind(items)}"
            raise ScriptError(msg, fragment=f"{p.name}.for_each")
        results: list[JSON] = [None] * len(items)
        total = _Outcome()
        limiter = _limiter(p.concurrency, self._native)
        failure: list[Exception] = []
        group = _Group(self._native)
        ready = ready or []

        async def run(i: int, item: JSON) -> None:
            async with limiter:
                try:
                    ib = dict(b)
                    ib["item"] = item
                    ib["index"] = i
                    if plan.input_binding:
                        ib["input"] = item
                    pre: list[JSON] = []
                    if i < len(ready):  # built with for_each
                        pre = ready[i]
                    elif plan.pre:
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
        self,
        step: ProcessStep,
        p: Processor,
        plan: Plan,
        b: dict[str, JSON],
        pre: list[JSON],
        *,
        flow: Flow | None = None,
    ) -> _Outcome:
        """Run the action and ``output`` of one item; ``pre`` holds the results of ``plan.pre``.

        ``b`` may be changed (it is this item's own). With ``flow``, the output may run
        with the first round trip of a processor that waits only for this one.
        """
        if p.input is not None:
            b["input"] = pre[0]
            parts = pre[1:]
        else:
            b["input"] = b.get("item")
            parts = pre
        outcome = await self._action(step, p, plan, b, parts)
        if plan.output:  # the body may be RawJSON: ``_action`` asks for it only then
            b["response"] = outcome.output if outcome.raw is None else outcome.raw  # type: ignore[assignment]
            b["status"] = outcome.http_status
            (out,) = plan.output
            nxt = flow.next_of(p) if flow is not None else None
            if nxt is not None and flow is not None:
                d, chain, waits = nxt
                for name in waits:  # outputs under way: this one goes with d right after
                    await flow.finished[name].wait()
                if flow.ready(p, d):
                    flow.sending.add(p.name)
                    chained = await self._chained(step, p, out, b, chain=chain)
                    if chained is not None:
                        outcome.output, flow.prefetched[d.name] = chained
                        return outcome
            if flow is not None:
                flow.sending.add(p.name)
            # One fragment: ``evaluate`` (what a Sandbox must implement).
            outcome.output = await self.js(
                out.source, b, name=out.name, step=step.name, processor=p.name,
                timeout=p.script_timeout,
            )  # fmt: skip
        return outcome

    async def _chained(
        self,
        step: ProcessStep,
        p: Processor,
        out: FragmentCall,
        b: dict[str, JSON],
        *,
        chain: Chain,
    ) -> tuple[JSON, tuple[list[JSON], list[list[JSON]] | None]] | None:
        """Run ``p``'s output and, per ``chain``, a dependent's first round trip together.

        Returns the output and the dependent's results, or ``None`` when a fragment of the
        dependent failed (``p``'s output then runs alone, and the dependent meets its error
        on its own).
        """
        fragments, names = joined(p, out, chain)
        try:
            results, per = await self._each(
                fragments, names, b, chain.each, step=step.name, processor=p.name,
                timeout=p.script_timeout,
            )  # fmt: skip
        except ScriptError as exc:
            if exc.fragment == out.name:
                raise
            return None
        except StepError:
            return None
        return results[0], (results[1:], per)

    async def _action(
        self,
        step: ProcessStep,
        p: Processor,
        plan: Plan,
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
                raw_json=bool(plan.output) and self.sandbox.accepts_raw_json,
            )
            return _Outcome(result.body, result.attempts, result.status, result.raw)
        work = (
            self._function(call, b["input"])
            if isinstance(call, FunctionCall)
            else self._custom(step, p, call, b["input"])
        )
        try:
            if call.timeout is None:  # no deadline: no scope to enter
                output = await work
            else:
                async with self.executor.fail_after(call.timeout):
                    output = await work
        except StepError:
            raise
        except TimeoutError as exc:
            msg = f"{call.type} {_label(call)} timed out after {call.timeout:g} s"
            raise StepTimeoutError(msg) from exc
        return _Outcome(_as_json(output, _label(call)), 1)

    def _parts(
        self, step: ProcessStep, p: Processor, plan: Plan, b: dict[str, JSON], parts: list[JSON]
    ) -> RequestParts:
        call = p.call
        assert isinstance(call, HttpCall)
        path = headers = query = body = None
        has_body = False
        for field, value in zip(plan.fields, parts, strict=True):
            if field == "body":
                body, has_body = value, True
                continue
            if value is not None and not isinstance(value, dict):
                msg = f"{field} must return an object, got {_kind(value)}"
                raise ScriptError(msg, fragment=f"{p.name}.{field}")
            if field == "path":
                path = value
            elif field == "headers":
                headers = value
            else:
                query = value
        key = None
        if call.idempotency_key:
            key = f"{self.run_id}:{step.name}:{p.name}:{b.get('index', 0)}"
        return RequestParts(
            path=path,
            headers=headers,
            query=query,
            body=body,
            has_body=has_body,
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
            run_id=self.run_id,
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
