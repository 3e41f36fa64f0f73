"""orchestra: an embeddable library for orchestration processes.

Build a :class:`Process` in Python or load one from JSON with :func:`load`, then run it
with an :class:`Engine`. Only the parts you use are imported: the JavaScript engine and
database drivers load on first use.
"""

from typing import TYPE_CHECKING, Any

from orchestra._json import JSON
from orchestra.errors import (
    ActionError,
    ConflictError,
    ContextLimitError,
    DefinitionError,
    EngineClosedError,
    EventError,
    EventTakenError,
    HttpError,
    NotDeployedError,
    OrchestraError,
    OwnershipError,
    PersistenceError,
    Problem,
    RunFailedError,
    RunNotFoundError,
    SandboxError,
    ScriptError,
    StepError,
    StepTimeoutError,
)
from orchestra.model import (
    ActionCall,
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    Event,
    FunctionCall,
    HttpCall,
    OAuth2ClientCredentials,
    Process,
    Processor,
    ProcessStep,
    RequestTrigger,
    ResumeStep,
    Retry,
)

if TYPE_CHECKING:
    from orchestra._load import load
    from orchestra.engine import (
        Action,
        ActionContext,
        Engine,
        ProcessorTrace,
        PublishResult,
        Request,
        Result,
        RunInfo,
    )

# The engine pulls in httpx and anyio; load it on first use so `import orchestra` is cheap.
_LAZY = {
    "load": "orchestra._load",
    "Action": "orchestra.engine",
    "ActionContext": "orchestra.engine",
    "Engine": "orchestra.engine",
    "ProcessorTrace": "orchestra.engine",
    "PublishResult": "orchestra.engine",
    "Request": "orchestra.engine",
    "Result": "orchestra.engine",
    "RunInfo": "orchestra.engine",
}


def __getattr__(name: str) -> Any:
    """Import the engine's names on first access."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'orchestra' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, lazy ones included."""
    return sorted(__all__)


__version__ = "0.1.0.dev0"

__all__ = [
    "JSON",
    "Action",
    "ActionCall",
    "ActionContext",
    "ActionError",
    "ApiKeyAuth",
    "BasicAuth",
    "BearerAuth",
    "ConflictError",
    "ContextLimitError",
    "DefinitionError",
    "Engine",
    "EngineClosedError",
    "Event",
    "EventError",
    "EventTakenError",
    "FunctionCall",
    "HttpCall",
    "HttpError",
    "NotDeployedError",
    "OAuth2ClientCredentials",
    "OrchestraError",
    "OwnershipError",
    "PersistenceError",
    "Problem",
    "Process",
    "ProcessStep",
    "Processor",
    "ProcessorTrace",
    "PublishResult",
    "Request",
    "RequestTrigger",
    "Result",
    "ResumeStep",
    "Retry",
    "RunFailedError",
    "RunInfo",
    "RunNotFoundError",
    "SandboxError",
    "ScriptError",
    "StepError",
    "StepTimeoutError",
    "load",
]
