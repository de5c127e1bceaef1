"""Red team, injection (issue 17): a definition's names, values, codes and labels written by hand
in its JSON to read or write outside the project's view (SQL through a name; several statements;
COPY, ATTACH, LOAD; the lake and the keys read directly; Spark's `${env:...}`; quotes and
backslashes in values; a path through a file's name). Each is tried on DuckDB and on Spark,
through the library (as the portal runs it), through `gpdpr tre submit` and through
`gpdpr tre run --dummy`; the portal's own path is in test_redteam_portal.py.

What must hold, every time: the attempt is refused with a clear error or runs harmlessly (a crash
is neither); no file is written outside the run's own folder, in HOME or under /tmp; no run is
left half-made; and no canary (keys, secrets in files and in the environment, the target's
pseudonyms and diagnosis date) is in the error, the output, any new file or the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from redteam import (
    CANARY_FILE,
    ENGINES,
    Injection,
    World,
    assert_harmless,
    cli_plain,
    cli_submit,
    engine_named,
    injections,
    submit,
    the_world,
)

ATTACKS = (
    "variable-duckdb-copy",
    "variable-duckdb-attach",
    "variable-duckdb-load",
    "variable-duckdb-error",
    "variable-duckdb-lake",
    "variable-spark-error",
    "variable-spark-lake",
    "variable-env",
    "group-duckdb-copy",
    "group-duckdb-attach",
    "group-duckdb-load",
    "group-duckdb-error",
    "group-duckdb-lake",
    "group-spark-error",
    "group-spark-lake",
    "group-env",
    "table-path",
    "measure-path",
    "value-quote",
    "value-backslash",
    "value-env",
    "code-quote",
    "codelist-label",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


def attack(world: World, name: str) -> Injection:
    injection = injections(world)[name]
    injection.clear()
    return injection


def test_the_canaries_are_found_wherever_they_are_put(world: World) -> None:
    """The scanner itself: every canary written into a new file of HOME is reported, by what
    it is and where, and the file is reported as one no run may write (so the tests below can
    fail)."""
    before = world.state()
    planted = world.home / "tre" / "redteam-self-test.bin"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"|".join(world.canaries.values()))
    try:
        found = world.leaks(since=before)
        assert len(found) == len(world.canaries)
        assert all("redteam-self-test.bin" in f for f in found)
        assert world.new_files(before) == ["tre/redteam-self-test.bin"]
        texts = world.leaks(world.canaries["the secret in /tmp"], since=world.state())
        assert texts == ["the secret in /tmp in text 0"]
    finally:
        planted.unlink()
    assert (world.home / CANARY_FILE).exists()


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("engine", ENGINES)
def test_injection_through_the_library_is_refused_or_harmless(
    world: World, engine: str, name: str
) -> None:
    """`runs.submit`, as the portal's "run" does, under an agreement, with a hostile definition:
    refused or harmless, nothing written outside the run's folder, no canary anywhere."""
    injection = attack(world, name)
    before = world.state()
    outcome = submit(world, injection.document, engine)
    assert_harmless(world, outcome, before, injection.targets)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("engine", ENGINES)
def test_injection_through_gpdpr_tre_submit_is_refused_or_harmless(
    world: World, engine: str, name: str, tmp_path: Path
) -> None:
    """`gpdpr tre submit hostile.json`: exit 0 or a clear refusal (exit 2), never a traceback
    carrying what the SQL read; nothing written outside the run's folder; no canary in what the
    command prints or anywhere else."""
    injection = attack(world, name)
    before = world.state()
    outcome = cli_submit(world, injection.document, engine, tmp_path)
    assert_harmless(world, outcome, before, injection.targets)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("engine", ENGINES)
def test_injection_through_a_dummy_run_is_refused_or_harmless(
    world: World, engine: str, name: str, tmp_path: Path
) -> None:
    """`gpdpr tre run hostile.json --dummy`: dummy runs get the same sandbox as real ones, so
    a hostile name reads and writes nothing of the real home (its keys, lake, release folders)
    nor of /tmp; the outputs go only where the command was told."""
    engine_named(engine)
    injection = attack(world, name)
    path = tmp_path / "hostile.json"
    path.write_bytes(injection.document)
    dummy = world.home.parent / "dummy-data"  # made once, kept for every test of the process
    before = world.state()
    outcome = cli_plain(
        "tre",
        "run",
        str(path),
        "--dummy",
        "--patients",
        "100",
        "--data",
        str(dummy),
        "--out",
        str(tmp_path / "out"),
        "--engine",
        engine,
    )
    written = list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    outputs = [p.read_bytes() for p in written if p.is_file()]
    assert_harmless(world, outcome, before, injection.targets)
    assert world.leaks(*outputs, since=before) == []
