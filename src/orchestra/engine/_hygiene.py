"""Keeping credentials out of the store, the history and the logs.

Secrets never enter a run's context on purpose: fragments do not see them and auth
headers are added below the HTTP call. They can still arrive by accident: an API that
echoes the request's ``Authorization`` header, an error message quoting a response, a
host function that returns a token. So every text the engine writes to its store (a
context, a checkpoint, a history detail, an error, an event payload) and every message it
logs goes through :class:`Scrubber` first, which replaces each secret value, and each
OAuth2 access token the engine fetched, by ``"***"``.

Values shorter than :data:`MIN_LENGTH` characters are not scrubbed: replacing every
``"abc"`` in a run's data would corrupt it, and a credential that short protects nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping

__all__ = ["MIN_LENGTH", "REDACTED", "Scrubber"]

MIN_LENGTH = 6
REDACTED = "***"


class Scrubber:
    """Replaces known secret values in text; cheap when the text holds none.

    ``secrets`` returns the secrets on every call (the engine's may change after it was
    built); ``extra`` returns further values to hide (the OAuth2 access tokens in the cache).
    """

    def __init__(
        self,
        secrets: Callable[[], Mapping[str, str]],
        extra: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self._secrets = secrets
        self._extra = extra
        self._key: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None

    def _compile(self) -> re.Pattern[str] | None:
        secrets, extra = self._secrets(), self._extra()
        if not secrets and not extra:  # nothing to hide (the common case): nothing to build
            return None
        values = (*secrets.values(), *extra)
        if values != self._key:
            self._key = values
            needles: set[str] = set()
            for v in values:
                if len(v) < MIN_LENGTH:
                    continue
                needles.add(v)
                escaped = json.dumps(v, ensure_ascii=False)[1:-1]
                needles.add(escaped)
                needles.add(json.dumps(v)[1:-1])
            # Longest first, so a secret containing another is replaced whole.
            ordered = sorted(needles, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        return self._pattern

    def active(self) -> Callable[[str], str]:
        """Return a function scrubbing texts with the secrets known now.

        For several texts written together (a commit): the secrets are looked up once,
        and when there are none the function returned leaves texts as they are.
        """
        pattern = self._compile()
        if pattern is None:
            return _unchanged
        return lambda text: pattern.sub(REDACTED, text) if text else text

    def __call__(self, text: str) -> str:
        """Return ``text`` with every secret value replaced by ``***``."""
        pattern = self._compile()
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)

    def optional(self, text: str | None) -> str | None:
        """Like calling the scrubber, for ``None`` too."""
        return None if text is None else self(text)


def _unchanged(text: str) -> str:
    return text
