"""The engine: validates processes and runs them."""

from orchestra.engine._business import ContextLimitError, NotDeployedError, PublishResult, RunInfo
from orchestra.engine._engine import Engine
from orchestra.engine._steps import Action, ActionContext, StepRunner
from orchestra.engine._trace import ProcessorTrace, Request, Result

__all__ = [
    "Action",
    "ActionContext",
    "ContextLimitError",
    "Engine",
    "NotDeployedError",
    "ProcessorTrace",
    "PublishResult",
    "Request",
    "Result",
    "RunInfo",
    "StepRunner",
]
