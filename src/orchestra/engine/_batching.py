"""How a processor's fragments become sandbox round trips: which bindings, which batches.

A processor's fragments are batched (:func:`plan_of`); a ``for_each`` can build its items'
requests in the round trip of its list (:func:`each_of`); a processor that waits only for
another can run its first batch with that one's ``output`` (:func:`chain_of`,
:func:`joined`). All of it is decided per processor, once, and cached. While a step runs,
:mod:`._flow` tracks what can go together and :mod:`._outputs` sends it; batches that
only read data are answered in the host instead (:mod:`._quick`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from orchestra._json import JSON
from orchestra.model import HttpCall, Processor
from orchestra.sandbox import EachCall, FragmentCall

__all__ = [
    "BINDINGS",
    "ITEM",
    "Chain",
    "Plan",
    "chain_of",
    "each_of",
    "joined",
    "pick",
    "plain",
    "plan_of",
    "union",
    "uses",
]


# Every name the engine binds, in the order bindings are passed.
BINDINGS = ("ctx", "trigger", "out", "input", "item", "index", "response", "status")
ITEM = frozenset(("item", "index"))  # bound per item by ``evaluate_each``
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
        result = tuple(n for n in BINDINGS if n in words)
    if len(_USES) >= _CACHE_SIZE:
        _USES.clear()
    _USES[source] = result
    return result


def union(fragments: Sequence[FragmentCall]) -> tuple[str, ...] | None:
    """The binding names any of ``fragments`` may use (``None``: any name)."""
    names: set[str] = set()
    for f in fragments:
        used = uses(f.source)
        if used is None:
            return None
        names.update(used)
    return tuple(n for n in BINDINGS if n in names)


def pick(bindings: Mapping[str, JSON], names: tuple[str, ...] | None) -> dict[str, JSON]:
    """The bindings among ``names`` (all of them for ``None``)."""
    if names is None:
        return dict(bindings)
    return {n: bindings[n] for n in names if n in bindings}


_FIELDS = ("path", "headers", "query", "body")


@attrs.frozen
class Plan:
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
    each: EachCall | None = None
    """:func:`each_of` the processor (precomputed)."""
    each_names: tuple[str, ...] | None = None
    """The bindings ``head`` and ``pre`` may use but ``item`` and ``index`` (``None``: any)."""


_PLANS: dict[int, tuple[Processor, Plan]] = {}


def plan_of(p: Processor) -> Plan:
    """How ``p``'s fragments are batched (cached per processor)."""
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
    pre_names = union(pre)
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
    plan = Plan(
        head=tuple(head),
        head_names=union(head),
        pre=tuple(pre),
        pre_names=union(pre),
        input_binding=input_binding,
        fields=tuple(fields),
        output=output,
    )
    if p.for_each is not None and plan.pre:
        names = union(plan.head + plan.pre)
        plan = attrs.evolve(
            plan,
            each=each_of(p, plan),
            each_names=None if names is None else tuple(n for n in names if n not in ITEM),
        )
    if len(_PLANS) >= _CACHE_SIZE:
        _PLANS.clear()
    _PLANS[id(p)] = (p, plan)
    return plan


_EACH_LIMIT = 64  # items whose request fragments run with their processor's for_each
_CHAIN_FREE = frozenset(("trigger", "out"))
_IDENTIFIER_FULL = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")
_PLAIN: dict[str, bool] = {}  # processor name -> whether it is a plain identifier


@attrs.frozen
class Chain:
    """A processor's fragments that may run in the round trip of a dependency's output.

    They see only ``trigger`` and ``out`` (and what they bind themselves), so they can run
    right after the output they wait for, bound as ``out.<name>``, in the same batch.
    """

    head: tuple[FragmentCall, ...]
    names: frozenset[str]
    each: EachCall | None
    """The items' request fragments, over the results of the output and ``head``."""


def each_of(p: Processor, plan: Plan) -> EachCall | None:
    """The items' request fragments, run with ``for_each`` (``None`` if there are none)."""
    if p.for_each is None or not plan.pre:
        return None
    return EachCall(len(plan.head) - 1, plan.pre, _EACH_LIMIT, plan.input_binding)


def _allowed(fragments: Sequence[FragmentCall], allowed: frozenset[str]) -> bool:
    for f in fragments:
        used = uses(f.source)
        if used is None or not allowed.issuperset(used):
            return False
        if f.bind == "input":
            allowed |= {"input"}
    return True


_CHAINS: dict[int, tuple[Processor, Chain | None]] = {}


def chain_of(p: Processor) -> Chain | None:
    """How ``p``'s first round trip can join a dependency's output, or ``None`` if it cannot."""
    cached = _CHAINS.get(id(p))
    if cached is not None and cached[0] is p:
        return cached[1]
    plan = plan_of(p)
    chain: Chain | None = None
    if p.for_each is not None:
        own = _CHAIN_FREE | {"item", "index"} | ({"input"} if plan.input_binding else set())
        if _allowed(plan.head, _CHAIN_FREE) and _allowed(plan.pre, own):
            each = each_of(p, plan)
            names = union(plan.head + (each.fragments if each else ()))
            if each is not None:  # for_each comes after the output it joins
                each = attrs.evolve(each, over=each.over + 1)
            chain = Chain(plan.head, frozenset(names or ()) - ITEM, each)
    elif plan.head and not plan.pre and not plan.input_binding and _allowed(plan.head, _CHAIN_FREE):
        chain = Chain(plan.head, frozenset(union(plan.head) or ()), None)
    if len(_CHAINS) >= _CACHE_SIZE:
        _CHAINS.clear()
    _CHAINS[id(p)] = (p, chain)
    return chain


_JOINED: dict[tuple[int, int], tuple[Processor, Chain, tuple[FragmentCall, ...], tuple[str, ...]]]
_JOINED = {}


def joined(
    p: Processor, out: FragmentCall, chain: Chain
) -> tuple[tuple[FragmentCall, ...], tuple[str, ...]]:
    """``p``'s output (as ``out.<name>``) and ``chain``'s head as one batch, with its bindings.

    The bindings are those the batch may use but ``item`` and ``index`` (cached per
    processor and chain).
    """
    key = (id(p), id(chain))
    cached = _JOINED.get(key)
    if cached is not None and cached[0] is p and cached[1] is chain:
        return cached[2], cached[3]
    fragments = (FragmentCall(out.name, out.source, bind=f"out.{p.name}"), *chain.head)
    own = uses(out.source)
    names = tuple(
        n for n in BINDINGS if n not in ITEM and (n in chain.names or own is None or n in own)
    )
    if len(_JOINED) >= _CACHE_SIZE:
        _JOINED.clear()
    _JOINED[key] = (p, chain, fragments, names)
    return fragments, names


def plain(name: str) -> bool:
    """Whether a processor's name is an identifier (so ``out.<name>`` can be a bind)."""
    plain = _PLAIN.get(name)
    if plain is None:
        if len(_PLAIN) >= _CACHE_SIZE:
            _PLAIN.clear()
        plain = _PLAIN[name] = _IDENTIFIER_FULL.match(name) is not None
    return plain
