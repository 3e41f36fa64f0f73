import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra.errors import PersistenceError
from orchestra.stores import InMemoryStore, SQLiteStore, open_store

pytestmark = pytest.mark.anyio


async def test_memory() -> None:
    """``memory:`` opens an in-memory store."""
    async with await open_store("memory:") as store:
        assert isinstance(store, InMemoryStore)


async def test_sqlite_url_with_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///runs.db`` is relative to the working directory, and opened at once."""
    monkeypatch.chdir(tmp_path)
    async with await open_store("sqlite:///runs.db") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == "runs.db"
        assert store.busy_timeout == 5.0
    assert (tmp_path / "runs.db").exists()


async def test_sqlite_url_with_an_absolute_path_and_options(tmp_path: Path) -> None:
    """``sqlite:////abs/path`` (four slashes) is absolute; ``busy_timeout`` is an option."""
    path = tmp_path / "dir with space" / "runs.db"
    path.parent.mkdir()
    async with await open_store(f"sqlite:///{path.as_posix()}?busy_timeout=0.5") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == str(path)
        assert store.busy_timeout == 0.5
    assert path.exists()


async def test_plain_paths_are_sqlite(tmp_path: Path) -> None:
    """A path without a scheme opens SQLite."""
    async with await open_store(str(tmp_path / "plain.db")) as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == str(tmp_path / "plain.db")


async def test_sqlite_memory() -> None:
    """``sqlite:///:memory:`` is an in-memory SQLite database."""
    async with await open_store("sqlite:///:memory:") as store:
        assert isinstance(store, SQLiteStore)
        assert await store.list_runs() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://host/db", "unknown store URL scheme 'mysql'"),
        ("sqlite://host/runs.db", "names a file, not a host"),
        ("sqlite://", "needs a path"),
        ("sqlite:///runs.db?journal=off", "unknown SQLite URL option"),
    ],
)
async def test_bad_urls(url: str, message: str) -> None:
    """URLs of another kind, or malformed ones, raise ValueError."""
    with pytest.raises(ValueError, match=message):
        await open_store(url)


async def test_a_store_that_cannot_open_raises_persistence_error(tmp_path: Path) -> None:
    """Errors surface at open_store, not at the first call."""
    with pytest.raises(PersistenceError):
        await open_store(f"sqlite:///{tmp_path.as_posix()}/missing/runs.db")
    with pytest.raises(PersistenceError):
        await open_store("postgresql://postgres@127.0.0.1:1/nothing")


def test_importing_stores_imports_no_driver() -> None:
    """``import orchestra`` and ``orchestra.stores`` load neither sqlite3 nor asyncpg."""
    code = (
        "import sys, orchestra, orchestra.stores\n"
        "from orchestra.stores import open_store, Store\n"
        "print(sorted(m for m in ('sqlite3', 'asyncpg') if m in sys.modules))\n"
        "orchestra.stores.PostgresStore\n"
        "print('asyncpg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    ).stdout.split()  # fmt: skip
    assert out == ["[]", "False"]
