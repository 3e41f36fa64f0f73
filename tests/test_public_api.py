"""The public API: what `import orchestra` offers, and what it does not drag in."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import orchestra


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def _attribute_docstring(module: str, name: str) -> str | None:
    """The string literal right after ``name = ...`` in ``module`` (how aliases are documented)."""
    tree = ast.parse(Path(inspect.getfile(sys.modules[module])).read_text(encoding="utf-8"))
    body = tree.body
    for stmt, nxt in zip(body, body[1:], strict=False):
        targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else getattr(stmt, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and (
            isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            return nxt.value.value
    return None


class TestAll:
    def test_all_is_sorted(self) -> None:
        """__all__ is sorted (isort style, as ruff keeps it) and has no duplicates."""
        names = orchestra.__all__
        assert names == sorted(names, key=_isort_key)
        assert len(set(names)) == len(names)

    def test_every_name_importable(self) -> None:
        """Every name in __all__ is an attribute of the package."""
        for name in orchestra.__all__:
            assert hasattr(orchestra, name), name

    def test_every_name_documented(self) -> None:
        """Every public name has a docstring of its own (aliases: an attribute docstring)."""
        undocumented = []
        for name in orchestra.__all__:
            obj = getattr(orchestra, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
            else:
                doc = _attribute_docstring("orchestra._json", name)
            if not (doc and doc.strip()):
                undocumented.append(name)
        assert undocumented == []

    def test_public_methods_documented(self) -> None:
        """Public methods of public classes defined in orchestra have docstrings."""
        missing = []
        for name in orchestra.__all__:
            cls = getattr(orchestra, name)
            if not inspect.isclass(cls) or not cls.__module__.startswith("orchestra"):
                continue
            for attr, value in vars(cls).items():
                if attr.startswith("_") or not callable(value):
                    continue
                if not inspect.getdoc(value):
                    missing.append(f"{name}.{attr}")
        assert missing == []

    def test_errors_derive_from_orchestra_error(self) -> None:
        """Every exported exception derives from OrchestraError."""
        for name in orchestra.__all__:
            obj = getattr(orchestra, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                assert issubclass(obj, orchestra.OrchestraError), name

    def test_version(self) -> None:
        """The package has a version string."""
        assert isinstance(orchestra.__version__, str)


class TestImportCost:
    def test_import_is_light(self) -> None:
        """`import orchestra` loads no JavaScript engine, database driver or server."""
        code = (
            "import json, sys, orchestra\n"
            "heavy = ('pythonmonkey', 'asyncpg', 'sqlite3', '_sqlite3', 'uvicorn', 'aiohttp')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert json.loads(out.stdout) == []

    def test_the_check_can_see_a_heavy_import(self) -> None:
        """The subprocess check notices a heavy module once something imports it."""
        code = "import json, sys, orchestra, sqlite3\nprint(json.dumps('sqlite3' in sys.modules))\n"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert json.loads(out.stdout) is True
