"""The sandbox interface: evaluate a JavaScript fragment on JSON bindings, get JSON back."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import ClassVar, Self

import attrs

from orchestra._json import JSON
from orchestra.errors import ScriptError

__all__ = ["EachCall", "FragmentCall", "RawJSON", "Sandbox"]


@attrs.frozen(cache_hash=True)
class FragmentCall:
    """One fragment of a batch run by :meth:`Sandbox.evaluate_all`.

    Attributes:
        name: labels the fragment in errors (``"price.query"``).
        source: the fragment's JavaScript (an expression or a function body).
        bind: if set, later fragments of the batch see this fragment's result under this
            name (a JavaScript identifier), as JSON data, in place of any binding of
            that name.
        guard: if true and the result is falsy by JavaScript's rules (``false``, ``0``,
            ``""``, ``null``), the batch stops after this fragment.

    """

    name: str
    source: str
    bind: str | None = None
    guard: bool = False


@attrs.frozen(cache_hash=True)
class EachCall:
    """Fragments that :meth:`Sandbox.evaluate_each` runs once per element of a list.

    Attributes:
        over: index, in the batch, of the fragment whose result is the list.
        fragments: the batch run for each element (binds and guards as in
            :meth:`Sandbox.evaluate_all`), with ``item`` bound to the element and
            ``index`` to its position.
        limit: only the first ``limit`` elements are run.
        bind_input: also bind the element as ``input``.

    """

    over: int
    fragments: tuple[FragmentCall, ...]
    limit: int = 64
    bind_input: bool = False


_UNSET: object = object()


class RawJSON:
    """JSON text to bind as it is, not decoded in the host: an HTTP response body, say.

    Only sandboxes whose :attr:`Sandbox.accepts_raw_json` is true take it as a binding
    value. They bind what :attr:`value` is: ``json.loads(text)``, or ``text`` itself (a
    string) when that is not JSON, with the data rules of any binding (integers beyond
    ±(2^53-1), NaN and infinities are refused). The text can cross into JavaScript as it
    is, so a body that only a fragment reads is never decoded in the host.
    """

    __slots__ = ("_ok", "_text", "_value")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"RawJSON takes a str, not {type(text).__name__}")
        self._text = text
        self._value: object = _UNSET
        self._ok: bool | None = None  # whether text may cross as it is: the codec's to say

    @property
    def text(self) -> str:
        """The JSON text (read-only)."""
        return self._text

    @property
    def value(self) -> JSON:
        """The decoded value (decoded once, on first use)."""
        value = self._value
        if value is _UNSET:
            try:
                value = json.loads(self._text)
            except ValueError:
                value = self._text
            self._value = value
        return value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"RawJSON({self._text[:60]!r})"


_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")
_DOTTED = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)?\Z")


def bind_into(scope: dict[str, JSON], bind: str, value: JSON) -> None:
    """Bind ``value`` in ``scope`` as ``name``, or as property ``key`` for ``name.key``."""
    name, dot, key = bind.partition(".")
    if not dot:
        scope[name] = value
        return
    base = scope.get(name)
    scope[name] = {**base, key: value} if isinstance(base, dict) else {key: value}


def check_binds(fragments: Sequence[FragmentCall], *, dotted: bool = False) -> None:
    """Raise :class:`~orchestra.ScriptError` for a bind name that is not allowed."""
    pattern = _DOTTED if dotted else _IDENTIFIER
    for f in fragments:
        if f.bind is not None and not pattern.match(f.bind):
            msg = f"bind name {f.bind!r} is not a JavaScript identifier"
            raise ScriptError(msg, fragment=f.name)


def _falsy(value: JSON) -> bool:
    if isinstance(value, (list, dict)):
        return False
    return not value


class Sandbox(abc.ABC):
    """Runs JavaScript fragments on JSON data.

    A fragment is an expression (``ctx.trigger.sku``) or, when it does not parse as one,
    a function body that ends in ``return``. Bindings are passed by name and cross into
    JavaScript as JSON text, so integers stay integers; the result crosses back the same
    way. Implementations must never hand a JavaScript object to host code.

    Errors: :class:`~orchestra.ScriptError` when the fragment does not compile, throws, or
    returns something that is not JSON; :class:`~orchestra.StepTimeoutError` past the
    deadline; :class:`~orchestra.SandboxError` when the sandbox itself fails.
    """

    accepts_raw_json: ClassVar[bool] = False
    """Whether binding values may be :class:`RawJSON` (callers check before passing one).

    A subclass that overrides ``evaluate``, ``evaluate_all`` or ``evaluate_each`` without
    setting it does not take :class:`RawJSON`, whatever its base class does.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "accepts_raw_json" not in own and any(
            m in own for m in ("evaluate", "evaluate_all", "evaluate_each")
        ):
            cls.accepts_raw_json = False

    @abc.abstractmethod
    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,
    ) -> JSON:
        """Run ``source`` with ``bindings`` in scope and return its JSON result.

        ``name`` labels the fragment in errors; ``timeout`` (seconds) overrides the
        sandbox's default deadline.
        """

    async def evaluate_all(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        *,
        timeout: float | None = None,
    ) -> list[JSON]:
        """Run ``fragments`` in order on ``bindings``, as one batch, and return their results.

        Each fragment sees ``bindings`` (fresh copies, as with :meth:`evaluate`) plus the
        results of earlier fragments that have a :attr:`~FragmentCall.bind` name. A
        :attr:`~FragmentCall.guard` fragment with a falsy result ends the batch, so the
        list can be shorter than ``fragments``. The first error stops the batch and is
        raised as :meth:`evaluate` would raise it, naming the failing fragment.

        ``timeout`` (seconds) is the deadline of the **whole batch**, not of each
        fragment. Implementations override this to run a batch in one round trip; this
        default calls :meth:`evaluate` once per fragment (each with ``timeout``).
        """
        check_binds(fragments)
        results, _ = await self._run_scoped(fragments, dict(bindings), timeout)
        return results

    async def _run_scoped(
        self, fragments: Sequence[FragmentCall], scope: dict[str, JSON], timeout: float | None
    ) -> tuple[list[JSON], bool]:
        """Run ``fragments`` one by one on ``scope`` (bound into); return results and if all ran."""
        results: list[JSON] = []
        for f in fragments:
            value = await self.evaluate(f.source, scope, name=f.name, timeout=timeout)
            results.append(value)
            if f.bind is not None:
                bind_into(scope, f.bind, value)
            if f.guard and _falsy(value):
                return results, False
        return results, True

    async def evaluate_each(
        self,
        fragments: Sequence[FragmentCall],
        bindings: Mapping[str, JSON],
        each: EachCall | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[list[JSON], list[list[JSON]] | None]:
        """Run a batch, then ``each`` once per element of one of its results.

        ``fragments`` run as with :meth:`evaluate_all`, except that a
        :attr:`~FragmentCall.bind` may also be ``name.key``: the result then becomes
        property ``key`` of (a copy of) the object bound to ``name`` (``{}`` if that
        binding is absent or not an object). Then, if the batch ran to its end and the
        result of fragment ``each.over`` is a list, ``each.fragments`` run as a batch for
        each of its first ``each.limit`` elements, on the bindings as the batch left them
        plus the element (see :class:`EachCall`). Returns the batch's results and, per
        element, the results of ``each.fragments`` (``None`` when they did not run). The
        first error stops everything and is raised naming the fragment.

        Implementations override this to do it all in one round trip, and callers may
        check for that (``type(sandbox).evaluate_each is not Sandbox.evaluate_each``);
        this default calls :meth:`evaluate` once per fragment (each with ``timeout``).
        """
        check_binds(fragments, dotted=True)
        if each is not None:
            check_binds(each.fragments)
        scope = dict(bindings)
        results, complete = await self._run_scoped(fragments, scope, timeout)
        if each is None or not complete or not 0 <= each.over < len(results):
            return results, None
        items = results[each.over]
        if not isinstance(items, list):
            return results, None
        per: list[list[JSON]] = []
        for i, item in enumerate(items[: each.limit]):
            own = dict(scope)
            own["item"], own["index"] = item, i
            if each.bind_input:
                own["input"] = item
            per.append((await self._run_scoped(each.fragments, own, timeout))[0])
        return results, per

    @abc.abstractmethod
    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source`` without running it; raise :class:`~orchestra.ScriptError` if it fails.

        The error's ``line`` and ``column`` (both 1-based) point into ``source``.
        """

    def warm(self) -> None:  # noqa: B027 - optional hook
        """A hint: a call is expected within a few milliseconds; get ready for it.

        The engine calls it just before an HTTP answer is due (from how long the same
        call took before), when JavaScript will shape the answer. A sandbox that is slow
        after a quiet spell (worker processes whose CPU caches went cold) may do some
        cheap work now so that the call finds it ready. It must return at once, never
        raise, and change nothing a fragment can see. The default does nothing.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the sandbox's resources (worker processes, engines)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
