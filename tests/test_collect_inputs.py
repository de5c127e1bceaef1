"""`gpdpr collect` and the packages it is given: its own copies (inside the home) go once
loaded, as erasure requires; an operator's folder from outside the home is left as it was, with
one plain warning, and collecting it again loads nothing twice."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from collecting import copies, state
from conftest import Extracted
from extracting import Keys
from gpdpr import db
from gpdpr.collect.service import Central

WARNING = "Left as they were"


def _files(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _record(home: Path) -> tuple[list[tuple[object, ...]], dict[str, str]]:
    """The event record and the published log, as they stand."""
    engine = db.connect(db.url_for_home(home))
    try:
        with engine.connect() as con:
            events = [tuple(r) for r in con.execute(sa.text("select * from events order by id"))]
    finally:
        engine.dispose()
    return events, _files(home / "log")


def _collect(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpdpr", "collect", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_folder_from_outside_the_home_is_kept_and_collecting_it_again_loads_nothing(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(keys.folder, home / "keys")
    [package] = copies(clean_columnar_packages.packages, tmp_path / "transfer", ["Z10001"])
    given = _files(package)

    first = _collect(home, str(package))
    assert first.returncode == 0, first.stderr
    assert "lake version 1 committed" in first.stdout
    assert _files(package) == given, "the operator's package is left exactly as it was"
    assert first.stdout.count(WARNING) == 1
    assert "erasure cycle cannot reach" in first.stdout and "--remove-inputs" in first.stdout
    lake, record = state(Central(home)), _record(home)
    assert lake[0] == 1 and record[0], "the load is in the lake and the record"

    again = _collect(home, str(package))
    assert again.returncode == 0, again.stderr
    assert "already loaded (lake version 1)" in again.stdout
    assert "nothing new: every package was already loaded" in again.stdout
    assert again.stdout.count(WARNING) == 1
    assert state(Central(home)) == lake and _record(home) == record

    # Asked to, it deletes what it had loaded (as after a run killed before its deleting).
    removing = _collect(home, str(package), "--remove-inputs")
    assert removing.returncode == 0, removing.stderr
    assert not package.exists() and WARNING not in removing.stdout
    assert state(Central(home)) == lake and _record(home) == record


def test_packages_in_the_homes_inbox_are_deleted_once_loaded(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(keys.folder, home / "keys")
    [package] = copies(clean_columnar_packages.packages, home / "inbox", ["Z10001"])

    done = _collect(home)
    assert done.returncode == 0, done.stderr
    assert "lake version 1 committed" in done.stdout
    assert not package.exists() and not any((home / "inbox").iterdir())
    assert WARNING not in done.stdout


def test_a_refusal_is_told_whole_whatever_names_the_package_holds() -> None:
    """A package's folder and file names come from outside: shown as they are (not read as the
    terminal's markup, which would fail or restyle them) and on one line, however long the path
    (a reason cut over two lines is harder to read and to search for)."""
    from io import StringIO

    from rich.console import Console

    from gpdpr.collect.cli import render_collection
    from gpdpr.collect.refusals import Refused
    from gpdpr.collect.service import Collection

    kept = Path("/srv/gpdpr/" + "long-folder-name/" * 12 + "rejected/Z1[bold]")
    reason = "Z1[bold]'s notes[/].txt are not in the manifest: ask the practice to extract again"
    refused = Refused(Path("/in/Z1[bold]"), reason, kept)
    out = StringIO()
    render_collection(Collection(None, refused=[refused]), Console(file=out, width=80))
    assert f"refused Z1[bold] (reason kept in {kept}): {reason}" in out.getvalue()
