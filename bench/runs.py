"""What every benchmark shares: which runs it was asked for on its command line (KIND:PATIENTS),
and running one measurement in a child process of its own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Collection
from typing import Any

CHILD = "--child"


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


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run `script --child ARGS` in a fresh Python process, so its time and peak memory are its
    own, and return the figures it prints as JSON on its last line; a failed child stops the
    benchmark with its error output."""
    result = subprocess.run(
        [sys.executable, script, CHILD, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"benchmark child {' '.join(args)} failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures
