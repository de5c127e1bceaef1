"""The Data Uses Register as a page, one way: the portal's /register and the static register
written beside the data (governance.register.write's index.html) both show `body`, one template
(`_register.html.j2`) over the register's data, so the two cannot tell different stories. They
differ only in what is around it: the portal's navigation and search, or a page of its own with
the portal's stylesheet, and in where their links point (`Links`).

Everything in the body comes from the register's data (governance.register.build), the
specification (what each data item is), the released definitions (the question in words) and
the released measure files, read only under the SHA-256 they were released with.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from sqlalchemy.orm import Session

from gpdpr.governance import register

if TYPE_CHECKING:
    from gpdpr.tre.query.nodes import Definition

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = Path(__file__).parent / "static" / "portal.css"
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")  # a released file's name, served as is

# The register's own environment: the body must render the same wherever it is shown, so it
# depends on nothing of the portal's request (autoescaping on, as in every portal template).
_environment = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_environment.filters["words"] = lambda text: str(text).replace("_", " ")


@dataclass(frozen=True)
class Links:
    """Where the body's links point: the register's folder (a release's files are under
    `releases/` in it) and the whole register as CSV and JSON."""

    folder: str
    csv: str
    json: str


PORTAL = Links("/register/", "/register.csv", "/register.json")
STATIC = Links("", register.FILES["csv"], register.FILES["json"])  # beside index.html


@dataclass(frozen=True)
class Question:
    words: str  # what it asks, in a sentence
    text: str  # the definition written out as the query language


def questions(session: Session) -> dict[str, Question]:
    """Each released definition's question, by its SHA-256: made from the definition.json
    published with it (never from anything the researcher sent as text)."""
    from gpdpr.governance.models import Release

    found = session.execute(
        sa.select(Release.code_sha256, Release.definition).where(Release.definition.is_not(None))
    ).all()
    return {sha: asked for sha, document in found if document and (asked := question(document))}


def question(document: str) -> Question | None:
    """A definition.json as its question, or None where it cannot be read (a definition from an
    older format is still listed, only without its words)."""
    from gpdpr.errors import UserError
    from gpdpr.tre.query.serial import from_json
    from gpdpr.tre.query.text import summary

    try:
        definition = from_json(document)
        return Question(summary(definition), readable(definition))
    except (UserError, TypeError, ValueError, KeyError, AttributeError):
        return None  # an unreadable definition must not keep the register from being written


def readable(definition: Definition) -> str:
    """A definition as a file a reader could run: what it asks, the import, the statements."""
    from gpdpr.tre.query.text import definition_text, summary

    return f"# {summary(definition)}\n\nfrom gpdpr.tre.language import *\n\n" + definition_text(
        definition
    )


def measure_charts(folder: Path, built: dict[str, Any]) -> dict[str, str]:
    """Each released measure file drawn as its rate per interval, by the file's href: read from
    the register's folder only under a name the release lists and that passes the same check
    as a download, and only with the SHA-256 it was released with."""
    from gpdpr.portal.outputs import file_view

    drawn: dict[str, str] = {}
    for agreement in built["agreements"]:
        for release in agreement["releases"]:
            for published in release["published"]:
                name = str(published["name"])
                if not name.startswith("measure_") or not _FILE.match(name):
                    continue
                where = str(published["href"]).rsplit("/", 1)[0]
                try:
                    body = (folder / where / name).read_bytes()
                except OSError:
                    continue
                if hashlib.sha256(body).hexdigest() != published["sha256"]:
                    continue
                chart = file_view(name, body, None).chart
                if chart:
                    drawn[str(published["href"])] = chart
    return drawn


def item_glosses() -> dict[str, str]:
    """Each data item, `table.field`, in words: the table's title and the field's description."""
    from gpdpr.spec import shipped

    return {
        f"{name}.{f.name}": f"{table.title}: {f.description}"
        for name, table in shipped().tables.items()
        for f in table.fields
    }


def over_time(built: dict[str, Any]) -> dict[str, Any] | None:
    """Each agreement from its start to its end (or revocation) on one scale of years, as
    percentages of the width, so the drawing stretches to any screen while its text keeps its
    size: the register's own timeline (governance.register.timeline), rescaled."""
    drawn = register.timeline(built, width=1150)  # 150 for labels, then 1000: tenths of a percent
    if not drawn["bars"]:
        return None

    def percent(x: float) -> float:
        return round((x - 150) / 10, 2)

    return {
        "bars": [
            {**bar, "x": percent(bar["x"]), "width": round(bar["width"] / 10, 2), "y": 20 + n * 40}
            for n, bar in enumerate(drawn["bars"])
        ],
        "years": [{**y, "x": percent(y["x"])} for y in drawn["years"]],
        "today": percent(drawn["today"]),
        "height": 28 + len(drawn["bars"]) * 40,
    }


def body(
    built: dict[str, Any],
    links: Links,
    asked: dict[str, Question],
    charts: dict[str, str],
    agreements: list[dict[str, Any]] | None = None,
    refused: list[dict[str, Any]] | None = None,
) -> Markup:
    """The register's content: every agreement (or those given, as a search found them) with
    its releases, the refusals, the drawing of when each agreement runs and the words used.
    Everything shown is escaped; the charts are drawn by gpdpr.portal.charts, which escapes."""
    agreements = built["agreements"] if agreements is None else agreements
    refused = built["refused"] if refused is None else refused
    return Markup(
        _environment.get_template("_register.html.j2").render(
            register=built,
            agreements=agreements,
            refused=refused,
            over_time=over_time({**built, "agreements": agreements}),
            items=item_glosses(),
            questions=asked,
            measure_charts=charts,
            links=links,
        )
    )


def standalone(built: dict[str, Any], session: Session | None, folder: Path | None) -> str:
    """The static register's index.html: the body on a page of its own, styled by the portal's
    stylesheet (inlined, so the file stands alone wherever it is copied)."""
    content = body(
        built,
        STATIC,
        questions(session) if session is not None else {},
        measure_charts(folder, built) if folder is not None else {},
    )
    return _environment.get_template("register_static.html.j2").render(
        content=content, stylesheet=Markup(STYLESHEET.read_text("utf-8")), register=built
    )
