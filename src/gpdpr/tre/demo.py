"""The demo's research: the shipped diabetes study, developed as any researcher would, runs on
the real (synthetic) lake under the diabetes project's agreement; its author asks for both
outputs to be released; two output checkers approve every file; the files and the definition
are published on the register. Everything goes through the service's own functions."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import connect, url_for_home
from gpdpr.governance import register
from gpdpr.governance.models import Agreement, Application
from gpdpr.governance.sample import DIABETES
from gpdpr.tre import runs
from gpdpr.tre.release import checking
from gpdpr.tre.review_cli import outputs_folder

AUTHOR = "r.okafor"
CHECKERS = ("check.one", "check.two")


def example(name: str = "diabetes") -> Path:
    """The folder of a shipped example definition (study.py and its codelists)."""
    return Path(str(resources.files("gpdpr.tre.examples").joinpath(name)))


def research(home: Path, say: Callable[[str], None]) -> str:
    """Run, request, check and publish; the release's reference."""
    database = connect(url_for_home(home))
    with Session(database) as session:
        agreement = session.scalar(
            sa.select(Agreement.reference)
            .join(Application, Application.id == Agreement.application_id)
            .where(Application.title == DIABETES.title)
        )
    if agreement is None:
        raise RuntimeError("the demo's governance step made no diabetes agreement")
    study = example() / "study.py"
    document = runs.compile_file(study)
    made = runs.submit(home, AUTHOR, agreement, document, progress=lambda s: say(f"  … {s}"))
    say(
        f"{AUTHOR} ran {study.name} under {agreement}: {made.reference} on lake version "
        f"{made.lake_version}, outputs controlled (counts of 7 or fewer redacted, the rest "
        "rounded to 5):"
    )
    for name in made.outputs:
        say(f"  {name}")
    files = {name: (about["sha256"], about["bytes"]) for name, about in made.outputs.items()}
    cells = runs.cells_of(home, made.reference, set(files))
    with Session(database) as session, session.begin():
        request = checking.request_release(
            session,
            AUTHOR,
            made.reference,
            files,
            "HbA1c checks in type 2 diabetes by deprivation, monthly",
            "Monthly share of adults with type 2 diabetes who had an HbA1c check, by IMD "
            "decile; and the people counted, by sex and age band.",
            cells,
        )
        reference = request.reference
    folder: Path | None = None
    for checker in CHECKERS:
        for name in files:
            with Session(database) as session, session.begin():
                reviewed = checking.review(session, checker, reference, name, "approve")
                if reviewed.state == "released":
                    assert reviewed.release is not None
                    folder = checking.publish_files(
                        reviewed.release,
                        outputs_folder(home, made.reference),
                        home / "register",
                    )
    if folder is None:
        raise RuntimeError(f"{reference} was not released after every file was approved twice")
    with Session(database) as session:
        register.write(session, home / "register")
    say(
        f"{reference}: {CHECKERS[0]} and {CHECKERS[1]} (neither on the team nor from the "
        f"University of Leeds) approved every file; published with the definition in {folder}"
    )
    database.dispose()
    return reference
