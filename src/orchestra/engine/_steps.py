"""Running one process step: its processors as a dependency graph, concurrently.

:class:`StepRunner` runs each processor: its batches of fragments, its call, its
``output``. The parts live in their own modules: how fragments are batched
(:mod:`._batching`), batches the host answers itself (:mod:`._quick`), outputs sent with
other fragments (:mod:`._outputs`, with :mod:`._flow`), functions and actions
(:mod:`._functions`), and running coroutines concurrently (:mod:`._tasks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import anyio
import attrs
import httpx

from orchestra._json import JSON
from orchestra.engine._batching import Plan, pick, plan_of, uses
from orchestra.engine._flow import Flow
from orchestra.engine._functions import Action, ActionContext, Function, run_call
from orchestra.engine._outputs import (
    JOINT_ITEMS,
    body_size,
    chained,
    item_outputs,
    joint_ok,
    leave,
    tail_of,
    with_tail,
)
from orchestra.engine._quick import clean, host_answer, output_limit, quick_of
from orchestra.engine._tasks import Group, limiter
from orchestra.engine._tasks import on_asyncio as _native
from orchestra.engine._trace import ProcessorTrace, Status
from orchestra.engine._warm import Warmer
from orchestra.errors import ScriptError, StepError
from orchestra.executors import Executor
from orchestra.http import RequestParts, TokenCache, perform
from orchestra.model import HttpCall, Processor, ProcessStep
from orchestra.sandbox import EachCall, FragmentCall, RawJSON, Sandbox

__all__ = ["Action", "ActionContext", "Checkpoint", "Function", "StepRunner", "truthy", "uses"]

Checkpoint = Callable[[ProcessorTrace, JSON], Awaitable[None]]


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
    raw: RawJSON | None = None
    """The body left undecoded for ``output`` (``output`` is then ``None``)."""
    size: int = 0
    """The body's length, when known (see :data:`~._outputs.ECHO_MAX`)."""


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
    warmer: Warmer | None = None
    """Warms the sandbox before HTTP answers are due (see :mod:`._warm`)."""
    native: bool = attrs.field(default=True, init=False)
    """Whether the step runs on asyncio (set by :meth:`run`)."""
    _clean: bool | None = attrs.field(default=None, init=False)
    """Whether the trigger is data the sandbox takes unchanged (found out on first use)."""
    _limit: int | None = attrs.field(default=None, init=False)
    """The sandbox's :func:`output_limit` (found out with :attr:`_clean`)."""
    tail: str | None = None
    """The process's ``output`` fragment, to run in the round trip of the last ``output``
    of the step being run (:meth:`~orchestra.Engine.invoke` sets it for the last step when
    the fragment reads only ``trigger`` and ``out``)."""
    payload: list[JSON] | None = None
    """``[payload]`` once :attr:`tail` ran with the last output, else ``None``."""

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
        native = self.native = _native()
        todo = [p for p in step.processors if p.name not in outputs]
        if len(todo) == 1 and all(n in outputs for n in todo[0].needs):  # no group, no events
            return [await self._one(step, todo[0], outputs, checkpoint, None)]
        event = asyncio.Event if native else anyio.Event
        finished = {p.name: event() for p in step.processors}
        for name in outputs:
            finished[name].set()
        flow: Flow | None = None
        if checkpoint is None and self.chains():
            dependents: dict[str, list[Processor]] = {}
            for p in todo:
                for need in p.needs:
                    dependents.setdefault(need, []).append(p)
            flow = Flow(outputs, dependents, finished, processors={p.name: p for p in todo})
        traces: list[ProcessorTrace] = []
        failure: list[Exception] = []
        group = Group(native)

        async def one(p: Processor) -> None:
            for need in p.needs:
                await finished[need].wait()
            try:  # ``_one`` inlined: one coroutine less to resume per await
                try:
                    trace, output = await self._processor(step, p, flow)
                except StepError as exc:
                    exc.located(process=self.process, step=step.name, processor=p.name)
                    raise
                finally:
                    if flow is not None:  # outputs left to p and not taken: owners send them
                        flow.release(p.name)
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

    def _quick(
        self, fragments: tuple[FragmentCall, ...], b: Mapping[str, JSON]
    ) -> list[JSON] | None:
        """The batch's results if the host answers it itself (see :mod:`._quick`), else None."""
        if quick_of(fragments) is None:
            return None
        if self._clean is None:  # once per run: the trigger does not change
            self._limit = output_limit(self.sandbox)
            self._clean = self._limit is not None and clean(b["trigger"])
        if not self._clean or self._limit is None:
            return None
        return host_answer(fragments, b, limit=self._limit, checked=True)

    def chains(self) -> bool:
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
            elif p.for_each is not None and plan.pre and self.chains():
                results, per = await self.js_each(
                    plan.head, plan.each_names, b, plan.each, step=step.name, processor=p.name,
                    timeout=p.script_timeout,
                )  # fmt: skip
            elif plan.head and (quick := self._quick(plan.head, b)) is not None:
                results = quick
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

    async def js_each(
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
        # With a sandbox that chains, the items' outputs wait for the last action and go
        # in one round trip (nothing can use one before all have ended).
        joint = 1 < len(items) <= JOINT_ITEMS and joint_ok(p, plan) and self.chains()
        kept: list[dict[str, JSON]] = [{}] * len(items)
        sizes = [0] * len(items)
        total = _Outcome()
        slots = limiter(p.concurrency, self.native)
        failure: list[Exception] = []
        group = Group(self.native)
        ready = ready or []

        async def run(i: int, item: JSON) -> None:
            async with slots:
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
                    o = await self._item(step, p, plan, ib, pre, defer=joint)
                except Exception as exc:  # re-raised below, outside the task group
                    failure.append(exc)
                    group.cancel()
                    return
            kept[i], sizes[i] = ib, o.size
            results[i] = o.output
            total.attempts += o.attempts
            total.http_status = o.http_status if total.http_status is None else total.http_status

        await group.run([run(i, item) for i, item in enumerate(items)])
        if failure:
            raise failure[0]
        if joint:
            results = await item_outputs(self, step, p, plan, kept, sizes=sizes)
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
        defer: bool = False,
    ) -> _Outcome:
        """Run the action and ``output`` of one item; ``pre`` holds the results of ``plan.pre``.

        ``b`` may be changed (it is this item's own). With ``flow``, the output may run
        with the first round trip of a processor that waits only for this one, or with
        the process's output (:attr:`tail`). With ``defer``, ``b`` is left ready for the
        output, which the caller runs.
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
            if defer:
                return outcome
            (out,) = plan.output
            tail = tail_of(self, step, p) if p.for_each is None else None
            if tail is not None and "$" not in out.source:
                ended = await with_tail(self, step, p, out, b, tail=tail)
                if ended is not None:
                    outcome.output = ended[0]
                    return outcome
            if flow is not None and p.for_each is None and self.native:
                left = await leave(p, out, b, flow, outcome.size)
                if left is not None:  # sent with the output of the processor it was left to
                    outcome.output = left[0]
                    return outcome
            nxt = flow.next_of(p) if flow is not None else None
            if nxt is not None and flow is not None:
                d, chain, waits = nxt
                for name in waits:  # outputs under way: this one goes with d right after
                    await flow.finished[name].wait()
                if flow.ready(p, d):
                    flow.sending.add(p.name)
                    adopted = flow.adopt(p, d)
                    try:
                        sent = await chained(self, step, p, out, b, chain=chain, adopted=adopted)
                    finally:
                        for a in adopted:  # not sent (an error): its owner sends it alone
                            a.release()
                    if sent is not None:
                        outcome.output, flow.prefetched[d.name] = sent
                        return outcome
            if flow is not None:
                flow.sending.add(p.name)
            # One fragment: ``evaluate`` (what a Sandbox must implement).
            outcome.output = await self.js(
                out.source, b, name=out.name, step=step.name, processor=p.name,
                timeout=p.script_timeout,
            )  # fmt: skip
        return outcome

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
            warmer = self.warmer
            expected = None if warmer is None else warmer.sent(call.method, call.url)
            ok = False
            try:
                result = await perform(
                    call,
                    self._parts(step, p, plan, b, parts),
                    client=self.client,
                    executor=self.executor,
                    secrets=self.secrets,
                    tokens=self.tokens,
                    raw_json=bool(plan.output) and self.sandbox.accepts_raw_json,
                )
                ok = result.attempts == 1
            finally:
                if warmer is not None:
                    warmer.answered(expected, ok=ok)
            return _Outcome(
                result.body, result.attempts, result.status, result.raw, body_size(result)
            )
        return _Outcome(await run_call(self, step, p, call, b["input"]), 1)

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


def _kind(value: JSON) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )
