"""ISO 8601 durations (``P5D``, ``PT30M``, ``P1DT12H``) as seconds."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Return the number of seconds in an ISO 8601 duration; raise ``ValueError`` if malformed.

    Weeks, days, hours, minutes and seconds are supported; years and months are not,
    because their length depends on the calendar.
    """
    m = _DURATION.match(text)
    if m is None:
        msg = (
            f"{text!r} is not an ISO 8601 duration such as 'P5D' or 'PT30M' "
            "(years and months are not supported)"
        )
        raise ValueError(msg)
    return sum(float(v) * _SECONDS[k] for k, v in m.groupdict().items() if v)
