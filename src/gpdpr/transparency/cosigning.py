"""The log's side of witnessing: after each checkpoint is signed, every witness the service is
enrolled with is asked to co-sign it (with a consistency proof from the last tree that witness
co-signed), and the cosignatures are published in the checkpoint.

The witnesses are listed, one a line, in HOME/keys/log/witnesses (`gpdpr log witness enrol`):
a witness's state folder, or the URL of one served over HTTP (c2sp.org/tlog-witness) and its
verifier key, since a remote witness's key cannot be read from a folder. The trust policy they
make (log key, witnesses, quorum) is kept beside it as `policy` and published in HOME/log/policy
for convenience: verifiers pin their own copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import orjson

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import note, policy, store
from gpdpr.transparency.witness import (
    Conflict,
    Witness,
    WitnessRefused,
    add_checkpoint,
    follow,
    kept_size,
    open_witness,
    request_body,
)
from gpdpr.transparency.witness_http import PATH, check_url

WITNESSES = "witnesses"  # in HOME/keys/log
POLICY = "policy"  # in HOME/keys/log
CHANGES = cp.CHANGES  # in HOME/keys/log: each key change's seq and entry, to show witnesses
REWITNESS_SECONDS = 3_600  # a checkpoint is co-signed again once its cosignatures are this old
HTTP_SECONDS = 10.0  # a witness over HTTP that takes longer has not co-signed


@dataclass(frozen=True)
class Remote:
    """A witness served over HTTP, and the verifier key its cosignatures must verify with."""

    url: str
    verifier: note.Verifier


@dataclass
class Gathered:
    checkpoint: cp.Checkpoint
    notes: list[str] = field(default_factory=list)


def _lines(keys: Path) -> list[str]:
    path = keys / cp.KEY_FOLDER / WITNESSES
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]


def _is_url(line: str) -> bool:
    return line.startswith(("http://", "https://"))


def enrolled(keys: Path) -> list[Path]:
    """The witnesses enrolled by their state folder."""
    return [Path(line) for line in _lines(keys) if not _is_url(line)]


def remotes(keys: Path) -> list[Remote]:
    """The witnesses enrolled by URL."""
    where = keys / cp.KEY_FOLDER / WITNESSES
    found = []
    for line in filter(_is_url, _lines(keys)):
        url, _, vkey = line.partition(" ")
        found.append(Remote(check_url(url), _cosigner(vkey.strip(), f"{where}, {url}")))
    return found


def witnessed(keys: Path) -> bool:
    return bool(_lines(keys))


def _cosigner(vkey: str, where: str) -> note.Verifier:
    found = note.parse_vkey(vkey, where)
    if found.kind != note.COSIGNATURE:
        raise UserError(f"{where}: {vkey!r} is not a witness's (cosignature, 0x04) verifier key")
    return found


def enrol(keys: Path, folder: Path, quorum: int) -> policy.Policy:
    """Add a witness (its state folder) to those the log asks, and write the policy anew."""
    open_witness(folder)
    kept = [
        line for line in _lines(keys) if _is_url(line) or Path(line).resolve() != folder.resolve()
    ]
    return _write(keys, [*kept, str(folder.resolve())], quorum)


def enrol_url(keys: Path, url: str, vkey: str, quorum: int) -> policy.Policy:
    """Add a witness served over HTTP, with its verifier key, and write the policy anew."""
    url = check_url(url)
    _cosigner(vkey, "the witness's key")
    kept = [line for line in _lines(keys) if line.partition(" ")[0] != url]
    return _write(keys, [*kept, f"{url} {vkey}"], quorum)


def _write(keys: Path, lines: list[str], quorum: int) -> policy.Policy:
    """Write the witnesses and the policy they make, once the policy is known to be valid."""
    log_key = cp.log_verifier(cp.load_or_create_key(keys))
    witnesses = tuple(
        _cosigner(line.partition(" ")[2], line)
        if _is_url(line)
        else open_witness(Path(line)).verifier
        for line in lines
    )
    pinned = policy.Policy(log_key, witnesses, quorum)
    policy.parse(pinned.render(), "the new policy")  # the quorum fits the witnesses
    base = keys / cp.KEY_FOLDER
    durable.write_file(base / WITNESSES, "".join(f"{line}\n" for line in lines).encode())
    durable.write_file(base / POLICY, pinned.render().encode())
    return pinned


def repin(keys: Path, log_key: note.Verifier) -> None:
    """After a key change: the operator's policy (the portal's) pins the key now in force."""
    pinned = operator_policy(keys)
    if pinned is not None:
        renewed = replace(pinned, log=log_key).render().encode()
        durable.write_file(keys / cp.KEY_FOLDER / POLICY, renewed)


def record_change(keys: Path, seq: int, line: bytes) -> None:
    path = keys / cp.KEY_FOLDER / CHANGES
    known = path.read_bytes() if path.exists() else b""
    record = orjson.dumps({"seq": seq, "entry": line.decode()}) + b"\n"
    if record not in known.splitlines(keepends=True):
        durable.write_file(path, known + record)


def show_changes(writer: store.Writer, keys: Path, witness: Witness) -> None:
    """Show a witness every key change recorded, with its inclusion proof in the last tree the
    witness co-signed, so it can follow the log's key (gpdpr.transparency.witness.follow)."""
    path = keys / cp.KEY_FOLDER / CHANGES
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        change = orjson.loads(line)
        seq, entry = int(change["seq"]), str(change["entry"]).encode()
        size = min(kept_size(witness, cp.ORIGIN), writer.size)
        if seq < size:
            try:
                follow(witness, entry, seq, writer.contents.tree.inclusion_proof(seq, size))
            except WitnessRefused as refused:
                if refused.status != 403:  # 403: it follows a later key already
                    raise


def operator_policy(keys: Path) -> policy.Policy | None:
    path = keys / cp.KEY_FOLDER / POLICY
    return policy.parse(path.read_text("utf-8"), str(path)) if path.exists() else None


def stale(signed: cp.Checkpoint, now: int) -> bool:
    stamps = [
        int.from_bytes(s.data[:8], "big")
        for s in signed.signed.signatures
        if s.name != signed.origin and len(s.data) == 72
    ]
    return not stamps or max(stamps) < now - REWITNESS_SECONDS


def ask(
    client: httpx.Client, remote: Remote, writer: store.Writer, signed: cp.Checkpoint
) -> note.Signature:
    """The cosignature of `signed` by a witness over HTTP, checked against its enrolled key; on
    409 asked once more with a proof from the size the witness says it last co-signed."""
    old = 0
    for attempt in range(2):
        proof = writer.contents.tree.consistency_proof(min(old, signed.size), signed.size)
        answer = client.post(
            remote.url + PATH,
            content=request_body(old, proof, signed.to_bytes()),
            headers={"Content-Type": "text/plain"},
        )
        said = _printable(answer.content[:300])
        if answer.status_code == 409 and attempt == 0 and said.strip().isdigit():
            old = int(said)
            continue
        if answer.status_code != 200:
            raise WitnessRefused(answer.status_code, f"it answered {answer.status_code}: {said}")
        return cosignature(signed, answer.content, remote.verifier)
    raise WitnessRefused(409, f"it still answered 409 for old size {old}")


def cosignature(signed: cp.Checkpoint, answer: bytes, verifier: note.Verifier) -> note.Signature:
    """The signature line in a witness's answer that verifies with its enrolled key, or
    UserError: a cosignature that does not verify is never published."""
    try:
        lines = note.parse(signed.text.encode() + b"\n" + answer, "the witness's answer")
    except UserError as exc:
        raise UserError(f"its answer is not cosignature lines: {exc}") from None
    for candidate in lines.by(verifier):
        if note.cosignature_time(note.Note(lines.text, (candidate,)), verifier) is not None:
            return candidate
    raise UserError(f"its answer holds no cosignature that verifies with {verifier.vkey}")


def _as_enrolled(
    signed: cp.Checkpoint, given: note.Signature, name: str, pinned: policy.Policy | None
) -> note.Signature:
    """A folder witness's cosignature, checked against the key it was enrolled with (pinned
    in the policy), as a witness over HTTP's is: its folder's key may since have been
    replaced, and a cosignature no verifier accepts is never published."""
    keys = [w for w in pinned.witnesses if w.name == name] if pinned is not None else []
    for verifier in keys:
        if note.cosignature_time(note.Note(signed.signed.text, (given,)), verifier) is not None:
            return given
    raise UserError(f"its cosignature does not verify with the key {name} was enrolled with")


def _printable(data: bytes) -> str:
    """A witness's answer as it may be shown in a note: printable ASCII only."""
    return "".join(c if c.isprintable() else " " for c in data.decode("ascii", "replace")).strip()


def gather(writer: store.Writer, keys: Path, signed: cp.Checkpoint, now: int) -> Gathered:
    """Ask every enrolled witness to co-sign `signed`; a witness that refuses or cannot be
    reached is reported, never fatal: the checkpoint is published with what was gathered."""
    done = Gathered(signed)
    pinned = operator_policy(keys)
    for folder in enrolled(keys):
        try:
            witness = open_witness(folder)
            old, shown = 0, False
            for _ in range(3):  # an answer may give the size it last co-signed, or a key change
                proof = writer.contents.tree.consistency_proof(min(old, signed.size), signed.size)
                try:
                    body = request_body(old, proof, signed.to_bytes())
                    given = add_checkpoint(witness, body, now)
                    done.checkpoint = done.checkpoint.with_signature(
                        _as_enrolled(signed, given, witness.name, pinned)
                    )
                    break
                except Conflict as conflict:
                    old = conflict.size
                except WitnessRefused as refused:
                    if refused.status != 403 or shown:
                        raise
                    shown = True  # it watches an older key: show it the logged changes
                    show_changes(writer, keys, witness)
        except UserError as exc:
            done.notes.append(f"witness {folder} did not co-sign: {exc}")
    if remotes_ := remotes(keys):
        with httpx.Client(timeout=HTTP_SECONDS, follow_redirects=False) as client:
            for remote in remotes_:
                try:
                    cosigned = ask(client, remote, writer, signed)
                    done.checkpoint = done.checkpoint.with_signature(cosigned)
                except (UserError, httpx.HTTPError) as exc:
                    done.notes.append(f"witness {remote.url} did not co-sign: {exc}")
    if pinned is not None:
        try:
            policy.accept(done.checkpoint, pinned, now, "the new checkpoint")
        except UserError as exc:
            done.notes.append(f"the checkpoint falls short of the log's own policy: {exc}")
        durable.write_file(writer.contents.folder / store.POLICY, pinned.render().encode())
    return done
