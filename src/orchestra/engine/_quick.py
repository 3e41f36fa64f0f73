"""Batches the host answers itself: fragments that only read data, with no round trip.

A round trip to a worker costs hundreds of microseconds after an idle moment (the critical
path of a payload has one after every HTTP wait), while many request fragments only read
data: ``({sku: trigger.params.sku})``, ``Boolean(trigger.query.customer)``. A batch made
only of such fragments is answered in the host, by reading the same JSON data, with the
sandbox's conversion rules; anything else, or anything unusual in the data (a missing key,
a number or string the conversion would change or refuse), goes to the sandbox as before,
so every error is still the sandbox's. No code of the fragment runs in the host: the
grammar below has no calls but ``Boolean``, no operators and no computed keys.

``tests/engine/test_host_answers.py`` checks, by property tests against the real
sandboxes, that an answer from here is always the sandbox's answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from orchestra._json import JSON
from orchestra.engine._batching import uses
from orchestra.sandbox import FragmentCall, InProcessSandbox, Sandbox, WorkerSandbox

__all__ = ["Slow", "answer", "clean", "host_answer", "output_limit", "quick_of"]

_CACHE_SIZE = 4096

# Only ASCII blanks separate tokens: Python's ``\s`` also takes U+001C-U+001F and U+0085,
# which are no whitespace in JavaScript (a syntax error there).
_BLANK = " \t\n\r"
_TOKEN = re.compile(
    r"[ \t\n\r]*(?:(?P<name>[A-Za-z_$][A-Za-z0-9_$]*)|(?P<num>0|[1-9][0-9]{0,14})(?![0-9.eExXn_])"
    r"|'(?P<s1>[^'\\\n\r]*)'|\"(?P<s2>[^\"\\\n\r]*)\"|(?P<punct>[(){}.:,]))"
)
_LITERALS: dict[str, JSON] = {"true": True, "false": False, "null": None}
_QUICK_ROOTS = frozenset(("trigger", "input"))
_READ = frozenset(("trigger", "input"))  # the only binding names a fragment may mention
_MAX_QUICK_STRING = 4096


class Slow(Exception):
    """A fragment or value the host does not answer itself: the sandbox does."""


# A node: ("lit", value) | ("path", root, keys) | ("bool", path) | ("obj", ((key, node), ...))
Node = tuple[object, ...]


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, end = 0, len(source.rstrip(_BLANK))
    while pos < end:
        m = _TOKEN.match(source, pos)
        if m is None:
            raise Slow
        kind = m.lastgroup or ""
        text = m.group(kind)
        out.append(("str", text) if kind in ("s1", "s2") else (kind, text))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, source: str) -> None:
        self.toks = _tokens(source)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "end" or (text is not None and tok[1] != text):
            raise Slow
        self.i += 1
        return tok

    def top(self) -> Node:
        kind, text = self.peek()
        if kind == "punct" and text == "(":
            self.take()
            node = self.obj() if self.peek()[1] == "{" else self.value()
            self.take(")")
        elif kind == "name" and text == "Boolean":
            self.take()
            self.take("(")
            node = ("bool", self.value())
            self.take(")")
        else:
            node = self.value()
        if self.i != len(self.toks):
            raise Slow
        return node

    def obj(self) -> Node:
        self.take("{")
        fields: list[tuple[str, Node]] = []
        while self.peek()[1] != "}":
            kind, key = self.take()
            if kind == "str":  # a quoted key: only plain names (no digits first, no __proto__)
                if not re.fullmatch(r"[A-Za-z_$-][A-Za-z0-9_$-]*", key):
                    raise Slow
            elif kind != "name":
                raise Slow
            if key == "__proto__":
                raise Slow
            self.take(":")
            fields.append((key, self.value()))
            if self.peek()[1] != ",":
                break
            self.take(",")
        self.take("}")
        return ("obj", tuple(fields))

    def value(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return ("lit", int(text))
        if kind == "str":
            return ("lit", text)
        if kind != "name":
            raise Slow
        if text in _LITERALS:
            return ("lit", _LITERALS[text])
        if text not in _QUICK_ROOTS:
            raise Slow
        keys: list[str] = []
        while self.peek()[1] == ".":
            self.take()
            kind, key = self.take()
            if kind != "name" or key == "__proto__":
                raise Slow
            keys.append(key)
        return ("path", text, tuple(keys))


def _parse(source: str) -> Node | None:
    if "/" in source or "\\" in source or "`" in source:  # comments, regexps, escapes
        return None
    try:
        return _Parser(source).top()
    except Slow:
        return None


_QUICK: dict[tuple[FragmentCall, ...], tuple[Node, ...] | None] = {}


def quick_of(fragments: tuple[FragmentCall, ...]) -> tuple[Node, ...] | None:
    """The parsed fragments, if the host can answer the batch itself (cached per batch).

    Each fragment must read only ``trigger``, or ``input`` when an earlier fragment of the
    batch binds it, and every bind must be ``input``. No other binding's name may appear
    in it, even as a key or in a string: the engine would send that binding, and the
    sandbox refuses one it cannot take (an integer beyond 2^53 in ``ctx``) even unread.
    """
    found = _QUICK.get(fragments, False)
    if found is not False:
        return found  # type: ignore[return-value]
    nodes: list[Node] | None = []
    bound: set[str] = {"trigger"}
    for f in fragments:
        node = _parse(f.source)
        if (
            node is None
            or not _roots(node) <= bound
            or f.bind not in (None, "input")
            or not _reads_only(f.source)
        ):
            nodes = None
            break
        nodes.append(node)  # type: ignore[union-attr]
        if f.bind is not None:
            bound.add(f.bind)
    result = None if nodes is None else tuple(nodes)
    if len(_QUICK) >= _CACHE_SIZE:
        _QUICK.clear()
    _QUICK[fragments] = result
    return result


def _reads_only(source: str) -> bool:
    """Whether ``source`` names no binding but ``trigger`` and ``input`` (``{status: 'ctx'}``)."""
    used = uses(source)
    return used is not None and _READ.issuperset(used)


def _roots(node: Node) -> set[str]:
    if node[0] == "path":
        return {node[1]}  # type: ignore[arg-type]
    if node[0] == "bool":
        return _roots(node[1])  # type: ignore[arg-type]
    if node[0] == "obj":
        return set().union(*(_roots(n) for _, n in node[1]))  # type: ignore[attr-defined]
    return set()


def answer(
    fragments: tuple[FragmentCall, ...], nodes: tuple[Node, ...], bindings: Mapping[str, JSON]
) -> list[JSON]:
    """Answer a batch that :func:`quick_of` parsed, as the sandbox would; raise :class:`Slow`.

    Of ``bindings``, only ``trigger`` is read; it must be data the sandbox takes as it is
    (see :func:`clean`).
    """
    scope: dict[str, JSON] = {"trigger": bindings["trigger"]} if "trigger" in bindings else {}
    results: list[JSON] = []
    for f, node in zip(fragments, nodes, strict=True):
        value = _eval(node, scope)
        results.append(value)
        if f.bind is not None:
            scope[f.bind] = value
        if f.guard and not (value if not isinstance(value, (dict, list)) else True):
            break
    return results


def _eval(node: Node, scope: dict[str, JSON]) -> JSON:
    kind = node[0]
    if kind == "lit":
        return _scalar(node[1])  # type: ignore[arg-type]
    if kind == "obj":
        return {key: _eval(n, scope) for key, n in node[1]}  # type: ignore[attr-defined]
    if kind == "bool":
        value = _read(node[1], scope)  # type: ignore[arg-type]
        return True if isinstance(value, (dict, list)) else bool(value)
    return _scalar(_read(node, scope))


def _read(node: Node, scope: dict[str, JSON]) -> JSON:
    if node[0] != "path":
        return _eval(node, scope)
    if node[1] not in scope:  # not bound: a ReferenceError in the sandbox
        raise Slow
    value = scope[node[1]]
    for key in node[2]:  # type: ignore[attr-defined]
        if type(value) is not dict or key not in value:  # undefined or a JS property: sandbox
            raise Slow
        value = value[key]
    return value


def _scalar(value: JSON) -> JSON:
    """``value`` as the sandbox would return it, for the scalars it returns unchanged."""
    t = type(value)
    if value is None or t is bool:
        return value
    if t is str:
        assert isinstance(value, str)
        if len(value) > _MAX_QUICK_STRING or not (value.isascii() or _encodable(value)):
            raise Slow  # lone surrogates come back as U+FFFD
        return value
    if t is int:
        assert isinstance(value, int)
        if -_MAX_SAFE <= value <= _MAX_SAFE:
            return value
    raise Slow  # objects, arrays (copies), floats (3.0 comes back as 3), big integers


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


_MAX_SAFE = 2**53 - 1


_CLEAN_BUDGET = 4096  # values walked at most; a bigger trigger goes to the sandbox


def clean(value: JSON) -> bool:
    """Whether the sandbox takes ``value`` as a binding as it is (no error, no change).

    Plain JSON types only (str keys), integers within ±(2^53-1), finite floats, not too
    deep and not too big (the walk is paid once per run): a binding the sandbox would
    refuse must reach it, to fail there.
    """
    budget = [_CLEAN_BUDGET]
    return _clean(value, 0, budget)


def _clean(value: JSON, depth: int, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -_MAX_SAFE <= value <= _MAX_SAFE  # type: ignore[operator]
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if depth > 100:
        return False
    if t is dict:
        return all(
            type(k) is str and _clean(v, depth + 1, budget)
            for k, v in value.items()  # type: ignore[union-attr]
        )
    if t is list:
        return all(_clean(v, depth + 1, budget) for v in value)  # type: ignore[union-attr]
    return False


def output_limit(sandbox: Sandbox) -> int | None:
    """The largest result ``sandbox`` returns, for orchestra's own sandboxes; else ``None``.

    The host answers only for these two: their rules are the ones it follows. (A result
    over the limit is an error there, so the host must not answer it either.)
    """
    if isinstance(sandbox, WorkerSandbox):
        return sandbox.limits.max_output_chars
    if isinstance(sandbox, InProcessSandbox):
        return sandbox.max_output_chars
    return None


def host_answer(
    fragments: tuple[FragmentCall, ...],
    bindings: Mapping[str, JSON],
    *,
    limit: int,
    checked: bool = False,
) -> list[JSON] | None:
    """The batch's results if the host answers it; ``None``: the sandbox must.

    ``bindings`` are those the engine would send (the trigger, perhaps ``input``);
    ``limit`` is the sandbox's :func:`output_limit`; ``checked``: the trigger is known
    to be :func:`clean` (the engine checks it once per run).
    """
    nodes = quick_of(fragments)
    if nodes is None:
        return None
    if not (checked or clean(bindings.get("trigger"))) or not clean(bindings.get("input")):
        return None  # ``input`` is replaced before it is read, but the sandbox checks it
    try:
        results = answer(fragments, nodes, bindings)
    except Slow:
        return None
    if not all(_fits(r, limit) for r in results):
        return None
    return results


def _fits(value: JSON, limit: int) -> bool:
    """Whether the sandbox's JSON text of ``value`` has at most ``limit`` UTF-16 code units."""
    if limit >= 17 and (value is None or type(value) is bool or type(value) is int):
        return True  # at most ``-9007199254740991``
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limit and text.isascii():
        return True
    return len(text) + sum(1 for c in text if c > "\uffff") <= limit
