"""The engine: validates processes and runs them."""

from orchestra.engine._engine import Engine
from orchestra.engine._steps import Action, ActionContext, StepRunner
from orchestra.engine._trace import ProcessorTrace, Request, Result

__all__ = ["Action", "ActionContext", "Engine", "ProcessorTrace", "Request", "Result", "StepRunner"]
