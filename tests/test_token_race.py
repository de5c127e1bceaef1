"""A run planned before someone opts out, and recorded only after their erasure cycle ran, must not
keep that it read them. As the attacker would time it: the run's views are planned, the person
opts out and `gpdpr erase` runs while the engine computes, then the run is recorded; afterwards
no file and no table under the home holds any form of them (byte scan), while someone who did
not opt out is still found in the run's record of whom it read, so the scan can fail."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from extracting import nation
from governing import LEAD, agreement_of, cast
from gpdpr.cli import app
from gpdpr.collect.service import Central, collect
from gpdpr.custodian.central import Custodian, project_pseudonyms, run_use_token
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.optout.registry import Registry
from gpdpr.transparency import uses
from gpdpr.tre import runs
from gpdpr.tre.engines.base import Results, Views
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes
from home_scan import Needle, scan
from portal_home import study
from test_erasure_everywhere import RECEIPT, REGISTRY, _approve


class Racing(DuckDBEngine):
    """An engine during whose run, after the views were planned, `meanwhile` happens."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__(threads=1)
        self.meanwhile = meanwhile

    def run(self, definition: nodes.Definition, views: Views) -> Results:
        results = super().run(definition, views)
        self.meanwhile()
        return results


def tokens_of(key: bytes, folder: Path, people: list[str]) -> list[str]:
    salt = uses.basis(folder)
    assert salt is not None
    return [run_use_token(key, salt, p) for p in people]


def test_a_person_erased_while_a_run_computes_leaves_no_token_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # the scan reads the home's SQLite
    home = tmp_path / "home"
    home.mkdir()
    nation(tmp_path / "practices", home / "keys", tmp_path / "packages", 1, 300, 7)
    shutil.copytree(tmp_path / "packages", home / "inbox")
    collect(Central(home), sorted((home / "inbox").iterdir()))
    engine: sa.Engine = connect(url_for_home(home))
    cast(engine)
    application = _approve(engine)
    agreement = agreement_of(engine, application)
    assert agreement is not None
    (tmp_path / "study.py").write_text(textwrap.dedent(study("by_sex", 18)))
    document = runs.compile_file(tmp_path / "study.py")
    custodian = Custodian(home / "keys", engine)
    key = custodian.project_key(application, actor="test")

    first = runs.submit(home, LEAD, agreement, document, DuckDBEngine(threads=1))
    read = _read_by(home, first.folder, key)
    victim, bystander = read[0], read[1]

    def opt_out_and_erase() -> None:
        assert Registry(engine).set(victim, "type1", "online")
        said = CliRunner().invoke(app, ["erase", "--home", str(home)])
        assert said.exit_code == 0, said.output

    racing = Racing(opt_out_and_erase)
    late = runs.submit(home, LEAD, agreement, document, racing)

    [late_token, bystanders] = tokens_of(key, late.folder, [victim, bystander])
    assert uses.holds(late.folder, bystanders)  # the run's record still finds whom it read
    assert not uses.holds(late.folder, late_token)
    project = project_pseudonyms(key, pa.array([victim])).to_pylist()[0]
    digest = hashlib.sha256(victim.encode()).hexdigest()
    needles = [
        Needle(victim.encode(), "lake pseudonym", REGISTRY),
        Needle(digest.encode(), "its hash", RECEIPT),
        Needle(project.encode(), "project pseudonym"),
    ]
    for n, token in enumerate([*tokens_of(key, first.folder, [victim]), late_token]):
        needles += [
            Needle(token.encode(), f"token {n}"),
            Needle(bytes.fromhex(token[:32]), f"token {n}, as kept"),
        ]
    assert scan(home, needles) == []
    other = scan(home, [Needle(bytes.fromhex(bystanders[:32]), "bystander")])
    assert [h.path for h in other] == [str(late.folder.relative_to(home) / uses.FILE)]
    engine.dispose()


def _read_by(home: Path, folder: Path, key: bytes) -> list[str]:
    """Lake pseudonyms of people the run in `folder` read."""
    from gpdpr.lake.query import connect as lake_sql
    from gpdpr.lake.store import Lake

    sql = lake_sql(Lake.open(home / "lake").snapshot())
    people = [row[0] for row in sql.sql("select distinct patient from clinical_events").fetchall()]
    salt = uses.basis(folder)
    assert salt is not None
    found = [p for p in sorted(people) if uses.holds(folder, run_use_token(key, salt, p))]
    assert len(found) >= 2
    return found
