"""The transparency log's public pages: the activity log (verified, with its signed checkpoint),
one entry with its inclusion proof, "verify it yourself", and the log's public files served raw
so anyone can check them with `gpdpr log verify --url` and nothing from us.

The pages read HOME/log through the transparency log's own verifier. Verifying re-hashes every
entry, so the result is kept while the files stay as they were (same size, modification time and
inode) and for at most `RECHECK_SECONDS`, after which it is worked out again anyway (a rewrite
that kept a file's size and times is caught then). A log that does not verify is never shown as
if it did: every page says so, and what failed, and the raw files are still served as they are,
so anyone can see the damage for themselves.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from gpdpr.errors import UserError
from gpdpr.portal.pages import not_found, page_error, render
from gpdpr.portal.security import PUBLIC, GuardedRoute, allow
from gpdpr.transparency import cosigning, store
from gpdpr.transparency.key_change import CHANGE, HANDOVER
from gpdpr.transparency.merkle import Tree, leaf_hash
from gpdpr.transparency.policy import Policy, accept
from gpdpr.transparency.publish import AGGREGATES, KINDS, log_folder
from gpdpr.transparency.verify import Inclusion, Source, inclusion

router = APIRouter(route_class=GuardedRoute)

PER_PAGE = 50
RECHECK_SECONDS = 300.0
# The only files served, and as what. Nothing else in HOME (keys, database, lake) is reachable.
FILES = {
    store.ENTRIES: "application/x-ndjson",
    store.CHECKPOINT: "text/plain; charset=utf-8",
    store.PUBLIC_KEY: "text/plain; charset=utf-8",
    store.POLICY: "text/plain; charset=utf-8",
}
_SIGNED = re.compile(r"^[0-9]{1,20}$")  # checkpoints/N
_SEQ = re.compile(r"^[0-9]{1,18}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")

# Each entry type in a few plain words (its full meaning, from KINDS, is on the entry's page).
TITLES = {
    "package.loaded": "Practice data loaded",
    "package.refused": "Practice data refused",
    "custodian.project_key": "Project key derived",
    "reid.requested": "Re-identification requested",
    "reid.approved": "Re-identification approved",
    "reid.fulfilled": "Re-identification carried out",
    "reid.refused": "Re-identification refused",
    "governance.organisation": "Organisation registered",
    "governance.person": "Roles given",
    "application.submitted": "Application submitted",
    "application.refused": "Application refused automatically",
    "application.withdrawn": "Application withdrawn",
    "review.started": "Panel review started",
    "panel.conflict": "Conflict of interest declared",
    "panel.vote": "Panel vote",
    "panel.decision": "Panel decision",
    "agreement.issued": "Agreement started",
    "agreement.revoked": "Agreement revoked",
    "agreement.expired": "Agreement ended",
    "tre.run": "Research run",
    "release.requested": "Release requested",
    "release.reviewed": "Output checked",
    "release.published": "Results released",
    "spec.version": "Specification changed",
    "optout.daily": "Opt-outs in a day",
    "custodian.pseudonym.daily": "Pseudonym look-ups in a day",
    "erasure": "Erasure cycle",
    CHANGE: "Log key changed",
    HANDOVER: "Log key handed over",
}
# What the log's own entries mean (written by `gpdpr log rotate-key`, transparency.rotation).
KEY_ENTRIES = {
    CHANGE: "the log's signing key changed: the old and the new public keys, each signing the "
    "change, so that no one can put in a key of their own",
    HANDOVER: "the last checkpoint signed by the old key alone, co-signed by the witnesses: "
    "what a verifier follows from the old key to the new",
}
LABELS = {
    "type1": "Type 1 opt-outs",
    "ndoo": "National Data Opt-outs",
    "sha256": "SHA-256",
    "code_sha256": "Code SHA-256",
    "definition_sha256": "Definition SHA-256",
    "package_id": "Package",
    "type1_dropped": "People left out (Type 1)",
    "type1_ignored": "Type 1 statements not heard",
    "rows_removed": "Rows removed",
    "national_data_opt_out": "National Data Opt-out",
    "reid": "Re-identification",
}


def title_of(kind: str) -> str:
    return TITLES.get(kind, kind.replace(".", " ").replace("_", " ").capitalize())


def entry_title(state: LogState, kind: str, seq: int) -> str:
    """An entry's title; the first specification entry publishes it, it changes nothing."""
    if kind == "spec.version" and state.by_type.get(kind, [seq])[0] == seq:
        return "Specification published"
    return title_of(kind)


def meaning_of(kind: str) -> str:
    if kind in KINDS:
        return KINDS[kind].meaning
    return AGGREGATES.get(kind) or KEY_ENTRIES.get(kind, "")


def label_of(key: str) -> str:
    return LABELS.get(key, key.replace("_", " ").capitalize())


def _key_of(key: str) -> str:
    """A key inside a detail's value: a file name (it has a dot) exactly as it is, underscores
    and all; any other key in words."""
    return key if "." in key else label_of(key).lower()


def readable(value: Any) -> str:
    """A detail's value in words: counts with separators, lists and tables of counts spelled
    out (never a JSON dump)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(readable(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{_key_of(str(k))} {readable(v)}" for k, v in value.items()) or "none"
    return str(value)


@dataclass(frozen=True)
class Detail:
    label: str
    text: str
    hash: bool  # a long hash: shown in a narrow monospace


# What a reader needs to read an entry's figures right, by type.
EXPLAINED = {
    "erasure": (
        "What the figures mean",
        "People counts everyone whose Type 1 opt-out this cycle carried out, each with a "
        "deletion receipt. Most are usually people whose practice recorded the opt-out before "
        "their record was ever sent: their rows never reached the centre, so nothing had to be "
        "removed for them. Rows removed counts what was deleted from the pooled records (and "
        "every older copy of them, from disk), across all tables. When fewer than ten people "
        "were erased in a cycle, only that is said: smaller counts could single someone out.",
    ),
}


def details_of(entry: dict[str, Any]) -> list[Detail]:
    found = entry.get("details")
    if not isinstance(found, dict):
        return []
    shown = [
        Detail(label_of(key), readable(value), isinstance(value, str) and bool(_HASH.match(value)))
        for key, value in found.items()
    ]
    explained = EXPLAINED.get(str(entry.get("type")))
    return [*shown, Detail(*explained, False)] if explained else shown


def actor_of(entry: dict[str, Any]) -> str:
    actor = entry.get("actor")
    if not isinstance(actor, dict):
        return "unknown"
    role, organisation = actor.get("role") or "unknown", actor.get("organisation")
    return f"{role} ({organisation})" if organisation else str(role)


# ---- the log, verified and kept between page views ---------------------------------------------


@dataclass(frozen=True)
class LogState:
    """What the pages show: the verified contents, or why the log does not verify (neither:
    nothing published yet)."""

    contents: store.Contents | None
    problem: str | None
    by_type: dict[str, array[int]] = field(default_factory=dict)  # each type's seqs, in order
    checked: float = 0.0
    witnessed: dict[str, int] = field(default_factory=dict)  # pinned witnesses' cosignatures
    unwitnessed: str | None = None  # why the pinned policy does not accept the checkpoint

    @property
    def empty(self) -> bool:
        return self.contents is None and self.problem is None


_kept: dict[Path, tuple[object, LogState]] = {}
_lock = threading.Lock()


def _signature(folder: Path) -> tuple[tuple[int, int, int] | None, ...]:
    def one(name: str) -> tuple[int, int, int] | None:
        try:
            found = os.stat(folder / name)
        except OSError:
            return None
        return (found.st_size, found.st_mtime_ns, found.st_ino)

    return tuple(one(name) for name in FILES)


def state_of(folder: Path) -> LogState:
    """The log in `folder`, verified (worked out again when its files change, and every
    RECHECK_SECONDS). One page view at a time does the hashing; the others wait for it."""
    with _lock:
        signature = _signature(folder)  # before reading: a change during the read shows next time
        kept = _kept.get(folder)
        fresh = kept is not None and time.monotonic() - kept[1].checked < RECHECK_SECONDS
        if kept is not None and fresh and kept[0] == signature:
            return kept[1]
        grown = _extended(folder, kept[1]) if kept is not None and fresh else None
        state = grown or _verified(folder)
        _kept[folder] = (signature, state)
        return state


def _verified(folder: Path) -> LogState:
    checked = time.monotonic()
    try:
        contents = Source(folder=folder).read() if folder.is_dir() else None
    except UserError as exc:
        if not _published(folder):
            return LogState(None, None, checked=checked)
        return LogState(None, _public(str(exc), folder), checked=checked)
    except OSError as exc:
        problem = f"the log's files cannot be read: {exc.strerror or exc}"
        return LogState(None, problem, checked=checked)
    if contents is None:
        return LogState(None, None, checked=checked)
    by_type: dict[str, array[int]] = {}
    for seq in range(contents.size):
        by_type.setdefault(str(contents.entry(seq).get("type")), array("q")).append(seq)
    witnessed, unwitnessed = _witnessed(folder, contents)
    return LogState(contents, None, by_type, checked, witnessed, unwitnessed)


def _extended(folder: Path, before: LogState) -> LogState | None:
    """The state after a publish, from the one before: only the entries appended since are
    read and hashed into the tree (a copy), and the new checkpoint checked against it. None when
    that is not possible (the file shrank, nothing kept): the whole log is verified again. The
    entries before are not read again until the next full check, RECHECK_SECONDS after the
    last."""
    old = before.contents
    if old is None or before.problem is not None or old.checkpoint is None:
        return None
    try:
        signed = (folder / store.CHECKPOINT).read_bytes()
        with open(folder / store.ENTRIES, "rb") as f:
            # A publish appends and signs anew; anything else (a file cut, rewritten in place,
            # a checkpoint replaced by an older one) is checked whole, at once.
            edge = max(0, len(old.data) - 4096)
            f.seek(edge)
            seam = f.read(len(old.data) - edge)
            tail = f.read()
        if seam != old.data[edge:] or not tail or signed == old.checkpoint.to_bytes():
            return None
        public = (folder / store.PUBLIC_KEY).read_bytes()
        tree = Tree.restore(old.tree.levels())
        more = store.parse(folder, tail, signed, public, str(folder), tree=tree)
    except (OSError, ValueError, UserError):
        return None
    start = len(old.data)
    offsets = array("q", old.offsets)
    offsets.extend(start + o for o in more.offsets[1:])
    contents = store.Contents(
        folder, old.data + more.data, offsets, tree, more.checkpoint, more.public_key, more.torn
    )
    by_type = {kind: array("q", seqs) for kind, seqs in before.by_type.items()}
    for seq in range(old.size, contents.size):
        by_type.setdefault(str(contents.entry(seq).get("type")), array("q")).append(seq)
    witnessed, unwitnessed = _witnessed(folder, contents)
    return LogState(contents, None, by_type, before.checked, witnessed, unwitnessed)


def pinned_policy(folder: Path) -> Policy | None:
    """The policy the portal pins: the operator's own (HOME/keys/log/policy), never the copy
    published beside the log."""
    try:
        return cosigning.operator_policy(folder.parent / "keys")
    except (OSError, UserError):
        return None


def _witnessed(folder: Path, contents: store.Contents) -> tuple[dict[str, int], str | None]:
    pinned = pinned_policy(folder)
    if pinned is None:
        return {}, "no witness policy is pinned: the checkpoint is signed by the log alone"
    assert contents.checkpoint is not None
    try:
        return accept(contents.checkpoint, pinned, int(time.time()), store.CHECKPOINT), None
    except UserError as exc:
        return {}, _public(str(exc), folder)


def _published(folder: Path) -> bool:
    """Has anything been published (so a failure to read it is damage, not a new log)?"""
    entries = folder / store.ENTRIES
    return (folder / store.CHECKPOINT).exists() or (entries.exists() and entries.stat().st_size > 0)


def _public(message: str, folder: Path) -> str:
    """A verifier's message as the public sees it: the files by name, not where they are on
    the service's disks."""
    return message.replace(f"{folder}/", "").replace(str(folder), "the log")


def _stamp(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def files_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/log/files"


# ---- the pages ---------------------------------------------------------------------------------


@router.get("/log")
@allow(PUBLIC)
def activity_log(request: Request, page: int = 1, kind: str = Query("", alias="type")) -> Response:
    state = state_of(log_folder(request.app.state.portal.home))
    contents = state.contents
    types = sorted(state.by_type, key=title_of)
    if kind and kind not in state.by_type and kind not in TITLES and kind not in KINDS:
        return page_error(request, 400, f"There is no type of entry called {kind!r}.")
    seqs: Sequence[int] = ()
    if contents is not None:
        seqs = state.by_type.get(kind, ()) if kind else range(contents.size)
    pages = max(1, -(-len(seqs) // PER_PAGE))
    if not 1 <= page <= pages:
        return page_error(
            request, 400, f"There is no page {page} of this list: it has pages 1 to {pages}."
        )
    newest, first = len(seqs) - 1, (page - 1) * PER_PAGE  # newest first, the list not copied
    shown = [seqs[newest - n] for n in range(first, min(first + PER_PAGE, len(seqs)))]
    rows = []
    if contents is not None:
        signed = contents.checkpoint.size if contents.checkpoint else 0
        for seq in shown:
            entry = contents.entry(seq)
            rows.append(
                {
                    "seq": seq,
                    "time": entry.get("time", ""),
                    "type": str(entry.get("type")),
                    "title": entry_title(state, str(entry.get("type")), seq),
                    "actor": actor_of(entry),
                    "details": details_of(entry),
                    "signed": seq < signed,
                }
            )
    return render(
        request,
        "log.html.j2",
        state=state,
        checkpoint=contents.checkpoint if contents else None,
        cosigned=[(n, _stamp(t)) for n, t in sorted(state.witnessed.items())],
        waiting=contents.size - contents.checkpoint.size if contents and contents.checkpoint else 0,
        rows=rows,
        types=[(t, title_of(t), len(state.by_type[t])) for t in types],
        kind=kind,
        page=page,
        pages=pages,
        matching=len(seqs),
        files=files_url(request),
    )


@router.get("/log/entries/{seq}")
@allow(PUBLIC)
def log_entry(request: Request, seq: str) -> Response:
    if not _SEQ.match(seq):
        return not_found(request)
    number = int(seq)
    state = state_of(log_folder(request.app.state.portal.home))
    contents = state.contents
    if state.problem is None and (contents is None or number >= contents.size):
        return not_found(request)
    entry: dict[str, Any] | None = None
    proof: Inclusion | None = None
    line = b""
    if contents is not None:
        entry, line = contents.entry(number), contents.line(number)
        assert contents.checkpoint is not None
        if number < contents.checkpoint.size:
            proof = inclusion(contents, number)
    kind = str(entry.get("type")) if entry else ""
    return render(
        request,
        "log_entry.html.j2",
        state=state,
        seq=number,
        entry=entry,
        title=f"Entry {number}: {entry_title(state, kind, number)}" if entry else f"Entry {number}",
        kind_title=entry_title(state, kind, number),
        meaning=meaning_of(kind),
        actor=actor_of(entry) if entry else "",
        details=details_of(entry) if entry else [],
        canonical=line.decode("utf-8"),
        leaf=leaf_hash(line).hex() if entry else "",
        proof=proof,
        files=files_url(request),
    )


@router.get("/log/verify")
@allow(PUBLIC)
def verify_yourself(request: Request) -> Response:
    folder = log_folder(request.app.state.portal.home)
    state, pinned = state_of(folder), pinned_policy(folder)
    contents = state.contents
    return render(
        request,
        "log_verify.html.j2",
        state=state,
        checkpoint=contents.checkpoint if contents else None,
        files=files_url(request),
        example=max(0, contents.checkpoint.size - 1) if contents and contents.checkpoint else 0,
        verifier_sha256=hashlib.sha256(verifier_bytes(folder)).hexdigest(),
        policy=pinned.render() if pinned else None,
        site=str(request.base_url).rstrip("/"),
    )


# The standalone checker the verify page offers: this one file, served as it is in the package.
VERIFIER = Path(__file__).with_name("verifier.py")


def verifier_bytes(folder: Path) -> bytes:
    """The checker with the portal's pinned policy written into it."""
    pinned = pinned_policy(folder)
    text = VERIFIER.read_text("utf-8")
    if pinned is not None:
        text = text.replace('POLICY = """"""', f"POLICY = {pinned.render()!r}", 1)
    return text.encode()


@router.get("/log/verify.py")
@allow(PUBLIC)
def verifier_file(request: Request) -> Response:
    return Response(
        verifier_bytes(log_folder(request.app.state.portal.home)),
        media_type="text/x-python; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="verify.py"'},
    )


# ---- the public files --------------------------------------------------------------------------


def _raw(path: Path, media_type: str) -> Response:
    """A file's bytes as they are now, up to the length it had when asked for (an append under
    way does not make the response longer than it said it would be)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the stream below
    except OSError:
        return Response(status_code=404)
    length = os.fstat(handle.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with handle:
            left = length
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=media_type,
        headers={"Content-Length": str(length), "Cache-Control": "no-cache"},
    )


def _served(request: Request, folder: Path, name: str, media_type: str) -> Response:
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        return not_found(request)
    answer = _raw(path, media_type)
    return not_found(request) if answer.status_code == 404 else answer


@router.get("/log/files/{name}")
@allow(PUBLIC)
def log_file(request: Request, name: str) -> Response:
    """entries.jsonl, checkpoint, log.pub or policy, as they are on disk."""
    if name not in FILES:
        return not_found(request)
    folder = log_folder(request.app.state.portal.home)
    return _served(request, folder, name, FILES[name])


@router.get("/log/files/checkpoints/{name}")
@allow(PUBLIC)
def signed_checkpoint(request: Request, name: str) -> Response:
    """Every checkpoint the log has signed, by its size (checkpoints/N)."""
    if not _SIGNED.match(name):
        return not_found(request)
    folder = log_folder(request.app.state.portal.home) / store.CHECKPOINTS
    return _served(request, folder, name, "text/plain; charset=utf-8")
