"""The data boundary: bindings to request text, reply text to a result or an error.

Both sandboxes speak the same protocol with the JavaScript runner (``_runner.js``):
JSON text in, JSON text out, so no engine object ever reaches host code.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Mapping
from typing import Any

from orchestra._json import JSON
from orchestra.errors import SandboxError, ScriptError

__all__ = ["MAX_SAFE_INTEGER", "check_request", "decode_reply", "run_request"]

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer a JavaScript number holds exactly; larger bindings are rejected."""

_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")
# Any run of 16 digits may be an integer beyond 2**53 (9007199254740991 has 16 digits);
# only then is the value walked to find out exactly. Digits map to "0", the rest to " ".
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_SIXTEEN_DIGITS = b"0" * 16


def _make_encode() -> Callable[[object], str]:
    """The fastest strict JSON encoder available: ASCII, compact, no NaN."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return _ENCODER.encode
    # No cycle markers: a cyclic binding recurses until RecursionError, reported as "not JSON".
    encoder = make(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def encode(value: object) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _make_encode()


def run_request(source: str, bindings: Mapping[str, JSON], name: str) -> str:
    """Build the request text that runs ``source`` on ``bindings``.

    Raises :class:`~orchestra.ScriptError` when a binding name is not an identifier or
    a value is not JSON (NaN, infinities, non-JSON types, integers beyond ±(2^53-1)).
    """
    for key in bindings:
        if not isinstance(key, str) or not _IDENTIFIER.match(key):
            raise ScriptError(f"binding name {key!r} is not a JavaScript identifier", fragment=name)
    try:
        text = _encode(bindings if isinstance(bindings, dict) else dict(bindings))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ScriptError(f"bindings are not JSON: {exc}", fragment=name) from None
    if _SIXTEEN_DIGITS in text.encode("ascii").translate(_DIGITS):
        for key, value in bindings.items():
            _check_integers(value, key, name)
    return '{"s":' + _ENCODER.encode(source) + ',"b":' + text + "}"


def check_request(source: str) -> str:
    """Build the request text that only compiles ``source``."""
    return '{"s":' + _ENCODER.encode(source) + ',"c":1}'


def _check_integers(value: object, path: str, name: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ScriptError(
                f"binding {path} is {value}, beyond ±(2^53-1): JavaScript numbers cannot "
                "hold it exactly; pass it as a string",
                fragment=name,
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_integers(v, f"{path}.{k}", name)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_integers(v, f"{path}[{i}]", name)


def decode_reply(text: str | bytes, name: str) -> JSON:
    """Turn the runner's reply text into the result, or raise the error it describes."""
    try:
        reply: Any = json.loads(text)
    except RecursionError:
        raise ScriptError("the result is nested too deeply for the host", fragment=name) from None
    except ValueError as exc:
        raise SandboxError(f"fragment {name!r}: malformed reply from the sandbox: {exc}") from None
    if not isinstance(reply, dict):
        raise SandboxError(f"fragment {name!r}: malformed reply from the sandbox")
    if "ok" in reply:
        result: JSON = reply["ok"]
        return result
    message = str(reply.get("e", "unknown error"))
    kind = reply.get("k")
    if kind == "oom":
        raise SandboxError(f"fragment {name!r}: out of memory")
    if kind == "output":
        raise SandboxError(f"fragment {name!r}: {message}")
    line = reply.get("l") or 0
    column = reply.get("c") or 0
    return _raise_script_error(message, name, int(line), int(column))


def _raise_script_error(message: str, name: str, line: int, column: int) -> JSON:
    raise ScriptError(
        message,
        fragment=name,
        line=line if line > 0 else None,
        column=column if line > 0 and column > 0 else None,
    )
