"""The same seed gives byte-identical output, whatever the number of workers."""

import hashlib
from pathlib import Path

import pytest

from conftest import make


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["columnar", "fhir"])
def test_same_seed_same_bytes_with_one_or_two_workers(tmp_path: Path, fmt: str) -> None:
    args = {"practices": 3, "patients": 3000, "seed": 5, "format": fmt}
    one = make(tmp_path, "one", workers=1, **args)
    two = make(tmp_path, "two", workers=2, **args)
    first, second = digest(one.root), digest(two.root)
    assert len(first) > 10
    assert first == second


def test_another_seed_gives_another_nation(tmp_path: Path) -> None:
    args = {"practices": 2, "patients": 2000, "format": "columnar"}
    a = digest(make(tmp_path, "a", seed=1, **args).root)
    b = digest(make(tmp_path, "b", seed=2, **args).root)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith("patients.parquet"))
