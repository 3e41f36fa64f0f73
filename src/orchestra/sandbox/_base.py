"""The sandbox interface: evaluate a JavaScript fragment on JSON bindings, get JSON back."""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

import attrs

from orchestra._json import JSON
from orchestra.errors import ScriptError

__all__ = ["FragmentCall", "Sandbox"]


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


_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")


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
        for f in fragments:
            if f.bind is not None and not _IDENTIFIER.match(f.bind):
                msg = f"bind name {f.bind!r} is not a JavaScript identifier"
                raise ScriptError(msg, fragment=f.name)
        scope = dict(bindings)
        results: list[JSON] = []
        for f in fragments:
            value = await self.evaluate(f.source, scope, name=f.name, timeout=timeout)
            results.append(value)
            if f.bind is not None:
                scope[f.bind] = value
            if f.guard and _falsy(value):
                break
        return results

    @abc.abstractmethod
    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source`` without running it; raise :class:`~orchestra.ScriptError` if it fails.

        The error's ``line`` and ``column`` (both 1-based) point into ``source``.
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
