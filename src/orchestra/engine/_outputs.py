"""Where ``output`` fragments run: in fewer round trips than one per output.

A processor's ``output`` runs after its call, in a round trip of its own unless one of
these sends it with other fragments (with a sandbox that runs
:meth:`~orchestra.sandbox.Sandbox.evaluate_each` in one call):

- :func:`chained`: with the first batch of a processor that waits only for this one
  (and with the outputs :func:`leave` left to it);
- :func:`leave`: a processor whose only dependent also waits for another one still at
  work leaves its output to that one (:meth:`~._flow.Flow.defer_to`);
- :func:`item_outputs`: a ``for_each``'s items' outputs, all in one round trip once every
  item's call has ended;
- :func:`with_tail`: the last output of the last step with the process's ``output``
  (:func:`tail_of`).

Every error is still reported by the fragment that owns it: when a joint round trip
fails, the outputs run again the plain way and meet their errors there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from orchestra._json import JSON
from orchestra.engine._batching import Chain, Plan, joined, pick, plain, plan_of, union, uses
from orchestra.engine._flow import Deferred, Flow
from orchestra.engine._tasks import Group
from orchestra.errors import ScriptError, StepError
from orchestra.http import HttpResult
from orchestra.model import Processor, ProcessStep
from orchestra.sandbox import FragmentCall

if TYPE_CHECKING:
    from orchestra.engine._steps import StepRunner

__all__ = [
    "ECHO_MAX",
    "JOINT_ITEMS",
    "body_size",
    "chained",
    "item_outputs",
    "joint_ok",
    "leave",
    "output_alone",
    "tail_of",
    "with_tail",
]

JOINT_ITEMS = 16  # items whose outputs go in one round trip (their bindings go twice)
_CHAIN_COMMON = frozenset(("trigger", "out"))
_PER_ITEM = frozenset(("trigger", "out", "input", "item", "index", "response", "status"))


# A batch that binds a response under its own name gets it back as a result: larger
# bodies are not worth the trip saved.
ECHO_MAX = 16 * 1024


def body_size(result: HttpResult) -> int:
    """The length of a response's body: its text, or what its headers say (0: unknown)."""
    if result.raw is not None:
        return len(result.raw.text)
    try:
        return int(result.headers.get("content-length") or 0)
    except ValueError:
        return 0


def joint_ok(p: Processor, plan: Plan) -> bool:
    """Whether the items' outputs of ``p`` may go in one round trip (see :func:`item_outputs`)."""
    if not plan.output:
        return False
    source = plan.output[0].source
    names = uses(source)
    return names is not None and _PER_ITEM.issuperset(names) and "$" not in source


def tail_of(runner: StepRunner, step: ProcessStep, p: Processor) -> str | None:
    """The process's output, if it can run with ``p``'s: every other processor has ended.

    Only with a sandbox that chains (else it is no round trip less), and when ``p``
    has the process's deadline (none of its own).
    """
    if runner.tail is None or p.script_timeout is not None or not plain(p.name):
        return None
    steps = runner.context["steps"]
    assert isinstance(steps, dict)
    done = steps[step.name]
    assert isinstance(done, dict)
    if all(q is p or q.name in done for q in step.processors) and runner.chains():
        return runner.tail
    return None


async def item_outputs(
    runner: StepRunner,
    step: ProcessStep,
    p: Processor,
    plan: Plan,
    kept: list[dict[str, JSON]],
    *,
    sizes: list[int],
) -> list[JSON]:
    """Run the ``output`` of every item (bindings in ``kept``) in one round trip.

    Each item's own bindings (``response``, ``input``...) are passed under other names
    and bound before its output by a fragment that returns them (so they travel back
    too). With :func:`tail_of`, the process's output goes last, on the list as
    ``out.<p>``. Any error runs the outputs one by one instead, as without this, so
    the error is the one they give, from the fragment that owns it. Large responses
    (that would travel back) make the outputs go one per item, at once, instead.
    """
    (out,) = plan.output
    if any(size > ECHO_MAX for size in sizes[1:]):
        return await outputs_apart(runner, step, p, out, kept)
    names = uses(out.source) or ()
    own = [n for n in names if n not in _CHAIN_COMMON]
    tail = tail_of(runner, step, p)
    first = kept[0]
    bindings: dict[str, JSON] = {n: first[n] for n in names if n in _CHAIN_COMMON}
    fragments: list[FragmentCall] = []
    at: list[int] = []
    for k, ib in enumerate(kept):
        for n in own:
            if k == 0:
                bindings[n] = ib.get(n)
            else:
                alias = f"${k}{n}"
                bindings[alias] = ib.get(n)
                fragments.append(FragmentCall(out.name, alias, bind=n))
        at.append(len(fragments))
        fragments.append(FragmentCall(out.name, out.source, bind=f"$o{k}" if tail else None))
    if tail is not None:
        if "out" not in bindings:
            bindings["out"] = first["out"]
        if "trigger" not in bindings:
            bindings["trigger"] = first["trigger"]
        items = ",".join(f"$o{k}" for k in range(len(kept)))
        fragments.append(FragmentCall(out.name, f"[{items}]", bind=f"out.{p.name}"))
        fragments.append(FragmentCall("output", tail))
    try:
        results, _ = await runner.sandbox.evaluate_each(
            tuple(fragments), bindings, None, timeout=p.script_timeout
        )
    except StepError:
        return [await output_alone(runner, step, p, out, ib) for ib in kept]
    if tail is not None:
        runner.payload = [results[-1]]
    return [results[i] for i in at]


async def outputs_apart(
    runner: StepRunner,
    step: ProcessStep,
    p: Processor,
    out: FragmentCall,
    kept: list[dict[str, JSON]],
) -> list[JSON]:
    """Run the items' outputs each in its own round trip, all at once."""
    results: list[JSON] = [None] * len(kept)
    failure: list[Exception] = []
    group = Group(runner.native)

    async def one(i: int, ib: dict[str, JSON]) -> None:
        try:
            results[i] = await output_alone(runner, step, p, out, ib)
        except Exception as exc:  # re-raised below, outside the task group
            failure.append(exc)
            group.cancel()

    await group.run([one(i, ib) for i, ib in enumerate(kept)])
    if failure:
        raise failure[0]
    return results


async def output_alone(
    runner: StepRunner, step: ProcessStep, p: Processor, out: FragmentCall, b: dict[str, JSON]
) -> JSON:
    return await runner.js(
        out.source, b, name=out.name, step=step.name, processor=p.name,
        timeout=p.script_timeout,
    )  # fmt: skip


async def with_tail(
    runner: StepRunner,
    step: ProcessStep,
    p: Processor,
    out: FragmentCall,
    b: dict[str, JSON],
    *,
    tail: str,
) -> list[JSON] | None:
    """Run ``p``'s output and then the process's, in one round trip; return ``[p's]``.

    On an error in the process's output, ``p``'s runs again alone (``None``), and the
    process's output meets its error on its own, as without this.
    """
    fragments = (
        FragmentCall(out.name, out.source, bind=f"out.{p.name}"),
        FragmentCall("output", tail),
    )
    names = union(fragments)
    picked = pick(b, None if names is None else (*names, "out", "trigger"))
    try:
        results, _ = await runner.sandbox.evaluate_each(
            fragments, picked, None, timeout=p.script_timeout
        )
    except ScriptError as exc:
        if exc.fragment == out.name:
            raise exc.located(process=runner.process, step=step.name, processor=p.name) from None
        return None
    except StepError:
        return None
    runner.payload = [results[1]]
    return [results[0]]


async def leave(
    p: Processor, out: FragmentCall, b: dict[str, JSON], flow: Flow, size: int
) -> list[JSON] | None:
    """Leave ``p``'s output to the processor :meth:`Flow.defer_to` names, if any.

    Returns ``[output]`` once that one sent it, or ``None`` (it did not: an error, or
    it ended otherwise) for ``p`` to send it itself.
    """
    q = flow.defer_to(p)
    if q is None or not joint_ok(p, plan_of(p)) or size > ECHO_MAX:
        return None
    taken: asyncio.Future[list[JSON] | None] = asyncio.get_running_loop().create_future()
    flow.deferred[p.name] = Deferred(p, out, b, q, taken)
    return await taken


async def chained(
    runner: StepRunner,
    step: ProcessStep,
    p: Processor,
    out: FragmentCall,
    b: dict[str, JSON],
    *,
    chain: Chain,
    adopted: Sequence[Deferred] = (),
) -> tuple[JSON, tuple[list[JSON], list[list[JSON]] | None]] | None:
    """Run ``p``'s output and, per ``chain``, a dependent's first round trip together.

    Returns the output and the dependent's results, or ``None`` when a fragment of the
    dependent failed (``p``'s output then runs alone, and the dependent meets its error
    on its own). The ``adopted`` outputs (left to ``p``) go after ``p``'s, each after
    fragments binding its own ``response``, ``input``... (passed under other names);
    each gets its value by :meth:`Deferred.release`.
    """
    fragments, joint_names = joined(p, out, chain)
    names: tuple[str, ...] | None = joint_names
    bindings: Mapping[str, JSON] = b
    each = chain.each
    at: list[int] = []
    if adopted:
        extra: list[FragmentCall] = []
        picked = pick(b, names)
        for k, a in enumerate(adopted, 1):
            used = uses(a.out.source) or ()
            for n in used:
                if n not in a.bindings:  # ``item`` of a processor without for_each
                    continue
                if n in _CHAIN_COMMON:
                    picked[n] = a.bindings[n]
                else:
                    alias = f"${k}{n}"
                    picked[alias] = a.bindings.get(n)
                    extra.append(FragmentCall(a.out.name, alias, bind=n))
            at.append(1 + len(extra))
            extra.append(FragmentCall(a.out.name, a.out.source, bind=f"out.{a.processor.name}"))
        fragments = (fragments[0], *extra, *fragments[1:])
        if each is not None:
            each = attrs.evolve(each, over=each.over + len(extra))
        bindings, names = picked, None
    try:
        results, per = await runner.js_each(
            fragments, names, bindings, each, step=step.name, processor=p.name,
            timeout=p.script_timeout,
        )  # fmt: skip
    except ScriptError as exc:
        if exc.fragment == out.name:
            raise
        return None
    except StepError:
        return None
    for a, i in zip(adopted, at, strict=True):
        a.release([results[i]])
    skip = 1 + (len(fragments) - 1 - len(chain.head))
    return results[0], (results[skip:], per)
