"""Action kinds hosts can register with an engine (``Engine(actions={kind: action})``)."""

from orchestra.actions.agent import ChatAgent

__all__ = ["ChatAgent"]
