"""Running JavaScript fragments: the :class:`Sandbox` interface and its implementations.

:class:`WorkerSandbox` (the default) isolates fragments in worker processes;
:class:`InProcessSandbox` runs them in the host for trusted code and fast tests.
Importing this package does not import PythonMonkey.
"""

from orchestra.sandbox._base import EachCall, FragmentCall, RawJSON, Sandbox
from orchestra.sandbox._inprocess import InProcessSandbox
from orchestra.sandbox._limits import SandboxLimits
from orchestra.sandbox._pool import WorkerSandbox

__all__ = [
    "EachCall",
    "FragmentCall",
    "InProcessSandbox",
    "RawJSON",
    "Sandbox",
    "SandboxLimits",
    "WorkerSandbox",
]
