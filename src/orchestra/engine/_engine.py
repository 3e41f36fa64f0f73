"""The engine: wires sandbox, executor and HTTP client, validates and runs processes."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from orchestra._json import JSON
from orchestra.engine._steps import Action, Function, StepRunner, truthy, uses
from orchestra.engine._trace import ProcessorTrace, Request, Result
from orchestra.engine._warm import Warmer
from orchestra.errors import DefinitionError, Problem
from orchestra.executors import Executor, LocalExecutor
from orchestra.http import TokenCache
from orchestra.model import ActionCall, FunctionCall, Process, ProcessStep, ResumeStep
from orchestra.sandbox import Sandbox
from orchestra.validation import fragment_problems, structural_problems

if TYPE_CHECKING:
    from orchestra.engine._business import Business, PublishResult, RunInfo
    from orchestra.stores import RunStatus, Store, Version

__all__ = ["Engine"]

_VALIDATED_CACHE = 256


class Engine:
    """Runs processes.

    Every part is optional and pluggable: ``sandbox`` runs JavaScript fragments (default:
    isolated worker processes), ``executor`` owns the clock (default: real time),
    ``client`` is the ``httpx.AsyncClient`` HTTP actions use (the engine makes and closes
    its own if none is given), ``functions`` and ``actions`` name the Python functions and
    host action kinds processes may call, and ``secrets`` holds the credentials that auth
    settings name. Use it as an async context manager, or call :meth:`aclose`.

    Business processes (:meth:`deploy`, :meth:`publish`, :meth:`start`) keep their state
    in ``store`` (default: in memory); events wait in its inbox for ``event_ttl`` seconds;
    a run's context may hold at most ``max_context_bytes`` of JSON. Resume deadlines fire
    while the engine is open as an async context manager (or on :meth:`fire_due`).

    Runs are durable in a durable store: several engines (workers) may share one;
    ``worker_id`` names this one (unique among live workers; keep it across restarts to
    take back its own runs at once). A worker advances a run while it holds the run's
    lease of ``lease_seconds``, renewed while the engine is open; a run whose worker died
    is taken over once its lease expired (:meth:`recover`, done on entering the engine,
    then by a poll). ``retention`` (seconds) deletes runs that ended longer ago than that.
    See ``docs/explanation/durability.md``.
    """

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        executor: Executor | None = None,
        client: httpx.AsyncClient | None = None,
        functions: Mapping[str, Function] | None = None,
        actions: Mapping[str, Action] | None = None,
        secrets: Mapping[str, str] | None = None,
        store: Store | None = None,
        event_ttl: float = 7 * 86400.0,
        max_context_bytes: int = 1024 * 1024,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        retention: float | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._own_sandbox = sandbox is None
        self.executor: Executor = executor or LocalExecutor()
        self._client = client
        self._own_client = client is None
        self.functions: dict[str, Function] = dict(functions or {})
        self.actions: dict[str, Action] = dict(actions or {})
        self.secrets: Mapping[str, str] = secrets if secrets is not None else {}
        self._tokens = TokenCache()
        self._validated: dict[int, Process] = {}
        from orchestra.engine._business import Business
        from orchestra.stores import InMemoryStore

        self._business: Business = Business(
            self, store or InMemoryStore(), event_ttl=event_ttl,
            max_context_bytes=max_context_bytes, worker_id=worker_id or _worker_id(),
            lease_seconds=lease_seconds, retention=retention,
        )  # fmt: skip
        self._stack: AsyncExitStack | None = None
        self._warmer: Warmer | None = None

    @property
    def store(self) -> Store:
        """The store business processes keep their versions, runs and events in."""
        return self._business.store

    async def deploy(self, process: Process) -> Version:
        """Validate ``process`` and store it as its newest version; new runs start on it.

        Deploying a definition equal to the latest version is a no-op returning that
        version. Runs already started stay on the version they started with.
        """
        return await self._business.deploy(process)

    async def undeploy(self, name: str) -> bool:
        """Stop new runs of process ``name``; return False if it was never deployed."""
        return await self._business.undeploy(name)

    async def versions(self, name: str) -> list[Version]:
        """Return every stored version of process ``name``, oldest first."""
        return await self._business.store.list_versions(name)

    async def publish(
        self,
        name: str,
        payload: JSON = None,
        *,
        id: str | None = None,
        wait: bool = True,
    ) -> PublishResult:
        """Publish event ``name``: start the runs it triggers, resume the runs waiting for it.

        ``id`` deduplicates: an event with an id published before does nothing. An event
        no waiting run matches stays in the inbox (``event_ttl``) for runs that reach their
        resume step later. Raises :class:`~orchestra.EventError` (with the JSON path) when
        the payload does not match the event's schema.

        With ``wait`` (the default) the runs go as far as they can before this returns.
        With ``wait=False`` it returns once the event and the runs it starts are stored
        (durable: a crash after it returned loses nothing); the runs go on in the engine's
        background tasks, so the engine must be open (``async with engine``, else
        :class:`~orchestra.EngineClosedError`). See :attr:`PublishResult.background`.
        """
        return await self._business.publish(name, payload, event_id=id, wait=wait)

    async def start(self, process: str, payload: JSON = None, *, wait: bool = True) -> str:
        """Start a run of the latest deployed version of ``process``; return its id.

        The run goes as far as it can (until it waits, ends or fails) before this returns;
        with ``wait=False``, this returns once the run is stored and the engine's
        background tasks drive it (the engine must be open, see :meth:`publish`).
        """
        return await self._business.start(process, payload, wait=wait)

    async def run(self, run_id: str) -> RunInfo:
        """Return a run: status, context, position and history."""
        return await self._business.run(run_id)

    async def runs(
        self, process: str | None = None, status: RunStatus | None = None
    ) -> list[RunInfo]:
        """Return the runs of ``process`` (of all if ``None``) with ``status``, oldest first."""
        return await self._business.runs(process, status)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; return False if it had already ended."""
        return await self._business.cancel(run_id)

    @property
    def worker_id(self) -> str:
        """The id under which this engine holds the leases of the runs it advances."""
        return self._business.worker_id

    async def recover(self) -> list[str]:
        """Take over the runs whose worker died, and go on with them; return their ids.

        A run is taken over when it is running (or was being resumed) and its lease has
        expired, has no owner, or belongs to this ``worker_id`` from before a restart. It
        goes on from its last checkpoint. Waits' deadlines are loaded (those that passed
        fire now), and events stored but never delivered are delivered. Done on entering
        the engine; while it is open a poll keeps doing it.
        """
        return await self._business.recovery.recover()

    async def fire_due(self) -> list[str]:
        """Time out every waiting run whose deadline has passed; return their ids.

        The engine does this by itself while open as an async context manager.
        """
        return await self._business.fire_due()

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox fragments run in (the isolated worker pool unless one was given)."""
        if self._sandbox is None:
            from orchestra.sandbox import WorkerSandbox  # type: ignore[attr-defined,unused-ignore]

            self._sandbox = WorkerSandbox()
        return self._sandbox

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client HTTP actions use."""
        if self._client is None:
            from orchestra.http import default_client

            self._client = default_client()
        return self._client

    async def validate(self, process: Process) -> None:
        """Check ``process`` fully before it runs; raise :class:`~orchestra.DefinitionError`.

        Beyond the structural checks made when loading, every JavaScript fragment is
        compiled, and every function and action kind it calls must be registered.
        """
        if self._validated.get(id(process)) is process:
            return
        problems = structural_problems(process)
        problems.extend(await fragment_problems(process, self.sandbox))
        problems.extend(self._unknown_calls(process))
        if problems:
            raise DefinitionError(problems)
        if len(self._validated) >= _VALIDATED_CACHE:
            self._validated.clear()
        self._validated[id(process)] = process

    def _unknown_calls(self, process: Process) -> list[Problem]:
        problems = []
        for si, step in enumerate(process.steps):
            if not isinstance(step, ProcessStep):
                continue
            for pi, proc in enumerate(step.processors):
                path = f"$.steps[{si}].processors[{pi}].call"
                call = proc.call
                if isinstance(call, FunctionCall) and call.name not in self.functions:
                    problems.append(
                        Problem(
                            f"{path}.name",
                            f"no function {call.name!r} is registered with the engine",
                        )
                    )
                if isinstance(call, ActionCall) and call.kind not in self.actions:
                    problems.append(
                        Problem(
                            f"{path}.kind",
                            f"no action kind {call.kind!r} is registered with the engine",
                        )
                    )
        return problems

    def runner(
        self, process: Process, context: dict[str, JSON], *, run_id: str = "local"
    ) -> StepRunner:
        """Return a :class:`StepRunner` for one run of ``process`` over ``context``."""
        sandbox = self.sandbox
        warmer = self._warmer
        if warmer is None or warmer.sandbox is not sandbox:
            # A hint on the wall clock: under a virtual clock it would only add noise.
            real = isinstance(self.executor, LocalExecutor)
            warmer = self._warmer = Warmer(sandbox, enabled=real)
        return StepRunner(
            process=process.name,
            context=context,
            sandbox=sandbox,
            warmer=warmer,
            executor=self.executor,
            client=self.client,
            secrets=self.secrets,
            tokens=self._tokens,
            functions=self.functions,
            actions=self.actions,
            run_id=run_id,
        )

    async def invoke(self, process: Process, request: Request | JSON = None) -> Result:
        """Run a payload process on ``request`` and return its payload and trace.

        ``request`` is a :class:`Request` or any JSON value (the trigger payload). Raises
        :class:`~orchestra.DefinitionError` before anything runs if the process is invalid,
        and the :class:`~orchestra.StepError` of the processor that failed the run.
        """
        await self.validate(process)
        if any(isinstance(s, ResumeStep) for s in process.steps):
            problem = Problem(
                "$.steps", "a process with resume steps cannot be invoked; start a run"
            )
            raise DefinitionError([problem])
        trigger = request.to_dict() if isinstance(request, Request) else request
        context: dict[str, JSON] = {"trigger": trigger, "steps": {}, "events": {}}
        runner = self.runner(process, context)
        trace: list[ProcessorTrace] = []
        last: str | None = None
        tail = _tail(process)
        for step in process.steps:
            assert isinstance(step, ProcessStep)
            runner.tail = tail if step is process.steps[-1] else None
            if step.when is not None and not truthy(
                await runner.js(
                    step.when, runner.bindings(step.name), name=f"{step.name}.when", step=step.name
                )
            ):
                continue
            trace.extend(await runner.run(step))
            last = step.name
        payload = await self.payload(process, runner, last)
        return Result(payload=payload, trace=tuple(trace), context=context)

    async def payload(self, process: Process, runner: StepRunner, last: str | None) -> JSON:
        """Build a run's payload: the process's ``output`` fragment, or the last step's outputs."""
        steps = runner.context["steps"]
        assert isinstance(steps, dict)
        if process.output is None:
            return steps.get(last) if last else None
        if runner.payload is not None:  # it ran with the last output (see ``_tail``)
            return runner.payload[0]
        bindings = runner.bindings(last or "")
        return await runner.js(process.output, bindings, name="output", step="output")

    async def aclose(self) -> None:
        """Close what the engine made itself: its HTTP client and its sandbox."""
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_sandbox and self._sandbox is not None:
            await self._sandbox.aclose()
            self._sandbox = None

    async def __aenter__(self) -> Engine:
        import anyio

        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            await tg.start(self._business.serve)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            await self.aclose()


def _tail(process: Process) -> str | None:
    """The process's output if it may run in the round trip of the last step's last output.

    It must read only ``trigger`` and ``out`` (``ctx`` would be a step behind in that round
    trip), and the sandbox must run a batch in one round trip (else nothing is gained).
    """
    source = process.output
    if source is None or "$" in source:
        return None
    names = uses(source)
    if names is None or not {"trigger", "out"}.issuperset(names):
        return None
    return source


def _worker_id() -> str:
    import os
    import socket
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
