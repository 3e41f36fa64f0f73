# ruff: noqa: E501 - attack fragments are long literals
"""The attack suite: fragments that try to escape, hang, exhaust or poison the worker pool.

Each case runs against ``WorkerSandbox`` while a ticker task measures that the host's
event loop keeps running, then checks that a normal call still works. Re-run on every
PythonMonkey upgrade.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any

import anyio
import pytest

from orchestra.errors import SandboxError, ScriptError, StepTimeoutError
from orchestra.sandbox import SandboxLimits, WorkerSandbox

pytestmark = pytest.mark.anyio

# The event loop must never stall this long (deadlines in this suite are 0.4 s).
MAX_GAP = 0.25

ALLOWED_GLOBALS = sorted(
    [
        "AggregateError", "Array", "ArrayBuffer", "BigInt", "BigInt64Array", "BigUint64Array",
        "Boolean", "DataView", "Date", "Error", "EvalError", "Float16Array", "Float32Array",
        "Float64Array", "Function", "Infinity", "Int16Array", "Int32Array", "Int8Array",
        "InternalError", "Intl", "Iterator", "JSON", "Map", "Math", "NaN", "Number", "Object",
        "Promise", "Proxy", "RangeError", "ReferenceError", "Reflect", "RegExp", "Set",
        "String", "Symbol", "SyntaxError", "TypeError", "URIError", "Uint16Array",
        "Uint32Array", "Uint8Array", "Uint8ClampedArray", "WeakMap", "WeakSet",
        "debuggerGlobal", "decodeURI", "decodeURIComponent", "encodeURI",
        "encodeURIComponent", "escape", "eval", "globalThis", "isFinite", "isNaN",
        "parseFloat", "parseInt", "undefined", "unescape",
    ]
)  # fmt: skip


@asynccontextmanager
async def responsive_host() -> AsyncIterator[None]:
    """Fail if the event loop stalls for MAX_GAP while the block runs."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.01)
        yield
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    gap = max(b - a for a, b in pairwise(ticks))
    assert gap < MAX_GAP, f"the event loop stalled for {gap:.3f} s"


async def still_works(sandbox: WorkerSandbox) -> None:
    assert await sandbox.evaluate("a.x + 1", {"a": {"x": 1}}) == 2


# (id, source, expected): expected is a JSON value, or (exception type, regex).
Case = tuple[str, str, Any]

ESCAPES: list[Case] = [
    *[
        (f"no-{g}", f"typeof {g}", "undefined")
        for g in [
            "python",
            "pmEval",
            "require",
            "exports",
            "module",
            "bootstrap",
            "XMLHttpRequest",
            "setTimeout",
            "setInterval",
            "queueMicrotask",
            "console",
            "WebAssembly",
            "FinalizationRegistry",
            "WeakRef",
            "Debugger",
            "SharedArrayBuffer",
            "Atomics",
            "ShadowRealm",
            "uneval",
            "print",
            "load",
            "os",
            "process",
        ]
    ],
    ("globals-allowlist", "Reflect.ownKeys(globalThis).map(String).sort()", ALLOWED_GLOBALS),
    (
        "this-constructor",
        "this.constructor.constructor('return this')()",
        (ScriptError, "undefined"),
    ),
    (
        "function-ctor",
        "(function () {}).constructor('return globalThis')()",
        (ScriptError, "disabled"),
    ),
    ("array-ctor-chain", "[].constructor.constructor('return this')()", (ScriptError, "disabled")),
    ("global-Function", "Function('return 1')()", (ScriptError, "disabled")),
    ("new-Function", "new Function('return 1')()", (ScriptError, "disabled")),
    ("reflect-construct", "Reflect.construct(Function, ['return 1'])", (ScriptError, "disabled")),
    (
        "generator-ctor",
        "Object.getPrototypeOf(function* () {}).constructor('yield 1')",
        (ScriptError, "disabled"),
    ),
    (
        "async-ctor",
        "Object.getPrototypeOf(async function () {}).constructor('return 1')",
        (ScriptError, "disabled"),
    ),
    (
        "async-gen-ctor",
        "Object.getPrototypeOf(async function* () {}).constructor('')",
        (ScriptError, "disabled"),
    ),
    ("eval", "eval('1 + 1')", (ScriptError, "disabled")),
    ("indirect-eval", "(0, eval)('this')", (ScriptError, "disabled")),
    ("dg-debugger", "typeof debuggerGlobal.Debugger", "undefined"),
    (
        "dg-globals",
        "Reflect.ownKeys(debuggerGlobal).map(String).filter((k) => !/^[A-Z]/.test(k) || ['Debugger', 'WebAssembly', 'WeakRef', 'FinalizationRegistry'].includes(k)).sort()",
        [
            "decodeURI",
            "decodeURIComponent",
            "encodeURI",
            "encodeURIComponent",
            "escape",
            "eval",
            "globalThis",
            "isFinite",
            "isNaN",
            "parseFloat",
            "parseInt",
            "undefined",
            "unescape",
        ],
    ),
    ("dg-function", "debuggerGlobal.Function('return 1')()", (ScriptError, "disabled")),
    (
        "dg-function-chain",
        "debuggerGlobal.Object.constructor('return this')()",
        (ScriptError, "disabled"),
    ),
    ("dg-eval", "debuggerGlobal.eval('1')", (ScriptError, "disabled")),
    (
        "dg-frozen",
        "debuggerGlobal.Object.prototype.x = 1",
        (ScriptError, "not extensible|read-only"),
    ),
    ("dynamic-import", "import('os')", (ScriptError, ".")),
    (
        "caller-chain",
        "(function f() { return f.caller })()",
        (ScriptError, "caller|restricted|strict"),
    ),
    (
        "arguments-callee",
        "(function () { return arguments.callee })()",
        (ScriptError, "callee|restricted|strict"),
    ),
    (
        "stack-has-no-host-paths",
        "String(new Error('x').stack).includes('.py') || String(new Error('x').stack).includes('/')",
        False,
    ),
    (
        "error-prepare-stack",
        "Error.prepareStackTrace = () => 1",
        (ScriptError, "not extensible|read-only"),
    ),
]

HANGS: list[Case] = [
    ("while-true", "while (true) {}", (StepTimeoutError, "deadline")),
    (
        "for-ever-catch-all",
        "for (;;) { try { while (true) {} } catch (e) {} finally { continue; } }",
        (StepTimeoutError, "deadline"),
    ),
    ("redos", "/(a+)+$/.test('a'.repeat(40) + 'b')", (StepTimeoutError, "deadline")),
    (
        "promise-then-loop",
        "Promise.resolve().then(function f() { return Promise.resolve().then(f) }); return 1",
        (ScriptError, "synchronous"),
    ),
    (
        "microtask-await-loop",
        "(async () => { while (true) await null })(); return 1",
        (ScriptError, "synchronous"),
    ),
    (
        "then-while-true",
        "Promise.resolve().then(() => { while (true) {} }); return 1",
        (ScriptError, "synchronous"),
    ),
    ("thenable-result", "({then(r) { while (true) {} }})", {}),
    ("evil-toString-throw", "throw {toString() { while (true) {} }}", (ScriptError, "non-Error")),
    (
        "evil-message-getter",
        "const e = new Error(); Object.defineProperty(e, 'message', {get() { while (true) {} }}); throw e",
        (ScriptError, ": Error$"),
    ),
    (
        "evil-name-getter",
        "class E extends Error { get name() { while (true) {} } }; throw new E('m')",
        (ScriptError, "m"),
    ),
    ("evil-result-getter", "({get x() { while (true) {} }})", (StepTimeoutError, "deadline")),
    ("evil-toJSON", "({toJSON() { while (true) {} }})", (StepTimeoutError, "deadline")),
    (
        "evil-proxy-result",
        "new Proxy({}, {ownKeys() { while (true) {} }})",
        (StepTimeoutError, "deadline"),
    ),
    (
        "throwing-proxy-result",
        "new Proxy({}, {ownKeys() { throw new Error('trap') }})",
        (ScriptError, "trap"),
    ),
    (
        "proxy-thrown",
        "throw new Proxy({}, {getPrototypeOf() { throw 1 }, getOwnPropertyDescriptor() { throw 2 }})",
        (ScriptError, "uncaught"),
    ),
    ("deep-recursion", "(function f() { return f() })()", (ScriptError, "recursion")),
    (
        "deep-nesting-result",
        "let a = []; for (let i = 0; i < 200000; i++) a = [a]; return a",
        (ScriptError, "recursion|nested"),
    ),
    (
        "sort-comparator-loop",
        "[3, 2, 1].sort(() => { while (true) {} })",
        (StepTimeoutError, "deadline"),
    ),
]

POLLUTION: list[Case] = [
    ("object-prototype", "Object.prototype.polluted = 1", (ScriptError, "not extensible")),
    (
        "object-prototype-define",
        "Object.defineProperty(Object.prototype, 'x', {get() { return 1 }})",
        (ScriptError, "not extensible"),
    ),
    ("proto-setter", "({}).__proto__.y = 1", (ScriptError, "not extensible")),
    ("array-push", "Array.prototype.push = null", (ScriptError, "read.only|frozen")),
    (
        "array-iterator",
        "Array.prototype[Symbol.iterator] = function* () {}",
        (ScriptError, "read-only"),
    ),
    (
        "array-iterator-next",
        "Object.getPrototypeOf([][Symbol.iterator]()).next = () => ({done: true})",
        (ScriptError, "read-only"),
    ),
    ("delete-map", "delete Array.prototype.map", (ScriptError, "non-configurable")),
    ("json-parse", "JSON.parse = () => 1", (ScriptError, "read-only")),
    ("json-stringify", "JSON.stringify = () => '1'", (ScriptError, "read-only")),
    ("math-random", "Math.random = () => 4", (ScriptError, "read-only")),
    ("global-var", "globalThis.leak = 1", (ScriptError, "not extensible")),
    ("global-undefined", "globalThis.undefined = 1", (ScriptError, "read-only")),
    ("string-proto", "String.prototype.trim = () => 'x'", (ScriptError, "read-only")),
    ("date-proto", "Date.prototype.toJSON = () => 'x'", (ScriptError, "read-only")),
    ("error-proto-name", "Error.prototype.name = 'x'", (ScriptError, "frozen prototype")),
    (
        "setPrototypeOf-intrinsic",
        "Object.setPrototypeOf(Array.prototype, null)",
        (ScriptError, "not extensible|can't set prototype"),
    ),
    (
        "symbol-species",
        "Array[Symbol.species]; Object.defineProperty(Array, Symbol.species, {value: Object})",
        (ScriptError, "redefine|non-configurable"),
    ),
    (
        "override-on-instance-ok",
        "const o = {}; o.toString = () => 'mine'; return String(o)",
        "mine",
    ),
]

BAD_OUTPUTS: list[Case] = [
    ("invalid-date", "({d: new Date(NaN)})", {"d": None}),
    ("symbol-in-object", "({s: Symbol('x'), k: 1})", {"k": 1}),
    ("symbol-top", "Symbol.iterator", None),
    ("bigint", "({n: 10n ** 30n})", (ScriptError, "BigInt")),
    ("nan", "[NaN]", (ScriptError, "NaN")),
    ("cycle", "const a = [1]; a.push(a); return a", (ScriptError, "cyclic")),
    (
        "lone-surrogates",
        "({['\\ud800x']: '\\udfff', ok: '\\ud83d\\ude00'})",
        {"\ufffdx": "\ufffd", "ok": "😀"},
    ),
    ("escaped-backslash-u", "'\\\\ud800'", "\\ud800"),
    ("huge-output", "'x'.repeat(2 * 1024 * 1024)", (SandboxError, "output limit")),
    ("huge-array-output", "new Array(600000).fill(1)", (SandboxError, "output limit")),
    ("unsafe-int", "2 ** 53 + 2", (ScriptError, r"2\^53")),
    ("function-result", "() => python", None),
]

MEMORY: list[Case] = [
    (
        "array-bomb",
        "let a = []; while (true) a.push(new Array(1e6).fill(1.5))",
        (SandboxError, "out of memory"),
    ),
    (
        "arraybuffer-bomb",
        "let a = []; while (true) a.push(new ArrayBuffer(1 << 24)); return 1",
        (SandboxError, "out of memory"),
    ),
    (
        "string-doubling",
        "let s = 'x'; while (true) s += s",
        ((ScriptError, SandboxError), "length|out of memory|allocation size"),
    ),
    (
        "object-churn",
        "let a = []; while (true) a.push({x: a.length, y: 'abc' + a.length})",
        (SandboxError, "out of memory|died"),
    ),
    (
        "caught-oom",
        "try { let a = []; while (true) a.push(new Array(1e6).fill(1)); } catch (e) { return String(e) }",
        "out of memory",
    ),
]

ALL_CASES = [
    pytest.param(src, expected, id=f"{group}-{cid}")
    for group, cases in [
        ("escape", ESCAPES),
        ("hang", HANGS),
        ("pollution", POLLUTION),
        ("output", BAD_OUTPUTS),
    ]
    for cid, src, expected in cases
]


async def run_case(
    sandbox: WorkerSandbox, source: str, expected: Any, timeout: float | None = None
) -> None:
    async with responsive_host():
        if isinstance(expected, tuple):
            error, pattern = expected
            with pytest.raises(error, match=pattern) as info:
                await sandbox.evaluate(source, {}, name="attack", timeout=timeout)
            str(info.value).encode("utf-8")  # messages are always valid text
        else:
            assert await sandbox.evaluate(source, {}, name="attack", timeout=timeout) == expected
        await still_works(sandbox)


@pytest.mark.parametrize(("source", "expected"), ALL_CASES)
async def test_attack(worker_sandbox: WorkerSandbox, source: str, expected: Any) -> None:
    await run_case(worker_sandbox, source, expected)


@pytest.mark.parametrize(("cid", "source", "expected"), MEMORY, ids=[c[0] for c in MEMORY])
async def test_memory_bomb(
    worker_sandbox: WorkerSandbox, cid: str, source: str, expected: Any
) -> None:
    await run_case(worker_sandbox, source, expected, timeout=15)


@pytest.fixture
async def single() -> AsyncIterator[WorkerSandbox]:
    """A one-worker pool, so that consecutive calls share a worker."""
    async with WorkerSandbox(1, limits=SandboxLimits(timeout=0.4, spares=0)) as sandbox:
        yield sandbox


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (
            "/(secret\\d+)/.exec(s); return 1",
            "[RegExp.$1, RegExp.lastMatch, RegExp.input, RegExp.leftContext]",
            ["", "", "", ""],
        ),
        ("'secret42'.replace(/(\\d+)/, 'x')", "RegExp['$_'] + RegExp.lastParen", ""),
        ("/(secret\\d+)/.exec(s); return 1", "debuggerGlobal.RegExp.$1 + RegExp.$1", ""),
        (
            "try { Object.prototype.leak = s } catch (e) {} return 1",
            "({}).leak === undefined",
            True,
        ),
        ("try { globalThis.leak = s } catch (e) {} return 1", "typeof leak", "undefined"),
        ("try { Array.prototype.leak = s } catch (e) {} return 1", "[].leak === undefined", True),
        ("try { JSON.leak = s } catch (e) {} return 1", "JSON.leak === undefined", True),
        ("try { Symbol.leak = s } catch (e) {} return 1", "Symbol.leak === undefined", True),
        (
            "try { debuggerGlobal.leak = s } catch (e) {} return 1",
            "debuggerGlobal.leak === undefined",
            True,
        ),
        ("try { Math.leak = s } catch (e) {} return 1", "Math.leak === undefined", True),
        ("let s2 = s; return 1", "typeof s2 + typeof s", "undefinedundefined"),
    ],
)
async def test_no_state_crosses_calls(
    single: WorkerSandbox, first: str, second: str, expected: Any
) -> None:
    pids = single.worker_pids
    assert await single.evaluate(first, {"s": "secret42"}) == 1 or True
    assert await single.evaluate(second, {}) == expected
    assert single.worker_pids == pids or not pids  # the same worker answered both calls


async def test_killed_worker_loses_only_its_call(worker_sandbox: WorkerSandbox) -> None:
    async with responsive_host():
        results: dict[str, Any] = {}

        async def victim() -> None:
            try:
                await worker_sandbox.evaluate("while (true) {}", {}, timeout=5)
            except SandboxError as exc:
                results["victim"] = exc

        async def bystander() -> None:
            results["bystander"] = await worker_sandbox.evaluate(
                "let s = 0; for (let i = 0; i < 1e6; i++) s += i; return s", {}
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await anyio.sleep(0.3)
            # Kill whichever worker runs the infinite loop: the one burning CPU now.
            pids = worker_sandbox.worker_pids
            before = {pid: _cpu_time(pid) for pid in pids}
            await anyio.sleep(0.1)
            busiest = max(pids, key=lambda pid: _cpu_time(pid) - before[pid])
            os.kill(busiest, signal.SIGKILL)
            tg.start_soon(bystander)
        assert isinstance(results["victim"], SandboxError)
        assert "died" in str(results["victim"])
        assert results["bystander"] == sum(range(10**6))
        await still_works(worker_sandbox)


def _cpu_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
