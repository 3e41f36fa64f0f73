"""orchestra: an embeddable library for orchestration processes.

Build a :class:`Process` in Python or load one from JSON with :func:`load`, then run it
with an :class:`Engine`. Only the parts you use are imported: the JavaScript engine and
database drivers load on first use.
"""

from orchestra._json import JSON
from orchestra._load import load
from orchestra.engine import Action, ActionContext, Engine, ProcessorTrace, Request, Result
from orchestra.errors import (
    ActionError,
    ConflictError,
    DefinitionError,
    EventError,
    HttpError,
    OrchestraError,
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
    "DefinitionError",
    "Engine",
    "Event",
    "EventError",
    "FunctionCall",
    "HttpCall",
    "HttpError",
    "OAuth2ClientCredentials",
    "OrchestraError",
    "PersistenceError",
    "Problem",
    "Process",
    "ProcessStep",
    "Processor",
    "ProcessorTrace",
    "Request",
    "RequestTrigger",
    "Result",
    "ResumeStep",
    "Retry",
    "RunFailedError",
    "RunNotFoundError",
    "SandboxError",
    "ScriptError",
    "StepError",
    "StepTimeoutError",
    "load",
]
