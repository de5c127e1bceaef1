"""What every benchmark takes on its command line: which runs, as KIND:PATIENTS."""

from __future__ import annotations

import argparse
from collections.abc import Collection


def chosen_runs(
    doc: str, kinds: Collection[str], default: list[tuple[str, int]]
) -> list[tuple[str, int]]:
    """The runs named with --only (KIND:PATIENTS ...), or the default ones; an unknown kind or a
    malformed run stops with a usage message."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", nargs="*", help=f"runs as KIND:PATIENTS, KIND one of {', '.join(kinds)}"
    )
    args = parser.parse_args()
    if not args.only:
        return default
    runs = []
    for run in args.only:
        kind, _, patients = run.partition(":")
        if kind not in kinds:
            parser.error(f"unknown run kind {kind!r}: use one of {', '.join(kinds)}")
        if not patients.isdigit():
            parser.error(f"{run!r}: give the run as KIND:PATIENTS, e.g. {kind}:100000")
        runs.append((kind, int(patients)))
    return runs
