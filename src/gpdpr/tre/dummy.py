"""Dummy data for developing a definition before applying: a small synthetic nation taken
through the real pipeline (synthesised practices, each one's extract, the centre's collection
into a lake of its own), so the views a definition runs on have exactly the shape, codes and
patterns of the real ones. Nobody in it exists.

Made once per size and seed and kept in a folder (by default `.gpdpr-dummy` beside the
definition); a later run reuses it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path

import pyarrow as pa

from gpdpr.errors import UserError
from gpdpr.lake.store import Lake
from gpdpr.tre import views

DEFAULT_PATIENTS = 20_000
DEFAULT_SEED = 2021
PATIENTS_PER_PRACTICE = 2_500
# A fixed key: dummy pseudonyms need to be stable between runs, not secret.
DUMMY_KEY = b"gpdpr dummy data: not a secret key"
EVERYTHING = views.ViewScope(date(1900, 1, 1), date(2100, 1, 1), {}, frozenset())


def dummy_home(folder: Path, patients: int, seed: int) -> Path:
    return folder / f"patients-{patients}-seed-{seed}"


def ensure(
    folder: Path,
    patients: int = DEFAULT_PATIENTS,
    seed: int = DEFAULT_SEED,
    say: Callable[[str], None] = lambda _: None,
) -> Lake:
    """The dummy lake for this size and seed, made if it is not there yet."""
    if not 100 <= patients <= 500_000:
        raise UserError(f"dummy data has 100 to 500,000 patients, not {patients:,}")
    home = dummy_home(folder, patients, seed)
    done = home / "READY"
    if not done.exists():
        say(f"making dummy data: {patients:,} synthetic patients (once; kept in {home})")
        _make(home, patients, seed)
        done.write_text("made by gpdpr tre run --dummy\n")
    return Lake.open(home / "lake")


def _make(home: Path, patients: int, seed: int) -> None:
    from gpdpr.collect.service import Central, collect
    from gpdpr.custodian.keys import init, issue_practice
    from gpdpr.custodian.service import running
    from gpdpr.practice.many import extract_many
    from gpdpr.synth.run import SynthRequest, synthesise

    if home.exists():
        shutil.rmtree(home)  # an earlier attempt that did not finish
    home.mkdir(parents=True)
    practices = max(1, patients // PATIENTS_PER_PRACTICE)
    request = SynthRequest(home / "practices", practices, patients, seed, "columnar", mess_rate=0)
    synthesise(request)
    keys = home / "keys"
    init(keys)
    folders = sorted(p for p in request.out.iterdir() if p.is_dir())
    with running(keys) as url:  # the dummy centre's own pseudonym service, for these extracts
        for practice in folders:
            issue_practice(keys, practice.name, url)
        extract_many(folders, home / "packages", keys / "practices")
    # The dummy centre keeps its own small database, whatever the real service is configured with.
    saved = os.environ.pop("GPDPR_DATABASE_URL", None)
    try:
        collect(Central(home), sorted(p for p in (home / "packages").iterdir() if p.is_dir()))
    finally:
        if saved is not None:
            os.environ["GPDPR_DATABASE_URL"] = saved
    shutil.rmtree(home / "practices")  # the practices' own records are not needed again


def dummy_views(lake: Lake, used: Mapping[str, Iterable[str]]) -> dict[str, pa.Table]:
    """Views of the dummy lake for a definition, as if under an agreement granting everything."""
    return views.build(lake.snapshot(), EVERYTHING, used, DUMMY_KEY)
