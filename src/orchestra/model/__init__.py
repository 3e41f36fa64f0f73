"""The process model: immutable data, no I/O."""

from orchestra.model._call import (
    ActionCall,
    ApiKeyAuth,
    Auth,
    BasicAuth,
    BearerAuth,
    Call,
    FunctionCall,
    HttpCall,
    OAuth2ClientCredentials,
    Retry,
)
from orchestra.model._process import Event, Process, RequestTrigger, Trigger
from orchestra.model._processor import Processor
from orchestra.model._step import ProcessStep, ResumeStep, Step

__all__ = [
    "ActionCall",
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "Call",
    "Event",
    "FunctionCall",
    "HttpCall",
    "OAuth2ClientCredentials",
    "Process",
    "ProcessStep",
    "Processor",
    "RequestTrigger",
    "ResumeStep",
    "Retry",
    "Step",
    "Trigger",
]
