"""Open a store from a URL, so a host can choose its store in configuration."""

from __future__ import annotations

import re
import urllib.parse

from orchestra.stores._base import Store

__all__ = ["open_store"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


async def open_store(url: str) -> Store:
    """Open (connect, create or migrate the schema of) the store that ``url`` names.

    ============================================  ====================================
    ``memory:``                                   an :class:`InMemoryStore`
    ``sqlite:///runs.db``                         a :class:`SQLiteStore`, relative path
    ``sqlite:////var/lib/app/runs.db``            absolute path (four slashes)
    ``runs.db``, ``/var/lib/app/runs.db``         a plain path: SQLite
    ``postgresql://user:pw@host:5432/db``         a :class:`PostgresStore`
    ``postgresql://host/db?schema=billing``       ... with its tables in schema ``billing``
    ============================================  ====================================

    SQLite URLs take ``?busy_timeout=SECONDS``. Raise :class:`ValueError` for a URL of
    another kind, :class:`~orchestra.PersistenceError` if the store cannot be opened.
    """
    scheme = _SCHEME.match(url)
    kind = scheme.group(1).lower() if scheme and len(scheme.group(1)) > 1 else ""
    if kind == "memory":
        from orchestra.stores._memory import InMemoryStore

        return InMemoryStore()
    if kind in ("postgresql", "postgres"):
        from orchestra.stores._postgres import PostgresStore

        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        schemas = [v for k, v in query if k == "schema"]
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
        dsn = urllib.parse.urlunsplit(parts._replace(query=rest))
        return await PostgresStore.open(dsn, schema=schemas[-1] if schemas else "orchestra")
    if kind == "sqlite":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc:
            msg = f"a SQLite URL names a file, not a host: {url!r} (use sqlite:///path)"
            raise ValueError(msg)
        path = urllib.parse.unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        options = dict(urllib.parse.parse_qsl(parts.query))
        unknown = set(options) - {"busy_timeout"}
        if unknown:
            msg = f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}"
            raise ValueError(msg)
        if not path:
            msg = f"a SQLite URL needs a path: {url!r} (sqlite:///runs.db, or sqlite:///:memory:)"
            raise ValueError(msg)
        return await _sqlite(path, float(options.get("busy_timeout", 5.0)))
    if kind:
        msg = f"unknown store URL scheme {kind!r} in {url!r}: use memory:, sqlite:/// or postgresql://"
        raise ValueError(msg)
    return await _sqlite(url, 5.0)


async def _sqlite(path: str, busy_timeout: float) -> Store:
    from orchestra.stores._sqlite import SQLiteStore

    return await SQLiteStore.open(path, busy_timeout=busy_timeout)
