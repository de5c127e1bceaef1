"""The log's files, as published (HOME/log/, or any copy of it):

    entries.jsonl          one entry per line, canonical JSON (keys sorted, no spaces), each with
                           its `seq` (0, 1, 2, ...): the leaves of the Merkle tree, in order
    checkpoint             the latest signed checkpoint (C2SP tlog-checkpoint: origin, size, root;
                           the log's signature and its witnesses' cosignatures)
    checkpoints/N          every checkpoint signed, by size
    log.pub                the log's Ed25519 verifier key (a C2SP vkey line)
    policy                 the trust policy (log key, witnesses, quorum), for convenience only:
                           a verifier pins its own copy (gpdpr.transparency.policy)

Durability. A log is created whole: its public key, an empty entries file and a signed checkpoint
of size 0 are written in a folder aside and renamed into place in one step, so a log always has a
checkpoint and a crash during the first publish leaves entries after it, like any other. Entries
are appended in one write and fsync'd before anything that depends on them; a checkpoint is
written beside its final name, fsync'd and renamed into place (gpdpr.durable), so a reader sees
the old checkpoint or the new one, never half of one. Entries after the signed checkpoint are
signed by the next publish. The file is line-framed: a crash part-way through an append leaves a
last line without its newline, which `open_verified` recognises as a torn tail and cuts off, but
only when no signed checkpoint covers it (an entry the log has signed is never repaired away: its
loss is damage, reported).

Logs made before creation was atomic may hold entries and no checkpoint at all (no
checkpoint, nothing in checkpoints/): their first publish died before signing. Nothing was
ever signed, so nothing signed was lost: such a log is read as unsigned and the next publish signs
it.

Verification reads every entry, checks that each is canonical JSON numbered in order, recomputes
the tree and checks the signed checkpoint's root against it: any rewrite, deletion, reordering or
insertion before the checkpoint changes the root (or the numbering) and is reported.
"""

from __future__ import annotations

import os
import shutil
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import kept_tree
from gpdpr.transparency.merkle import Tree, leaf_hash
from gpdpr.transparency.note import Verifier

ENTRIES = "entries.jsonl"
CHECKPOINT = "checkpoint"
CHECKPOINTS = "checkpoints"
PUBLIC_KEY = "log.pub"
POLICY = "policy"


class LogDamaged(UserError):
    """The stored log does not verify: it was altered, truncated or corrupted."""


@dataclass
class Contents:
    """A log's contents, checked: the entries file's bytes (complete lines only) and where each
    entry starts, their tree, and the signed checkpoint."""

    folder: Path
    data: bytes
    offsets: array[int]  # where entry i starts; the last value is the end of the last entry
    tree: Tree
    checkpoint: cp.Checkpoint | None
    public_key: Verifier | None
    torn: int = 0  # bytes of an unfinished last line (a crash mid-append), not yet cut off
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.tree.size

    def line(self, seq: int) -> bytes:
        """Entry `seq` exactly as stored (its leaf is the hash of these bytes)."""
        return self.data[self.offsets[seq] : self.offsets[seq + 1] - 1]

    def entry(self, seq: int) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.line(seq))
        return value


def split_entries(
    data: bytes, where: str, tree: Tree | None = None
) -> tuple[array[int], Tree, int]:
    """Check every complete line of an entries file and hash it into the tree (continuing
    `tree`, if given, with `data` the bytes after the entries it holds); where each line starts,
    the tree, and the length of a torn tail (bytes after the last newline)."""
    tree = tree if tree is not None else Tree()
    offsets, start, seq = array("q", [0]), 0, tree.size
    while (end := data.find(b"\n", start)) >= 0:
        line = data[start:end]
        check_entry(line, seq, where)
        tree.append(leaf_hash(line))
        offsets.append(end + 1)
        start, seq = end + 1, seq + 1
    return offsets, tree, len(data) - start


def check_entry(line: bytes, seq: int, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise LogDamaged(f"{where}: line {seq + 1} is not JSON: the log was corrupted") from None
    if not isinstance(value, dict) or value.get("seq") != seq:
        found = value.get("seq") if isinstance(value, dict) else None
        raise LogDamaged(
            f"{where}: line {seq + 1} should be entry {seq} but is entry {found}: entries were "
            "deleted, inserted or reordered"
        )
    if cp.canonical(value) != line:
        raise LogDamaged(
            f"{where}: entry {seq} is not in canonical form (keys sorted, no spaces): it was "
            "edited by hand"
        )
    return value


def read(folder: Path) -> Contents:
    """Read and verify a log folder (a missing folder is an empty log)."""

    def get(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.exists() else None

    # The checkpoint before the entries: a publish appends entries before it signs, so entries
    # read after a checkpoint always cover it, even while a publish is running.
    signed, public = get(CHECKPOINT), get(PUBLIC_KEY)
    never_signed = signed is None and not _any_signed(folder)
    return parse(folder, get(ENTRIES) or b"", signed, public, str(folder), never_signed)


def parse(
    folder: Path,
    data: bytes,
    checkpoint: bytes | None,
    public_pem: bytes | None,
    where: str,
    never_signed: bool = False,
    tree: Tree | None = None,
) -> Contents:
    """Verify a log from its files' bytes (wherever they were read or fetched from).
    `never_signed`: the folder shows no checkpoint was ever signed (see the module's docstring),
    so entries without one are an interrupted first publish, not a deleted checkpoint."""
    offsets, tree, torn = split_entries(data, f"{where}/{ENTRIES}", tree)
    public = None
    if public_pem is not None:
        public = cp.read_public_key(public_pem, f"{where}/{PUBLIC_KEY}")
    signed = None
    if checkpoint is not None:
        signed = cp.parse(checkpoint, f"{where}/{CHECKPOINT}")
        if public is None:
            raise LogDamaged(f"{where} has a checkpoint but no {PUBLIC_KEY} to check it with")
        check_against(signed, tree, public, f"{where}/{CHECKPOINT}")
    elif tree.size and not never_signed:
        raise LogDamaged(
            f"{where} holds {tree.size} entries but no signed {CHECKPOINT}: the checkpoint "
            "was deleted"
        )
    contents = Contents(folder, data[: len(data) - torn], offsets, tree, signed, public, torn)
    if signed is None and tree.size:
        contents.notes.append(
            f"{tree.size} entries were never signed (a first publish was interrupted before "
            "its checkpoint); the next publish signs them"
        )
    return contents


def read_kept(folder: Path) -> tuple[Contents, int]:
    """`read` for the service itself: its kept copy of the tree (gpdpr.transparency.kept_tree)
    extended by the entries after it, checked against the signed checkpoint; the whole log
    hashed again if there is no usable copy. The contents hold the tree only (no entries'
    bytes); with the length of entries.jsonl they cover."""
    cache = kept_tree.folder_for(folder)
    kept = kept_tree.load(cache)
    entries = folder / ENTRIES
    length = entries.stat().st_size if entries.exists() else 0
    if kept is not None and kept[1] <= length:
        tree, end = kept
        signed, public = _get(folder, CHECKPOINT), _get(folder, PUBLIC_KEY)
        with open(entries, "rb") as f:
            f.seek(end)
            tail = f.read()
        try:
            never_signed = signed is None and not _any_signed(folder)
            contents = parse(folder, tail, signed, public, str(folder), never_signed, tree)
        except UserError:
            contents = None  # the whole log decides, below
        if contents is not None:
            contents.data, contents.offsets = b"", array("q")
            return contents, end + len(tail) - contents.torn
    kept_tree.forget(cache)
    contents = read(folder)
    covered = len(contents.data)
    contents.data, contents.offsets = b"", array("q")
    return contents, covered


def _get(folder: Path, name: str) -> bytes | None:
    path = folder / name
    return path.read_bytes() if path.exists() else None


def check_against(signed: cp.Checkpoint, tree: Tree, public: Verifier, where: str) -> None:
    """A checkpoint's signature, and its root against the tree's first `size` entries."""
    cp.check_signature(signed, public, where)
    if signed.size > tree.size:
        raise LogDamaged(
            f"{where} signs {signed.size} entries but the log holds only {tree.size}: the log "
            "was truncated (entries at its end deleted)"
        )
    if tree.root(signed.size) != signed.root:
        raise LogDamaged(
            f"{where}: the first {signed.size} entries do not hash to the signed root: an entry "
            "was rewritten, deleted, inserted or reordered"
        )


@dataclass
class Writer:
    """The service's handle on its own log: verified when opened, then appended to. It keeps
    the tree only (the entries' bytes are let go once verified)."""

    contents: Contents
    key: Ed25519PrivateKey
    end: int = 0  # the bytes of entries.jsonl the tree covers

    @property
    def size(self) -> int:
        return self.contents.size

    def append(self, entries: list[dict[str, Any]]) -> list[bytes]:
        """Number the entries from the log's size, append them in one write and fsync. The
        lines written, in order."""
        lines = []
        for offset, entry in enumerate(entries):
            line = cp.canonical({**entry, "seq": self.size + offset})
            if b"\n" in line:
                raise ValueError("canonical JSON never holds a newline")
            lines.append(line)
        if not lines:
            return []
        folder = self.contents.folder
        with open(folder / ENTRIES, "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        durable.step("log entries appended")
        for line in lines:
            self.contents.tree.append(leaf_hash(line))
        self.end += sum(len(line) + 1 for line in lines)
        kept_tree.save(kept_tree.folder_for(folder), self.contents.tree, self.end)
        return lines

    def sign(self) -> cp.Checkpoint:
        """Sign the log as it stands and publish the checkpoint (atomically)."""
        return self.publish(cp.sign(self.key, self.size, self.contents.tree.root()))

    def publish(self, signed: cp.Checkpoint) -> cp.Checkpoint:
        """Write a checkpoint of this log (its cosignatures gathered) where readers find it."""
        folder = self.contents.folder
        (folder / CHECKPOINTS).mkdir(exist_ok=True)
        durable.write_file(folder / CHECKPOINTS / str(signed.size), signed.to_bytes())
        durable.write_file(folder / CHECKPOINT, signed.to_bytes())
        self.contents.checkpoint = signed
        return signed


def open_verified(folder: Path, keys: Path) -> Writer:
    """The service's log, verified, for appending: made (with its key) if there is none yet.
    Refuses a log that does not verify, or whose published key is not the service's."""
    published = folder / PUBLIC_KEY
    cp.settle_key_change(keys, published)
    key = cp.load_or_create_key(keys)
    pem = cp.public_file(key)
    if _unstarted(folder):
        _create(folder, key)
    elif not published.exists():
        if (folder / CHECKPOINT).exists():
            raise LogDamaged(f"{folder} has a checkpoint but its {PUBLIC_KEY} was deleted")
        durable.write_file(published, pem)
    elif published.read_bytes() != pem:
        raise LogDamaged(
            f"{published} is not the public half of the service's log key "
            f"{keys / cp.KEY_FOLDER / cp.PRIVATE_KEY}: one of them was replaced"
        )
    contents, end = read_kept(folder)
    if contents.torn:
        _cut_torn_tail(folder / ENTRIES, contents)
    kept_tree.save(kept_tree.folder_for(folder), contents.tree, end)
    return Writer(contents, key, end)


def _cut_torn_tail(path: Path, contents: Contents) -> None:
    """An unfinished last line is a crash mid-append: nothing signed covers it (a checkpoint is
    written only after its entries), so it is cut off and its events published again."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - contents.torn)
        f.flush()
        os.fsync(f.fileno())
    contents.notes.append(
        f"cut off an unfinished entry ({contents.torn} bytes) left by an interrupted append"
    )
    contents.torn = 0


def _any_signed(folder: Path) -> bool:
    signed = folder / CHECKPOINTS
    return signed.is_dir() and any(p.name.isdigit() for p in signed.iterdir())


def _unstarted(folder: Path) -> bool:
    """No log here yet: no folder, or one an older version made and never wrote an entry or a
    checkpoint to (its public key alone, or nothing)."""
    if not folder.exists():
        return True
    entries = folder / ENTRIES
    return not (
        (folder / CHECKPOINT).exists()
        or _any_signed(folder)
        or (entries.exists() and entries.stat().st_size > 0)
    )


def _create(folder: Path, key: Ed25519PrivateKey) -> None:
    """Make a log whole in a folder aside (its key, no entries, a signed checkpoint of size 0)
    and rename it into place in one step: there is never a log without a checkpoint."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    aside = folder.with_name(f".{folder.name}.new-{os.getpid()}")
    if aside.exists():
        shutil.rmtree(aside)
    (aside / CHECKPOINTS).mkdir(parents=True)
    empty = cp.sign(key, 0, Tree().root())
    durable.write_file(aside / PUBLIC_KEY, cp.public_file(key))
    durable.write_file(aside / ENTRIES, b"")
    durable.write_file(aside / CHECKPOINTS / "0", empty.to_bytes())
    durable.write_file(aside / CHECKPOINT, empty.to_bytes())
    if folder.exists():
        # An unstarted folder from an older version: nothing in it is needed.
        shutil.rmtree(folder)
    durable.step("log created aside")
    aside.rename(folder)
    durable.fsync_dir(folder.parent)
    for leftover in folder.parent.glob(f".{folder.name}.new-*"):
        shutil.rmtree(leftover, ignore_errors=True)
