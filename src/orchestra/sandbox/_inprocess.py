"""A sandbox that runs fragments in the host's own PythonMonkey: fast, trusted code only."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from orchestra._json import JSON
from orchestra.errors import ScriptError
from orchestra.sandbox._base import Sandbox

__all__ = ["InProcessSandbox"]

# Compiles a fragment as an expression, or failing that as a function body, caches the
# compiled function per (source, names), and exchanges data only as JSON text.
_RUNNER = r"""
(function () {
  "use strict";
  const cache = new Map();
  function compile(src, names) {
    const k = names.join(",") + "\u0000" + src;
    let f = cache.get(k);
    if (f !== undefined) return f;
    try {
      f = new Function(...names, '"use strict";\nreturn (\n' + src + '\n);');
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
      f = new Function(...names, '"use strict";\n' + src);
    }
    cache.set(k, f);
    return f;
  }
  function run(src, namesText, bindingsText) {
    const names = JSON.parse(namesText);
    const b = JSON.parse(bindingsText);
    let out;
    try {
      const f = compile(src, names);
      const r = f(...names.map((n) => b[n]));
      if (r !== null && typeof r === "object" && typeof r.then === "function") {
        return JSON.stringify({ error: "fragment returned a Promise; fragments are synchronous", line: 0 });
      }
      out = JSON.stringify(r === undefined ? null : r, (key, v) => {
        if (typeof v === "number" && !isFinite(v)) throw new TypeError("cannot return " + v + " (not JSON)");
        if (typeof v === "bigint") throw new TypeError("cannot return a BigInt (not JSON)");
        return v;
      });
      if (out === undefined) out = "null";
      return JSON.stringify({ ok: out });
    } catch (e) {
      let msg, line = 0;
      if (e instanceof Error) {
        msg = e.name + ": " + e.message;
        line = e.lineNumber || 0;
      } else {
        try { msg = "uncaught " + JSON.stringify(e); } catch (_) { msg = "uncaught exception"; }
      }
      return JSON.stringify({ error: String(msg), line: line, column: (e && e.columnNumber) || 0 });
    }
  }
  function check(src) {
    try { compile(src, []); return ""; }
    catch (e) { return JSON.stringify({ error: e.name + ": " + e.message, line: e.lineNumber || 0, column: e.columnNumber || 0 }); }
  }
  return { run: run, check: check };
})()
"""

# The compiled wrapper adds two lines before the fragment's first line.
_PROLOGUE_LINES = 2
_LINE_RE = re.compile(r"line (\d+)")


class InProcessSandbox(Sandbox):
    """Runs fragments in this process's PythonMonkey.

    Same interface and data rules as the isolated sandbox, but **no isolation and no
    deadline**: a fragment can reach the host and ``while (true) {}`` hangs it. Use it for
    trusted processes and fast unit tests only.
    """

    def __init__(self) -> None:
        self._runner: Any = None

    def _js(self) -> Any:
        if self._runner is None:
            import pythonmonkey as pm  # noqa: PLC0415 - imported lazily on first use

            self._runner = pm.eval(_RUNNER)
        return self._runner

    async def evaluate(
        self,
        source: str,
        bindings: Mapping[str, JSON],
        *,
        name: str = "fragment",
        timeout: float | None = None,  # noqa: ARG002 - no deadline in process
    ) -> JSON:
        """Run ``source`` in process; see :meth:`Sandbox.evaluate`."""
        names = sorted(bindings)
        try:
            text = json.dumps(bindings, allow_nan=False)
        except ValueError as exc:
            raise ScriptError(f"bindings are not JSON: {exc}", fragment=name) from None
        reply = json.loads(str(self._js().run(source, json.dumps(names), text)))
        if "ok" in reply:
            result: JSON = json.loads(reply["ok"])
            return result
        raise _error(reply, name)

    async def check(self, source: str, *, name: str = "fragment") -> None:
        """Compile ``source``; see :meth:`Sandbox.check`."""
        reply = str(self._js().check(source))
        if reply:
            raise _error(json.loads(reply), name)


def _error(reply: dict[str, Any], name: str) -> ScriptError:
    line = int(reply.get("line") or 0) - _PROLOGUE_LINES
    column = int(reply.get("column") or 0)
    return ScriptError(
        str(reply["error"]),
        fragment=name,
        line=line if line > 0 else None,
        column=column if line > 0 and column > 0 else None,
    )
