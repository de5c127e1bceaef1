"""The key custodian, central side: the only place an NHS number meets the pseudonym key.

It does three things, each recorded as a public event (which never names the person):

- finds the lake pseudonym for an NHS number, as every practice gets it through the custodian's
  service (the same OPRF, evaluated directly here), so an opt-out
  made online or by proxy reaches the right records without the registry ever seeing a number;
- derives each project's key, so each approved project sees its own pseudonyms and two projects'
  outputs cannot be joined. Project keys come from their own secret (KEYS/project.key), not from
  the pseudonym key: nothing a practice or the lake holds helps to make one;
- re-identification, in one direction only: from named people (NHS numbers) to their pseudonyms
  in a project, under a recorded legal basis and two approvers other than the requester. There is
  deliberately no way here to turn a pseudonym back into a person.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from collections.abc import Collection, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from gpdpr.custodian.keys import (
    PROJECT_KEY,
    PSEUDONYM_KEY,
    SecretKey,
    read_pseudonym_key,
    read_secret,
)
from gpdpr.db.events import record
from gpdpr.db.models import ReidApproval, ReidRequest, now
from gpdpr.errors import UserError
from gpdpr.identifiers import is_valid_nhs_number
from gpdpr.practice import oprf
from gpdpr.practice.kit import OLD_COLLECTION_KEY
from gpdpr.practice.pseudonyms import as_pseudonym, nhs_input

PROJECT_INFO = b"gpdpr project pseudonym v2: "
LEGAL_BASES = (
    "consent",
    "court_order_or_legal_requirement",
    "overriding_public_interest",
    "s251_support",
)
APPROVERS_NEEDED = 2


def project_pseudonyms(project_key: bytes, pseudonyms: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each lake pseudonym as one project sees it: HMAC-SHA256 hex under the project's key.
    Computed once per distinct pseudonym (a records column repeats each person many times);
    nulls stay null, and a dictionary-encoded column keeps its encoding."""
    if isinstance(pseudonyms, pa.ChunkedArray):
        return pa.chunked_array(
            [project_pseudonyms(project_key, c) for c in pseudonyms.chunks],
            pa.string() if not pa.types.is_dictionary(pseudonyms.type) else None,
        )
    if pa.types.is_dictionary(pseudonyms.type):
        return pa.DictionaryArray.from_arrays(
            pseudonyms.indices, project_pseudonyms(project_key, pseudonyms.dictionary)
        )
    distinct = pc.unique(pseudonyms)
    made = pa.array(
        [None if p is None else _mac(project_key, p) for p in distinct.to_pylist()], pa.string()
    )
    return pc.take(made, pc.index_in(pseudonyms, value_set=distinct))


# What a run's use token is made of (see gpdpr.transparency.uses), by the kind of run.
USE_V1 = "gpdpr run use v1"  # of the project pseudonym: runs before 2026-12-06's second form
USE_V2 = "gpdpr run use v2"  # an HMAC of the lake pseudonym: runs before 2026-12-07's third
USE_V3 = "gpdpr run use v3"  # of the person's number under the run's own key: made by the engine
SALT = re.compile(r"[0-9a-f]{32}")  # a run's salt (random, one per run)
PSEUDONYM = re.compile(r"[0-9a-f]{64}")  # a lake pseudonym
RUN_KEY_BYTES = 32


def use_token(project_key: bytes, run_reference: str, project_pseudonym: str) -> str:
    """How a run kept that it read one person's record, in the first form (runs whose tokens
    are in the database, or in a file of uses of the first version): only someone holding the
    project's key and the person's pseudonym can make it again."""
    message = f"{USE_V1}\n{run_reference}\n{project_pseudonym}".encode()
    return hmac.digest(project_key, message, "sha256").hex()


def run_use_token_v2(project_key: bytes, salt: str, lake_pseudonym: str) -> str:
    """The second form (files of uses of the second and third versions): an HMAC under the
    project's key of the run's salt and the person's lake pseudonym."""
    message = f"{USE_V2}\n{salt}\n{lake_pseudonym}".encode()
    return hmac.digest(project_key, message, "sha256").hex()


def run_key(project_key: bytes, salt: str) -> bytes:
    """A run's own key for its use tokens, derived from the project's key and the run's salt
    (HKDF-SHA256): made once a run, by whoever holds the project's key, and given to the
    engine as data (`tre.views.run_key_table`), never written into SQL."""
    if not SALT.fullmatch(salt):
        raise ValueError("a run's salt is 32 hex digits")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=RUN_KEY_BYTES,
        salt=None,
        info=f"{USE_V3}\n{salt}".encode(),
    )
    return hkdf.derive(project_key)


def run_use_token(project_key: bytes, salt: str, lake_pseudonym: str) -> str:
    """How a run keeps that it read one person's record now (`tre.views.people_sql` makes
    the same in the engine): SHA-256 of the run's key (`run_key`) followed by the person's
    number (the first 16 bytes of their lake pseudonym, `lake.tables.PERSON`). Only the
    custodian can make it again (the project's key never leaves it), and no two runs' tokens
    of one person match (each run has its own key).

    A secret key before a message of one fixed length is a keyed hash as sound as an HMAC
    (the length extension that rules it out for messages of any length makes a longer
    message, never a token); and 48 bytes are one block of SHA-256, where an HMAC of the lake
    pseudonym was five. At 10 million people, the tokens took 6.6 s of a run; now 2.2 s."""
    if not PSEUDONYM.fullmatch(lake_pseudonym):
        raise ValueError("a lake pseudonym is 64 lowercase hex digits")
    number = bytes.fromhex(lake_pseudonym[:32])
    return hashlib.sha256(run_key(project_key, salt) + number).hexdigest()


def _token_of(key: bytes, run: str, lake_pseudonym: str) -> str:
    """A person's token in a run named as `Custodian.use_tokens` names it: by its salt (the
    third form), `v2:` and its salt (the second), `v1:` and its salt (the first), or its
    reference (the first, its tokens in the database)."""
    if SALT.fullmatch(run):
        return run_use_token(key, run, lake_pseudonym)
    if run.startswith("v2:"):
        return run_use_token_v2(key, run.removeprefix("v2:"), lake_pseudonym)
    return use_token(key, run.removeprefix("v1:"), _mac(key, lake_pseudonym))


def _mac(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode(), "sha256").hex()


def _project_key(master: SecretKey, project: str) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=PROJECT_INFO + project.encode()
    )
    return hkdf.derive(master.key)


def lake_pseudonym(key: SecretKey, nhs_number: str) -> str:
    """The lake pseudonym of a valid NHS number, as a practice gets it from the service."""
    return as_pseudonym(oprf.evaluate(key.key, nhs_input(nhs_number)))


def identities_sha256(numbers: Sequence[str]) -> str:
    """The hash a request stores instead of its NHS numbers: SHA-256 of the sorted list, one per
    line."""
    return hashlib.sha256("\n".join(sorted(numbers)).encode()).hexdigest()


def normalise_nhs_numbers(values: Sequence[str]) -> list[str]:
    """NHS numbers without spaces, distinct, in the order given. Refuses an empty list and names
    any invalid entry by its position (counting from 1), never by its value."""
    compact = ["".join(v.split()) for v in values]
    bad = [i for i, v in enumerate(compact, 1) if not is_valid_nhs_number(v)]
    if bad:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise UserError(
            f"{len(bad)} of {len(compact)} entries are not valid NHS numbers (ten digits, the "
            f"last a modulus-11 check digit): entries {shown}. Correct them and ask again"
        )
    if not compact:
        raise UserError("no NHS numbers given: name at least one person")
    return list(dict.fromkeys(compact))


class Custodian:
    """The custodian's central service over its key folder and the central database."""

    def __init__(self, keys_folder: Path, engine: sa.Engine) -> None:
        _check_key_folder(keys_folder)
        self._pseudonym = read_pseudonym_key(keys_folder)
        self._projects = read_secret(keys_folder / PROJECT_KEY, "project key")
        self.engine = engine

    # ---- pseudonyms ----------------------------------------------------------------------------

    def pseudonym_for(self, nhs_number: str, actor: str, purpose: str = "opt-out") -> str:
        """The lake pseudonym every practice makes for this NHS number (spaces allowed)."""
        number = "".join(nhs_number.split())
        if not is_valid_nhs_number(number):
            raise UserError(
                "that is not a valid NHS number (ten digits, the last a modulus-11 check digit); "
                "check it against the person's NHS letter or app"
            )
        pseudonym = lake_pseudonym(self._pseudonym, number)
        with Session(self.engine) as session, session.begin():
            record(session, "custodian.pseudonym", _who(actor), {"purpose": purpose})
        return pseudonym

    def project_key(self, project: str, actor: str) -> bytes:
        """The key a project's pseudonyms are made with (see `project_pseudonyms`)."""
        _required("project", project)
        key = _project_key(self._projects, project)
        with Session(self.engine) as session, session.begin():
            record(session, "custodian.project_key", _who(actor), {"project": project})
        return key

    def use_tokens(self, pseudonym: str, runs: Sequence[tuple[str, str]]) -> dict[str, str]:
        """For the person with this lake pseudonym, the token each (project, run) would have
        kept had it read their record, by run. A run is named as its tokens were made
        (`transparency.uses.basis`): by its salt (32 hex digits) if it kept a file of uses,
        `v2:` or `v1:` and its salt for a file of an earlier form, or its reference if its
        tokens are in the database. For the patient's own view of their record: the keys never
        leave the custodian, and nothing is recorded (the look-up of the pseudonym that comes
        first is)."""
        keys: dict[str, bytes] = {}
        tokens = {}
        for project, run in runs:
            if project not in keys:
                keys[project] = _project_key(self._projects, project)
            tokens[run] = _token_of(keys[project], run, pseudonym)
        return tokens

    def erased_tokens(
        self, pseudonyms: Collection[str], runs: Sequence[tuple[str, str]]
    ) -> dict[str, set[str]]:
        """For the erasure cycle: for each (project, run), the run named as `use_tokens` names
        it, the tokens these people (lake pseudonyms) would have in it, so that they can be
        taken out. Each project's key is derived once."""
        by_project: dict[str, list[str]] = {}
        for project, run in runs:
            by_project.setdefault(project, []).append(run)
        tokens: dict[str, set[str]] = {}
        for project, made in by_project.items():
            key = _project_key(self._projects, project)
            for run in made:
                tokens[run] = {_token_of(key, run, p) for p in sorted(pseudonyms)}
        return tokens

    # ---- re-identification: identity -> project pseudonym, never back ------------------------

    def request_reidentification(
        self,
        project: str,
        legal_basis: str,
        purpose: str,
        nhs_numbers: Sequence[str],
        requested_by: str,
    ) -> int:
        """Ask for the project pseudonyms of named people; returns the request's id. Stores only
        how many people and a hash of their numbers."""
        if legal_basis not in LEGAL_BASES:
            raise UserError(
                f"{legal_basis!r} is not a legal basis for re-identification: use one of "
                f"{', '.join(LEGAL_BASES)}"
            )
        _required("project", project)
        _required("purpose", purpose)
        numbers = normalise_nhs_numbers(nhs_numbers)
        with Session(self.engine) as session, session.begin():
            request = ReidRequest(
                project=project,
                legal_basis=legal_basis,
                purpose=purpose.strip(),
                requested_by=_who(requested_by),
                requested_at=now(),
                identities=len(numbers),
                identities_sha256=identities_sha256(numbers),
                status="pending",
            )
            session.add(request)
            session.flush()
            record(session, "reid.requested", request.requested_by, _public(request))
            return request.id

    def approve(self, request_id: int, approver: str) -> str:
        """One approval; the request is approved at two distinct approvers, neither of them the
        requester. Returns the request's status afterwards."""
        approver = _who(approver)
        with Session(self.engine) as session, session.begin():
            request = _request(session, request_id)
            _still_open(request, "approved")
            if request.status != "pending":
                raise UserError(f"request {request_id} is already approved by two people")
            if approver == request.requested_by:
                raise UserError(
                    f"{approver} made request {request_id} and cannot approve it: two other "
                    "people must"
                )
            if session.get(ReidApproval, (request_id, approver)) is not None:
                raise UserError(
                    f"{approver} has already approved request {request_id}: a second, different "
                    "approver is needed"
                )
            session.add(ReidApproval(request_id=request_id, approver=approver, at=now()))
            session.flush()
            approvals = len(_approvers(session, request_id))
            if approvals >= APPROVERS_NEEDED:
                request.status = "approved"
            record(
                session,
                "reid.approved",
                approver,
                {**_public(request), "approvals": approvals},
            )
            return request.status

    def refuse(self, request_id: int, by: str, reason: str) -> None:
        """Refuse a request that is not yet fulfilled; it can then never be fulfilled."""
        _required("reason", reason)
        with Session(self.engine) as session, session.begin():
            request = _request(session, request_id)
            _still_open(request, "refused")
            request.status = "refused"
            record(session, "reid.refused", _who(by), {**_public(request), "reason": reason})

    def fulfil(self, request_id: int, nhs_numbers: Sequence[str], actor: str) -> dict[str, str]:
        """Each NHS number of an approved request -> its pseudonym in the request's project.
        The numbers must be exactly the ones requested (checked by hash)."""
        numbers = normalise_nhs_numbers(nhs_numbers)
        with Session(self.engine) as session, session.begin():
            request = _request(session, request_id)
            _still_open(request, "fulfilled")
            approvers = _approvers(session, request_id) - {request.requested_by}
            if request.status != "approved" or len(approvers) < APPROVERS_NEEDED:
                raise UserError(
                    f"request {request_id} is not approved: it needs {APPROVERS_NEEDED} "
                    f"approvers other than the requester and has {len(approvers)}"
                )
            if identities_sha256(numbers) != request.identities_sha256:
                raise UserError(
                    f"these NHS numbers are not the {request.identities} approved in request "
                    f"{request_id}: give exactly the list that was approved"
                )
            key = _project_key(self._projects, request.project)
            mapping = {n: _mac(key, lake_pseudonym(self._pseudonym, n)) for n in sorted(numbers)}
            request.status = "fulfilled"
            request.fulfilled_at = now()
            record(session, "reid.fulfilled", _who(actor), _public(request))
        return mapping


# ---- helpers ---------------------------------------------------------------------------------


def _check_key_folder(folder: Path) -> None:
    """The custodian's own folder: present, with its pseudonym key, and private."""
    if not folder.is_dir():
        raise UserError(
            f"no key folder at {folder}: the custodian creates one with "
            f"`gpdpr custodian init --keys {folder}`"
        )
    if not (folder / PSEUDONYM_KEY).is_file():
        if (folder / OLD_COLLECTION_KEY).exists():
            read_pseudonym_key(folder)  # names an old-scheme folder for what it is
        raise UserError(
            f"{folder} has no {PSEUDONYM_KEY}: it is not the custodian's key folder "
            f"(`gpdpr custodian init --keys {folder}` makes one)"
        )
    for path, fix in (
        (folder, "700"),
        (folder / PSEUDONYM_KEY, "600"),
        (folder / PROJECT_KEY, "600"),
    ):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise UserError(
                f"{path} can be read by other users; keys must be private to the custodian: "
                f"run `chmod {fix} {path}`, then try again"
            )


def _required(what: str, value: str) -> None:
    if not value.strip():
        raise UserError(f"a {what} is required")


def _who(actor: str) -> str:
    _required("name of who is acting", actor)
    return actor.strip()


def _request(session: Session, request_id: int) -> ReidRequest:
    request = session.get(ReidRequest, request_id)
    if request is None:
        raise UserError(f"there is no re-identification request {request_id}")
    return request


def _still_open(request: ReidRequest, wanted: str) -> None:
    """Refuses acting on a request that was refused or already fulfilled."""
    if request.status == "refused":
        raise UserError(f"request {request.id} was refused and cannot be {wanted}")
    if request.status == "fulfilled":
        raise UserError(
            f"request {request.id} has already been fulfilled: make a new request if needed"
        )


def _approvers(session: Session, request_id: int) -> set[str]:
    return set(
        session.scalars(
            sa.select(ReidApproval.approver).where(ReidApproval.request_id == request_id)
        ).all()
    )


def _public(request: ReidRequest) -> dict[str, object]:
    """What the event record says about a request: never its NHS numbers, nor their hash (a
    hash of a handful of NHS numbers could be reversed by trying every number)."""
    return {
        "request": request.id,
        "project": request.project,
        "legal_basis": request.legal_basis,
        "purpose": request.purpose,
        "identities": request.identities,
        "status": request.status,
    }
