"""JSON value types shared across the package."""

from __future__ import annotations

from typing import TypeAlias

JSON: TypeAlias = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]
"""Any value that JSON text can carry."""

JSONObject: TypeAlias = dict[str, JSON]
