"""The trust policy a verifier pins: the log's key, the witnesses it trusts, how many of them must
have co-signed a checkpoint, and how recently.

    log gpdpr.example/transparency-log+1a2b3c4d+AT...
    witness witness.example/w1+5e6f7a8b+BE...
    quorum 1
    max-age 86400

It is shipped with the verifier (the package, the portal's verify page and its verify.py) and
never taken from the log's own files: a log operator who could change it could change anything.
Freshness is what stops a rollback for a verifier that kept nothing: witnesses never co-sign a
smaller or forked tree, so an old checkpoint carries only old cosignatures, and those are refused
once older than `max-age` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from gpdpr.transparency import note
from gpdpr.transparency.checkpoint import Checkpoint, CheckpointError, check_signature
from gpdpr.transparency.note import NoteError, Verifier

DEFAULT_MAX_AGE = 86_400
CLOCK_SKEW = 300  # a cosignature this far in the future is still accepted
SHIPPED = "policy.txt"  # in this package: the deployment's pinned policy (empty until deployed)


class PolicyError(CheckpointError):
    """A policy file that cannot be used, or a checkpoint it does not accept."""


@dataclass(frozen=True)
class Policy:
    log: Verifier
    witnesses: tuple[Verifier, ...]
    quorum: int
    max_age: int = DEFAULT_MAX_AGE

    def render(self) -> str:
        lines = [f"log {self.log.vkey}", *(f"witness {w.vkey}" for w in self.witnesses)]
        return "\n".join([*lines, f"quorum {self.quorum}", f"max-age {self.max_age}"]) + "\n"


def parse(text: str, where: str) -> Policy:
    log, witnesses, quorum, max_age = None, [], None, DEFAULT_MAX_AGE
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, value = line.partition(" ")
        at = f"{where}, line {number}"
        try:
            if word == "log" and log is None:
                log = note.parse_vkey(value, at)
            elif word == "witness":
                witnesses.append(note.parse_vkey(value, at))
            elif word == "quorum" and value.isdigit():
                quorum = int(value)
            elif word == "max-age" and value.isdigit():
                max_age = int(value)
            else:
                raise PolicyError(f"{at}: {line[:60]!r} is not log, witness, quorum or max-age")
        except NoteError as exc:
            raise PolicyError(str(exc)) from None
    if log is None or log.kind != note.ED25519:
        raise PolicyError(f"{where} names no log key (a `log <vkey>` line of type 0x01)")
    if any(w.kind != note.COSIGNATURE for w in witnesses):
        raise PolicyError(f"{where}: a witness key is not a cosignature (type 0x04) key")
    if quorum is None or not 1 <= quorum <= len(witnesses):
        raise PolicyError(
            f"{where} needs `quorum N` with N from 1 to its {len(witnesses)} witnesses: a "
            "checkpoint no witness co-signed can be rolled back or forked unseen"
        )
    return Policy(log, tuple(witnesses), quorum, max_age)


def shipped() -> Policy | None:
    """The policy pinned in this package, if the deployment put one there."""
    text = resources.files("gpdpr.transparency").joinpath(SHIPPED).read_text("utf-8")
    if not any(line.strip() and not line.startswith("#") for line in text.splitlines()):
        return None
    return parse(text, f"the package's {SHIPPED}")


def accept(checkpoint: Checkpoint, policy: Policy, now: int, where: str) -> dict[str, int]:
    """Check a checkpoint against the policy: signed by the pinned log key and co-signed by a
    quorum of the pinned witnesses within max-age. Each witness that counted, and when."""
    check_signature(checkpoint, policy.log, where)
    fresh, stale = {}, {}
    for witness in policy.witnesses:
        when = note.cosignature_time(checkpoint.signed, witness)
        if when is None:
            continue
        if now - policy.max_age <= when <= now + CLOCK_SKEW:
            fresh[witness.name] = when
        else:
            stale[witness.name] = when
    if len(fresh) < policy.quorum:
        old = f"; {len(stale)} more only long ago (an old checkpoint replayed?)" if stale else ""
        raise PolicyError(
            f"{where} is co-signed by {len(fresh)} of the pinned witnesses within "
            f"{policy.max_age} s, and {policy.quorum} are required{old}: the log may have been "
            "rolled back or forked, or shown only to you"
        )
    return fresh
