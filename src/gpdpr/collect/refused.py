"""What the centre keeps of a refused package: only what it needs to tell the practice why.

That is the reason and a summary of the manifest, taken through an allowlist (what the package
said it was: its id, practice, window, specification, files and row counts), never its rows nor
any list of people (a manifest's Type 1 lists become counts). The package itself is deleted: kept
whole, it would hold people who are later erased, out of the erasure cycle's reach.

    HOME/rejected/<package>/REFUSED.txt       the reason
    HOME/rejected/<package>/manifest.json     the summary (absent if the manifest was unreadable)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from gpdpr import durable

SUMMARY = "manifest.json"
REFUSED_NOTE = "REFUSED.txt"
MAX_MANIFEST = 1 << 20  # a manifest larger than this is not read at all
# The manifest's fields a summary keeps, as they are (none of them names or lists a person).
KEPT = (
    "format",
    "package_id",
    "created_at",
    "practice",
    "kind",
    "source_format",
    "window",
    "specification",
    "signing_key_id",
    "quarantined",
)


def _count(value: Any) -> int | None:
    if isinstance(value, list | dict):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The allowlisted part of a manifest: chosen fields, and counts where it lists things."""
    kept: dict[str, Any] = {k: manifest[k] for k in KEPT if k in manifest}
    tables = manifest.get("tables")
    if isinstance(tables, dict):
        kept["tables"] = {
            str(name): {"rows": _count(about.get("rows"))}
            for name, about in tables.items()
            if isinstance(about, dict)
        }
    files = manifest.get("files")
    if isinstance(files, dict):
        kept["files"] = {
            str(name): {k: about.get(k) for k in ("bytes", "sha256")}
            for name, about in files.items()
            if isinstance(about, dict)
        }
    type1 = manifest.get("type1_opt_out")
    if isinstance(type1, dict):
        kept["type1_opt_out"] = {k: _count(type1.get(k)) for k in ("active", "withdrawn")}
    return kept


def keep_reason(package: Path, target: Path, reason: str) -> None:
    """Write the reason and the manifest's summary to `target` (a new folder), from `package`,
    which is left as it is: the caller deletes it once the summary is whole."""
    target.mkdir(parents=True)
    manifest = package / SUMMARY
    try:
        readable = package.is_dir() and manifest.is_file() and not manifest.is_symlink()
        if readable and manifest.stat().st_size <= MAX_MANIFEST:
            found = orjson.loads(manifest.read_bytes())
            if isinstance(found, dict):
                kept = orjson.dumps(summary(found), option=orjson.OPT_INDENT_2)
                durable.write_file(target / SUMMARY, kept + b"\n")
    except (OSError, orjson.JSONDecodeError):
        pass  # the reason alone is kept: it says what was wrong with the manifest
    durable.write_file(target / REFUSED_NOTE, reason.encode("utf-8") + b"\n")


def delete(package: Path) -> None:
    """Delete `package`: renamed first, in one step, so a crash never leaves half of it."""
    doomed = package.with_name(f".{package.name}.refused-{os.getpid()}")
    package.rename(doomed)
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()
