"""The data boundary: bindings to request text, reply text to a result or an error.

Both sandboxes speak the same protocol with the JavaScript runner (``_runner.js``):
JSON text in, JSON text out, so no engine object ever reaches host code.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestra._json import JSON
from orchestra.errors import SandboxError, ScriptError
from orchestra.sandbox._base import EachCall, FragmentCall, RawJSON, check_binds

__all__ = [
    "MAX_SAFE_INTEGER",
    "batch_request",
    "check_request",
    "decode_batch",
    "decode_each",
    "decode_reply",
    "each_request",
    "run_request",
    "single",
]

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


_NAMES: set[str] = set()  # binding names already found to be identifiers


def _encode_bindings(bindings: Mapping[str, object], name: str) -> str:
    """``"n":[names]`` and each value's own JSON text after a tab (the runner's framing)."""
    for key in bindings:
        if key not in _NAMES:
            if not isinstance(key, str) or not _IDENTIFIER.match(key):
                msg = f"binding name {key!r} is not a JavaScript identifier"
                raise ScriptError(msg, fragment=name)
            if len(_NAMES) < 4096:
                _NAMES.add(key)
    if not bindings:
        return '"n":[]}'
    raw: list[str] | None = None
    try:
        texts: list[str] = []
        for value in bindings.values():
            if type(value) is RawJSON:
                if value._ok is None:
                    value._ok = _raw_ok(value.text)
                if value._ok:
                    raw = raw or []
                    raw.append(str(len(texts)))
                    texts.append(value.text)
                else:
                    texts.append(_encode(value.value))
            else:
                texts.append(_encode(value))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ScriptError(f"bindings are not JSON: {exc}", fragment=name) from None
    text = "\t".join(texts)
    if _SIXTEEN_DIGITS in text.encode().translate(_DIGITS):
        for key, value in bindings.items():
            _check_integers(value.value if type(value) is RawJSON else value, key, name)
    # Names are identifiers: nothing in them needs escaping.
    head = '"n":["' + '","'.join(bindings) + '"]}\t'
    return head + text if raw is None else '"r":[' + ",".join(raw) + "]," + head + text


# Raw JSON text crosses as it is unless JavaScript's JSON.parse could read it otherwise
# than Python's json.loads (NaN, Infinity, an exponent of three digits that may overflow,
# the integer -0 that json.loads reads as 0), or it would break the request framing (a
# newline or tab). Strings that merely contain such text only cost the slower path.
_EXPONENTS = bytes(48 if 48 <= i <= 57 else 101 if i in (69, 101) else 32 for i in range(256))
_NEGATIVE_ZERO = re.compile(r"-0(?=[,\]}\s]|\Z)")


def _raw_ok(text: str) -> bool:
    """Whether raw JSON ``text`` can cross as it is (the runner reads invalid JSON as a string)."""
    if not text or "\n" in text or "\t" in text or "NaN" in text or "Infinity" in text:
        return False
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: it has to be escaped
        return False
    if b"e000" in data.translate(_EXPONENTS, b"+-"):
        return False
    return "-0" not in text or _NEGATIVE_ZERO.search(text) is None


_FRAGMENTS: dict[object, str] = {}
_FRAGMENTS_CACHE = 1024


def _frags_json(fragments: tuple[FragmentCall, ...]) -> list[list[object]]:
    return [[f.source, f.bind, 1 if f.guard else 0] for f in fragments]


def _encode_fragments(fragments: tuple[FragmentCall, ...]) -> str:
    text = _FRAGMENTS.get(fragments)
    if text is None:
        check_binds(fragments)
        text = _ENCODER.encode(_frags_json(fragments))
        _remember(fragments, text)
    return text


def _encode_each(fragments: tuple[FragmentCall, ...], each: EachCall | None) -> str:
    """The head of a request with ``"name.key"`` binds and, with ``each``, its ``"m"`` part."""
    key = ("each", fragments, each)
    text = _FRAGMENTS.get(key)
    if text is None:
        check_binds(fragments, dotted=True)
        text = _ENCODER.encode(_frags_json(fragments))
        if each is not None:
            check_binds(each.fragments)
            m = {"o": each.over, "f": _frags_json(each.fragments), "x": max(0, each.limit),
                 "i": 1 if each.bind_input else 0}  # fmt: skip
            text += ',"m":' + _ENCODER.encode(m)
        _remember(key, text)
    return text


def _remember(key: object, text: str) -> None:
    if len(_FRAGMENTS) >= _FRAGMENTS_CACHE:
        _FRAGMENTS.clear()
    _FRAGMENTS[key] = text


def batch_request(fragments: Sequence[FragmentCall], bindings: Mapping[str, JSON]) -> str:
    """Build the request text that runs ``fragments`` in order on ``bindings``.

    Raises :class:`~orchestra.ScriptError` (naming the first fragment) when a binding name
    is not an identifier or a value is not JSON (NaN, infinities, non-JSON types,
    integers beyond ±(2^53-1)), and (naming the fragment) when a ``bind`` name is not an
    identifier.
    """
    frags = fragments if isinstance(fragments, tuple) else tuple(fragments)
    head = _encode_fragments(frags)
    return '{"f":' + head + "," + _encode_bindings(bindings, frags[0].name if frags else "x")


def each_request(
    fragments: Sequence[FragmentCall], bindings: Mapping[str, JSON], each: EachCall | None
) -> str:
    """Build the request text of :meth:`~orchestra.sandbox.Sandbox.evaluate_each`.

    Raises :class:`~orchestra.ScriptError` as :func:`batch_request` does.
    """
    frags = fragments if isinstance(fragments, tuple) else tuple(fragments)
    head = _encode_each(frags, each)
    return '{"f":' + head + "," + _encode_bindings(bindings, frags[0].name if frags else "x")


_SINGLES: dict[tuple[str, str], tuple[FragmentCall]] = {}


def single(name: str, source: str) -> tuple[FragmentCall]:
    """The batch of one that :meth:`~orchestra.sandbox.Sandbox.evaluate` runs (remembered)."""
    key = (name, source)
    found = _SINGLES.get(key)
    if found is None:
        if len(_SINGLES) >= _FRAGMENTS_CACHE:
            _SINGLES.clear()
        found = _SINGLES[key] = (FragmentCall(name, source),)
    return found


def run_request(source: str, bindings: Mapping[str, JSON], name: str) -> str:
    """Build the request text that runs ``source`` on ``bindings`` (a batch of one).

    Raises :class:`~orchestra.ScriptError` when a binding name is not an identifier or
    a value is not JSON (NaN, infinities, non-JSON types, integers beyond ±(2^53-1)).
    """
    return batch_request((FragmentCall(name, source),), bindings)


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


# The decoder's scanner: replies have no whitespace to skip, so this is json.loads minus
# its checks (the end is checked below).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
_OK = '{"ok":['


def _parse(text: str | bytes, name: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogatepass")
    try:
        reply, end = _SCAN(text, 0)
    except RecursionError:
        raise ScriptError("the result is nested too deeply for the host", fragment=name) from None
    except (ValueError, StopIteration) as exc:
        raise SandboxError(f"fragment {name!r}: malformed reply from the sandbox: {exc}") from None
    if end != len(text) or not isinstance(reply, dict):
        raise SandboxError(f"fragment {name!r}: malformed reply from the sandbox")
    return reply


def decode_reply(text: str | bytes, name: str) -> JSON:
    """Turn the runner's reply text to a compile request into ``None``, or raise its error."""
    reply = _parse(text, name)
    if "ok" in reply:
        result: JSON = reply["ok"]
        return result
    return _raise(reply, name)


def decode_batch(text: str | bytes, fragments: Sequence[FragmentCall]) -> list[JSON]:
    """Turn the runner's reply text to a batch into its results, or raise the error it describes.

    The error names the fragment that failed.
    """
    first = fragments[0].name if fragments else "fragment"
    try:
        reply = _parse(text, first)
    except ScriptError:
        if len(fragments) == 1:
            raise
        raise ScriptError(
            "the result is nested too deeply for the host", fragment=_too_deep(text, fragments)
        ) from None
    if "ok" in reply:
        results = reply["ok"]
        if not isinstance(results, list) or len(results) > len(fragments):
            raise SandboxError(f"fragment {first!r}: malformed reply from the sandbox")
        return results
    index = reply.get("i")
    name = first
    if isinstance(index, int) and 0 <= index < len(fragments):
        name = fragments[index].name
    return _raise(reply, name)  # type: ignore[return-value]


def decode_each(
    text: str | bytes, fragments: Sequence[FragmentCall], each: EachCall | None
) -> tuple[list[JSON], list[list[JSON]] | None]:
    """Turn the reply to :func:`each_request` into its results, or raise the error it describes."""
    names = list(fragments) + list(each.fragments if each is not None else ())
    first = names[0].name if names else "fragment"
    try:
        reply = _parse(text, first)
    except ScriptError:
        if len(names) == 1:
            raise
        raise ScriptError("the result is nested too deeply for the host", fragment=first) from None
    if "ok" not in reply:
        index = reply.get("i")
        name = first
        if isinstance(index, int) and 0 <= index < len(names):
            name = names[index].name
        _raise(reply, name)
    results, per = reply["ok"], reply.get("m")
    if not isinstance(results, list) or len(results) > len(fragments):
        raise SandboxError(f"fragment {first!r}: malformed reply from the sandbox")
    if per is not None and not isinstance(per, list):
        raise SandboxError(f"fragment {first!r}: malformed reply from the sandbox")
    return results, per


def _too_deep(text: str | bytes, fragments: Sequence[FragmentCall]) -> str:
    """The name of the fragment whose result the host cannot parse (results one by one)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogatepass")
    pos = len(_OK)
    for f in fragments:
        try:
            _, pos = _SCAN(text, pos)
        except RecursionError:
            return f.name
        except (ValueError, StopIteration):
            break
        pos += 1  # the comma
    return fragments[0].name


def _raise(reply: dict[str, Any], name: str) -> JSON:
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
