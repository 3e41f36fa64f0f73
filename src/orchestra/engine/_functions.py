"""Calling the host's Python functions and actions, and making their results JSON data.

A processor's ``call`` is an HTTP request (:mod:`orchestra.http`), a function the host
registered (``functions=``) or an action of a kind the host added (``actions=``). This
module runs the last two, with their deadline, turns their errors into
:class:`~orchestra.ActionError`, and copies what they return into fresh JSON data, so that
nothing the host keeps a reference to ends up in a run's context.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs
import httpx

from orchestra._json import JSON
from orchestra.errors import ActionError, DefinitionError, Problem, StepError, StepTimeoutError
from orchestra.executors import Executor
from orchestra.model import ActionCall, FunctionCall, Processor, ProcessStep

if TYPE_CHECKING:
    from orchestra.engine._steps import StepRunner

__all__ = ["Action", "ActionContext", "Function", "as_json", "run_call"]

Function = Callable[[JSON], JSON | Awaitable[JSON]]


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


async def run_call(
    runner: StepRunner,
    step: ProcessStep,
    p: Processor,
    call: FunctionCall | ActionCall,
    value: JSON,
) -> JSON:
    """Run ``p``'s function or action on ``value`` (its input) and return its result as JSON."""
    work = (
        _call_function(runner, call, value)
        if isinstance(call, FunctionCall)
        else _call_action(runner, step, p, call, value)
    )
    try:
        if call.timeout is None:  # no deadline: no scope to enter
            output = await work
        else:
            async with runner.executor.fail_after(call.timeout):
                output = await work
    except StepError:
        raise
    except TimeoutError as exc:
        msg = f"{call.type} {_label(call)} timed out after {call.timeout:g} s"
        raise StepTimeoutError(msg) from exc
    return as_json(output, _label(call))


async def _call_function(runner: StepRunner, call: FunctionCall, value: JSON) -> Any:
    """Call the registered function ``call`` names (in the executor, unless it is async)."""
    func = runner.functions.get(call.name)
    if func is None:
        raise DefinitionError([Problem("call.name", f"no function {call.name!r} is registered")])
    try:
        if _is_async(func):
            return await cast("Awaitable[JSON]", func(value))
        result = await runner.executor.run_sync(lambda: func(value))
        if inspect.isawaitable(result):
            return await result
    except StepError:
        raise
    except Exception as exc:
        msg = f"function {call.name!r} raised {type(exc).__name__}: {exc}"
        raise ActionError(msg) from exc
    return result


async def _call_action(
    runner: StepRunner, step: ProcessStep, p: Processor, call: ActionCall, value: JSON
) -> Any:
    """Run the action of the kind ``call`` names."""
    action = runner.actions.get(call.kind)
    if action is None:
        raise DefinitionError([Problem("call.kind", f"no action kind {call.kind!r} is registered")])
    ctx = ActionContext(
        process=runner.process,
        step=step.name,
        processor=p.name,
        client=runner.client,
        executor=runner.executor,
        secrets=runner.secrets,
        run_id=runner.run_id,
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


_ASYNC: dict[int, tuple[Function, bool]] = {}
_ASYNC_SIZE = 1024


def _is_async(func: Function) -> bool:
    """``inspect.iscoroutinefunction(func)``, cached per function (it unwraps on every call)."""
    cached = _ASYNC.get(id(func))
    if cached is not None and cached[0] is func:
        return cached[1]
    result = inspect.iscoroutinefunction(func)
    if len(_ASYNC) >= _ASYNC_SIZE:
        _ASYNC.clear()
    _ASYNC[id(func)] = (func, result)
    return result


class _Unusual(Exception):
    """A value :func:`_copy` leaves to the ``json`` module (to keep its exact rules)."""


_DEPTH = 64  # deeper values (and cycles) go through ``json``, which has its own rules


def _copy(value: Any, depth: int) -> JSON:
    """A fresh copy of plain JSON data (exact types only); raise :class:`_Unusual` otherwise."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value  # type: ignore[no-any-return]
    if t is float:
        if not math.isfinite(value):
            raise _Unusual
        return value  # type: ignore[no-any-return]
    if depth >= _DEPTH:
        raise _Unusual
    if t is dict:
        out: dict[str, JSON] = {}
        for k, v in value.items():
            if type(k) is not str:  # json turns 1, 1.5, True, None into strings
                raise _Unusual
            out[k] = _copy(v, depth + 1)
        return out
    if t is list or t is tuple:
        return [_copy(v, depth + 1) for v in value]
    raise _Unusual


def as_json(value: Any, label: str) -> JSON:
    """``value`` as fresh JSON data, as ``json.loads(json.dumps(value, allow_nan=False))``.

    Plain data (the usual result) is copied by a walk several times cheaper than the
    round trip through text; anything else (other key or value types, subclasses, NaN,
    deep nesting, cycles) takes the round trip, so its rules and errors are the json
    module's, as they always were.
    """
    try:
        return _copy(value, 0)
    except _Unusual:
        pass
    try:
        result: JSON = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        msg = f"{label} returned a value that is not JSON: {exc}"
        raise ActionError(msg) from None
    return result
