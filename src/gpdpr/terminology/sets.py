"""Code sets by meaning: an ECL expression expanded against the loaded release, with the
release's history applied, as the sets of codes the extractor and the research environment hold
records to.

History is applied both ways, and generously, because these sets keep things out (restricted and
sensitive records) or decide that a patient opted out: an inactive concept named in the
expression stands for its replacements and their descendants; and an inactive concept that any
historical association (REPLACED BY, SAME AS, POSSIBLY REPLACED BY, POSSIBLY EQUIVALENT TO,
ALTERNATIVE) maps into the set is in the set, since a record made before the change still
carries it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from gpdpr.terminology import ecl, store
from gpdpr.terminology.store import Release

ROUNDS = 10  # replacement chains (inactive to inactive) longer than this are not followed


def expand(expression: str, release: Release | None = None) -> frozenset[str]:
    """The codes (as text) the expression stands for in `release` (by default the active one),
    history applied. Each expression is expanded once per release."""
    release = release or store.active()
    if expression not in release.expansions:
        release.expansions[expression] = frozenset(
            str(c) for c in _with_history(ecl.expand(expression, release), release)
        )
    return release.expansions[expression]


def _with_history(ids: np.ndarray, release: Release) -> np.ndarray:
    replacements = release.replacements(ids)
    if replacements.size:
        ids = np.union1d(ids, release.descendants(replacements, self_too=True))
    for _ in range(ROUNDS):
        older = np.setdiff1d(release.replaced_into(ids), ids)
        if not older.size:
            break
        ids = np.union1d(ids, older)
    return ids


def fingerprint(codes: frozenset[str]) -> str:
    """A short, stable digest of an expansion, for the manifest: two extracts held records to
    the same set exactly when their fingerprints agree."""
    return hashlib.sha256("\n".join(sorted(codes, key=int)).encode()).hexdigest()[:16]


def record(
    release: Release, expressions: dict[str, str], not_in_release: Mapping[str, int]
) -> dict[str, Any]:
    """What a package's manifest says of the terminology it was made with: the release, each
    code set's expression and its expansion's size and fingerprint, and how many rows were sent
    with a valid code the release does not know."""
    code_sets = {}
    for name, expression in sorted(expressions.items()):
        codes = expand(expression, release)
        code_sets[name] = {
            "ecl": expression,
            "concepts": len(codes),
            "fingerprint": fingerprint(codes),
        }
    return {
        **release.label,
        "code_sets": code_sets,
        "not_in_loaded_release": dict(sorted(not_in_release.items())),
    }
