"""Lint and type-check are part of the tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The tests are checked in a run of their own: bench/ and tests/ each hold a `tre_data` module,
# which mypy cannot take as one module in one run. pyproject's `mypy_path` (src) gives the tests
# gpdpr's own types, not the untyped package installed.
@pytest.mark.parametrize("where", [[], ["tests"]], ids=["src and bench", "tests"])
def test_mypy_strict_finds_nothing(where: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *where], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
