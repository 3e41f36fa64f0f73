"""The sandbox interface: evaluate a JavaScript fragment on JSON bindings, get JSON back."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from orchestra._json import JSON

__all__ = ["Sandbox"]


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
