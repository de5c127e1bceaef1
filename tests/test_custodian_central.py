"""The custodian's central side: the same pseudonym a practice makes, project keys that keep
projects apart, a key folder it refuses unless private, and re-identification that goes one way
only (named people -> project pseudonyms) and only with a legal basis and two other approvers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from databases import BACKENDS, engines, pseudonym
from gpdpr.custodian.central import (
    LEGAL_BASES,
    Custodian,
    identities_sha256,
    project_pseudonyms,
    run_key,
    run_use_token,
    run_use_token_v2,
    use_token,
)
from gpdpr.custodian.keys import init
from gpdpr.db.models import Event, ReidRequest
from gpdpr.errors import UserError
from gpdpr.practice.pseudonyms import Pseudonymiser

NUMBERS = ["9434765919", "9990000018", "9990000026"]  # valid (modulus 11)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    yield from engines(request.param, tmp_path)


@pytest.fixture
def key_folder(tmp_path: Path) -> Path:
    init(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def custodian(key_folder: Path, engine: sa.Engine) -> Custodian:
    return Custodian(key_folder, engine)


def published(engine: sa.Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(Event).order_by(Event.id)))


def approved(custodian: Custodian, numbers: list[str] = NUMBERS) -> int:
    request: int = custodian.request_reidentification(
        "P0042", "court_order_or_legal_requirement", "a court order", numbers, "ada"
    )
    custodian.approve(request, "brian")
    assert custodian.approve(request, "chidi") == "approved"
    return request


# ---- pseudonyms and project keys ---------------------------------------------------------------


def test_the_pseudonym_is_exactly_what_every_practice_makes(
    custodian: Custodian, key_folder: Path, engine: sa.Engine
) -> None:
    from gpdpr.custodian.keys import issue_practice
    from gpdpr.custodian.service import running
    from gpdpr.practice.custodian_client import evaluate
    from gpdpr.practice.kit import read_kit

    with running(key_folder) as url:
        for ods in ("Z10001", "Z10002"):  # the same person at two practices: one pseudonym
            kit = read_kit(issue_practice(key_folder, ods, url))
            made, linkable = Pseudonymiser(partial(evaluate, kit), ods).patients(
                pa.array(NUMBERS), [1, 2, 3]
            )
            assert linkable.all()
            assert [custodian.pseudonym_for(n, "test") for n in NUMBERS] == made
    assert custodian.pseudonym_for("943 476 5919", "test") == made[0]  # spaces allowed

    events = published(engine)
    assert {e.kind for e in events} == {"custodian.pseudonym"}
    for event in events:
        text = str(event.details) + event.actor
        assert not any(n in text for n in NUMBERS) and not any(p in text for p in made)


@pytest.mark.parametrize("bad", ["9434765918", "943476591", "94347659190", "abc", ""])
def test_an_invalid_nhs_number_is_refused(custodian: Custodian, bad: str) -> None:
    with pytest.raises(UserError, match="not a valid NHS number") as refused:
        custodian.pseudonym_for(bad, "test")
    assert bad == "" or bad not in str(refused.value)


def test_project_pseudonyms_are_stable_and_differ_between_projects(
    custodian: Custodian, key_folder: Path, engine: sa.Engine
) -> None:
    lake = pa.array([pseudonym(1), pseudonym(2), None, pseudonym(1)])
    first = custodian.project_key("P0001", "tre")
    again = Custodian(key_folder, engine).project_key("P0001", "tre")
    other = custodian.project_key("P0002", "tre")
    assert len(first) == 32 and first == again and first != other

    mine = project_pseudonyms(first, lake).to_pylist()
    assert mine == project_pseudonyms(again, lake).to_pylist()
    assert mine[0] == hmac.new(first, pseudonym(1).encode(), hashlib.sha256).hexdigest()
    assert mine[0] == mine[3] and mine[0] != mine[1] and mine[2] is None
    theirs = project_pseudonyms(other, lake).to_pylist()
    assert not set(mine) - {None} & set(theirs)
    assert [e.details for e in published(engine)] == [
        {"project": "P0001"},
        {"project": "P0001"},
        {"project": "P0002"},
    ]


def test_a_persons_use_tokens_are_made_as_each_kind_of_run_kept_them(
    custodian: Custodian,
) -> None:
    """A run that kept a file of uses is named by its salt (tokens of the person's number
    under the run's key), one whose file is of the second or third version by `v2:` and its
    salt (an HMAC of the lake pseudonym), one of the first version by `v1:` and its salt, one
    whose tokens are in the database by its reference (both of the project pseudonym)."""
    key = custodian.project_key("P0001", "tre")
    salt = "0123456789abcdef" * 2
    person = pseudonym(1)
    project = project_pseudonyms(key, pa.array([person])).to_pylist()[0]
    runs = [
        ("P0001", salt),
        ("P0001", f"v2:{salt}"),
        ("P0001", f"v1:{salt}"),
        ("P0001", "RUN-000001"),
    ]
    assert custodian.use_tokens(person, runs) == {
        salt: run_use_token(key, salt, person),
        f"v2:{salt}": run_use_token_v2(key, salt, person),
        f"v1:{salt}": use_token(key, salt, project),
        "RUN-000001": use_token(key, "RUN-000001", project),
    }
    assert len(set(custodian.use_tokens(person, runs).values())) == 4


def test_a_use_token_is_sha256_of_the_runs_key_and_the_persons_number(
    custodian: Custodian,
) -> None:
    """The third form, worked by hand from its definition (HKDF-SHA256 of the project's key
    for the run's key, then one SHA-256): what the engines make must be this."""
    key = custodian.project_key("P0001", "tre")
    salt = "00ff" * 8
    person = pseudonym(2)
    run = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gpdpr run use v3\n" + salt.encode()
    ).derive(key)
    assert run_key(key, salt) == run
    number = bytes.fromhex(person)[:16]
    assert run_use_token(key, salt, person) == hashlib.sha256(run + number).hexdigest()
    assert run_use_token(key, "11ff" * 8, person) != run_use_token(key, salt, person)
    for bad in (person.upper(), person[:-1], person + "0", "g" * 64):
        with pytest.raises(ValueError, match="64 lowercase hex digits"):
            run_use_token(key, salt, bad)
    with pytest.raises(ValueError, match="32 hex digits"):
        run_key(key, "not a salt")


def test_project_pseudonyms_keep_a_columns_encoding(custodian: Custodian) -> None:
    key = custodian.project_key("P0001", "tre")
    plain = pa.array([pseudonym(i % 3) for i in range(10)])
    encoded = project_pseudonyms(key, plain.dictionary_encode())
    assert pa.types.is_dictionary(encoded.type)
    assert encoded.cast(pa.string()).to_pylist() == project_pseudonyms(key, plain).to_pylist()
    chunked = project_pseudonyms(key, pa.chunked_array([plain[:4], plain[4:]]))
    assert chunked.to_pylist() == project_pseudonyms(key, plain).to_pylist()


def test_there_is_no_way_from_a_pseudonym_back_to_a_person() -> None:
    public = {name for name in vars(Custodian) if not name.startswith("_")}
    assert public == {
        "pseudonym_for",
        "project_key",
        "request_reidentification",
        "approve",
        "refuse",
        "fulfil",
        "use_tokens",  # pseudonym -> run-use tokens: one way too (the patient's own view)
        "erased_tokens",  # the same, for the people an erasure cycle takes out of every run
    }


# ---- the key folder ----------------------------------------------------------------------------


def test_a_key_folder_others_can_read_is_refused(key_folder: Path, engine: sa.Engine) -> None:
    os.chmod(key_folder, 0o750)
    with pytest.raises(UserError, match=f"run `chmod 700 {key_folder}`"):
        Custodian(key_folder, engine)
    os.chmod(key_folder, 0o700)
    os.chmod(key_folder / "pseudonym.key", 0o644)
    with pytest.raises(UserError, match="chmod 600"):
        Custodian(key_folder, engine)


def test_a_folder_without_the_pseudonym_key_is_refused(tmp_path: Path, engine: sa.Engine) -> None:
    with pytest.raises(UserError, match=r"no key folder .*gpdpr custodian init"):
        Custodian(tmp_path / "missing", engine)
    (tmp_path / "empty").mkdir(mode=0o700)
    with pytest.raises(UserError, match=r"has no pseudonym\.key"):
        Custodian(tmp_path / "empty", engine)


# ---- re-identification -------------------------------------------------------------------------


def test_an_approved_request_yields_the_project_pseudonyms(
    custodian: Custodian, engine: sa.Engine
) -> None:
    request = approved(custodian)
    with Session(engine) as session:
        stored = session.get(ReidRequest, request)
        assert stored is not None and stored.status == "approved"
        assert stored.identities == 3 and stored.identities_sha256 == identities_sha256(NUMBERS)

    shuffled = [NUMBERS[2], "999 000 0018", NUMBERS[0]]  # any order, spaces allowed
    mapping = custodian.fulfil(request, shuffled, "custodian-officer")
    key = custodian.project_key("P0042", "test")
    lake = pa.array([custodian.pseudonym_for(n, "test") for n in NUMBERS])
    assert mapping == dict(zip(NUMBERS, project_pseudonyms(key, lake).to_pylist(), strict=True))

    kinds = [e.kind for e in published(engine)]
    assert kinds[:5] == [
        "reid.requested",
        "reid.approved",
        "reid.approved",
        "reid.fulfilled",
        "custodian.project_key",
    ]
    for event in published(engine):
        text = str(event.details)
        assert not any(n in text for n in NUMBERS)
        assert identities_sha256(NUMBERS) not in text
        assert not any(p in text for p in mapping.values())


def test_an_unknown_legal_basis_is_refused_listing_the_allowed_ones(custodian: Custodian) -> None:
    with pytest.raises(UserError) as refused:
        custodian.request_reidentification("P1", "curiosity", "why not", NUMBERS, "ada")
    assert "'curiosity' is not a legal basis" in str(refused.value)
    assert all(basis in str(refused.value) for basis in LEGAL_BASES)


def test_invalid_numbers_are_named_by_position_not_value(custodian: Custodian) -> None:
    numbers = [NUMBERS[0], "9434765918", NUMBERS[1], "12345"]
    with pytest.raises(UserError, match=r"2 of 4 entries .*: entries 2, 4") as refused:
        custodian.request_reidentification("P1", "consent", "consented", numbers, "ada")
    assert "9434765918" not in str(refused.value)
    with pytest.raises(UserError, match="no NHS numbers given"):
        custodian.request_reidentification("P1", "consent", "consented", [], "ada")
    with pytest.raises(UserError, match="a purpose is required"):
        custodian.request_reidentification("P1", "consent", " ", NUMBERS, "ada")


def test_approvals_need_two_people_other_than_the_requester(custodian: Custodian) -> None:
    request = custodian.request_reidentification("P1", "consent", "consented", NUMBERS, "ada")
    with pytest.raises(UserError, match=r"ada made request .* cannot approve it"):
        custodian.approve(request, "ada")
    assert custodian.approve(request, "brian") == "pending"
    with pytest.raises(UserError, match="brian has already approved"):
        custodian.approve(request, "brian")
    with pytest.raises(UserError, match=r"is not approved: it needs 2 .* has 1"):
        custodian.fulfil(request, NUMBERS, "officer")
    assert custodian.approve(request, "chidi") == "approved"
    with pytest.raises(UserError, match="already approved by two people"):
        custodian.approve(request, "dana")
    with pytest.raises(UserError, match="there is no re-identification request 999"):
        custodian.approve(999, "dana")


def test_only_the_approved_list_is_fulfilled_and_only_once(custodian: Custodian) -> None:
    request = approved(custodian)
    with pytest.raises(UserError, match="not the 3 approved in request"):
        custodian.fulfil(request, NUMBERS[:2], "officer")
    with pytest.raises(UserError, match="not the 3 approved in request"):
        custodian.fulfil(request, [*NUMBERS[:2], "9990000034"], "officer")
    custodian.fulfil(request, NUMBERS, "officer")
    with pytest.raises(UserError, match="already been fulfilled"):
        custodian.fulfil(request, NUMBERS, "officer")
    with pytest.raises(UserError, match="already been fulfilled"):
        custodian.refuse(request, "panel", "too late")


def test_a_refused_request_can_never_be_approved_or_fulfilled(
    custodian: Custodian, engine: sa.Engine
) -> None:
    request = custodian.request_reidentification("P1", "consent", "consented", NUMBERS, "ada")
    custodian.approve(request, "brian")
    custodian.refuse(request, "panel", "consent not evidenced")
    with pytest.raises(UserError, match="was refused and cannot be approved"):
        custodian.approve(request, "chidi")
    with pytest.raises(UserError, match="was refused and cannot be fulfilled"):
        custodian.fulfil(request, NUMBERS, "officer")
    refusal = published(engine)[-1]
    assert refusal.kind == "reid.refused" and refusal.details["reason"] == "consent not evidenced"
    with pytest.raises(UserError, match="a reason is required"):
        custodian.refuse(approved(custodian), "panel", "")
