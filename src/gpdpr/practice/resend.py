"""The resend list: people the centre asks practices to send in full again.

A practice re-sends a patient's whole record by itself when it records the withdrawal of their
Type 1 dissent. But a Type 1 opt-out made and withdrawn online never reaches the practice's
record: the centre erased the person's history, and an incremental extract sends only what
changed. So the centre lists the pseudonyms whose Type 1 opt-out was withdrawn since a time, and
each practice's next extract sends everything of any of its patients on the list. The list holds
pseudonyms only, which a practice can match (it makes the same pseudonyms) but not read; a
practice sends nothing of a patient whose own record holds an active dissent, list or no list.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from gpdpr.errors import UserError

KIND = "gpdpr resend list"
HEX = frozenset("0123456789abcdef")


def write_resend_list(path: Path, pseudonyms: set[str], since: datetime | None) -> None:
    if path.exists():
        raise UserError(f"{path} already exists: choose a new file for the resend list")
    document = {
        "kind": KIND,
        "made_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "withdrawn_since": None if since is None else since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pseudonyms": sorted(pseudonyms),
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def read_resend_list(path: Path) -> frozenset[str]:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"no resend list at {path}") from None
    except orjson.JSONDecodeError as exc:
        raise UserError(f"{path} is not a resend list: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise UserError(f"{path} is not a resend list (its kind is not {KIND!r})")
    pseudonyms = document.get("pseudonyms")
    if not isinstance(pseudonyms, list):
        raise UserError(f"{path}: 'pseudonyms' must be a list")
    for i, p in enumerate(pseudonyms):
        if not (isinstance(p, str) and len(p) == 64 and set(p) <= HEX):
            raise UserError(
                f"{path}: pseudonym number {i + 1} is not 64 lower-case hex digits; ask the "
                "centre for a new list"
            )
    return frozenset(pseudonyms)
