"""The exception tree of orchestra.

Every error the library raises on purpose derives from :class:`OrchestraError`::

    OrchestraError
    ├── DefinitionError          a process definition is invalid (.problems, each with a JSON path)
    ├── StepError                a processor failed (.process, .step, .processor)
    │   ├── ScriptError          a JavaScript fragment threw or returned non-JSON data
    │   ├── HttpError            an HTTP call failed (.status, .url)
    │   ├── StepTimeoutError     a call or fragment ran past its deadline
    │   └── ActionError          a Python function or custom action raised
    │   └── ContextLimitError    a run's context grew past the engine's limit
    ├── RunFailedError           a run ended in failure (.run_id); ``__cause__`` is the StepError
    ├── EventError               a published event was rejected (payload schema, unknown event)
    ├── NotDeployedError         no deployed process has this name
    ├── EngineClosedError        the call needs the engine open (``async with engine``)
    ├── PersistenceError         the store failed
    │   ├── RunNotFoundError
    │   └── ConflictError        another worker changed the record first
    │       ├── OwnershipError   the run is held by another owner: nothing was written
    │       └── EventTakenError  the inbox event was consumed already
    └── SandboxError             the sandbox broke, not the user's script (worker died, limit hit)

Errors carry their data as read-only keyword attributes; code should read those,
never parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "ActionError",
    "ConflictError",
    "ContextLimitError",
    "DefinitionError",
    "EngineClosedError",
    "EventError",
    "EventTakenError",
    "HttpError",
    "NotDeployedError",
    "OrchestraError",
    "OwnershipError",
    "PersistenceError",
    "Problem",
    "RunFailedError",
    "RunNotFoundError",
    "SandboxError",
    "ScriptError",
    "StepError",
    "StepTimeoutError",
]


class OrchestraError(Exception):
    """Base class of every error orchestra raises on purpose."""


@attrs.frozen
class Problem:
    """One problem in a process definition: where (a JSON path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DefinitionError(OrchestraError, ValueError):
    """A process definition is invalid.

    Every problem found is reported at once in :attr:`problems`, each with the JSON path
    of the offending value (``$.steps[0].processors[3].call.url``).
    """

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''}{where}:\n{lines}")


class StepError(OrchestraError):
    """A processor of a step failed.

    :attr:`process`, :attr:`step` and :attr:`processor` name where it happened.
    """

    def __init__(
        self,
        message: str,
        *,
        process: str | None = None,
        step: str | None = None,
        processor: str | None = None,
        retryable: bool = False,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.attempts = attempts
        self.process = process
        self.step = step
        self.processor = processor
        self.retryable = retryable
        super().__init__(message)

    def located(self, *, process: str | None, step: str | None, processor: str | None) -> StepError:
        """Fill in the location fields that are still empty and return ``self``."""
        self.process = self.process or process
        self.step = self.step or step
        self.processor = self.processor or processor
        return self

    def __str__(self) -> str:
        where = "/".join(x for x in (self.process, self.step, self.processor) if x)
        return f"{where}: {self.message}" if where else self.message


class ScriptError(StepError):
    """A JavaScript fragment threw, did not compile, or returned data that is not JSON.

    :attr:`fragment` names the fragment (``"cms.output"``), :attr:`line` and
    :attr:`column` point into its source where known.
    """

    def __init__(
        self,
        message: str,
        *,
        fragment: str | None = None,
        line: int | None = None,
        column: int | None = None,
        **kw: object,
    ) -> None:
        self.fragment = fragment
        self.line = line
        self.column = column
        pos = f" (line {line}" + (f", column {column}" if column else "") + ")" if line else ""
        name = f"fragment {fragment!r}" if fragment else "fragment"
        super().__init__(f"{name}{pos}: {message}", **kw)  # type: ignore[arg-type]
        self.js_message = message


class HttpError(StepError):
    """An HTTP call failed: a transport error, or a status that is not a success.

    :attr:`status` is ``None`` when no response arrived.
    """

    def __init__(
        self, message: str, *, status: int | None = None, url: str | None = None, **kw: object
    ) -> None:
        self.status = status
        self.url = url
        super().__init__(message, **kw)  # type: ignore[arg-type]


class StepTimeoutError(StepError, TimeoutError):
    """A call or fragment ran past its deadline."""


class ActionError(StepError):
    """A Python function or host-provided action raised; ``__cause__`` is its exception."""


class ContextLimitError(StepError):
    """A run's context grew past the engine's ``max_context_bytes``."""


class NotDeployedError(OrchestraError, LookupError):
    """No deployed process has this name (never deployed, or undeployed)."""

    def __init__(self, process: str) -> None:
        self.process = process
        super().__init__(f"process {process!r} is not deployed")


class EngineClosedError(OrchestraError, RuntimeError):
    """The call needs the engine open (``async with engine:``), and it is not."""


class RunFailedError(OrchestraError):
    """A run ended in failure; ``__cause__`` is the :class:`StepError` that ended it."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class EventError(OrchestraError, ValueError):
    """A published event was rejected (its payload does not match the event's schema)."""

    def __init__(self, message: str, *, path: str = "$") -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class PersistenceError(OrchestraError):
    """The store failed to read or write; the run's stored state is left as it was."""


class RunNotFoundError(PersistenceError, LookupError):
    """No run with this id exists in the store."""


class ConflictError(PersistenceError):
    """Another worker changed the record first (a lost lease or a stale write)."""


class OwnershipError(ConflictError):
    """A conditional write found the run held by another owner (or by none).

    The writer lost the run's lease: another worker took the run over, or the run was
    given back. Nothing was written.
    """


class EventTakenError(ConflictError):
    """``consume_event`` found the inbox event consumed already, or gone: nothing was written."""


class SandboxError(OrchestraError):
    """The sandbox itself failed (a worker died, a memory or output limit was hit).

    This is not the fragment's own error; see :class:`ScriptError` for that.
    """
