"""A small SNOMED CT release in RF2 (Snapshot) for the terminology tests: a hierarchy with a
child concept of a restricted one, an inactive dissent concept with its replacement, a refset."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpdpr.terminology.rf2 import KINDS, REPLACED_BY
from gpdpr.terminology.sctid import check_digit
from gpdpr.terminology.store import ENV, Release, active, load

ROOT, FINDING, PROCEDURE = "138875005", "404684003", "71388002"
IVF, DISSENT, WITHDRAWN = "52637005", "827241000000103", "827261000000102"


def made(item: int) -> str:
    """A valid concept id no real release has (short format, partition 00)."""
    body = f"{item}00"
    digit: str = check_digit(body)
    return body + digit


IVF_CHILD = made(9100001)  # a kind of IVF the specification never names
OLD_DISSENT = made(9100002)  # an inactive dissent concept, REPLACED BY the current one
REFSET = made(9100003)
HEADACHE = made(9100004)


def write_release(
    folder: Path,
    more: list[tuple[str, str]] | None = None,
    retired: list[tuple[str, str]] | None = None,
) -> Path:
    """A small RF2 Snapshot: a hierarchy, an inactive concept with its replacement, a refset;
    and `more` (concept, parent) pairs, and `retired` (inactive concept, REPLACED BY) pairs."""
    retired = [(OLD_DISSENT, DISSENT), *(retired or [])]
    folder.mkdir(parents=True)
    concepts = [
        *(more or []),
        (ROOT, ""),
        (FINDING, ROOT),
        (PROCEDURE, ROOT),
        (IVF, PROCEDURE),
        (IVF_CHILD, IVF),
        (DISSENT, FINDING),
        (WITHDRAWN, FINDING),
        (REFSET, ROOT),
        (HEADACHE, FINDING),
    ]
    head = ["20260101", "1", "900000000207008"]
    rows = {
        "concepts": [[c, *head, "900000000000074008"] for c, _ in concepts]
        + [[old, "20260101", "0", "900000000207008", "900000000000074008"] for old, _ in retired],
        "descriptions": [
            [str(n), *head, c, "en", "900000000000013009", f'term {c} "quoted"', "x"]
            for n, (c, _) in enumerate(concepts, start=1)
        ],
        "relationships": [
            [str(n), *head, c, p, "0", "116680003", "900000000000011006", "x"]
            for n, (c, p) in enumerate(concepts, start=1)
            if p
        ]
        # An inactive is-a is history, not hierarchy.
        + [["99", "20260101", "0", "900000000207008", HEADACHE, IVF, "0", "116680003", "x", "x"]],
        "refsets": [[f"u{n}", *head, REFSET, c] for n, c in enumerate([IVF, HEADACHE], start=1)],
        "associations": [
            [f"a{n}", *head, str(REPLACED_BY), old, new]
            for n, (old, new) in enumerate(retired, start=1)
        ],
    }
    for kind, lines in rows.items():
        spec = KINDS[kind]
        text = "\r\n".join(["\t".join(spec.columns)] + ["\t".join(line) for line in lines])
        (folder / f"{spec.pattern}_TEST_20260101.txt").write_text(text + "\r\n")
    return folder


def use_release(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Release:
    """The test release, stored under `folder` and made the one in use."""
    into = folder / "store"
    load(write_release(folder / "rf2")).save(into, source="test")
    monkeypatch.setenv(ENV, str(into))
    return active()
