"""Running JavaScript fragments: the :class:`Sandbox` interface and its implementations."""

from orchestra.sandbox._base import Sandbox
from orchestra.sandbox._inprocess import InProcessSandbox

__all__ = ["InProcessSandbox", "Sandbox"]
