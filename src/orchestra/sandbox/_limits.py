"""The knobs of :class:`~orchestra.sandbox.WorkerSandbox`: deadlines, memory and size caps."""

from __future__ import annotations

import attrs

__all__ = ["SandboxLimits"]

_MIB = 1024 * 1024


@attrs.frozen(kw_only=True)
class SandboxLimits:
    """Resource limits of a :class:`~orchestra.sandbox.WorkerSandbox`.

    All fields are keyword-only and have production defaults::

        WorkerSandbox(limits=SandboxLimits(timeout=0.25, memory_bytes=256 * 1024**2))

    Attributes:
        timeout: default wall-clock deadline of one call, in seconds. The parent kills
            the worker at the deadline and raises :class:`~orchestra.StepTimeoutError`;
            ``evaluate(..., timeout=...)`` overrides it per call.
        memory_bytes: ``RLIMIT_DATA`` of each worker. Allocating past it gives
            :class:`~orchestra.SandboxError` ("out of memory") and the worker is replaced.
        max_output_chars: largest JSON text a fragment may return, in UTF-16 code units
            (as JavaScript counts ``string.length``); larger results give
            :class:`~orchestra.SandboxError`.
        max_calls_per_worker: a worker is replaced after this many calls (a batch is
            one call). Starting a worker costs ~0.2 s of CPU; under load a pool serves
            thousands of calls a second, so a low value spends CPU on restarts.
        max_rss_bytes: a worker whose resident memory exceeds this after a burst of
            calls is replaced (SpiderMonkey does not give all memory back).
        spares: started workers kept ready besides the busy and idle ones, so replacing
            a killed worker costs milliseconds instead of a cold start (~0.2-0.4 s).
        start_timeout: how long a new worker may take to become ready, in seconds.
        nice: how much lower the workers' CPU priority is than the host's (added to
            the host's nice value, 0-19; 0 for the same). When host and workers both
            want the CPU, the host's event loop, which serves every request, goes first
            and fragments wait; on an idle machine it changes nothing. With the default,
            payload throughput at 50 concurrent requests on 2 cores rose 4-7 % (the
            workers no longer preempt the event loop), single-request latency unchanged.
            Deadlines are wall-clock: on a saturated machine a fragment gets less CPU
            per second than the host, so size ``timeout`` for that, or set 0.

    """

    timeout: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    memory_bytes: int = attrs.field(default=512 * _MIB, validator=attrs.validators.gt(0))
    max_output_chars: int = attrs.field(default=8 * _MIB, validator=attrs.validators.gt(0))
    max_calls_per_worker: int = attrs.field(default=100_000, validator=attrs.validators.gt(0))
    max_rss_bytes: int = attrs.field(default=256 * _MIB, validator=attrs.validators.gt(0))
    spares: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    start_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    nice: int = attrs.field(default=5, validator=[attrs.validators.ge(0), attrs.validators.le(19)])
