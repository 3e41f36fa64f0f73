"""Build one product-page payload against the local fake APIs and print it with its trace.

    python examples/product-page/demo.py [--sku tr-042] [--customer c-17] [--latency-ms 20]

Starts the fake CMS, commerce, search and CDP APIs (``backends.py``) on a free port in
this process, points the process's API hosts at them with :func:`backends.rebase`, and
invokes the process once with the default engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anyio

import orchestra as o

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import backends  # noqa: E402


def make_engine() -> o.Engine:
    """Return the default engine: fragments run in the isolated worker sandbox."""
    return o.Engine()


def trace_table(result: o.Result) -> str:
    """Return the trace as a text table, times relative to the first processor's start."""
    t0 = min(t.started for t in result.trace)
    rows = [("processor", "status", "http", "tries", "items", "start ms", "end ms", "bar")]
    scale = max(t.ended for t in result.trace) - t0 or 1.0
    for t in sorted(result.trace, key=lambda t: (t.started, t.ended)):
        a, b = int(30 * (t.started - t0) / scale), max(1, int(30 * (t.ended - t0) / scale))
        rows.append((
            t.processor, t.status, str(t.http_status or "-"), str(t.attempts),
            str(t.items if t.items is not None else "-"),
            f"{(t.started - t0) * 1000:.1f}", f"{(t.ended - t0) * 1000:.1f}",
            " " * a + "#" * max(1, b - a),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


async def main(args: argparse.Namespace) -> int:
    server = await backends.serve(latency=args.latency_ms / 1000)
    base = f"http://127.0.0.1:{backends.port_of(server)}"
    process = backends.rebase(o.load(HERE / "process.json"), base)
    query = {"customer": args.customer} if args.customer else {}
    request = o.Request(path=f"/products/{args.sku}", params={"sku": args.sku}, query=query,
                        headers={"accept-language": "en-GB"})  # fmt: skip
    async with server, make_engine() as engine:
        await engine.validate(process)  # compile the fragments before the clock starts
        started = time.perf_counter()
        result = await engine.invoke(process, request)
        elapsed = time.perf_counter() - started
    print(json.dumps(result.payload, indent=2, ensure_ascii=False))
    print()
    print(trace_table(result))
    print(f"\n{len(result.trace)} processors, payload in {elapsed * 1000:.1f} ms "
          f"(backend latency {args.latency_ms:g} ms per call, APIs at {base})")  # fmt: skip
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sku", default="tr-042")
    parser.add_argument("--customer", default="c-17", help="empty for an anonymous visitor")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    sys.exit(anyio.run(main, parser.parse_args()))
